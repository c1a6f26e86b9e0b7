"""One PPO iteration, ours (research/rlhf/ppo_family.py, JAX) against trl's PPO trainer
(`trl.experimental.ppo.PPOTrainer`, PyTorch CPU), same sizes, same prompts, in one process.

  .venv/bin/python benchmarks/ppo_step.py [--rounds 5] [--batch 64] [--prompt_len 64]
      [--response_len 48] [--epochs 4] [--minibatches 4] [--threads N] [--skip_trl] [--devices 1] [--out JSON]

Needs the optional peer libraries (`bench` extra, installed with a constraint pinning
torch==2.13.0; see benchmarks/README.md). Every peer network is built from a GPT2Config (random
init, nothing downloaded); trl's tokenizer is a word-level one built in memory over the same ids.

One iteration = rollouts of `--batch` prompts (`--response_len` tokens at temperature 0.7, EOS
ends a reply), the reference / value / reward forward passes, rewards (score - beta KL) and GAE,
then `--epochs` passes of `--minibatches` shuffled minibatches, one optimizer update each.

- Ours: experiments/ppo_shakespeare_sentiment/config.py with the sizes set (no init_from run),
  built by `research.trainer.build` on a mesh of `--devices` host CPU devices (1 by default; one
  XLA CPU program keeps about one core busy here, so `--devices 2` is how ours uses a 2-core
  machine, as PyTorch's threads do); one iteration is one call of the
  harness's jitted `exp.train_step` (state donated), blocked on (state, metrics). The reward is
  `rlhf.reward='model'`: a config.json of a reward_model run of the same architecture is written
  to a temporary workdir, and `init_state` builds the reward model's (random) placeholder tree
  (`prepare_state`, which would load its checkpoint, is skipped), so the reward-model forward pass
  is part of the step.
- trl: `PPOTrainer(args, processing_class, model, ref_model, reward_model, train_dataset,
  value_model)` with the policy a `GPT2LMHeadModel`, the reference a deep copy, the value and
  reward models `AutoModelForSequenceClassification` (GPT-2, num_labels=1). The trainer's loop is
  one method (`train()`), with no per-iteration entry point, so one iteration is one `train()` call
  with `total_episodes` = the batch (`num_total_batches` = 1); nothing is subtracted: each call
  also runs the trainer's per-call setup (callbacks, stats tensors, `gc.collect()`, logging).

Warm-up (ours: trace + compile + run; trl: one call) is timed apart; then --rounds interleaved
rounds each time one iteration of ours, one of trl, and a generation-only call of each (the same
sampler call the iteration makes: ours `research.lm.generate.generate`, trl's `batch_generation`
under `unwrap_model_for_generation`), so both see the same machine load. Reported: medians over
rounds and the per-round ratio trl / ours (> 1: ours faster).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings

os.environ.setdefault('TRL_EXPERIMENTAL_SILENCE', '1')   # trl.experimental's import warning
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from research import configs, parallel, trainer  # noqa: E402
from research.data import tokenizers  # noqa: E402
from research.lm import generate as gen  # noqa: E402
from research.lm import model as model_lib  # noqa: E402
from research.rlhf import heads  # noqa: E402
from train_step import load_config, matmul_peak, set_gpt2_like_model  # noqa: E402  (benchmarks/train_step.py)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = 'experiments/ppo_shakespeare_sentiment/config.py'
RM_CONFIG = 'experiments/rm_shakespeare_sentiment/config.py'
PAD, BOS, EOS, UNK = tokenizers.PAD, tokenizers.BOS, tokenizers.EOS, tokenizers.UNK


def set_model(c, args):
  set_gpt2_like_model(c, args.layers, args.heads, args.d_model)


def max_len(args) -> int:
  return max(128, args.prompt_len + args.response_len)


def reward_workdir(args, tmp: str) -> str:
  """A directory that looks like a finished reward_model run to the PPO family's config checks
  and __init__ (its config.json only: the family builds a random placeholder tree)."""
  rm = load_config(os.path.join(ROOT, RM_CONFIG))
  set_model(rm, args)
  rm.init_from.workdir = ''
  rm.data.seq_len = max_len(args) - 1
  path = os.path.join(tmp, 'rm')
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, 'config.json'), 'w') as f:
    f.write(rm.to_json_best_effort(indent=2))
  return path


def our_config(args, rm_dir: str):
  c = load_config(os.path.join(ROOT, CONFIG))
  set_model(c, args)
  c.model.max_len = max_len(args)
  c.init_from.workdir = ''            # random policy: no SFT run
  c.data.seq_len = args.prompt_len
  c.rlhf.update(reward='model', reward_workdir=rm_dir, response_len=args.response_len,
                temperature=args.temperature, true_reward='')
  c.ppo.update(epochs=args.epochs, minibatches=args.minibatches)
  c.train.batch_size = args.batch
  c.eval.batch_size = args.batch
  configs.validate(c, args.devices)
  return c


class Ours:
  def __init__(self, args, prompts: np.ndarray, rm_dir: str):
    self.config = config = our_config(args, rm_dir)
    self.exp = trainer.build(config, parallel.make_mesh(jax.devices()[:args.devices]))
    fam = self.exp.family
    self.vocab = fam.model_cfg.vocab_size
    self.batch = parallel.host_batch_to_global({'tokens': prompts}, self.exp.mesh)
    self.state = self.exp.init(jax.random.key(config.seed), self.batch)
    # The placeholder reward head is zeros (prepare_state would load the trained one): give it
    # a reward model's fresh init, N(0, 1 / sqrt(d + 1)), so the scores, advantages and
    # gradients are not all zero (trl's reward `score` layer is random too).
    ms = dict(self.state.model_state)
    d = fam.rm_net.cfg.d_model
    ms['reward'] = dict(ms['reward'], **{heads.REWARD: parallel.put_replicated(
        heads.init_head(jax.random.key(7), d, (d + 1) ** -0.5), self.exp.mesh)})
    self.state = self.state.replace(model_state=ms)
    self.params_policy = model_lib.num_params(heads.split(self.state.params, heads.VALUE)[0])
    self.params_trainable = model_lib.num_params(self.state.params)
    self.params_reward = model_lib.num_params(self.state.model_state['reward'])
    self.params_all = self.params_trainable + model_lib.num_params(
        self.state.model_state['ref']) + self.params_reward
    assert self.params_reward > 0, 'no reward model in the state'
    self.key = jax.random.key(1)
    self.prompts = self.batch['tokens']
    self.pmask = self.prompts != PAD
    t = time.perf_counter()
    self.step()
    self.first_step_s = time.perf_counter() - t
    self.gen_calls = 0
    t = time.perf_counter()
    self.generate()
    self.gen_first_s = time.perf_counter() - t

  def step(self):
    self.state, self.metrics = self.exp.train_step(self.state, self.batch, self.key)
    jax.block_until_ready((self.state, self.metrics))

  def generate(self):
    """The rollout's sampler call alone (the same arguments as PPO.rollout)."""
    fam, r = self.exp.family, self.config.rlhf
    lm = fam.model_params(fam.eval_params_of(self.state))
    out = self._generate(lm, self.prompts, self.pmask, jax.random.key(100 + self.gen_calls))
    jax.block_until_ready(out)
    self.gen_calls += 1
    return out

  @functools.cached_property
  def _generate(self):
    """Each device samples for its slice of the prompts, as the rollout does."""
    fam, r = self.exp.family, self.config.rlhf

    def per_device(lm, prompts, pmask, key):
      return gen.generate(fam._bound_apply, lm, prompts, pmask,  # pylint: disable=protected-access
                          parallel.device_key(key), max_new_tokens=r.response_len,
                          temperature=r.temperature, eos_id=EOS, pad_id=PAD, cfg=fam.model_cfg)
    return parallel.data_parallel(per_device, self.exp.mesh, batch_args=(1, 2), out_batched=True)

  def host_metrics(self) -> dict:
    return {k: float(v) for k, v in parallel.to_host(self.metrics).items()}


