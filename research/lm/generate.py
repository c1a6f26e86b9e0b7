"""Autoregressive generation with the explicit KV cache, and teacher-forced log-probs.

Prompts are LEFT-padded (real tokens right-aligned, `pad_prompts`), so every row's last prompt
token sits in the same column and one prefill call fills cache slots 0..P-1 for the whole batch;
generated token t then goes to slot P + t for every row. Positions are per row (a prompt of
length n has positions 0..n-1 whatever its padding, token t gets position n + t), and padding
slots are masked out of attention, so a row's output does not depend on the other rows.

`apply_fn(params, tokens, positions=..., mask=..., cache=...) -> (logits, cache)` is the model's
apply, e.g. `Transformer(cfg).apply` with `params = {'params': ...}`; wrap it (functools.partial)
to pass other arguments such as dropout rngs.

Log-probabilities returned by `generate` (RLHF relies on this definition):
  - sampling (greedy=False): log pi(token) under the exact distribution it was drawn from:
    softmax(logits / temperature), restricted to the top_k largest logits (if top_k > 0), then
    to the nucleus (if top_p < 1), renormalised after each filter. With top_k=0 and top_p=1 this
    equals `sequence_logprobs(..., temperature=temperature)`.
  - greedy: log softmax(logits) of the argmax, i.e. temperature 1 and no filtering, whatever
    `temperature`, `top_k` and `top_p` say; equals `sequence_logprobs(...)` at temperature 1.
  - 0 where `mask` is 0 (after the first EOS).
  - `banned` ids (the LM's samples ban pad, bos and unk) get probability 0 before any filter:
    the distribution above is the model's renormalised over the other ids.
"""
from __future__ import annotations

import functools
from typing import Callable, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

from research.lm import model as model_lib


def _check_sampling(vocab_size, temperature, top_k, top_p, greedy):
  if not greedy and not temperature > 0:
    raise ValueError(f'temperature must be > 0 when sampling, got {temperature}; '
                     'use greedy=True for argmax decoding')
  if not 0 <= top_k <= vocab_size:
    raise ValueError(f'top_k must be in [0, vocab_size={vocab_size}], got {top_k}')
  if not 0 < top_p <= 1:
    raise ValueError(f'top_p must be in (0, 1], got {top_p}')


def pad_prompts(prompts: Sequence[Sequence[int]], pad_id: int = 0):
  """Token lists -> (tokens [B, P] int32, mask [B, P] bool), LEFT-padded with `pad_id` to the
  longest prompt P. Every prompt needs at least one token (e.g. BOS): generation continues from
  the last one."""
  if not prompts:
    raise ValueError('pad_prompts: no prompts')
  if any(len(p) == 0 for p in prompts):
    raise ValueError('pad_prompts: empty prompt; start every prompt with at least one token '
                     '(e.g. BOS)')
  width = max(len(p) for p in prompts)
  tokens = np.full((len(prompts), width), pad_id, np.int32)
  mask = np.zeros((len(prompts), width), bool)
  for i, p in enumerate(prompts):
    tokens[i, width - len(p):] = np.asarray(p, np.int32)
    mask[i, width - len(p):] = True
  return jnp.asarray(tokens), jnp.asarray(mask)


