"""Samplers in sigma space (Karras et al. 2022, "EDM"): ancestral DDPM, DDIM, Euler, Heun (EDM
Algorithm 2) and DPM-Solver++(2M), plus classifier-free guidance.

A sampler sees the model only as a denoiser D(x, sigma) -> x0_hat (x [B, ...], sigma a float32
scalar), and steps along a sigma grid (1-D, decreasing, N + 1 entries ending in 0; see
schedules.py). A noisy point at level sigma is x = x0 + sigma * eps; a VP model's latent is
z = x / sqrt(1 + sigma^2), so one implementation serves DDPM/VDM and EDM models alike.

Every sampler is fn(denoiser, x, sigmas, key=None, **options) -> samples, with x the initial batch
already at level sigmas[0] (see prior_sample). Loops are lax.scan, so compile time does not grow
with N. Stochastic samplers draw step i's noise from fold_in(key, i): results are reproducible
and independent of how the loop is compiled.
"""
from __future__ import annotations

import inspect
import math
from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

Denoiser = Callable[[jax.Array, jax.Array], jax.Array]


def prior_sample(key: jax.Array, shape, sigma_max: float | jax.Array,
                 variance_preserving: bool = True) -> jax.Array:
  """The initial batch at level sigma_max. A VP model's prior z_T ~ N(0, I) is x = z / alpha in
  sigma space, i.e. noise * sqrt(sigma_max^2 + 1); an EDM (VE) model uses noise * sigma_max."""
  noise = jax.random.normal(key, shape, jnp.float32)
  scale = jnp.sqrt(jnp.square(sigma_max) + 1.0) if variance_preserving else sigma_max
  return noise * jnp.asarray(scale, jnp.float32)


def _is_zero(v) -> bool:
  """True for a Python number equal to 0 (a static "off"); traced values are never skipped."""
  return isinstance(v, (int, float)) and v == 0


def _check_grid(name: str, sigmas) -> int:
  if jnp.ndim(sigmas) != 1 or jnp.shape(sigmas)[0] < 2:
    raise ValueError(f'{name}: sigmas must be 1-D with N + 1 >= 2 entries, got shape '
                     f'{jnp.shape(sigmas)}')
  return jnp.shape(sigmas)[0] - 1


def _step_noise(key, i, x):
  return jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype)


def ddim_step(denoiser: Denoiser, x: jax.Array, sigma: jax.Array, sigma_next: jax.Array,
              eta: float | jax.Array = 0., noise: jax.Array | None = None) -> jax.Array:
  """One DDIM step (Song et al. 2021, eq. 12) in sigma form, from sigma > 0 to sigma_next >= 0:
    D = D(x, sigma), eps = (x - D) / sigma,
    s_up = eta sqrt(sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2),
    s_down = sqrt(sigma_next^2 - s_up^2),  x_next = D + s_down eps + s_up noise.
  At eta = 1 this is DDPM's ancestral step: x0 + sigma_next^2/sigma^2 (x - x0) = D + s_down eps is
  the mean of q(x_next | x, x0) and s_up^2 its variance, which times alpha_next^2 is Ho et al.'s
  beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t in VP coordinates.
  noise=None takes the deterministic (eta = 0) step, whatever eta.
  """
  d = denoiser(x, sigma)
  eps = (x - d) / sigma
  if noise is None:
    return d + sigma_next * eps
  s_up = eta * jnp.sqrt(jnp.maximum(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2, 0.))
  s_down = jnp.sqrt(jnp.maximum(sigma_next**2 - s_up**2, 0.))
  return d + s_down * eps + s_up * noise


def ddim(denoiser: Denoiser, x: jax.Array, sigmas: jax.Array, key: jax.Array | None = None,
         eta: float | jax.Array = 0.) -> jax.Array:
  """DDIM (Song et al. 2021) along `sigmas`: deterministic for eta = 0 (a Python 0 draws no noise
  and needs no key); eta = 1 is ancestral sampling (ddpm). N steps = N denoiser calls."""
  n = _check_grid('ddim', sigmas)
  stochastic = not _is_zero(eta)
  if stochastic and key is None:
    raise ValueError('ddim: eta != 0 needs a PRNG key')
  sigmas = jnp.asarray(sigmas, jnp.float32)

  def body(x, xs):
    i, s, s_next = xs
    noise = _step_noise(key, i, x) if stochastic else None
    return ddim_step(denoiser, x, s, s_next, eta, noise), None

  x, _ = lax.scan(body, x, (jnp.arange(n), sigmas[:-1], sigmas[1:]))
  return x


