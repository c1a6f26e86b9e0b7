"""Adversarial losses (scalars) on discriminator logits, and the gradient penalties.

- 'ns' / 'minimax': the BCE game of Goodfellow et al. 2014 (arXiv:1406.2661). Both train D on
  mean softplus(-real) + mean softplus(fake); G minimises -log D(G(z)) ('ns', non-saturating) or
  log(1 - D(G(z))) ('minimax', the saturating original).
- 'wgan': the Wasserstein critic loss (Arjovsky et al. 2017, arXiv:1701.07875); add
  `gradient_penalty` for WGAN-GP (Gulrajani et al. 2017, arXiv:1704.00028).
- 'hinge': Lim & Ye 2017 (arXiv:1705.02894), as used with spectral norm by Miyato et al. 2018.
`r1_penalty` is the R1 regulariser of Mescheder et al. 2018 (arXiv:1801.04406).
"""
from __future__ import annotations

from typing import Callable

import chex
import jax
import jax.numpy as jnp

LOSSES = ('ns', 'minimax', 'wgan', 'hinge')


def _check_kind(kind: str):
  if kind not in LOSSES:
    raise ValueError(f'GAN loss {kind!r}: must be one of {LOSSES}')


def discriminator_loss(kind: str, real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
  """D's loss (to minimise) on logits [B] of real and generated examples."""
  _check_kind(kind)
  chex.assert_rank([real_logits, fake_logits], 1)
  if kind in ('ns', 'minimax'):
    # -log sigmoid(r) - log(1 - sigmoid(f)), written stably.
    return jnp.mean(jax.nn.softplus(-real_logits)) + jnp.mean(jax.nn.softplus(fake_logits))
  if kind == 'wgan':
    return jnp.mean(fake_logits) - jnp.mean(real_logits)
  return jnp.mean(jax.nn.relu(1. - real_logits)) + jnp.mean(jax.nn.relu(1. + fake_logits))


def generator_loss(kind: str, fake_logits: jax.Array) -> jax.Array:
  """G's loss (to minimise) on D's logits [B] of generated examples."""
  _check_kind(kind)
  chex.assert_rank(fake_logits, 1)
  if kind == 'ns':
    return jnp.mean(jax.nn.softplus(-fake_logits))      # -log D(G(z))
  if kind == 'minimax':
    # log(1 - D(G(z))): its gradient, -sigmoid(f) / B, vanishes when D confidently rejects fakes.
    return -jnp.mean(jax.nn.softplus(fake_logits))
  return -jnp.mean(fake_logits)                         # wgan and hinge (Lim & Ye's G loss)


def _input_grads(critic: Callable, x: jax.Array) -> jax.Array:
  """Per-example d critic(x)_i / d x_i, [B, D], as the gradient of the sum: exact because each
  logit depends only on its own example (D has no batch norm)."""
  def total(x):
    out = critic(x)
    chex.assert_shape(out, (x.shape[0],))
    return jnp.sum(out)
  return jax.grad(total)(x).reshape(x.shape[0], -1)


def gradient_penalty(critic: Callable, real: jax.Array, fake: jax.Array, key: jax.Array,
                     target: float = 1.0) -> jax.Array:
  """WGAN-GP: mean_i (||grad critic(x_hat_i)|| - target)^2 with x_hat = eps real + (1 - eps) fake,
  eps ~ U[0, 1] per example. critic: [B, ...] -> [B]. Multiply by lambda (10 in the paper).
  `key`: one key, or one key per example ([B] keys, e.g. `parallel.per_example_keys`, so the
  draws do not depend on how the batch is split over devices)."""
  chex.assert_equal_shape([real, fake])
  shape = (1,) * (real.ndim - 1)
  if key.ndim == 0:
    eps = jax.random.uniform(key, (real.shape[0],) + shape, real.dtype)
  else:
    chex.assert_shape(key, (real.shape[0],))
    eps = jax.vmap(lambda k: jax.random.uniform(k, shape, real.dtype))(key)
  x_hat = eps * real + (1. - eps) * fake
  g = _input_grads(critic, x_hat)
  # The epsilon keeps the norm's own gradient finite where the input gradient is exactly zero.
  norm = jnp.sqrt(jnp.sum(jnp.square(g), axis=-1) + 1e-12)
  return jnp.mean(jnp.square(norm - target))


def r1_penalty(critic: Callable, real: jax.Array) -> jax.Array:
  """R1: mean_i ||grad critic(real_i)||^2. The caller multiplies by gamma / 2."""
  return jnp.mean(jnp.sum(jnp.square(_input_grads(critic, real)), axis=-1))


def accuracy(real_logits: jax.Array, fake_logits: jax.Array) -> dict[str, jax.Array]:
  """How often D classifies correctly at threshold 0 (for monitoring only)."""
  chex.assert_rank([real_logits, fake_logits], 1)
  return {'d_real_acc': jnp.mean((real_logits > 0).astype(jnp.float32)),
          'd_fake_acc': jnp.mean((fake_logits < 0).astype(jnp.float32))}
