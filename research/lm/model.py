"""A GPT-style decoder-only transformer (flax.linen) with an explicit, functional KV cache.

Architecture: token embedding -> dropout -> `num_layers` pre-norm blocks
(x + Attn(RMSNorm(x)), x + MLP(RMSNorm(x))) -> RMSNorm -> logits = h @ embedding^T (tied input
and output embeddings, as in GPT-2 / PaLM). Attention is causal multi-head self-attention with
rotary position embeddings (RoPE, Su et al. 2021, arXiv:2104.09864, in the GPT-NeoX / LLaMA
"rotate-half" layout); the MLP is GELU (GPT-2) or SwiGLU (Shazeer 2020, arXiv:2002.05202). No
biases. Kernels are N(0, init_std); the projections that write into the residual stream are
scaled by 1/sqrt(2 num_layers) (GPT-2), so the residual stream's variance does not grow with depth.

`dtype` is the compute dtype (a run's `config.precision.compute`): parameters stay float32,
matmuls and activations run in `dtype`, while norms' reductions, attention softmax and the logits
are float32.

Positions are per row, so left-padded batches (generation) give every prompt positions
0..len-1 on its real tokens, whatever the padding in front; RoPE makes attention depend only on
position differences. The KV cache is an explicit pytree passed in and returned (no flax
'cache' collection), so generation is a pure function that jit and scan handle directly.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import chex
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research import matmul

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
MLPS = ('gelu', 'swiglu')


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Static model hyperparameters (frozen, hence hashable: usable as a jit static argument)."""
  vocab_size: int
  num_layers: int = 4
  num_heads: int = 4
  d_model: int = 256
  mlp_dim: int = 0            # 0 = 4 * d_model (for SwiGLU too: its 3 matrices then hold 1.5x)
  mlp: str = 'gelu'           # gelu | swiglu
  dropout: float = 0.0        # on the embeddings and on every residual branch's output
  attn_dropout: float = 0.0   # on the attention probabilities
  max_len: int = 256          # longest sequence (training length; prompt + generation)
  rope_base: float = 10000.
  dtype: str = 'float32'      # compute dtype: float32 | bfloat16 (params stay float32)
  init_std: float = 0.02
  matmul_impl: str = 'auto'   # dense layers: auto (cpu on CPU, else xla) | xla | cpu
                              # (research/matmul.py: faster weight gradients on XLA:CPU)

  def __post_init__(self):
    if self.d_model % self.num_heads:
      raise ValueError(f'TransformerConfig: d_model={self.d_model} does not divide into '
                       f'num_heads={self.num_heads}')
    if self.head_dim % 2:
      raise ValueError(f'TransformerConfig: head_dim = d_model / num_heads = {self.head_dim} must '
                       'be even for rotary embeddings')
    if self.mlp not in MLPS:
      raise ValueError(f'TransformerConfig: mlp must be one of {MLPS}, got {self.mlp!r}')
    if self.dtype not in DTYPES:
      raise ValueError(f'TransformerConfig: dtype must be one of {tuple(DTYPES)}, '
                       f'got {self.dtype!r}')
    if self.matmul_impl not in matmul.IMPLS:
      raise ValueError(f'TransformerConfig: matmul_impl must be one of {matmul.IMPLS}, '
                       f'got {self.matmul_impl!r}')
    for name in ('vocab_size', 'num_layers', 'num_heads', 'd_model', 'max_len'):
      if getattr(self, name) < 1:
        raise ValueError(f'TransformerConfig: {name} must be >= 1, got {getattr(self, name)}')
    for name in ('dropout', 'attn_dropout'):
      if not 0. <= getattr(self, name) < 1.:
        raise ValueError(f'TransformerConfig: {name} must be in [0, 1), got {getattr(self, name)}')

  @property
  def head_dim(self) -> int:
    return self.d_model // self.num_heads

  @property
  def hidden_dim(self) -> int:
    return self.mlp_dim or 4 * self.d_model

  @property
  def compute_dtype(self):
    return DTYPES[self.dtype]

  @classmethod
  def from_config(cls, model_cfg, vocab_size: int, dtype: str | None = None) -> TransformerConfig:
    """From a config's `model` section (an ml_collections.ConfigDict or any mapping); the
    vocabulary size comes from the tokenizer. `attn_dropout` and `init_std` are optional. The
    compute dtype is `dtype` (a run's `config.precision.compute`, see `lm.family.model_config`),
    else the section's own `dtype` (configs saved before `precision` existed), else float32.
    `matmul_impl` is optional too (default 'auto')."""
    get = model_cfg.get
    dtype = dtype or get('dtype', None) or 'float32'
    return cls(vocab_size=int(vocab_size), num_layers=int(model_cfg.num_layers),
               num_heads=int(model_cfg.num_heads), d_model=int(model_cfg.d_model),
               mlp_dim=int(model_cfg.mlp_dim), mlp=str(model_cfg.mlp),
               dropout=float(model_cfg.dropout), attn_dropout=float(get('attn_dropout', 0.)),
               max_len=int(model_cfg.max_len), rope_base=float(model_cfg.rope_base),
               dtype=str(dtype), init_std=float(get('init_std', 0.02)),
               matmul_impl=str(get('matmul_impl', 'auto')))