def ddpm(denoiser: Denoiser, x: jax.Array, sigmas: jax.Array, key: jax.Array) -> jax.Array:
  """Ancestral sampling (Ho et al. 2020, Algorithm 2) = ddim with eta = 1. On
  discrete_sigmas(discrete_logsnr(betas), T) from the VP prior it is Ho's T-step sampler exactly
  (the last step, to sigma = 0, returns the posterior mean D without noise, as Ho's t = 1 step)."""
  if key is None:
    raise ValueError('ddpm needs a PRNG key')
  return ddim(denoiser, x, sigmas, key, eta=1.)


def euler(denoiser: Denoiser, x: jax.Array, sigmas: jax.Array,
          key: jax.Array | None = None) -> jax.Array:
  """EDM Algorithm 1 with Euler steps on dx/dsigma = (x - D(x, sigma)) / sigma: mathematically
  DDIM with eta = 0 on the same grid (x + (s' - s)(x - D)/s = D + s' eps). `key` is unused."""
  del key
  _check_grid('euler', sigmas)
  sigmas = jnp.asarray(sigmas, jnp.float32)

  def body(x, xs):
    s, s_next = xs
    return x + (s_next - s) * (x - denoiser(x, s)) / s, None

  x, _ = lax.scan(body, x, (sigmas[:-1], sigmas[1:]))
  return x


def heun(denoiser: Denoiser, x: jax.Array, sigmas: jax.Array, key: jax.Array | None = None,
         churn: float | jax.Array = 0., s_tmin: float = 0., s_tmax: float = float('inf'),
         s_noise: float = 1.) -> jax.Array:
  """EDM Algorithm 2 (Karras et al. 2022): Heun's 2nd-order method with optional churn.

  Step i raises the level to s_hat = s_i (1 + gamma_i), gamma_i = min(churn / N, sqrt(2) - 1) for
  s_i in [s_tmin, s_tmax] (else 0), by adding noise of std s_noise sqrt(s_hat^2 - s_i^2), then
  takes an Euler step to s_{i+1} corrected by the trapezoid rule. churn = 0 (Python) is the
  deterministic sampler and needs no key. The correction would evaluate D at s_{i+1} = 0, so the
  final step is plain Euler: N steps cost 2N - 1 denoiser calls (18 steps = 35 NFE). The first
  N - 1 steps are scanned; the final one follows outside the scan.
  """
  n = _check_grid('heun', sigmas)
  stochastic = not _is_zero(churn)
  if stochastic and key is None:
    raise ValueError('heun: churn != 0 needs a PRNG key')
  sigmas = jnp.asarray(sigmas, jnp.float32)

  def churned(x, i, s):
    if not stochastic:
      return x, s
    in_range = (s >= s_tmin) & (s <= s_tmax)
    gamma = jnp.where(in_range, jnp.minimum(churn / n, math.sqrt(2.) - 1.), 0.)
    s_hat = s * (1 + gamma)
    noise = s_noise * _step_noise(key, i, x)
    return x + jnp.sqrt(jnp.maximum(s_hat**2 - s**2, 0.)) * noise, s_hat

  def euler_step(x, i, s, s_next):
    x_hat, s_hat = churned(x, i, s)
    d = (x_hat - denoiser(x_hat, s_hat)) / s_hat
    return x_hat, s_hat, d, x_hat + (s_next - s_hat) * d

  def body(x, xs):
    i, s, s_next = xs
    x_hat, s_hat, d, x_next = euler_step(x, i, s, s_next)
    d_next = (x_next - denoiser(x_next, s_next)) / s_next
    return x_hat + (s_next - s_hat) * 0.5 * (d + d_next), None

  x, _ = lax.scan(body, x, (jnp.arange(n - 1), sigmas[:-2], sigmas[1:-1]))
  return euler_step(x, n - 1, sigmas[-2], sigmas[-1])[-1]


def dpm_solver_pp_2m(denoiser: Denoiser, x: jax.Array, sigmas: jax.Array,
                     key: jax.Array | None = None) -> jax.Array:
  """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): data prediction, multistep, 2nd order.

  With lambda = -log sigma and h = lambda_next - lambda (the VP and VE forms coincide for data
  prediction), one step is x_next = (sigma_next / sigma) x + (1 - sigma_next / sigma) D', where
  D' = D(x, sigma) on the first step and on the final step to sigma = 0 (first order, x_next = D),
  and otherwise D' = (1 + 1/(2r)) D - 1/(2r) D_prev, r = h_prev / h. N steps = N denoiser calls.
  `key` is unused.
  """
  del key
  n = _check_grid('dpm_solver_pp_2m', sigmas)
  sigmas = jnp.asarray(sigmas, jnp.float32)
  log_sigmas = jnp.log(jnp.where(sigmas > 0, sigmas, 1.))  # safe: only read where sigma > 0
  # h_prev of step i is log_sigma_{i-1} - log_sigma_i; step 0 has none (first order).
  h_prev = jnp.concatenate([jnp.ones((1,), jnp.float32), log_sigmas[:-2] - log_sigmas[1:-1]])

  def body(carry, xs):
    x, d_prev = carry
    i, s, s_next, log_s, log_s_next, hp = xs
    d = denoiser(x, s)
    second = (i > 0) & (s_next > 0)
    h = jnp.where(second, log_s - log_s_next, 1.)
    half_inv_r = jnp.where(second, 0.5 * h / hp, 0.)
    d_mix = (1 + half_inv_r) * d - half_inv_r * d_prev
    ratio = s_next / s
    return (ratio * x + (1 - ratio) * d_mix, d), None

  xs = (jnp.arange(n), sigmas[:-1], sigmas[1:], log_sigmas[:-1], log_sigmas[1:], h_prev)
  (x, _), _ = lax.scan(body, (x, jnp.zeros_like(x)), xs)
  return x


