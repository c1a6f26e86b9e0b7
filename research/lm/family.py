"""The LM family: a decoder-only transformer trained on next-token cross-entropy.

- Train: mean cross-entropy over the target tokens that count (`loss_mask` when the batch has
  one, e.g. responses only in supervised fine-tuning; every token otherwise), through the
  standard one-optimizer step (gradient accumulation with `optimizer.grad_accum_steps`).
- Curriculum by sequence length: with `config.curriculum` set, its value at each step is the
  training length in tokens; batches are cut to it on the host (each distinct length compiles
  once, so use a few levels: `curriculum.name='piecewise'`, `levels='64,128,256'`).
- Eval: per-window sums of the token NLL, of the scored tokens and of the characters they
  spell, so `finalize_eval` reports exact held-out bits per token, bits per character and
  perplexity over the whole split (ratios of sums; padded windows count nothing).
- Precision: the transformer computes in `config.precision.compute` (bf16: matmuls and the
  residual stream; norm statistics, attention softmax and logits stay float32; parameters are
  float32 either way; research/precision.py).
- Sample: `config.prompt` (default: the start of a document) continued by the KV-cache sampler
  (research/lm/generate.py) with `config.sample.*`; the text goes to samples/*.txt.
- Fine-tuning (experiments/sft_shakespeare_dialogue): `config.init_from.workdir` starts from a
  pretrained LM's checkpoint (the harness copies every parameter by path); `validate_config`
  checks first, from that run's saved config, that its tokenizer is this run's (else the
  vocabularies differ: one ConfigError naming the data field). `model.lora_rank` > 0 trains
  LoRA adapters on the attention and MLP kernels with the base frozen (research/lm/lora.py);
  `model_params(params)` is the plain tree the network runs with.
"""
from __future__ import annotations

import functools
import json
import math
import os
from typing import Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from research import checkpoint as ckpt_lib
from research import configs, matmul, optim, parallel, precision
from research.data import corpus
from research.data import tokenizers
from research.family import Family
from research.lm import generate as gen
from research.lm import lora
from research.lm import model as model_lib
from research.train_state import TrainState


