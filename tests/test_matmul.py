"""Tests for research/matmul.py: the CPU dense layers compute the same values and gradients as
lax.dot_general, in both weight-gradient orientations, float32 and bfloat16, and the LM trains
the same whichever implementation it uses."""
from __future__ import annotations

import flax.linen as nn
import functools
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from research import matmul
from research.lm import model as model_lib

DIMS = (((2,), (0,)), ((), ()))


def _loss(dot, x, w):
  y = dot(x, w, DIMS)
  return jnp.sum(jnp.sin(y.astype(jnp.float32)))


@pytest.mark.parametrize('k,m', [(8, 24), (24, 8)])       # x narrower than dy, and wider
@pytest.mark.parametrize('dtype,tol', [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
def test_dot_general_matches_lax_in_value_and_gradients(k, m, dtype, tol):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(3, 5, k)), dtype)
  w = jnp.asarray(rng.normal(size=(k, m)) / np.sqrt(k), dtype)
  cpu = functools.partial(matmul.dot_general, impl='cpu')
  ref_val, ref_grads = jax.value_and_grad(_loss, (1, 2))(jax.lax.dot_general, x, w)
  val, grads = jax.jit(jax.value_and_grad(_loss, (1, 2)), static_argnums=0)(cpu, x, w)
  np.testing.assert_allclose(float(val), float(ref_val), rtol=tol)
  for g, r in zip(grads, ref_grads):
    assert g.dtype == r.dtype and g.shape == r.shape
    np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(r, np.float32),
                               rtol=tol, atol=tol)


def test_weight_grad_is_x_transpose_dy_either_way():
  rng = np.random.default_rng(1)
  for k, m in ((4, 9), (9, 4)):
    x, g = rng.normal(size=(50, k)), rng.normal(size=(50, m))
    out = matmul.weight_grad(jnp.asarray(x, jnp.float32), jnp.asarray(g, jnp.float32))
    np.testing.assert_allclose(np.asarray(out), x.T @ g, rtol=1e-5, atol=1e-5)


def test_other_contractions_and_xla_fall_back_to_lax():
  x, w = jnp.ones((2, 3, 4)), jnp.ones((3, 5))
  dims = (((1,), (0,)), ((), ()))                      # not the dense contraction
  np.testing.assert_array_equal(matmul.dot_general(x, w, dims, impl='cpu'),
                                jax.lax.dot_general(x, w, dims))
  assert matmul.resolve('auto') == ('cpu' if jax.default_backend() == 'cpu' else 'xla')
  with pytest.raises(ValueError, match='matmul impl must be one of'):
    matmul.resolve('fast')


def test_dense_layer_takes_it():
  layer = nn.Dense(6, dot_general=functools.partial(matmul.dot_general, impl='cpu'))
  x = jnp.arange(12.).reshape(2, 6) / 10
  params = layer.init(jax.random.key(0), x)
  ref = nn.Dense(6).apply(params, x)
  np.testing.assert_allclose(layer.apply(params, x), ref, rtol=1e-6)


def test_lm_loss_and_gradients_equal_under_both_impls():
  tokens = jnp.asarray(np.random.default_rng(2).integers(0, 40, (4, 16)), jnp.int32)
  out = {}
  for impl in ('xla', 'cpu'):
    cfg = model_lib.TransformerConfig(vocab_size=40, num_layers=2, num_heads=2, d_model=16,
                                      max_len=16, mlp='swiglu', matmul_impl=impl)
    net = model_lib.Transformer(cfg)
    params = net.init(jax.random.key(0), tokens)['params']

    def loss(p):
      logits = net.apply({'params': p}, tokens)[0]
      return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1],
                                                             tokens[:, 1:]).mean()
    out[impl] = jax.jit(jax.value_and_grad(loss))(params)
  np.testing.assert_allclose(out['cpu'][0], out['xla'][0], rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7),
               out['cpu'][1], out['xla'][1])
  with pytest.raises(ValueError, match='matmul_impl must be one of'):
    model_lib.TransformerConfig(vocab_size=4, matmul_impl='fast')
