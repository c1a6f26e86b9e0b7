"""The config schema every experiment starts from, and its validation.

An experiment's `get_config()` calls `configs.defaults(family)` and sets what differs, so every
field below exists in every config and can be overridden from the command line
(`--config.optimizer.lr=3e-4`). `validate()` runs before anything compiles or touches the
workdir; every problem is one `ConfigError` naming the field and the fix.

Families add their own sections (`model`, `objective`, extra `eval` fields) through
`Family.config_defaults()` and check them in `Family.validate_config()`.
"""
from __future__ import annotations

import importlib
import os
import sys
from typing import Sequence

import ml_collections

from research import curriculum
# Re-exported: configs.ConfigError, configs.require, ... (research/config_checks.py).
from research.config_checks import ConfigError, one_of, parse_list, require  # noqa: F401
from research.data import datasets


# Families the harness knows: name -> "module:Class". Imported lazily so a config error never
# pays for importing (and compiling) a family.
FAMILIES = {
    'vae': 'research.vae.family:VAE',
    'classifier': 'research.classifier.family:Classifier',
    'diffusion': 'research.diffusion.family:Diffusion',
    'gan': 'research.gan.family:GAN',
    'lm': 'research.lm.family:LM',
    'reward_model': 'research.rlhf.reward_model:RewardModel',
    'ppo': 'research.rlhf.ppo_family:PPO',
    'dpo': 'research.rlhf.dpo:DPO',
}


