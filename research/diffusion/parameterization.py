"""What the network predicts, and how its output becomes a denoised estimate x0_hat.

One convention for the whole package (Karras et al. 2022): a noisy point at noise level sigma is
x = x0 + sigma * eps ("VE form"), and log-SNR is lambda = -2 log(sigma). A variance-preserving
(VP) model (DDPM, VDM) sees z = alpha * x with alpha^2 = sigmoid(lambda), sigma_vp^2 =
sigmoid(-lambda), i.e. z = alpha * x0 + sigma_vp * eps; an EDM model sees c_in * x.

VP targets (Ho et al. 2020 eps; Salimans & Ho 2022 v; x0): each is an affine function of x0 at
fixed z, so a squared error on any of them is a weighted squared error on x0:
  ||eps - eps_hat||^2 = SNR ||x0 - x0_hat||^2,   ||v - v_hat||^2 = (1 + SNR) ||x0 - x0_hat||^2.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from research.diffusion.schedules import vp_alpha_sigma

TARGETS = ('eps', 'v', 'x0')


def c_noise(sigma: jax.Array) -> jax.Array:
  """The network's noise conditioning, ln(sigma) / 4 (EDM), for every process: a VP model
  conditioned on it works at any sigma, so samplers may use grids other than the training one."""
  return jnp.log(sigma) / 4.0


def _bcast(a: jax.Array, like: jax.Array) -> jax.Array:
  """A per-example [B] (or scalar) coefficient broadcast against [B, ...]."""
  a = jnp.asarray(a, like.dtype)
  return a.reshape(a.shape + (1,) * (like.ndim - a.ndim)) if a.ndim else a


def vp_target(target: str, x0: jax.Array, eps: jax.Array, logsnr: jax.Array) -> jax.Array:
  """The regression target for z = alpha x0 + sigma_vp eps."""
  if target == 'eps':
    return eps
  if target == 'x0':
    return x0
  if target == 'v':
    alpha, sigma = vp_alpha_sigma(logsnr)
    return _bcast(alpha, x0) * eps - _bcast(sigma, x0) * x0
  raise ValueError(f'target={target!r}: must be one of {TARGETS}')


def vp_x0(target: str, out: jax.Array, z: jax.Array, logsnr: jax.Array) -> jax.Array:
  """x0_hat from the network output `out` at VP input z."""
  if target == 'x0':
    return out
  alpha, sigma = vp_alpha_sigma(logsnr)
  alpha, sigma = _bcast(alpha, z), _bcast(sigma, z)
  if target == 'eps':
    return (z - sigma * out) / alpha
  if target == 'v':
    return alpha * z - sigma * out
  raise ValueError(f'target={target!r}: must be one of {TARGETS}')


def x0_weight(target: str, logsnr: jax.Array) -> jax.Array:
  """w such that ||target - target_hat||^2 = w ||x0 - x0_hat||^2 (see the module docstring)."""
  snr = jnp.exp(logsnr)
  return {'eps': snr, 'v': snr + 1.0, 'x0': jnp.ones_like(snr)}[target]


def edm_coefficients(sigma: jax.Array, sigma_data: float):
  """EDM preconditioning (Karras et al. 2022, Table 1): D(x) = c_skip x + c_out F(c_in x, .)."""
  s2, d2 = sigma ** 2, sigma_data ** 2
  c_skip = d2 / (s2 + d2)
  c_out = sigma * sigma_data * jax.lax.rsqrt(s2 + d2)
  c_in = jax.lax.rsqrt(s2 + d2)
  return c_skip, c_out, c_in


def vp_denoiser(apply_net, target: str):
  """denoiser(x, sigma) -> x0_hat for a VP network `apply_net(z, c_noise) -> out`; sigma is a
  scalar or [B]."""

  def denoiser(x, sigma):
    sigma = jnp.broadcast_to(jnp.asarray(sigma, x.dtype), x.shape[:1])
    logsnr = -2.0 * jnp.log(sigma)
    z = x * _bcast(jax.lax.rsqrt(1.0 + sigma ** 2), x)
    return vp_x0(target, apply_net(z, c_noise(sigma)), z, logsnr)

  return denoiser


def edm_denoiser(apply_net, sigma_data: float):
  """denoiser(x, sigma) -> x0_hat for an EDM network `apply_net(c_in x, c_noise) -> F`."""

  def denoiser(x, sigma):
    sigma = jnp.broadcast_to(jnp.asarray(sigma, x.dtype), x.shape[:1])
    c_skip, c_out, c_in = (_bcast(c, x) for c in edm_coefficients(sigma, sigma_data))
    return c_skip * x + c_out * apply_net(c_in * x, c_noise(sigma))

  return denoiser