def param_count(cfg: TransformerConfig) -> int:
  """Parameters of `Transformer(cfg)`, from the config alone (the tied embedding counted once)."""
  d, m = cfg.d_model, cfg.hidden_dim
  mlp = (3 if cfg.mlp == 'swiglu' else 2) * d * m
  per_layer = 4 * d * d + mlp + 2 * d               # qkv + out, MLP, two norm scales
  return cfg.vocab_size * d + cfg.num_layers * per_layer + d


def num_params(params) -> int:
  """Number of scalars in a parameter pytree."""
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def flops_per_token(cfg: TransformerConfig, seq_len: int) -> float:
  """Training FLOPs (forward + backward) per token at sequence length `seq_len`, as in PaLM
  (Chowdhery et al. 2022, appendix B): 6 N + 12 L d T. N counts the tied embedding once, which
  is the logits matmul's cost (the input lookup is free); the attention term (scores and
  weighted sum) is not halved for causality, by that convention. For MFU."""
  return 6. * param_count(cfg) + 12. * cfg.num_layers * cfg.d_model * seq_len


# --- KV cache -------------------------------------------------------------------------------------
@flax.struct.dataclass
class KVCache:
  """Keys and values of every layer for `max_len` slots, written left to right.

  k, v:  one [B, num_heads, head_dim, max_len] array per layer (tuples of num_layers), keys
         already rotated (RoPE at their own positions), so a cached key never needs its
         position again. Slots are the minor axis: a decode step's two attention products then
         read a layer's array as it lies (slots last is the layout XLA:CPU's dot wants; with
         [.., max_len, H, D] every step transposed the whole cache, 2/3 of the decode time of
         benchmarks/lm_step.py). One array per layer, not one stacked [L, ...] array: reading a
         layer out of a stack copied it at every step.
  mask:  [B, max_len] bool, True where a slot holds a real token: padding slots and slots not yet
         written are False and never attended to.
  index: int32 scalar, the next slot to write (the same for every row: rows are left-padded).
  """
  k: tuple[jax.Array, ...]
  v: tuple[jax.Array, ...]
  mask: jax.Array
  index: jax.Array

  @property
  def max_len(self) -> int:
    return self.k[0].shape[-1]


def init_cache(cfg: TransformerConfig, batch: int, max_len: int, dtype: Any = None) -> KVCache:
  """An empty cache of `max_len` slots (default dtype: the compute dtype). Writing past
  `max_len` is not checked inside jit (dynamic_update_slice would clamp): size it to hold the
  prompt and every generated token."""
  dtype = cfg.compute_dtype if dtype is None else dtype
  shape = (batch, cfg.num_heads, cfg.head_dim, max_len)
  zeros = lambda: tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers))
  return KVCache(k=zeros(), v=zeros(),
                 mask=jnp.zeros((batch, max_len), bool), index=jnp.zeros((), jnp.int32))