def common_defaults() -> ml_collections.ConfigDict:
  """Fields shared by every family, with their defaults. The single place they are documented."""
  c = ml_collections.ConfigDict()
  c.family = 'vae'            # a key of FAMILIES
  c.seed = 0                  # one seed for init, data order, augmentation and training noise

  c.data = ml_collections.ConfigDict()
  c.data.name = 'fashion_mnist'   # fashion_mnist | mnist | digits | cifar10 | ring8 | grid25 |
                                  # swiss_roll | shakespeare | shakespeare_dialogue (SFT) |
                                  # shakespeare_prompts (PPO prompts) | shakespeare_preferences
                                  # (reward model / DPO pairs) (text; see research/data)
  c.data.source = 'package'       # 'package': built offline from an installed package;
                                  # 'tfds': the standard TFDS catalog (cloud path, needs TF)
  c.data.data_dir = ''            # TFDS data_dir; '' = ~/tensorflow_datasets
  c.data.train_split = 'train'
  c.data.eval_split = 'test'
  c.data.num_eval_examples = -1   # -1 = the whole eval split
  c.data.augment = ml_collections.ConfigDict()
  c.data.augment.flip = False           # random horizontal flip
  c.data.augment.crop_pad = 0           # pad by this many pixels then random-crop back
  c.data.augment.dequantize = False     # uniform noise in [0, 1/256) on [0, 1] pixels
  c.data.augment.binarize = 'none'      # none | dynamic (Bernoulli per draw) | threshold
  c.data.read_threads = 4               # grain prefetch threads on each host
  c.data.dedup = 'none'  # none | exact | near: drop duplicate train examples (see research/evaluation/dedup.py)
  c.data.dedup_rms = 0.02  # near: per-pixel RMS distance under which two images are duplicates
  c.data.tokenizer = 'char'       # text: byte | char | bpe (research/data/tokenizers.py)
  c.data.vocab_size = 2048        # text, tokenizer='bpe': sentencepiece vocabulary size
  c.data.seq_len = 256            # text: tokens of context per window (rows hold seq_len + 1)
  c.data.records = ''             # shakespeare_preferences: the SQLite record store holding the
                                  # preference pairs (research/records.py); '' for the others
  c.data.preference_source = 'synthetic'  # shakespeare_preferences: the pairs' source, human |
                                          # synthetic | model | all (never mixed unless 'all')
  c.data.max_pairs = 0            # shakespeare_preferences: train on the first N train pairs
                                  # (store id order; 0 = all): proxies by data size

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = 'adam'       # sgd | momentum | adam | adamw | adagrad | rmsprop | lamb
  c.optimizer.lr = 1e-3           # peak learning rate
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
  c.optimizer.eps = 1e-8
  c.optimizer.momentum = 0.9      # sgd/momentum only
  c.optimizer.nesterov = False
  c.optimizer.weight_decay = 0.0  # decoupled (adamw) or L2 added to grads (others)
  c.optimizer.decay_norms_and_biases = False  # False: mask out 1-D params (biases, norm scales)
  c.optimizer.clip_grad_norm = 0.0            # 0 = no clipping
  c.optimizer.grad_accum_steps = 1            # microbatches per step (scan inside the step)
  c.optimizer.ema_decay = 0.0                 # 0 = no EMA; eval and sampling use EMA params
  c.optimizer.ema_warmup = True               # decay min(ema_decay, (1+n)/(10+n)) at update n:
                                              # a short run's EMA is not stuck near the init
  c.optimizer.frozen = ''                     # comma-separated regexes of param paths to freeze
  c.optimizer.schedule = ml_collections.ConfigDict()
  c.optimizer.schedule.name = 'constant'  # constant | warmup_cosine | warmup_linear |
                                          # exponential | piecewise | warmup_rsqrt
  c.optimizer.schedule.warmup_steps = 0
  c.optimizer.schedule.decay_steps = 0      # 0 = train.num_steps
  c.optimizer.schedule.end_value = 0.0      # final lr as a fraction of optimizer.lr
  c.optimizer.schedule.decay_rate = 0.1     # exponential: lr * decay_rate ** (step / decay_steps)
  c.optimizer.schedule.boundaries = ''      # piecewise: comma-separated steps, e.g. '1000,2000'
  c.optimizer.schedule.scales = ''          # piecewise: multipliers at those steps, e.g. '0.1,0.1'

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 128        # global batch over all devices and hosts
  c.train.num_steps = 1000
  c.train.log_every = 100
  c.train.eval_every = 1000       # also at the last step
  c.train.sample_every = 1000     # sample grids (PNG) and raw samples (.npz)
  c.train.checkpoint_every = 1000
  c.train.keep_checkpoints = 3    # latest K kept, plus the best by eval.best_metric
  c.train.async_checkpoints = True
  c.train.stop_on_nonfinite = True  # NaN/inf metrics or state: stop with one line, never save them
  c.train.divergence_limit = 0.0    # with stop_on_nonfinite: also stop when a logged *loss* metric
                                    # exceeds this magnitude (a finite blow-up); 0 = off
  c.train.divergence_factor = 1000.0  # with stop_on_nonfinite: also stop when the logged `loss`
                                    # exceeds this many times its median over the earlier log
                                    # steps (a positive loss blowing up); 0 = off

  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 500         # global eval batch; the last batch is padded and masked
  c.eval.num_samples = 64         # samples drawn at each sample step
  c.eval.best_metric = ''         # e.g. 'neg_elbo'; '' = keep no "best" checkpoint
  c.eval.best_mode = 'min'        # min | max
  c.eval.draws = 3                # drawn eval metrics (e.g. a GAN's mode coverage): mean and
                                  # standard error (<name>_se) over this many independent draws
  c.eval.compare_raw = True       # with an EMA: also eval the raw params (eval.raw_*) and warn
                                  # when the EMA's loss is far worse (a stale EMA)

  c.init_from = ml_collections.ConfigDict()  # transfer learning from another run
  c.init_from.workdir = ''        # '' = train from scratch
  c.init_from.step = -1           # -1 = that run's latest checkpoint
  c.init_from.param_map = ''      # 'dst_regex=src_prefix,...'; '' = same paths

  c.parallel = ml_collections.ConfigDict()  # how the state and the batch lie on the devices
  c.parallel.mode = 'data'        # data: state replicated, batch split (the pmap model; default)
                                  # sharded: a (batch x model) mesh, state sharded by the rules
                                  # below (research/sharding.py); families with one objective
  c.parallel.model_axis = 1       # sharded: devices on the model axis (tensor parallelism, within
                                  # one host); the batch axis takes the rest
  c.parallel.fsdp = True          # sharded: params, EMA and optimizer state split over the batch axis
  c.parallel.fsdp_min_size = 1024  # sharded: leaves with fewer elements stay replicated
  c.parallel.rules = ''           # sharded: 'regex=spec;...' before the family's tensor-parallel
                                  # rules, spec one axis (batch|model) or _ per dim, e.g.
                                  # 'mlp/up/kernel$=_,model;mlp/down/kernel$=model,_'

  c.precision = ml_collections.ConfigDict()  # mixed precision; parameters always stay float32
  c.precision.compute = 'float32'  # float32 | bfloat16: the networks' matmuls and activations
                                   # (norm statistics, losses and logits stay float32)
  c.precision.moments = 'float32'  # float32 | bfloat16: the optimizer's first moment (Adam's mu)

  c.curriculum = ml_collections.ConfigDict()  # a step-dependent value handed to the family
  c.curriculum.name = 'none'      # none | linear | piecewise | (see research/curriculum.py)
  c.curriculum.start = 0.0
  c.curriculum.end = 1.0
  c.curriculum.steps = 0          # linear: steps to go from start to end
  c.curriculum.boundaries = ''    # piecewise: comma-separated steps
  c.curriculum.levels = ''        # piecewise: comma-separated levels (one more than boundaries)
  return c


def family_class(name: str):
  """Imports and returns the Family class registered under `name`."""
  if name not in FAMILIES:
    raise ConfigError(f'config.family={name!r}: unknown family; use one of {sorted(FAMILIES)}')
  module, cls = FAMILIES[name].split(':')
  return getattr(importlib.import_module(module), cls)


