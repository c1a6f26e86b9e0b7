"""Denoising training objectives, per example [B] (the mean over dimensions of a squared error).

- `vp_loss`: DDPM-style regression of eps (Ho et al. 2020, L_simple), v (Salimans & Ho 2022) or
  x0 at a VP log-SNR, optionally Min-SNR-gamma weighted (Hang et al. 2023).
- `edm_loss`: EDM's preconditioned objective (Karras et al. 2022, eq. 8 and Table 1).
The VDM objective is the likelihood bound itself (`likelihood.continuous_diffusion_loss`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from research.diffusion import parameterization as param
from research.diffusion.schedules import vp_alpha_sigma

WEIGHTINGS = ('none', 'min_snr')


def _mean_dims(x: jax.Array) -> jax.Array:
  return jnp.mean(x.reshape(x.shape[0], -1), axis=-1)


def vp_loss(apply_net, x0: jax.Array, eps: jax.Array, logsnr: jax.Array, target: str = 'eps',
            weighting: str = 'none', min_snr_gamma: float = 5.0) -> jax.Array:
  """apply_net(z, c_noise) -> prediction of `target`; logsnr [B].

  weighting 'none': the plain squared error on the target (L_simple for eps). 'min_snr': the
  error in x0 units weighted by min(SNR, gamma), whatever the target, i.e. the target's error
  times min(SNR, gamma) / x0_weight(target)."""
  alpha, sigma = vp_alpha_sigma(logsnr)
  z = param._bcast(alpha, x0) * x0 + param._bcast(sigma, x0) * eps
  out = apply_net(z, param.c_noise(jnp.exp(-0.5 * logsnr)))
  mse = _mean_dims((out - param.vp_target(target, x0, eps, logsnr)) ** 2)
  if weighting == 'none':
    return mse
  if weighting == 'min_snr':
    return jnp.minimum(jnp.exp(logsnr), min_snr_gamma) / param.x0_weight(target, logsnr) * mse
  raise ValueError(f'weighting={weighting!r}: must be one of {WEIGHTINGS}')


def edm_loss(apply_net, x0: jax.Array, eps: jax.Array, sigma: jax.Array,
             sigma_data: float = 0.5) -> jax.Array:
  """apply_net(c_in x, c_noise) -> F; sigma [B]. EDM's weight lambda(sigma) = 1 / c_out^2 turns
  lambda ||D - x0||^2 into the unit-weight error of F against its effective target."""
  x = x0 + param._bcast(sigma, x0) * eps
  c_skip, c_out, c_in = (param._bcast(c, x0) for c in param.edm_coefficients(sigma, sigma_data))
  f = apply_net(c_in * x, param.c_noise(sigma))
  return _mean_dims((f - (x0 - c_skip * x) / c_out) ** 2)