# --- positions and RoPE ---------------------------------------------------------------------------
def default_positions(mask, segment_ids=None, offset=0):
  """Position of each token = number of real tokens before it (in its segment), plus `offset`
  ([B] or scalar, e.g. the real tokens already in a cache). Padding gets the next position (or
  0), which is harmless: padding is never attended to."""
  mask = mask.astype(jnp.int32)
  count = jnp.cumsum(mask, axis=1) - mask                     # real tokens strictly before
  if segment_ids is not None:
    # Subtract the count at each segment's first token (count is non-decreasing, so cummax
    # carries the latest segment start forward).
    start = jnp.concatenate([jnp.ones_like(segment_ids[:, :1], bool),
                             segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
    count = count - jax.lax.cummax(jnp.where(start, count, 0), axis=1)
  return count + jnp.reshape(jnp.asarray(offset, jnp.int32), (-1, 1))


def apply_rope(x, positions, base: float = 10000.):
  """Rotary embedding in the rotate-half layout: x [B, T, H, D], positions [B, T]. Dimension i
  and i + D/2 form a pair rotated by angle pos * base^(-2i/D). Computed in float32."""
  d = x.shape[-1]
  inv_freq = base ** (-jnp.arange(0, d // 2, dtype=jnp.float32) * 2. / d)       # [D/2]
  angles = positions.astype(jnp.float32)[..., None] * inv_freq                   # [B, T, D/2]
  cos = jnp.concatenate([jnp.cos(angles)] * 2, -1)[:, :, None, :]
  sin = jnp.concatenate([jnp.sin(angles)] * 2, -1)[:, :, None, :]
  xf = x.astype(jnp.float32)
  x1, x2 = jnp.split(xf, 2, axis=-1)
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  return (xf * cos + rotated * sin).astype(x.dtype)


# --- layers ---------------------------------------------------------------------------------------
def _dot(cfg: TransformerConfig):
  """The dense layers' dot_general (research/matmul.py)."""
  return functools.partial(matmul.dot_general, impl=cfg.matmul_impl)


class Attention(nn.Module):
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, x, positions, attn_mask, layer_cache, deterministic: bool):
    """x [B, T, d]; attn_mask [B, T, S] (True = may attend); layer_cache None or
    (k, v, index) with this layer's cache arrays k, v [B, H, D, S]. Returns
    (out [B, T, d], the updated (k, v) or None)."""
    cfg, dt = self.cfg, self.cfg.compute_dtype
    b, t, _ = x.shape
    h, hd = cfg.num_heads, cfg.head_dim
    init = nn.initializers.normal(cfg.init_std)
    out_init = nn.initializers.normal(cfg.init_std / math.sqrt(2 * cfg.num_layers))
    dense = functools.partial(nn.Dense, use_bias=False, dtype=dt, dot_general=_dot(cfg))
    qkv = dense(3 * cfg.d_model, kernel_init=init, name='qkv')(x)
    q, k, v = jnp.split(qkv.reshape(b, t, 3 * h, hd), 3, axis=2)        # [B, T, H, D] each
    q = apply_rope(q, positions, cfg.rope_base)
    k = apply_rope(k, positions, cfg.rope_base)
    new_kv, kv_spec = None, 'bshd'
    if layer_cache is not None:
      # Write this chunk into the layer's arrays in place (one dynamic_update_slice each), then
      # attend over all their slots ([B, H, D, S]).
      ck, cv, index = layer_cache
      to_slots_last = lambda a, c: a.transpose(0, 2, 3, 1).astype(c.dtype)
      ck = jax.lax.dynamic_update_slice(ck, to_slots_last(k, ck), (0, 0, 0, index))
      cv = jax.lax.dynamic_update_slice(cv, to_slots_last(v, cv), (0, 0, 0, index))
      new_kv, kv_spec = (ck, cv), 'bhds'
      k, v = ck, cv
    scores = jnp.einsum(f'bthd,{kv_spec}->bhts', q, k.astype(dt),
                        preferred_element_type=jnp.float32) / math.sqrt(hd)
    # A finite minimum rather than -inf: a row with nothing to attend to (a padding query)
    # becomes uniform instead of NaN; everywhere else exp underflows to exactly 0.
    scores = jnp.where(attn_mask[:, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1)
    probs = nn.Dropout(cfg.attn_dropout, deterministic=deterministic)(probs)
    out = jnp.einsum(f'bhts,{kv_spec}->bthd', probs.astype(dt), v.astype(dt)).reshape(b, t, -1)
    out = dense(cfg.d_model, kernel_init=out_init, name='out')(out)
    return out, new_kv


class MLP(nn.Module):
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, x):
    cfg, dt = self.cfg, self.cfg.compute_dtype
    init = nn.initializers.normal(cfg.init_std)
    out_init = nn.initializers.normal(cfg.init_std / math.sqrt(2 * cfg.num_layers))
    dense = lambda n, name, kinit=init: nn.Dense(n, use_bias=False, dtype=dt, kernel_init=kinit,
                                                 dot_general=_dot(cfg), name=name)
    if cfg.mlp == 'swiglu':
      z = nn.silu(dense(cfg.hidden_dim, 'gate')(x)) * dense(cfg.hidden_dim, 'up')(x)
    else:
      z = nn.gelu(dense(cfg.hidden_dim, 'up')(x))
    return dense(cfg.d_model, 'down', out_init)(z)


class Block(nn.Module):
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, x, positions, attn_mask, layer_cache, deterministic: bool):
    cfg, dt = self.cfg, self.cfg.compute_dtype
    drop = lambda y: nn.Dropout(cfg.dropout, deterministic=deterministic)(y)
    y, new_kv = Attention(cfg, name='attn')(nn.RMSNorm(dtype=dt, name='norm_attn')(x), positions,
                                            attn_mask, layer_cache, deterministic)
    x = x + drop(y)
    x = x + drop(MLP(cfg, name='mlp')(nn.RMSNorm(dtype=dt, name='norm_mlp')(x)))
    return x, new_kv


class Transformer(nn.Module):
  """Decoder-only LM. See the module docstring; call signature in `__call__`."""
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, tokens, positions=None, mask=None, segment_ids=None,
               cache: KVCache | None = None, deterministic: bool = True,
               return_hidden: bool = False):
    """Logits for every position, and the updated cache (and the final hidden states).

    Args:
      tokens: [B, T] int token ids.
      positions: [B, T] int rotary positions; default: the number of real tokens before each
        token (in its segment; plus the real tokens already in `cache`).
      mask: [B, T] bool, False on padding (never attended to); default all True.
      segment_ids: [B, T] int for packed training sequences: a token attends only within its
        segment (contiguous runs of equal ids). Not with `cache`.
      cache: None for training / scoring (plain causal attention over the T tokens). Otherwise
        the T tokens are written at slots index..index+T-1 and attend to every earlier real
        slot; the returned cache has index + T.
      deterministic: False applies dropout (needs the 'dropout' rng).
      return_hidden: also return the final (normed) hidden states, the features that scalar
        heads read (RLHF's reward model and value head, research/rlhf/heads.py).

    Returns:
      (logits [B, T, vocab] float32, new cache or None), plus hidden [B, T, d_model] float32
      with return_hidden.
    """
    cfg, dt = self.cfg, self.cfg.compute_dtype
    chex.assert_rank(tokens, 2)
    b, t = tokens.shape
    mask = jnp.ones((b, t), bool) if mask is None else mask.astype(bool)
    chex.assert_shape(mask, (b, t))
    if cache is None and t > cfg.max_len:
      raise ValueError(f'Transformer: sequence length {t} exceeds max_len={cfg.max_len}')
    if cache is not None and segment_ids is not None:
      raise ValueError('Transformer: segment_ids (packed sequences) are not supported with a cache')

    if cache is None:
      attn_mask = jnp.tril(jnp.ones((t, t), bool))[None] & mask[:, None, :]
      if segment_ids is not None:
        chex.assert_shape(segment_ids, (b, t))
        attn_mask &= segment_ids[:, :, None] == segment_ids[:, None, :]
      offset = 0
    else:
      chex.assert_shape(cache.mask, (b, None))
      slots = jnp.arange(cache.max_len)
      cache_mask = jax.lax.dynamic_update_slice(cache.mask, mask, (0, cache.index))
      causal = slots[None, :] <= (cache.index + jnp.arange(t))[:, None]         # [T, S]
      attn_mask = causal[None] & cache_mask[:, None, :]                            # [B, T, S]
      offset = jnp.sum(cache.mask, axis=1)
    if positions is None:
      positions = default_positions(mask, segment_ids, offset)
    chex.assert_shape(positions, (b, t))

    embedding = self.param('embedding', nn.initializers.normal(cfg.init_std),
                           (cfg.vocab_size, cfg.d_model), jnp.float32)
    x = jnp.take(embedding, tokens, axis=0).astype(dt)
    x = nn.Dropout(cfg.dropout, deterministic=deterministic)(x)
    new_k, new_v = [], []
    for i in range(cfg.num_layers):
      layer_cache = None if cache is None else (cache.k[i], cache.v[i], cache.index)
      x, kv = Block(cfg, name=f'block_{i}')(x, positions, attn_mask, layer_cache, deterministic)
      if kv is not None:
        new_k.append(kv[0])
        new_v.append(kv[1])
    x = nn.RMSNorm(dtype=dt, name='norm_out')(x)
    logits = jnp.einsum('btd,vd->btv', x, embedding.astype(dt),
                        preferred_element_type=jnp.float32)
    chex.assert_shape(logits, (b, t, cfg.vocab_size))

    new_cache = None
    if cache is not None:
      new_cache = KVCache(k=tuple(new_k), v=tuple(new_v), mask=cache_mask, index=cache.index + t)
    if return_hidden:
      return logits.astype(jnp.float32), new_cache, x.astype(jnp.float32)
    return logits.astype(jnp.float32), new_cache