def defaults(family: str) -> ml_collections.ConfigDict:
  """The full default config for a family: common fields plus the family's own sections."""
  c = common_defaults()
  c.family = family
  _merge(c, family_class(family).config_defaults())
  return c


def _merge(dst: ml_collections.ConfigDict, src: ml_collections.ConfigDict) -> None:
  for k, v in src.items():
    if isinstance(v, ml_collections.ConfigDict) and k in dst:
      _merge(dst[k], v)
    else:
      dst[k] = v


# ---------------------------------------------------------------------------------------------
# Validation


def _leaves(c, prefix='config'):
  for k, v in c.items():
    path = f'{prefix}.{k}'
    if isinstance(v, (ml_collections.ConfigDict, dict)):
      yield from _leaves(v, path)
    else:
      yield path, k, v


def _types_ok(value, default) -> bool:
  if default is None or value is None:
    return True
  if isinstance(default, bool):
    return isinstance(value, bool)
  if isinstance(default, float):
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  if isinstance(default, int):
    return isinstance(value, int) and not isinstance(value, bool)
  if isinstance(default, (tuple, list)):
    return isinstance(value, (tuple, list))
  return isinstance(value, type(default))


def check_schema(config, schema, prefix='config') -> None:
  """Unknown keys and wrong types, against the defaults of the config's family."""
  for k, v in config.items():
    path = f'{prefix}.{k}'
    if k not in schema:
      known = ', '.join(sorted(schema.keys()))
      raise ConfigError(f'{path}: unknown field; known fields here: {known}')
    d = schema[k]
    if isinstance(d, ml_collections.ConfigDict):
      if not isinstance(v, (ml_collections.ConfigDict, dict)):
        raise ConfigError(f'{path}: must be a section (ConfigDict), got {type(v).__name__}')
      check_schema(v, d, path)
    elif not _types_ok(v, d):
      raise ConfigError(f'{path}={v!r}: must be {type(d).__name__}, got {type(v).__name__}')


def flag_error_line(error: Exception, argv: Sequence[str]) -> str:
  """One line for an absl/config_flags parsing error, naming the `--config.*` override it comes
  from (config_flags raises AttributeError/KeyError/TypeError/flags.Error with multi-line,
  quoted messages). Shared by every command that takes `--config`."""
  msg = str(error).replace('\\n', ' ').replace("\\'", "'").replace('\n', ' ')
  quoted = len(msg) > 1 and msg[0] == msg[-1] in '\'"'
  msg = ' '.join(msg[1:-1].split() if quoted else msg.split())
  fields = [a[2:].split('=')[0] for a in argv if a.startswith('--config.')]
  field = next((f for f in fields if f.rsplit('.', 1)[-1] in msg), None)
  if isinstance(error, AttributeError | KeyError):
    msg = f'unknown field ({msg})'
  return f'config error: --{field}: {msg}' if field else f'flag error: {msg}'


def parse_command_flags(argv: Sequence[str], required: Sequence[str] = ('workdir',),
                        positional: bool = False) -> list[str]:
  """absl flag parsing for the project's commands with one-line errors and exit code 2: a bad
  flag or `--config.*` override, a stray positional argument (unless `positional`), a missing
  required flag, and a `--config` file that does not load (config_flags defers that error to
  first use)."""
  from absl import flags  # pylint: disable=g-import-not-at-top  (commands only)
  try:
    rest = flags.FLAGS(argv)
  except Exception as e:  # config_flags raises AttributeError/KeyError/TypeError/flags.Error
    fail(flag_error_line(e, argv))
  if len(rest) > 1 and not positional:
    fail(f'flag error: unexpected arguments {rest[1:]}; every option is --name=value')
  for name in required:
    if flags.FLAGS[name].value is None:
      fail(f'flag error: --{name} is required')
  if 'config' in flags.FLAGS and flags.FLAGS['config'].value is None:
    fail('flag error: --config is required (an experiment\'s config.py, e.g. '
          '--config=experiments/vae_digits/config.py)')
  if 'config' in flags.FLAGS:
    try:
      getattr(flags.FLAGS.config, 'keys')  # a file that failed to load raises on first use
    except Exception as e:  # pylint: disable=broad-except
      fail(config_file_error(e, argv))
  return rest


def config_file_error(error: Exception, argv: Sequence[str]) -> str:
  """One line for a `--config` file that does not load, with the fix."""
  spec = next((a.split('=', 1)[1] for a in argv if a.startswith('--config=')), '')
  path = spec.split(':', 1)[0]
  if spec and os.path.isdir(path):
    why = (f'a directory; give its config file, e.g. --config={os.path.join(path, "config.py")}')
  elif spec and not os.path.exists(path):
    why = 'no such file; give an experiment\'s config.py, e.g. experiments/vae_digits/config.py'
  else:
    msg = ' '.join(str(error).split())
    why = f'does not load ({msg[:200]})'
  return f'flag error: --config={spec}: {why}'


