"""Log-densities and KL terms of the VAE, as pure jnp functions.

Every function takes batched arrays ([B, ...]) and returns per-example sums in nats, shape [B]:
the event is every axis after the first, so the same code serves images [B, H, W, C] and latents
[B, D], and `jax.vmap` over an extra leading axis (importance samples) works unchanged.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

_LOG_2PI = math.log(2.0 * math.pi)


def sum_event(x: jax.Array) -> jax.Array:
  """Sums every axis but the leading (batch) one: [B, ...] -> [B]."""
  return jnp.sum(x.reshape(x.shape[0], -1), axis=-1)


def bernoulli_log_prob(logits: jax.Array, x: jax.Array) -> jax.Array:
  """log Bern(x | sigmoid(logits)) = x * l - softplus(l), stable for large |l|. x in {0, 1}
  (or in [0, 1], where it is the usual unnormalized cross-entropy)."""
  return sum_event(x * logits - jax.nn.softplus(logits))


def gaussian_log_prob(x: jax.Array, mean: jax.Array, log_scale: jax.Array) -> jax.Array:
  """log N(x | mean, exp(log_scale)^2) with a per-dimension scale (broadcast against x)."""
  z = (x - mean) * jnp.exp(-log_scale)
  return sum_event(-0.5 * (_LOG_2PI + z * z) - log_scale * jnp.ones_like(x))


def diag_gaussian_log_prob(z: jax.Array, mean: jax.Array, log_var: jax.Array) -> jax.Array:
  """log N(z | mean, diag(exp(log_var))): the encoder's q(z|x)."""
  return sum_event(-0.5 * (_LOG_2PI + log_var + (z - mean) ** 2 * jnp.exp(-log_var)))


def std_normal_log_prob(z: jax.Array) -> jax.Array:
  """log N(z | 0, I): the prior p(z)."""
  return sum_event(-0.5 * (_LOG_2PI + z * z))


def kl_diag_gaussian_std_normal(mean: jax.Array, log_var: jax.Array) -> jax.Array:
  """Analytic KL(N(mean, diag exp(log_var)) || N(0, I))."""
  return sum_event(0.5 * (jnp.exp(log_var) + mean * mean - 1.0 - log_var))