# ---------------------------------------------------------------------------------------------
# Classifier-free guidance (Ho & Salimans 2022).


def guided(denoiser_cond: Denoiser, denoiser_uncond: Denoiser,
           scale: float | jax.Array) -> Denoiser:
  """D = D_c + scale (D_c - D_u): scale = 0 is the conditional model, and scale = w - 1 in the
  eps_hat = w eps_c - (w - 1) eps_u convention (eps is affine in D at fixed x, sigma). A Python
  scale of 0 returns denoiser_cond itself (no unconditional evaluation)."""
  if _is_zero(scale):
    return denoiser_cond

  def denoiser(x, sigma):
    d_c = denoiser_cond(x, sigma)
    return d_c + scale * (d_c - denoiser_uncond(x, sigma))

  return denoiser


def clipped(denoiser: Denoiser, lo: float, hi: float) -> Denoiser:
  """D clipped to [lo, hi] (Ho et al.'s clip_denoised): every sampler's updates then follow
  from the clipped x0 estimate, as in DDPM's posterior mean and diffusers' clip_sample."""
  return lambda x, sigma: jnp.clip(denoiser(x, sigma), lo, hi)


def guided_batched(denoiser_fn: Callable[[jax.Array, jax.Array, jax.Array], jax.Array],
                   labels: jax.Array, null_label, scale: float | jax.Array) -> Denoiser:
  """guided() with the conditional and unconditional passes in one call of batch 2B:
  denoiser_fn(x, sigma, labels) with x [2B, ...], labels [2B, ...] (the B labels, then B copies of
  null_label, broadcast to the labels' shape). One 2B call beats two B calls on accelerators."""
  if _is_zero(scale):
    return lambda x, sigma: denoiser_fn(x, sigma, labels)
  both = jnp.concatenate([labels, jnp.broadcast_to(jnp.asarray(null_label, labels.dtype),
                                                   labels.shape)])

  def denoiser(x, sigma):
    d_c, d_u = jnp.split(denoiser_fn(jnp.concatenate([x, x]), sigma, both), 2)
    return d_c + scale * (d_c - d_u)

  return denoiser


# ---------------------------------------------------------------------------------------------
# Registry.

SAMPLERS: dict[str, Callable[..., jax.Array]] = {
    'ddpm': ddpm,
    'ddim': ddim,
    'euler': euler,
    'heun': heun,
    'dpmpp_2m': dpm_solver_pp_2m,
}


def nfe(name: str, num_steps: int) -> int:
  """Denoiser calls for `num_steps` steps (a guided denoiser costs 2 model passes per call, or one
  of batch 2B with guided_batched)."""
  _sampler(name)
  return 2 * num_steps - 1 if name == 'heun' else num_steps


def options(name: str) -> tuple[str, ...]:
  """The keyword options that sampler `name` accepts beyond (denoiser, x, sigmas, key)."""
  params = list(inspect.signature(_sampler(name)).parameters)
  return tuple(p for p in params if p not in ('denoiser', 'x', 'sigmas', 'key'))


def run(name: str, denoiser: Denoiser, x: jax.Array, sigmas: jax.Array,
        key: jax.Array | None = None, **opts) -> jax.Array:
  """SAMPLERS[name](denoiser, x, sigmas, key, **opts), rejecting unknown option names."""
  allowed = options(name)
  for opt in opts:
    if opt not in allowed:
      raise ValueError(f'sampler {name!r} has no option {opt!r}; its options: '
                       f'{", ".join(allowed) or "none"}')
  return SAMPLERS[name](denoiser, x, sigmas, key=key, **opts)


def _sampler(name: str):
  if name not in SAMPLERS:
    raise ValueError(f'unknown sampler {name!r}; known: {", ".join(SAMPLERS)}')
  return SAMPLERS[name]