def fail(message: str):
  """A command's one-line error: the message on stderr, exit code 2."""
  print(message, file=sys.stderr)
  sys.exit(2)









def validate(config: ml_collections.ConfigDict, num_devices: int, num_processes: int = 1) -> None:
  """Checks a whole config; raises ConfigError on the first problem. Cheap: compiles nothing."""
  # The JAX modules are imported here, not at the top, so that `import research.configs` and a
  # data check never load JAX (tests/test_data.py test_validate_is_cheap).
  from research import family as family_lib  # pylint: disable=g-import-not-at-top
  from research import optim, precision, sharding  # pylint: disable=g-import-not-at-top
  fam = family_class(config.family)
  check_schema(config, defaults(config.family))
  pc = config.parallel
  one_of(pc.mode, ('data', 'sharded'), 'parallel.mode')
  one_of(config.precision.compute, precision.DTYPES, 'precision.compute')  # moments: by optim
  if pc.mode == 'sharded':
    require(fam.objective is not family_lib.Family.objective, 'parallel.mode', pc.mode,
            f'family {config.family!r} writes its own train step (several players); '
            "use parallel.mode='data'")
    require(pc.model_axis >= 1 and num_devices % pc.model_axis == 0, 'parallel.model_axis',
            pc.model_axis, f'must be >= 1 and divide the {num_devices} devices')
    require(pc.fsdp_min_size >= 0, 'parallel.fsdp_min_size', pc.fsdp_min_size, 'must be >= 0')
    sharding.parse_rules(pc.rules)
    num_devices //= pc.model_axis  # the batch is split over the batch axis only
  elif pc.model_axis != 1 or pc.rules:
    raise ConfigError(f'config.parallel.mode={pc.mode!r}: parallel.model_axis and parallel.rules '
                      "need parallel.mode='sharded'")
  t = config.train
  require(t.num_steps > 0, 'train.num_steps', t.num_steps, 'must be > 0')
  require(t.batch_size > 0, 'train.batch_size', t.batch_size, 'must be > 0')
  require(t.batch_size % num_devices == 0, 'train.batch_size', t.batch_size,
          f'must divide by the {num_devices} devices of the batch axis; use a multiple of '
          f'{num_devices}')
  per_device, accum = t.batch_size // num_devices, config.optimizer.grad_accum_steps
  require(accum < 1 or per_device % accum == 0, 'optimizer.grad_accum_steps', accum,
          f'must divide the per-device batch {per_device} (train.batch_size={t.batch_size} over '
          f'{num_devices} devices) into equal microbatches')
  require(t.batch_size % num_processes == 0, 'train.batch_size', t.batch_size,
          f'must divide by the {num_processes} hosts')
  for name in ('log_every', 'eval_every', 'sample_every', 'checkpoint_every', 'keep_checkpoints'):
    require(t[name] > 0, f'train.{name}', t[name], 'must be > 0')
  require(t.divergence_limit >= 0, 'train.divergence_limit', t.divergence_limit,
          'must be >= 0 (0 = off)')
  require(t.divergence_factor == 0 or t.divergence_factor > 1, 'train.divergence_factor',
          t.divergence_factor, 'must be > 1 (or 0 = off)')
  e = config.eval
  require(e.batch_size > 0 and e.batch_size % num_devices == 0, 'eval.batch_size', e.batch_size,
          f'must be > 0 and divide by the {num_devices} devices')
  require(e.num_samples >= 0, 'eval.num_samples', e.num_samples, 'must be >= 0')
  require(e.draws >= 1, 'eval.draws', e.draws, 'must be >= 1 (3 or more for an error bar)')
  one_of(e.best_mode, ('min', 'max'), 'eval.best_mode')
  optim.validate(config.optimizer, t.num_steps, moments_dtype=config.precision.moments)
  datasets.validate(config.data)
  curriculum.validate(config.curriculum)
  if config.init_from.workdir:
    require(os.path.isdir(config.init_from.workdir), 'init_from.workdir',
            config.init_from.workdir, 'no such directory; point it at a finished run')
  fam.validate_config(config)   # first: it names a source run of another kind (e.g. tokenizer)
  if config.init_from.workdir:
    ckpts = os.path.join(config.init_from.workdir, 'checkpoints')
    require(os.path.isdir(ckpts) and any(d.isdigit() for d in os.listdir(ckpts)),
            'init_from.workdir', config.init_from.workdir,
            'has no checkpoints; point it at a run that saved one (its checkpoints/<step>)')