def sample_logits(key, logits, *, temperature=1.0, top_k: int = 0, top_p=1.0,
                  greedy: bool = False, banned: tuple[int, ...] = ()):
  """Draws one token per row from logits [B, V] -> (tokens [B] int32, logprobs [B] float32),
  with the log-probabilities defined in the module docstring.

  `top_k` and `greedy` are Python values (they shape the program); `temperature` and `top_p`
  may be traced scalars. The nucleus filter is skipped only for a Python top_p >= 1 (a traced
  top_p always filters, and a float cumulative sum can drop ~1e-7 of tail mass at top_p = 1).
  """
  logits = jnp.asarray(logits, jnp.float32)
  if banned:   # ids a sample must never contain (e.g. pad, unk): probability 0
    logits = logits.at[:, jnp.asarray(banned)].set(-jnp.inf)
  pick = lambda logp, i: jnp.take_along_axis(logp, i[:, None], -1)[:, 0]
  if greedy:
    tokens = jnp.argmax(logits, axis=-1)
    return tokens.astype(jnp.int32), pick(jax.nn.log_softmax(logits), tokens)
  logits = logits / temperature
  nucleus = not isinstance(top_p, (int, float)) or top_p < 1
  if not top_k and not nucleus:
    tokens = jax.random.categorical(key, logits)
    return tokens.astype(jnp.int32), pick(jax.nn.log_softmax(logits), tokens)
  # Filter in sorted order: top_k keeps exactly k candidates (lax.top_k breaks ties by index);
  # the nucleus then keeps a candidate if the probability of those before it is < top_p, so the
  # most likely one always stays.
  values, indices = jax.lax.top_k(logits, top_k or logits.shape[-1])           # [B, k], sorted
  if nucleus:
    probs = jax.nn.softmax(values, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs
    values = jnp.where(before < top_p, values, -jnp.inf)
  choice = jax.random.categorical(key, values)
  tokens = pick(indices, choice)
  return tokens.astype(jnp.int32), pick(jax.nn.log_softmax(values), choice)


def _after_eos(tokens, logprobs, done, eos_id, pad_id):
  """Masks a step's outputs for rows already finished, then marks rows that just emitted EOS:
  the EOS itself is kept (mask 1), everything after it is pad_id with mask 0 and logprob 0.
  eos_id -1 (no token has it) means no EOS."""
  keep = ~done
  tokens = jnp.where(keep, tokens, pad_id)
  logprobs = jnp.where(keep, logprobs, 0.)
  return tokens, logprobs, keep, done | (tokens == eos_id)


def _resolve_cfg(apply_fn, cfg):
  cfg = cfg or getattr(getattr(apply_fn, '__self__', None), 'cfg', None)
  if not isinstance(cfg, model_lib.TransformerConfig):
    raise ValueError('generate: pass cfg=TransformerConfig (needed for the cache shape) unless '
                     'apply_fn is a bound Transformer(cfg).apply')
  return cfg


def _check_prompts(prompts, prompt_mask, cfg, max_new_tokens):
  chex.assert_rank(prompts, 2)
  chex.assert_equal_shape([prompts, prompt_mask])
  if max_new_tokens < 1:
    raise ValueError(f'max_new_tokens must be >= 1, got {max_new_tokens}')
  if prompts.shape[1] + max_new_tokens > cfg.max_len:
    raise ValueError(f'prompt length {prompts.shape[1]} + max_new_tokens {max_new_tokens} '
                     f'exceeds the model max_len={cfg.max_len}')


def generate(apply_fn: Callable, params, prompts, prompt_mask, key, *, max_new_tokens: int,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, greedy: bool = False,
             eos_id: int | None = None, pad_id: int = 0,
             cfg: model_lib.TransformerConfig | None = None, banned: tuple[int, ...] = ()):
  """Generates `max_new_tokens` tokens after left-padded prompts, under one jax.jit.

  One prefill call writes the P prompt tokens into a cache of P + max_new_tokens slots; the
  first token is sampled from its last column; a lax.scan of max_new_tokens - 1 single-token
  steps then feeds token t-1 (slot P + t - 1) and samples token t. Token t uses the key
  jax.random.fold_in(key, t). Compiled once per (apply_fn, cfg, shapes, max_new_tokens, top_k,
  greedy, top_p < 1); temperature, top_p, eos_id and pad_id are traced, so changing them does not
  recompile. Pass the same apply_fn object (e.g. one bound `model.apply`) to reuse compilations.

  Args:
    apply_fn, params: the model (module docstring).
    prompts, prompt_mask: [B, P] from `pad_prompts` (left-padded, >= 1 real token per row).
    key: PRNG key (unused when greedy).
    temperature, top_k, top_p, greedy: see `sample_logits`; log-probs in the module docstring.
    eos_id: rows stop at their first EOS (kept, mask 1); later tokens are pad_id, mask 0.
    cfg: the TransformerConfig; default `apply_fn.__self__.cfg`.
    banned: ids never sampled (e.g. pad, bos, unk; see the module docstring).

  Returns:
    {'tokens': [B, N] int32, 'logprobs': [B, N] float32, 'mask': [B, N] float32}.
  """
  cfg = _resolve_cfg(apply_fn, cfg)
  _check_sampling(cfg.vocab_size, temperature, top_k, top_p, greedy)
  _check_prompts(prompts, prompt_mask, cfg, max_new_tokens)
  f32, i32 = lambda x: jnp.asarray(x, jnp.float32), lambda x: jnp.asarray(x, jnp.int32)
  return _generate(apply_fn, cfg, params, prompts, prompt_mask, key, f32(temperature),
                   f32(top_p), i32(-1 if eos_id is None else eos_id), i32(pad_id),
                   max_new_tokens=int(max_new_tokens), top_k=int(top_k), nucleus=bool(top_p < 1),
                   greedy=bool(greedy), banned=tuple(int(i) for i in banned))


@functools.partial(jax.jit, static_argnums=(0, 1),
                   static_argnames=('max_new_tokens', 'top_k', 'nucleus', 'greedy', 'banned'))
def _generate(apply_fn, cfg, params, prompts, prompt_mask, key, temperature, top_p, eos_id,
              pad_id, *, max_new_tokens, top_k, nucleus, greedy, banned):
  b, p = prompts.shape
  prompt_mask = prompt_mask.astype(bool)
  lengths = jnp.sum(prompt_mask, axis=1, dtype=jnp.int32)                   # [B]
  cache = model_lib.init_cache(cfg, b, p + max_new_tokens)
  logits, cache = apply_fn(params, prompts, positions=model_lib.default_positions(prompt_mask),
                           mask=prompt_mask, cache=cache)

  def emit(logits, t, done):
    tokens, logprobs = sample_logits(jax.random.fold_in(key, t), logits, temperature=temperature,
                                     top_k=top_k, top_p=top_p if nucleus else 1.0, greedy=greedy,
                                     banned=banned)
    return _after_eos(tokens, logprobs, done, eos_id, pad_id)

  first = emit(logits[:, -1], 0, jnp.zeros((b,), bool))

  def step(carry, t):
    cache, (tokens, _, keep, done) = carry
    logits, cache = apply_fn(params, tokens[:, None], positions=(lengths + t - 1)[:, None],
                             mask=keep[:, None], cache=cache)
    out = emit(logits[:, 0], t, done)
    return (cache, out), out[:3]

  _, rest = jax.lax.scan(step, (cache, first), jnp.arange(1, max_new_tokens))
  tokens, logprobs, keep = (jnp.concatenate([f[None], r], 0).T for f, r in zip(first[:3], rest))
  return {'tokens': tokens, 'logprobs': logprobs, 'mask': keep.astype(jnp.float32)}


def generate_without_cache(apply_fn: Callable, params, prompts, prompt_mask, key, *,
                           max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
                           top_p: float = 1.0, greedy: bool = False, eos_id: int | None = None,
                           pad_id: int = 0):
  """Reference for `generate` (tests): the same outputs, recomputing the full forward pass over
  prompt + generated tokens at every step (no cache), with the same padding, positions, keys and
  EOS handling. One fixed [B, P + N] buffer (causal attention ignores its unfilled tail), a
  Python loop over steps with one jitted step function."""
  b, p = prompts.shape
  n = max_new_tokens
  eos_id = -1 if eos_id is None else eos_id
  prompt_mask = jnp.asarray(prompt_mask, bool)
  lengths = jnp.sum(prompt_mask, axis=1, dtype=jnp.int32)
  positions = jnp.concatenate([model_lib.default_positions(prompt_mask),
                               lengths[:, None] + jnp.arange(n)[None]], axis=1)

  @jax.jit
  def step(params, key, buf, buf_mask, done, t):
    logits = apply_fn(params, buf, positions=positions, mask=buf_mask, cache=None)[0]
    tokens, logprobs = sample_logits(jax.random.fold_in(key, t), logits[:, p + t - 1],
                                     temperature=temperature, top_k=top_k, top_p=top_p,
                                     greedy=greedy)
    tokens, logprobs, keep, done = _after_eos(tokens, logprobs, done, eos_id, pad_id)
    return buf.at[:, p + t].set(tokens), buf_mask.at[:, p + t].set(keep), done, logprobs

  buf = jnp.concatenate([prompts, jnp.full((b, n), pad_id, prompts.dtype)], axis=1)
  buf_mask = jnp.concatenate([prompt_mask, jnp.zeros((b, n), bool)], axis=1)
  done = jnp.zeros((b,), bool)
  logprobs = []
  for t in range(n):
    buf, buf_mask, done, lp = step(params, key, buf, buf_mask, done, jnp.int32(t))
    logprobs.append(lp)
  return {'tokens': buf[:, p:], 'logprobs': jnp.stack(logprobs, 1),
          'mask': buf_mask[:, p:].astype(jnp.float32)}


def sequence_logprobs(apply_fn: Callable, params, prompts, prompt_mask, tokens, mask, *,
                      temperature: float = 1.0):
  """Teacher-forced log-probs [B, N] of continuations `tokens` [B, N] after left-padded
  `prompts` [B, P]: log softmax(logits / temperature)[token t | prompt, tokens[:t]], 0 where
  `mask` [B, N] is 0. One forward pass over [B, P + N] with generate's positions; pure and
  differentiable (jit or grad it from the caller; RLHF's policy loss). Equals generate's
  logprobs for greedy (temperature 1) or for sampling without top-k / top-p at this temperature.
  """
  chex.assert_equal_shape([prompts, prompt_mask])
  chex.assert_equal_shape([tokens, mask])
  p = prompts.shape[1]
  prompt_mask = prompt_mask.astype(bool)
  mask = mask.astype(bool)
  lengths = jnp.sum(prompt_mask, axis=1, dtype=jnp.int32)
  positions = jnp.concatenate([model_lib.default_positions(prompt_mask),
                               lengths[:, None] + jnp.arange(tokens.shape[1])[None]], axis=1)
  logits = apply_fn(params, jnp.concatenate([prompts, tokens.astype(prompts.dtype)], axis=1),
                    positions=positions, mask=jnp.concatenate([prompt_mask, mask], axis=1),
                    cache=None)[0]
  logp = jax.nn.log_softmax(logits[:, p - 1:-1].astype(jnp.float32) / temperature)
  logp = jnp.take_along_axis(logp, tokens[..., None].astype(jnp.int32), -1)[..., 0]
  return jnp.where(mask, logp, 0.)