class Peer:
  def __init__(self, args, vocab: int, prompts: np.ndarray, opt_cfg, kl_coef: float, tmp: str):
    import torch  # pylint: disable=g-import-not-at-top
    import transformers  # pylint: disable=g-import-not-at-top
    import trl  # pylint: disable=g-import-not-at-top
    from datasets import Dataset  # pylint: disable=g-import-not-at-top
    from tokenizers import Tokenizer, models  # pylint: disable=g-import-not-at-top
    from transformers import (AutoModelForSequenceClassification, GenerationConfig,  # pylint: disable=g-import-not-at-top
                              GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast,
                              PrinterCallback, ProgressCallback)
    from trl.experimental.ppo import PPOConfig, PPOTrainer  # pylint: disable=g-import-not-at-top
    from trl.experimental.ppo import ppo_trainer as ppo_mod  # pylint: disable=g-import-not-at-top
    from trl.models.utils import unwrap_model_for_generation  # pylint: disable=g-import-not-at-top
    transformers.logging.set_verbosity_error()
    warnings.filterwarnings('ignore', category=FutureWarning)   # gradient_checkpointing renames
    self.torch, self.transformers, self.trl = torch, transformers, trl
    self.ppo_mod, self.unwrap = ppo_mod, unwrap_model_for_generation
    torch.manual_seed(0)

    # Ids as ours: pad 0, bos 1, eos 2, unk 3 (research/data/tokenizers.py), the rest opaque.
    names = ['<pad>', '<bos>', '<eos>', '<unk>'] + [f'<t{i}>' for i in range(4, vocab)]
    self.tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({n: i for i, n in enumerate(names)},
                                                    unk_token='<unk>')),
        pad_token='<pad>', bos_token='<bos>', eos_token='<eos>', unk_token='<unk>')
    assert (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id) == (PAD, EOS)

    def gpt2(**kw):
      return GPT2Config(
          vocab_size=vocab, n_positions=max_len(args), n_embd=args.d_model, n_layer=args.layers,
          n_head=args.heads, n_inner=None, activation_function='gelu_new', resid_pdrop=0.0,
          embd_pdrop=0.0, attn_pdrop=0.0, summary_first_dropout=0.0, layer_norm_epsilon=1e-5,
          bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD, **kw)
    self.policy = GPT2LMHeadModel(gpt2())
    self.ref = copy.deepcopy(self.policy).eval()
    self.value = AutoModelForSequenceClassification.from_config(gpt2(num_labels=1))
    self.reward = AutoModelForSequenceClassification.from_config(gpt2(num_labels=1)).eval()
    count = lambda m: sum(p.numel() for p in m.parameters())
    self.params_policy = count(self.policy)
    self.params_trainable = count(self.policy) + count(self.value)
    self.params_reward = count(self.reward)
    self.params_all = self.params_trainable + count(self.ref) + self.params_reward
    self.attn_implementation = self.policy.config._attn_implementation  # pylint: disable=protected-access

    data = Dataset.from_dict({'input_ids': prompts.astype(np.int64).tolist()})
    self.args = PPOConfig(
        output_dir=os.path.join(tmp, 'trl'), report_to='none', save_strategy='no',
        eval_strategy='no', disable_tqdm=True, use_cpu=True, bf16=False, fp16=False,
        gradient_checkpointing=False, seed=0, dataloader_num_workers=0,
        # One iteration per train() call: one batch of episodes, the whole batch a single
        # rollout / generate call, minibatches of batch / minibatches rows, one update each
        # (per_device_train_batch_size = the batch with no accumulation: the micro-batch loop
        # then runs once per minibatch).
        total_episodes=args.batch, per_device_train_batch_size=args.batch,
        gradient_accumulation_steps=1, local_rollout_forward_batch_size=args.batch,
        per_device_eval_batch_size=args.batch, num_mini_batches=args.minibatches,
        num_ppo_epochs=args.epochs, num_sample_generations=0,
        response_length=args.response_len, temperature=args.temperature, stop_token='eos',
        # Ours' optimizer and PPO coefficients (experiments/ppo_shakespeare_sentiment).
        learning_rate=float(opt_cfg.lr), lr_scheduler_type='constant', weight_decay=0.0,
        adam_beta1=float(opt_cfg.b1), adam_beta2=float(opt_cfg.b2),
        adam_epsilon=float(opt_cfg.eps), kl_coef=kl_coef, vf_coef=0.1, cliprange=0.2,
        cliprange_value=0.2, gamma=1.0, lam=0.95, whiten_rewards=False)
    self.trainer = PPOTrainer(
        args=self.args, processing_class=self.tokenizer, model=self.policy, ref_model=self.ref,
        reward_model=self.reward, train_dataset=data, value_model=self.value,
        eval_dataset=data)
    for cb in (PrinterCallback, ProgressCallback):
      self.trainer.remove_callback(cb)
    self.mixed_precision = self.trainer.accelerator.mixed_precision
    self.device = str(self.trainer.accelerator.device)
    self.queries = torch.from_numpy(prompts.astype(np.int64))
    self.gen_kwargs = {'max_new_tokens': args.response_len,
                       'temperature': args.temperature + 1e-7, 'top_k': 0.0, 'top_p': 1.0,
                       'do_sample': True}   # as PPOTrainer.train builds them
    self.gen_config = GenerationConfig(**self.gen_kwargs)
    t = time.perf_counter()
    self.step()
    self.first_step_s = time.perf_counter() - t
    # One optimizer update per minibatch, as ours (no accumulation across minibatches).
    steps = {int(s['step']) for s in self.trainer.optimizer.state.values() if 'step' in s}
    assert steps == {args.epochs * args.minibatches}, steps
    t = time.perf_counter()
    self.generate()
    self.gen_first_s = time.perf_counter() - t

  def step(self):
    with contextlib.redirect_stdout(io.StringIO()):   # its '===training policy===' line
      self.trainer.train()
    assert self.trainer.state.global_step == 1, self.trainer.state.global_step

  def generate(self):
    """trl's rollout sampler call alone (as in PPOTrainer.train)."""
    tr = self.trainer
    with self.unwrap(tr.model, tr.accelerator, generation_kwargs=self.gen_kwargs) as m:
      out, _ = self.ppo_mod.batch_generation(m.policy, self.queries,
                                             self.args.local_rollout_forward_batch_size,
                                             self.tokenizer.pad_token_id, self.gen_config)
    return out

  def last_log(self) -> dict:
    logs = [h for h in self.trainer.state.log_history if 'objective/scores' in h]
    return logs[-1] if logs else {}