class LM(Family):

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    self.tokenizer = corpus.tokenizer(config.data)
    self.model_cfg = model_config(config, self.tokenizer.vocab_size)
    self.net = model_lib.Transformer(self.model_cfg)
    self.lora_rank = int(config.model.get('lora_rank', 0))
    self.lora_alpha = float(config.model.get('lora_alpha', 16.0))
    # Characters each token spells (0 for specials): bits/char from any tokenizer's NLL.
    self._token_chars = jnp.asarray(self.tokenizer.char_lengths(), jnp.float32)

  # --- config -------------------------------------------------------------------------------
  @classmethod
  def config_defaults(cls) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict()
    c.model.num_layers = 4
    c.model.num_heads = 4
    c.model.d_model = 256
    c.model.mlp_dim = 0               # 0 = 4 * d_model
    c.model.mlp = 'gelu'              # gelu | swiglu
    c.model.dropout = 0.1
    c.model.attn_dropout = 0.0
    c.model.max_len = 0               # longest sequence (prompt + generation); 0 = data.seq_len
    c.model.rope_base = 10000.0
    c.model.init_std = 0.02
    c.model.matmul_impl = 'auto'      # dense layers: auto (cpu on CPU, xla elsewhere) | xla | cpu
                                      # ('cpu': fast weight gradients on XLA:CPU, matmul.py)
    c.model.lora_rank = 0             # > 0: LoRA adapters of this rank on the attention and MLP
                                      # kernels, base frozen (research/lm/lora.py); 0 = off
    c.model.lora_alpha = 16.0         # LoRA: the adapters are scaled by lora_alpha / lora_rank

    c.prompt = ''                     # text to continue at sample time ('' = a fresh document)
    c.sample = ml_collections.ConfigDict()
    c.sample.max_new_tokens = 200
    c.sample.temperature = 1.0
    c.sample.top_k = 0                # 0 = off
    c.sample.top_p = 1.0              # 1 = off
    c.sample.greedy = False
    return c

  @classmethod
  def validate_config(cls, config: ml_collections.ConfigDict) -> None:
    m, s = config.model, config.sample
    configs.one_of(m.mlp, model_lib.MLPS, 'model.mlp')
    configs.one_of(m.matmul_impl, matmul.IMPLS, 'model.matmul_impl')
    for name in ('num_layers', 'num_heads', 'd_model'):
      configs.require(m[name] > 0, f'model.{name}', m[name], 'must be > 0')
    configs.require(m.d_model % m.num_heads == 0 and (m.d_model // m.num_heads) % 2 == 0,
                    'model.d_model', m.d_model,
                    f'must be num_heads={m.num_heads} x an even head width (rotary embeddings)')
    configs.require(m.mlp_dim >= 0, 'model.mlp_dim', m.mlp_dim, 'must be >= 0 (0 = 4 * d_model)')
    for name in ('dropout', 'attn_dropout'):
      configs.require(0 <= m[name] < 1, f'model.{name}', m[name], 'must be in [0, 1)')
    seq_len = config.data.seq_len
    configs.require(m.max_len == 0 or m.max_len >= seq_len, 'model.max_len', m.max_len,
                    f'must be 0 (= data.seq_len) or >= data.seq_len={seq_len}')
    configs.require(s.max_new_tokens > 0, 'sample.max_new_tokens', s.max_new_tokens,
                    'must be > 0')
    configs.require(s.greedy or s.temperature > 0, 'sample.temperature', s.temperature,
                    'must be > 0 (or set sample.greedy=True)')
    configs.require(s.top_k >= 0, 'sample.top_k', s.top_k, 'must be >= 0 (0 = off)')
    configs.require(0 < s.top_p <= 1, 'sample.top_p', s.top_p, 'must be in (0, 1] (1 = off)')
    max_len = m.max_len or seq_len
    configs.require(s.max_new_tokens < max_len, 'sample.max_new_tokens', s.max_new_tokens,
                    f'must leave room for the prompt in model.max_len={max_len}')
    if config.curriculum.name != 'none':
      for field in ('start', 'end'):
        v = config.curriculum[field]
        configs.require(v <= seq_len, f'curriculum.{field}', v,
                        f'the curriculum value is a sequence length: must be <= data.seq_len='
                        f'{seq_len}')
    configs.require(m.lora_rank >= 0, 'model.lora_rank', m.lora_rank, 'must be >= 0 (0 = off)')
    configs.require(m.lora_alpha > 0, 'model.lora_alpha', m.lora_alpha,
                    'must be > 0 (the adapters are scaled by lora_alpha / lora_rank)')
    _check_init_from(config)

  # --- the network --------------------------------------------------------------------------
  def model_params(self, params):
    """The parameter tree the network runs with: `params` itself, or with LoRA the base with
    the adapters merged in (gradients reach the adapters only)."""
    return lora.merge(params, self.lora_alpha, self.lora_rank) if self.lora_rank else params

  def _apply(self, params, tokens, *, train: bool = False, key=None, **kw):
    # Dropout masks differ per device (device_key), so only dropout-free steps are bitwise
    # independent of the device count.
    rngs = {'dropout': parallel.device_key(key)} if train else None
    return self.net.apply({'params': self.model_params(params)}, tokens,
                          deterministic=not train, rngs=rngs, **kw)

  def _loss(self, params, model_state, batch, key):
    tokens = batch['tokens']
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    # Fine-tuning data masks its prompts; otherwise every real target counts (pad never occurs
    # in a packed window, and pads out a sentence corpus's rows).
    weights = batch.get('loss_mask', (targets != tokenizers.PAD).astype(jnp.float32))
    logits, _ = self._apply(params, inputs, train=True, key=key)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    n = jnp.maximum(weights.sum(), 1.0)
    loss = (nll * weights).sum() / n
    acc = ((logits.argmax(-1) == targets) * weights).sum() / n
    return loss, ({'accuracy': acc, 'bits_per_token': loss / math.log(2)}, model_state)

  # --- Family -------------------------------------------------------------------------------
  def init_state(self, key, batch):
    params = self.net.init(key, batch['tokens'][:1, :-1])['params']
    opt_cfg = self.config.optimizer
    if self.lora_rank:  # adapters next to the base, which is frozen (research/lm/lora.py)
      params = lora.add(params, self.lora_rank, jax.random.fold_in(key, 1))
      opt_cfg = ml_collections.ConfigDict(opt_cfg.to_dict())
      opt_cfg.frozen = ','.join(p for p in (opt_cfg.frozen.strip(), lora.FROZEN_BASE) if p)
    tx = optim.make(opt_cfg, self.config.train.num_steps,
                    moments_dtype=self.config.precision.moments)[0]
    return TrainState.create(params, tx, ema_decay=self.config.optimizer.ema_decay,
                             ema_warmup=self.config.optimizer.ema_warmup)

  def objective(self, state):
    return self._loss

  def sharding_rules(self):
    # Megatron-LM (Shoeybi et al. 2019): column-split the fused q|k|v and the MLP's input
    # projections, row-split the projections back, so each block needs one all-reduce forward.
    return (('attn/qkv/kernel$', (None, 'model')), ('attn/out/kernel$', ('model', None)),
            ('mlp/(gate|up)/kernel$', (None, 'model')), ('mlp/down/kernel$', ('model', None)))

  def eval_step(self, state, batch, key):
    del key
    tokens = batch['tokens']
    targets = tokens[:, 1:]
    weights = batch['loss_mask']
    logits, _ = self._apply(self.eval_params_of(state), tokens[:, :-1])
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    return {'nll_sum': (nll * weights).sum(1), 'num_tokens': weights.sum(1),
            'num_chars': (self._token_chars[targets] * weights).sum(1)}

  def save_assets(self, workdir: str) -> None:
    # The run is self-contained: `tokenizers.load(RUN/tokenizer)` decodes its samples anywhere.
    self.tokenizer.save(os.path.join(workdir, 'tokenizer'))

  def finalize_eval(self, means: Mapping[str, float]) -> dict:
    if not means.get('num_tokens'):
      return {}
    nats_per_token = means['nll_sum'] / means['num_tokens']
    out = {'bits_per_token': nats_per_token / math.log(2),
           'perplexity': math.exp(min(nats_per_token, 700.0))}
    if means.get('num_chars'):
      out['bits_per_char'] = means['nll_sum'] / means['num_chars'] / math.log(2)
    return out

  def eval_params_of(self, state):
    return state.eval_params

  def apply_curriculum(self, batch: dict, value: float) -> dict:
    length = int(round(value))
    return {k: v[:, :length + 1] if k == 'tokens' else v[:, :length] if k == 'loss_mask' else v
            for k, v in batch.items()}

  # --- sampling -----------------------------------------------------------------------------
  def prompt_tokens(self, prompt: str | None = None) -> list[int]:
    """The prompt as token ids, after BOS (a document start)."""
    prompt = self.config.prompt if prompt is None else prompt
    return [self.tokenizer.bos_id] + self.tokenizer.encode(prompt)

  def sample(self, state, key, num: int):
    s = self.config.sample
    prompt = self.prompt_tokens()
    room = self.model_cfg.max_len - len(prompt)
    if room < 1:
      raise ValueError(f'config.prompt is {len(prompt)} tokens: no room left in '
                       f'model.max_len={self.model_cfg.max_len}; shorten it')
    prompts, mask = gen.pad_prompts([prompt] * num, self.tokenizer.pad_id)
    params = self.model_params(self.eval_params_of(state))
    out = gen.generate(self._bound_apply, params, prompts, mask, key,
                       max_new_tokens=min(s.max_new_tokens, room), temperature=s.temperature,
                       top_k=s.top_k, top_p=s.top_p, greedy=s.greedy,
                       eos_id=self.tokenizer.eos_id, pad_id=self.tokenizer.pad_id,
                       cfg=self.model_cfg, banned=self.banned_ids)
    return {'tokens': out['tokens'], 'logprobs': out['logprobs'], 'mask': out['mask']}

  @property
  def banned_ids(self) -> tuple[int, ...]:
    """Ids a text sample never contains: pad and bos (a new document) have no text, and unk
    (a character the tokenizer never saw) decodes to a replacement mark."""
    t = self.tokenizer
    return (t.pad_id, t.bos_id, t.unk_id)

  @functools.cached_property
  def _bound_apply(self):
    """One apply function object, so generate's jit cache is reused across calls."""
    def apply(params, tokens, **kw):
      return self.net.apply({'params': params}, tokens, **kw)
    return apply

  def sample_settings(self) -> dict:
    s = self.config.sample
    if s.greedy:
      tag = 'greedy'
    else:
      tag = f't{s.temperature:g}' + (f'-k{s.top_k}' if s.top_k else '') + (
          f'-p{s.top_p:g}' if s.top_p < 1 else '')
    return {'tag': tag, 'sample': s.to_dict(), 'prompt': self.config.prompt,
            'config': {'sample': s.to_dict(), 'prompt': self.config.prompt}}

  def sample_text(self, samples) -> list[str]:
    tokens, mask = np.asarray(samples['tokens']), np.asarray(samples['mask'])
    prompt = self.config.prompt
    return [prompt + self.tokenizer.decode(t[m > 0].tolist()) for t, m in zip(tokens, mask)]


def model_config(config: ml_collections.ConfigDict, vocab_size: int) -> model_lib.TransformerConfig:
  """The static TransformerConfig of a run (max_len 0 means the data's sequence length), computing
  in `config.precision.compute` (a run saved before that section: its old `model.dtype`)."""
  m = ml_collections.ConfigDict(config.model.to_dict())
  m.max_len = m.max_len or config.data.seq_len
  return model_lib.TransformerConfig.from_config(m, vocab_size,
                                                 dtype=precision.compute_name(config))


# ---------------------------------------------------------------------------------------------
# Fine-tuning from a pretrained run


def source_config(workdir: str, step: int = -1) -> dict | None:
  """The config (a JSON dict) another run saved: from the meta of its checkpoint `step` (-1 = the
  latest) when readable, else its workdir's config.json; None if neither."""
  ckpt_dir = os.path.join(workdir, 'checkpoints')
  if os.path.isdir(ckpt_dir):
    try:
      ckpt = ckpt_lib.Checkpointer(ckpt_dir, read_only=True)
      try:
        return ckpt.read_meta(None if step < 0 else step)['config']
      finally:
        ckpt.close()
    except Exception:  # pylint: disable=broad-except  (no/unreadable checkpoint: try the json)
      pass
  try:
    with open(os.path.join(workdir, 'config.json')) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _check_init_from(config: ml_collections.ConfigDict) -> None:
  """One-line ConfigError when the run in config.init_from.workdir cannot initialise this one
  as a whole: another family, another tokenizer (the vocabularies, hence the embedding, would
  differ), or LoRA adapters this run would drop. Cheap: reads that run's saved config only."""
  src = config.init_from
  if not src.workdir:
    return
  other = source_config(src.workdir, src.step)
  if other is None:  # no config saved: the harness's transfer still checks paths and shapes
    return
  where = f'the pretrained run in init_from.workdir={src.workdir!r}'
  family = other.get('family')
  configs.require(family == 'lm', 'init_from.workdir', src.workdir,
                  f'is a {family!r} run, not an LM; start from an LM run\'s workdir')
  data = ml_collections.ConfigDict(other.get('data', {}))
  diff = corpus.tokenizer_mismatch(config.data, data)
  if diff:
    field, ours, theirs = diff
    fix = corpus.tokenizer_fix(config.data, field, theirs)
    raise configs.ConfigError(
        f'config.{field}={ours!r}: {where} used {field}={theirs!r}, another tokenizer whose '
        f'vocabulary (token ids, embedding rows) is not this run\'s; {fix}')
  their_rank = int(other.get('model', {}).get('lora_rank', 0) or 0)
  ours = int(config.model.get('lora_rank', 0))
  configs.require(their_rank == 0 or their_rank == ours, 'model.lora_rank', ours,
                  f'{where} trained LoRA adapters of rank {their_rank}, which this run would '
                  f'drop; use --config.model.lora_rank={their_rank}, or merge them first '
                  '(research/lm/lora.py merge)')
