"""Tests for research/lm/model.py and research/lm/generate.py: the decoder-only transformer,
KV-cache generation (against full recomputation), masking, padding, sampling and log-probs.

Compilation dominates on CPU, so the tests share programs: every model-level check is one
[3, 9] forward, and generate compiles three times (greedy, sampled, filtered sampling).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from research.lm import generate as gen
from research.lm import model as model_lib

CFG = model_lib.TransformerConfig(vocab_size=50, num_layers=2, num_heads=4, d_model=32,
                                  max_len=128)
PROMPTS = [[1], [2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12, 13, 14, 15]]   # lengths 1, 5, 9
NEW = 64


def _key(seed):
  return jax.random.key(seed, impl='rbg')


def _random_params(cfg, std=0.3, seed=0):
  """Parameters drawn in numpy (no init program to compile), N(0, std^2) except the norm scales
  (ones). std=0.3 rather than the default init's 0.02 makes the logits far from flat (std ~1.6),
  so greedy decoding varies and has no near-ties; larger std grows the float32 rounding
  differences between cached and recomputed log-probs (~5e-6 here, 1.3e-5 at std 0.4)."""
  shapes = jax.eval_shape(lambda k: model_lib.Transformer(cfg).init(
      k, jnp.zeros((1, 4), jnp.int32)), _key(0))
  rng = np.random.default_rng(seed)
  def draw(path, x):
    if 'norm' in jax.tree_util.keystr(path):
      return jnp.ones(x.shape, x.dtype)
    return jnp.asarray(std * rng.normal(size=x.shape), x.dtype)
  return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.fixture(scope='module')
def lm():
  model = model_lib.Transformer(CFG)
  params = _random_params(CFG)
  apply = model.apply                 # one bound method: generate's jit cache keys on it
  tokens, mask = gen.pad_prompts(PROMPTS, pad_id=0)
  greedy = gen.generate(apply, params, tokens, mask, _key(1), max_new_tokens=NEW, greedy=True)
  # Always called on [3, 9] with explicit mask and segment ids: one compilation for all checks.
  forward = jax.jit(lambda p, t, m, seg: model.apply(p, t, mask=m, segment_ids=seg)[0])
  # Teacher-forced log-probs of [3, N] continuations of the prompts (temperature traced).
  seq_lp = jax.jit(lambda p, tok, m, temp: gen.sequence_logprobs(
      apply, p, tokens, mask, tok, m, temperature=temp))
  return dict(model=model, params=params, apply=apply, tokens=tokens, mask=mask, greedy=greedy,
              forward=forward, seq_lp=seq_lp)


def _np(x):
  return np.asarray(x)


def _row(tokens, width=9, pad=0):
  """Right-padded row and its mask: trailing padding cannot affect earlier (causal) logits."""
  pads = width - len(tokens)
  return tokens + [pad] * pads, [True] * len(tokens) + [False] * pads


# --- model ----------------------------------------------------------------------------------------
def test_config_params_and_flops():
  section = ml_collections.ConfigDict(dict(num_layers=2, num_heads=4, d_model=32, mlp_dim=0,
                                           mlp='swiglu', dropout=0.1, max_len=64,
                                           rope_base=500., dtype='bfloat16'))
  cfg = model_lib.TransformerConfig.from_config(section, vocab_size=50)
  assert (cfg.mlp, cfg.hidden_dim, cfg.rope_base, cfg.compute_dtype) == (
      'swiglu', 128, 500., jnp.bfloat16)
  for c in (CFG, cfg):
    shapes = jax.eval_shape(lambda k, c=c: model_lib.Transformer(c).init(
        k, jnp.zeros((1, 4), jnp.int32)), _key(0))
    assert model_lib.num_params(shapes) == model_lib.param_count(c)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(shapes))   # params stay f32
  n = model_lib.param_count(CFG)
  assert model_lib.flops_per_token(CFG, 64) == 6 * n + 12 * 2 * 32 * 64
  with pytest.raises(ValueError, match='num_heads'):
    model_lib.TransformerConfig(vocab_size=5, d_model=30, num_heads=4)
  with pytest.raises(ValueError, match='mlp'):
    model_lib.TransformerConfig(vocab_size=5, mlp='relu')


def test_rope_is_relative():
  """q.k after RoPE depends only on the position difference; position 0 is the identity."""
  rng = np.random.default_rng(0)
  q, k = (jnp.asarray(rng.normal(size=(1, 1, 2, 8)), jnp.float32) for _ in range(2))
  dot = lambda i, j: jnp.sum(model_lib.apply_rope(q, jnp.array([[i]]))
                             * model_lib.apply_rope(k, jnp.array([[j]])), -1)
  np.testing.assert_allclose(dot(3, 1), dot(12, 10), atol=1e-5)
  assert np.abs(_np(dot(3, 1) - dot(3, 2))).max() > 1e-3
  np.testing.assert_allclose(model_lib.apply_rope(q, jnp.zeros((1, 1), jnp.int32)), q)


def test_causal_masking(lm):
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(1, 50, size=(3, 9)), jnp.int32)
  changed = tokens.at[:, 5].set((tokens[:, 5] + 1) % 50)
  ones, seg = jnp.ones((3, 9), bool), jnp.zeros((3, 9), jnp.int32)
  a = _np(lm['forward'](lm['params'], tokens, ones, seg))
  b = _np(lm['forward'](lm['params'], changed, ones, seg))
  np.testing.assert_allclose(a[:, :5], b[:, :5], atol=1e-6, rtol=0)
  assert np.abs(a[:, 5:] - b[:, 5:]).max(axis=(1, 2)).min() > 1e-2   # the change is visible


def _unpadded_and_packed(lm):
  """Rows: prompt 2 with no padding in front; sequences a and b packed; b alone."""
  a, b = [3, 9, 4, 1], [7, 2, 8, 8, 5]
  rows = [_row(PROMPTS[1]), (a + b, [True] * 9), _row(b)]
  seg = jnp.asarray([[0] * 9, [0] * 4 + [1] * 5, [0] * 9], jnp.int32)
  tokens, mask = (jnp.asarray([r[i] for r in rows]) for i in (0, 1))
  return _np(lm['forward'](lm['params'], tokens.astype(jnp.int32), mask, seg))


def test_left_padding_does_not_change_logits(lm):
  """Prompt 2 (length 5) has 4 pads in front in the generation batch, none in the reference.
  Default positions come from the mask, so its real tokens get 0..4 either way."""
  seg = jnp.zeros((3, 9), jnp.int32)
  batch = _np(lm['forward'](lm['params'], lm['tokens'], lm['mask'], seg))
  ref = _unpadded_and_packed(lm)[0, :5]
  np.testing.assert_allclose(batch[1, 4:], ref, atol=1e-5, rtol=0)


def test_packed_segments_match_separate_sequences(lm):
  out = _unpadded_and_packed(lm)
  np.testing.assert_allclose(out[1, 4:], out[2, :5], atol=1e-5, rtol=0)   # b packed after a


def test_dropout_needs_rng_and_changes_output(lm):
  cfg = model_lib.TransformerConfig(**{**CFG.__dict__, 'dropout': 0.5, 'attn_dropout': 0.1})
  model = model_lib.Transformer(cfg)
  f = jax.jit(lambda p, k: model.apply(p, lm['tokens'], deterministic=False,
                                       rngs={'dropout': k})[0])
  assert np.abs(_np(f(lm['params'], _key(1)) - f(lm['params'], _key(2)))).max() > 1e-3
  np.testing.assert_array_equal(f(lm['params'], _key(1)), f(lm['params'], _key(1)))


def test_bfloat16_compute_is_close_to_float32(lm):
  """bf16 compute from the same float32 params, with and without a (bf16) cache."""
  cfg = model_lib.TransformerConfig(**{**CFG.__dict__, 'dtype': 'bfloat16'})
  model = model_lib.Transformer(cfg)

  @jax.jit
  def f(p, t, m):
    plain = model.apply(p, t, mask=m)[0]
    cached, cache = model.apply(p, t, mask=m, cache=model_lib.init_cache(cfg, 3, 16))
    return plain, cached, all(a.dtype == jnp.bfloat16 for a in cache.k + cache.v)

  plain, cached, bf16_cache = f(lm['params'], lm['tokens'], lm['mask'])
  assert plain.dtype == cached.dtype == jnp.float32 and bool(bf16_cache)
  real = _np(lm['mask'])
  ref = _np(lm['forward'](lm['params'], lm['tokens'], lm['mask'],
                          jnp.zeros((3, 9), jnp.int32)))[real]
  for out in (plain, cached):
    err = np.abs(_np(out)[real] - ref)
    assert err.max() < 0.1 * ref.std(), (err.max(), ref.std())


# --- generation -----------------------------------------------------------------------------------
def test_pad_prompts_left_pads():
  tokens, mask = gen.pad_prompts([[5, 6], [7]], pad_id=9)
  np.testing.assert_array_equal(tokens, [[5, 6], [9, 7]])
  np.testing.assert_array_equal(mask, [[True, True], [False, True]])
  assert tokens.dtype == jnp.int32
  with pytest.raises(ValueError, match='empty prompt'):
    gen.pad_prompts([[1], []], 0)


def test_kv_cache_greedy_matches_full_recompute(lm):
  out = lm['greedy']
  ref = gen.generate_without_cache(lm['apply'], lm['params'], lm['tokens'], lm['mask'], _key(1),
                                   max_new_tokens=NEW, greedy=True)
  assert out['tokens'].shape == out['logprobs'].shape == out['mask'].shape == (3, NEW)
  tokens = _np(out['tokens'])
  np.testing.assert_array_equal(tokens, ref['tokens'])
  np.testing.assert_allclose(out['logprobs'], ref['logprobs'], atol=1e-5, rtol=0)
  assert np.all(_np(out['mask']) == 1)
  # Not a trivial model: many distinct tokens overall, and several in every row.
  assert len(np.unique(tokens)) > 10 and min(len(set(r)) for r in tokens) > 4
  assert np.all(_np(out['logprobs']) < 0)


def test_generation_does_not_depend_on_padding(lm):
  """Row 1 of the batch (4 pads in front, KV cache) against prompt 2 alone (no pads, the full
  recomputation reference)."""
  tokens, mask = gen.pad_prompts([PROMPTS[1]], pad_id=0)
  alone = gen.generate_without_cache(lm['apply'], lm['params'], tokens, mask, _key(1),
                                     max_new_tokens=NEW, greedy=True)
  np.testing.assert_array_equal(alone['tokens'][0], lm['greedy']['tokens'][1])
  np.testing.assert_allclose(alone['logprobs'][0], lm['greedy']['logprobs'][1], atol=1e-5)


def test_generate_is_one_scan(lm):
  """The decode loop is a lax.scan: the traced program does not grow with max_new_tokens."""
  def program(n):
    f = lambda p, t, m, k: gen.generate(lm['apply'], p, t, m, k, max_new_tokens=n, greedy=True)
    return str(jax.make_jaxpr(f)(lm['params'], lm['tokens'], lm['mask'], _key(0)))
  short, long = program(4), program(NEW)
  assert 'scan' in long
  assert short.count('dot_general') == long.count('dot_general') > 0


def test_sampled_logprobs_match_teacher_forcing(lm):
  args = (lm['apply'], lm['params'], lm['tokens'], lm['mask'])
  seq_lp = lm['seq_lp']
  for temp in (1.0, 0.7):               # temperature is traced: one compilation for both
    a = gen.generate(*args, _key(3), max_new_tokens=NEW, temperature=temp)
    np.testing.assert_array_equal(gen.generate(*args, _key(3), max_new_tokens=NEW,
                                               temperature=temp)['tokens'], a['tokens'])
    np.testing.assert_allclose(seq_lp(lm['params'], a['tokens'], a['mask'], temp), a['logprobs'],
                               atol=1e-5, rtol=0)
  # Greedy log-probs are temperature-1 log-probs of the argmax.
  g = lm['greedy']
  np.testing.assert_allclose(seq_lp(lm['params'], g['tokens'], g['mask'], 1.0), g['logprobs'],
                             atol=1e-5, rtol=0)


def test_tiny_top_p_is_greedy(lm):
  # top_k=10 shares test_filtered_sampling's compilation (top_p and temperature are traced).
  out = gen.generate(lm['apply'], lm['params'], lm['tokens'], lm['mask'], _key(5),
                     max_new_tokens=16, temperature=1.3, top_k=10, top_p=1e-6)
  np.testing.assert_array_equal(out['tokens'], lm['greedy']['tokens'][:, :16])
  np.testing.assert_allclose(out['logprobs'], 0., atol=1e-6)      # a point mass after filtering


def test_top_k_1_is_greedy(lm):
  """On the model's next-token logits after the prompts, through generate's sampler (top_k is
  static, so generate itself would compile once more for it)."""
  logits = lm['forward'](lm['params'], lm['tokens'], lm['mask'], jnp.zeros((3, 9), jnp.int32))
  logits = logits[:, -1]
  sample = jax.jit(jax.vmap(lambda k: gen.sample_logits(k, logits, temperature=1.3, top_k=1)))
  tok, lp = sample(jax.random.split(_key(0), 100))
  np.testing.assert_array_equal(tok, np.broadcast_to(lm['greedy']['tokens'][:, 0], (100, 3)))
  np.testing.assert_allclose(lp, 0., atol=1e-6)


def test_filtered_sampling_matches_full_recompute_and_is_reproducible(lm):
  kw = dict(max_new_tokens=16, temperature=0.8, top_k=10, top_p=0.9)
  args = (lm['apply'], lm['params'], lm['tokens'], lm['mask'])
  out, ref = gen.generate(*args, _key(6), **kw), gen.generate_without_cache(*args, _key(6), **kw)
  np.testing.assert_array_equal(out['tokens'], ref['tokens'])
  np.testing.assert_allclose(out['logprobs'], ref['logprobs'], atol=1e-5, rtol=0)
  np.testing.assert_array_equal(gen.generate(*args, _key(6), **kw)['tokens'], out['tokens'])
  assert np.any(_np(gen.generate(*args, _key(7), **kw)['tokens']) != _np(out['tokens']))
  # Filtering renormalises: every chosen token is at least as likely as unfiltered.
  unfiltered = lm['seq_lp'](lm['params'], out['tokens'], out['mask'], 0.8)
  assert np.all(_np(out['logprobs']) >= _np(unfiltered) - 1e-6)
  assert np.any(_np(out['logprobs']) > _np(unfiltered) + 1e-3)


def test_sample_logits_filters_and_logprobs():
  """Exact filtered distributions: p = (.5, .3, .15, .05)."""
  p = np.array([.5, .3, .15, .05])
  keys = jax.random.split(_key(0), 4000)
  cases = [(dict(top_k=3), [.5, .3, .15] / np.float64(.95)),
           (dict(top_p=0.7), [.5, .3] / np.float64(.8)),      # .5 < .7, then .8 >= .7: stop
           (dict(top_k=3, top_p=0.6), [.5, .3] / np.float64(.8)),
           (dict(temperature=2.), np.sqrt(p) / np.sqrt(p).sum())]
  logits = jnp.asarray(np.log(p), jnp.float32)[None]
  for kw, expect in cases:
    tok, lp = jax.jit(jax.vmap(lambda k, kw=kw: gen.sample_logits(k, logits, **kw)))(keys)
    tok, lp = _np(tok)[:, 0], _np(lp)[:, 0]
    np.testing.assert_allclose(lp, np.log(expect)[tok], atol=1e-5, err_msg=str(kw))
    freq = np.bincount(tok, minlength=4)[:len(expect)] / len(tok)
    assert tok.max() < len(expect) and np.abs(freq - expect).max() < 0.04, (kw, freq)


def test_eos_masks_and_pads_the_rest(lm):
  greedy = _np(lm['greedy']['tokens'])
  eos = int(greedy[1, 3])
  out = gen.generate(lm['apply'], lm['params'], lm['tokens'], lm['mask'], _key(1),
                     max_new_tokens=NEW, greedy=True, eos_id=eos, pad_id=0)
  tokens, mask, lp = _np(out['tokens']), _np(out['mask']), _np(out['logprobs'])
  stopped = 0
  for r in range(3):
    hits = np.flatnonzero(greedy[r] == eos)
    end = hits[0] + 1 if len(hits) else NEW                 # up to and including the first EOS
    stopped += end < NEW
    np.testing.assert_array_equal(tokens[r, :end], greedy[r, :end])
    np.testing.assert_array_equal(mask[r], np.arange(NEW) < end)
    assert np.all(tokens[r, end:] == 0) and np.all(lp[r, end:] == 0)
    np.testing.assert_allclose(lp[r, :end], _np(lm['greedy']['logprobs'])[r, :end], atol=1e-6)
  assert stopped >= 1


def test_cache_layout_is_one_slots_last_array_per_layer():
  """The decode-speed layout (model.KVCache): num_layers arrays of [B, H, D, S] for k and v."""
  cache = model_lib.init_cache(CFG, 3, 16)
  assert len(cache.k) == len(cache.v) == CFG.num_layers
  for a in cache.k + cache.v:
    assert a.shape == (3, CFG.num_heads, CFG.head_dim, 16)
  assert cache.max_len == 16