def timed(fn) -> float:
  t = time.perf_counter()
  fn()
  return time.perf_counter() - t


def table(rows, peer: bool) -> str:
  head = ('', 'ours (JAX)', 'trl (torch)', 'trl/ours') if peer else ('', 'ours (JAX)')
  rows = [r[:len(head)] for r in rows]
  widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
  line = lambda cells: '| ' + ' | '.join(c.ljust(w) if i == 0 else c.rjust(w)
                                         for i, (c, w) in enumerate(zip(cells, widths))) + ' |'
  return '\n'.join([line(head), '|' + '|'.join('-' * (w + 2) for w in widths) + '|']
                   + [line(r) for r in rows])


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--rounds', type=int, default=5, help='interleaved timed rounds')
  p.add_argument('--batch', type=int, default=64, help='prompts (rollouts) per iteration')
  p.add_argument('--prompt_len', type=int, default=64, help='prompt tokens (no padding)')
  p.add_argument('--response_len', type=int, default=48, help='sampled tokens per rollout')
  p.add_argument('--temperature', type=float, default=0.7)
  p.add_argument('--epochs', type=int, default=4, help='PPO epochs per iteration')
  p.add_argument('--minibatches', type=int, default=4, help='minibatches (updates) per epoch')
  p.add_argument('--layers', type=int, default=4)
  p.add_argument('--heads', type=int, default=4)
  p.add_argument('--d_model', type=int, default=128)
  p.add_argument('--threads', type=int, default=0,
                 help='torch.set_num_threads (0 = all cores available to the process)')
  p.add_argument('--skip_trl', action='store_true', help='time ours only')
  p.add_argument('--devices', type=int, default=1,
                 help='host CPU devices ours runs data-parallel over (rollouts and updates)')
  p.add_argument('--out', default='', help='write the results as JSON here')
  args = p.parse_args(argv)
  if args.devices > 1:
    jax.config.update('jax_num_cpu_devices', args.devices)   # before any JAX operation
  if args.batch % args.minibatches:
    p.error(f'--batch {args.batch} must divide into --minibatches {args.minibatches}')

  load_start = os.getloadavg()
  peak = matmul_peak(2048)
  ncpu = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
  with tempfile.TemporaryDirectory(prefix='ppo_step_') as tmp:
    rm_dir = reward_workdir(args, tmp)
    # Vocabulary: the char tokenizer's (the family loads it). Synthetic prompts: ids past the
    # specials (no PAD, so every prompt is prompt_len real tokens; no EOS / BOS either).
    from research.data import corpus  # pylint: disable=g-import-not-at-top
    vocab = corpus.tokenizer(our_config(args, rm_dir).data).vocab_size
    rng = np.random.default_rng(0)
    prompts = rng.integers(tokenizers.NUM_SPECIAL, vocab,
                           (args.batch, args.prompt_len)).astype(np.int32)
    ours = Ours(args, prompts, rm_dir)
    assert ours.vocab == vocab, (ours.vocab, vocab)
    peer = None
    if not args.skip_trl:
      import torch  # pylint: disable=g-import-not-at-top
      torch.set_num_threads(args.threads or ncpu)
      peer = Peer(args, vocab, prompts, ours.config.optimizer, float(ours.config.ppo.kl_coef),
                  tmp)

    dev = jax.devices()[0]
    line = (f'device: {dev.device_kind} x{jax.device_count()} ({jax.default_backend()}, '
            f'{platform.processor() or platform.machine()}, {ncpu} CPUs), jax {jax.__version__}')
    if peer:
      t = peer.torch
      line += (f', torch {t.__version__} ({t.get_num_threads()} intra-op threads), transformers '
               f'{peer.transformers.__version__}, trl {peer.trl.__version__} (attn '
               f'{peer.attn_implementation}, mixed precision {peer.mixed_precision})')
    print(line)
    if load_start[0] > 0.5 * (os.cpu_count() or 1):
      print(f'WARNING: load average {load_start[0]:.1f} on {os.cpu_count()} CPUs before the run: '
            'PyTorch (OpenMP) slows down far more than XLA under contention; do not quote these '
            'numbers', file=sys.stderr)
    print(f'sizes: {args.layers} layers, d_model {args.d_model}, {args.heads} heads, vocab '
          f'{vocab}, max_len {max_len(args)}; {args.batch} prompts x {args.prompt_len} tokens, '
          f'{args.response_len} response tokens at T={args.temperature}, {args.epochs} epochs x '
          f'{args.minibatches} minibatches of {args.batch // args.minibatches}')
    print('trl: one iteration = one PPOTrainer.train() call with total_episodes = batch '
          '(its loop has no per-iteration entry point; per-call setup included, nothing '
          'subtracted)' if peer else 'trl: skipped (--skip_trl)', flush=True)

    rounds = []
    for r in range(args.rounds):
      row = {'round': r, 'ours_s': timed(ours.step)}
      if peer:
        row['peer_s'] = timed(peer.step)
      row['ours_gen_s'] = timed(ours.generate)
      if peer:
        row['peer_gen_s'] = timed(peer.generate)
        row['ratio'] = row['peer_s'] / row['ours_s']
        row['gen_ratio'] = row['peer_gen_s'] / row['ours_gen_s']
      rounds.append(row)
      msg = f"round {r}: ours {row['ours_s']:.3f} s (generate {row['ours_gen_s']:.3f} s)"
      if peer:
        msg += (f", trl {row['peer_s']:.3f} s (generate {row['peer_gen_s']:.3f} s), "
                f"trl/ours {row['ratio']:.2f}x")
      print(msg, flush=True)

  keys = [k for k in rounds[0] if k != 'round']
  med = {k: statistics.median(r[k] for r in rounds) for k in keys}
  med['ours_gen_share'] = statistics.median(r['ours_gen_s'] / r['ours_s'] for r in rounds)
  if peer:
    med['peer_gen_share'] = statistics.median(r['peer_gen_s'] / r['peer_s'] for r in rounds)
  # Nominal network work per iteration, in forward passes over the batch's prompt + response
  # tokens (a backward pass counted as two): rollout passes + epochs x (forward + backward) of
  # the trained networks; generation (one KV-cached sampling pass) on top for both.
  e = args.epochs
  work = {'ours_forward_equivalents': 3 + 3 * e, 'peer_forward_equivalents': 3 + 6 * e}
  # The fastest our iteration could be: its nominal forward-pass FLOPs (PaLM's per-token count,
  # a third of research.lm.model.flops_per_token, over every prompt + response token) at the
  # f32 matmul peak, generation left out. trl's time over that bounds the ratio from above.
  tokens = args.prompt_len + args.response_len
  fwd_flops = (model_lib.flops_per_token(ours.exp.family.model_cfg, tokens) / 3
               * args.batch * tokens * work['ours_forward_equivalents'])
  work.update({'ours_nominal_flops': fwd_flops, 'matmul': peak,
               'ours_min_s_at_matmul_peak': fwd_flops / peak['matmul_flops_per_sec']})
  if peer:
    work['ratio_bound_at_matmul_peak'] = med['peer_s'] / work['ours_min_s_at_matmul_peak']

  pct = lambda x: f'{100 * x:.0f}%'
  n = lambda x: f'{x:,}'
  rows = [
      ('params: policy', n(ours.params_policy), n(peer.params_policy) if peer else '', ''),
      ('params: trained (policy + value)', n(ours.params_trainable),
       n(peer.params_trainable) if peer else '', ''),
      ('params: all networks', n(ours.params_all), n(peer.params_all) if peer else '', ''),
      ('first iteration s (warm-up)', f'{ours.first_step_s:.2f}',
       f'{peer.first_step_s:.2f}' if peer else '', ''),
      ('iteration s (median)', f"{med['ours_s']:.3f}", f"{med['peer_s']:.3f}" if peer else '',
       f"{med['ratio']:.2f}x" if peer else ''),
      ('rollouts/s', f"{args.batch / med['ours_s']:.1f}",
       f"{args.batch / med['peer_s']:.1f}" if peer else '', ''),
      ('generate s (median)', f"{med['ours_gen_s']:.3f}",
       f"{med['peer_gen_s']:.3f}" if peer else '', f"{med['gen_ratio']:.2f}x" if peer else ''),
      ('generate / iteration', pct(med['ours_gen_share']),
       pct(med['peer_gen_share']) if peer else '', ''),
      ('network passes (fwd-equivalents)', str(work['ours_forward_equivalents']),
       str(work['peer_forward_equivalents']) if peer else '', ''),
  ]
  print(table(rows, bool(peer)))
  print('ratio = trl time / our time per round, median over rounds (>1: ours faster). '
        'Passes: 3 rollout forwards each (ours policy+value head / reference / reward; trl '
        'reference / value / reward, its policy log-probs come from the sampler) + per epoch '
        'forward+backward of the trained networks: ours one trunk with a value head, trl a '
        'policy and a separate value model; generation not counted.')
  print(f"bound: our {work['ours_forward_equivalents']} passes are "
        f"{work['ours_nominal_flops'] / 1e9:.0f} GFLOP, at least "
        f"{work['ours_min_s_at_matmul_peak']:.2f} s at the f32 2048^3 matmul rate "
        f"({peak['matmul_flops_per_sec'] / 1e9:.0f} GFLOP/s)"
        + (f"; so trl/ours <= {work['ratio_bound_at_matmul_peak']:.1f}x on this machine"
           if peer else ''))

  result = {
      'args': vars(args), 'config': CONFIG, 'vocab': vocab, 'max_len': max_len(args),
      'jax': jax.__version__, 'jax_backend': jax.default_backend(),
      'jax_device': dev.device_kind, 'cpu_count': os.cpu_count(), 'cpus_available': ncpu,
      'loadavg_start': load_start, 'loadavg_end': os.getloadavg(),
      'ours': {'params_policy': ours.params_policy, 'params_trainable': ours.params_trainable,
               'params_reward': ours.params_reward, 'params_all': ours.params_all,
               'first_step_s': ours.first_step_s, 'first_generate_s': ours.gen_first_s,
               'path': 'research.trainer.build train_step (jitted, state donated)',
               'last_metrics': ours.host_metrics()},
      'medians': med, 'rounds': rounds, 'work': work,
  }
  if peer:
    t = peer.torch
    result['peer'] = {
        'entry_point': 'trl.experimental.ppo.PPOTrainer.train (total_episodes = batch)',
        'torch': t.__version__, 'transformers': peer.transformers.__version__,
        'trl': peer.trl.__version__, 'torch_num_threads': t.get_num_threads(),
        'torch_num_interop_threads': t.get_num_interop_threads(),
        'attn_implementation': peer.attn_implementation,
        'mixed_precision': peer.mixed_precision, 'device': peer.device,
        'params_policy': peer.params_policy, 'params_trainable': peer.params_trainable,
        'params_reward': peer.params_reward, 'params_all': peer.params_all,
        'first_step_s': peer.first_step_s, 'first_generate_s': peer.gen_first_s,
        'last_log': peer.last_log()}
  if args.out:
    with open(args.out, 'w') as f:
      json.dump(result, f, indent=2, default=float)
  return 0


if __name__ == '__main__':
  sys.exit(main())
