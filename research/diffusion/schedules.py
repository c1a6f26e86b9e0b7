"""Noise schedules as log-SNR functions, and the sigma grids that samplers step along.

Conventions of the diffusion package (Karras et al. 2022, "EDM", sigma space / "VE form"):
a noisy point at level sigma is x = x0 + sigma * eps. A variance-preserving (VP) model's latent is
z = alpha * x with alpha = 1 / sqrt(1 + sigma^2) and sigma_vp = sigma * alpha, so
alpha^2 = sigmoid(lambda), sigma_vp^2 = sigmoid(-lambda) with the log-SNR lambda = -2 log sigma.

Schedules map time to log-SNR: discrete DDPM levels t = 1..T (Ho et al. 2020) or continuous
t in [0, 1] (t = 0 clean, t = 1 noisiest), either fixed (linear, cosine) or learned (VDM, Kingma et
al. 2021). A sampling grid is a 1-D decreasing float32 array of N + 1 sigmas ending in 0.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any


# ---------------------------------------------------------------------------------------------
# Conversions.


def sigma_from_logsnr(logsnr: jax.Array) -> jax.Array:
  """sigma = exp(-lambda / 2): lambda = log(1 / sigma^2) in VE form."""
  return jnp.exp(-0.5 * logsnr)


def logsnr_from_sigma(sigma: jax.Array) -> jax.Array:
  return -2.0 * jnp.log(sigma)


def vp_alpha_sigma(logsnr: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(alpha, sigma_vp) of the VP latent z = alpha x0 + sigma_vp eps; alpha^2 + sigma_vp^2 = 1.
  sigmoid keeps both accurate at extreme log-SNR, where 1 - alpha^2 would cancel."""
  return jnp.sqrt(jax.nn.sigmoid(logsnr)), jnp.sqrt(jax.nn.sigmoid(-logsnr))


# ---------------------------------------------------------------------------------------------
# Discrete DDPM schedules (numpy, float64: these are constants of a model, built once).


def linear_betas(num_steps: int = 1000, beta_start: float = 1e-4,
                 beta_end: float = 0.02) -> np.ndarray:
  """Ho et al. (2020, Sec. 4): beta_t linear from beta_start to beta_end, t = 1..T. float64."""
  return np.linspace(beta_start, beta_end, num_steps, dtype=np.float64)


def cosine_betas(num_steps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
  """Nichol & Dhariwal (2021, eq. 17): alpha_bar(t) = f(t) / f(0), f(t) = cos^2(pi/2 (t/T + s) /
  (1 + s)), betas = 1 - alpha_bar_t / alpha_bar_{t-1} clipped to max_beta (the clip keeps the
  last steps from being singular). float64."""
  f = np.cos(np.pi / 2 * (np.arange(num_steps + 1, dtype=np.float64) / num_steps + s) / (1 + s))**2
  return np.minimum(1.0 - f[1:] / f[:-1], max_beta)


def cosine_alpha_bars(num_steps: int = 1000, s: float = 0.008,
                      max_beta: float = 0.999) -> np.ndarray:
  """alpha_bar_t, t = 1..T, of the (beta-clipped) discrete cosine schedule. float64."""
  return np.cumprod(1.0 - cosine_betas(num_steps, s, max_beta))


def discrete_logsnr(betas) -> jax.Array:
  """log-SNR of alpha_bar_t = prod_{s <= t} (1 - beta_s), t = 1..T: [T] float32, decreasing.

  Computed in float64 as log(alpha_bar) - log1p(-alpha_bar), so the high-SNR end (alpha_bar
  within 1e-4 of 1) keeps its precision before the cast.
  """
  log_alpha_bar = np.cumsum(np.log1p(-np.asarray(betas, np.float64)))
  return jnp.asarray(log_alpha_bar - np.log(-np.expm1(log_alpha_bar)), jnp.float32)


# ---------------------------------------------------------------------------------------------
# Continuous schedules, t in [0, 1] (jnp, differentiable in t).


def linear_logsnr(t: jax.Array, beta_start: float = 1e-4, beta_end: float = 0.02,
                  num_steps: int = 1000) -> jax.Array:
  """The continuous limit of Ho's linear schedule (Kingma et al. 2021, App. H; Song et al. 2021,
  "VP SDE"): log alpha_bar(t) = -T (beta_start t + (beta_end - beta_start) t^2 / 2), so
  lambda(t) = -log(expm1(-log alpha_bar(t))). lambda(0) = +inf (clean data)."""
  neg_log_alpha_bar = num_steps * (beta_start * t + 0.5 * (beta_end - beta_start) * t**2)
  return -jnp.log(jnp.expm1(neg_log_alpha_bar))


def cosine_logsnr(t: jax.Array, s: float = 0.008, logsnr_min: float = -20.,
                  logsnr_max: float = 20.) -> jax.Array:
  """Nichol & Dhariwal's (2021) normalised cosine schedule, truncated to [logsnr_min, logsnr_max].

  alpha_bar(u) = cos^2(u) / cos^2(u0), u0 = pi s / (2 (1 + s)), with the angle u affine in t. The
  usual truncation (Kingma et al. 2021; Hoogeboom et al. 2023) maps [0, 1] affinely onto the u
  interval where lambda runs from logsnr_max to logsnr_min, so the ends hit the limits exactly and
  the schedule stays smooth (no flat clipped region). At s = 0 this is exactly
  lambda = -2 log tan(a t + b), b = atan(exp(-logsnr_max / 2)), a = atan(exp(-logsnr_min / 2)) - b.

  With cos^2(u0) - cos^2(u) = sin(u - u0) sin(u + u0):
    lambda = log(alpha_bar / (1 - alpha_bar)) = 2 log cos u - log sin(u - u0) - log sin(u + u0).
  The interval ends are float64 constants, and u - u0 and pi/2 - u are formed from their small
  offsets, so float32 keeps full precision at both ends (where the plain formula cancels).
  With s > 0, 1 - alpha_bar grows linearly in the angle near t = 0, so d lambda / dt is steep
  there (~ -2e7 at t = 0 with the defaults); s = 0 is the variant of Kingma et al. and
  Hoogeboom et al.
  """
  u0 = 0.5 * math.pi * s / (1 + s)
  c0 = math.cos(u0)**2

  def angle(logsnr):  # u with alpha_bar(u) = sigmoid(logsnr)
    return math.acos(math.sqrt(c0 / (1 + math.exp(-logsnr))))

  u_lo, u_hi = angle(logsnr_max), angle(logsnr_min)
  d_lo = u_lo - u0                     # u - u0 at t = 0
  e_hi = 0.5 * math.pi - u_hi          # pi/2 - u at t = 1
  width = u_hi - u_lo
  t = jnp.asarray(t, jnp.float32)
  return (2 * jnp.log(jnp.sin(e_hi + width * (1 - t))) - jnp.log(jnp.sin(d_lo + width * t))
          - jnp.log(jnp.sin(d_lo + width * t + 2 * u0)))


class _PositiveDense(nn.Module):
  """Dense layer with kernel |W| (VDM's DenseMonotone): monotone non-decreasing in each input."""
  features: int
  use_bias: bool = True
  kernel_init: Callable = nn.initializers.normal(1.0)

  @nn.compact
  def __call__(self, x):
    kernel = self.param('kernel', self.kernel_init, (x.shape[-1], self.features))
    y = x @ jnp.abs(kernel)
    if self.use_bias:
      y = y + self.param('bias', nn.initializers.zeros, (self.features,))
    return y


class LearnedLogSNR(nn.Module):
  """VDM's learned monotone schedule (Kingma et al. 2021, Sec. 5 / App. H), as log-SNR.

  gamma(t) = -lambda(t) = gamma_0 + (gamma_1 - gamma_0) (g(t) - g(0)) / (g(1) - g(0)), with
  g(t) = l1(t) + l3(sigmoid(l2(l1(t)))) and l1, l2, l3 positive-weight dense layers, so g is
  increasing and the endpoints are exactly the learned gamma_0, gamma_1 (initialised to
  gamma_min, gamma_max). lambda is decreasing in t while gamma_1 > gamma_0.
  Call with t [B] -> lambda [B].
  """
  gamma_min: float = -13.3
  gamma_max: float = 5.0
  hidden: int = 1024

  @nn.compact
  def __call__(self, t: jax.Array) -> jax.Array:
    gamma_0 = self.param('gamma_0', nn.initializers.constant(self.gamma_min), ())
    gamma_1 = self.param('gamma_1', nn.initializers.constant(self.gamma_max), ())
    l1 = _PositiveDense(1, kernel_init=nn.initializers.ones, name='l1')
    l2 = _PositiveDense(self.hidden, name='l2')
    l3 = _PositiveDense(1, use_bias=False, name='l3')
    # g(0) and g(1) ride along in the same batch so normalisation costs no extra pass.
    ts = jnp.concatenate([jnp.asarray(t, jnp.float32).reshape(-1), jnp.array([0., 1.])])[:, None]
    h = l1(ts)
    # / hidden keeps the nonlinear term O(1) at init whatever the width (as VDM does).
    g = (h + l3(nn.sigmoid(l2(h))) / self.hidden)[:, 0]
    g_t, g_0, g_1 = g[:-2], g[-2], g[-1]
    gamma = gamma_0 + (gamma_1 - gamma_0) * (g_t - g_0) / (g_1 - g_0)
    return -gamma.reshape(jnp.shape(t))


def logsnr_and_derivative(logsnr_fn: Callable[[jax.Array], jax.Array],
                          t: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(lambda(t), d lambda / dt) in one forward-mode pass, for any schedule that is elementwise in
  t (lambda(t)_i depends on t_i only), e.g. linear_logsnr, cosine_logsnr or
  `lambda t: LearnedLogSNR().apply(params, t)`. The derivative weights VDM's continuous-time loss
  (Kingma et al. 2021, eq. 17)."""
  t = jnp.asarray(t, jnp.float32)
  return jax.jvp(logsnr_fn, (t,), (jnp.ones_like(t),))


def variance_reduced_loss(loss_fn: Callable[[PyTree, PyTree], jax.Array], net_args: PyTree,
                          gamma_args: PyTree) -> jax.Array:
  """Per-example loss L = loss_fn(net_args, gamma_args) [B] whose gradient to the schedule
  minimises the variance of the loss estimator (Kingma et al. 2021, Sec. 5.2).

  The ELBO does not depend on the schedule except at its endpoints, so VDM trains the schedule to
  minimise Var[L] instead, i.e. E[L^2] (E[L] being fixed). Under an outer objective sum_i c_i L_i
  (c_i = 1/B for a mean), `net_args` receive the usual gradient sum_i c_i dL_i, while `gamma_args`
  (per-example log-SNR values, their t-derivatives, ...; leading axis B) receive
  sum_i c_i 2 L_i dL_i, the gradient of mean(L^2): the cotangent reaching gamma_args is
  multiplied by 2 L_i. Gradients then flow on from gamma_args into the schedule's parameters.

  Implementation: a jax.custom_vjp whose forward pass keeps jax.vjp's closure as the residual (a
  valid pytree), so the backward pass runs loss_fn's backward once. Scaling the gamma cotangents
  after that pass is exact because example i's gamma_args reach only L_i (per-example losses with
  no cross-example coupling through gamma, e.g. no batch statistics over noisy inputs). loss_fn
  may close over values that are not differentiated (the batch, PRNG keys); pass everything that
  is differentiated as an argument.
  """

  @jax.custom_vjp
  def loss(net_args, gamma_args):
    return loss_fn(net_args, gamma_args)

  def fwd(net_args, gamma_args):
    value, vjp_fn = jax.vjp(loss_fn, net_args, gamma_args)
    return value, (value, vjp_fn)

  def bwd(residual, cotangent):
    value, vjp_fn = residual
    d_net, d_gamma = vjp_fn(cotangent)
    scale = 2 * value

    def rescale(g):
      return g * scale.reshape(scale.shape + (1,) * (g.ndim - 1)).astype(g.dtype)

    return d_net, jax.tree.map(rescale, d_gamma)

  loss.defvjp(fwd, bwd)
  return loss(net_args, gamma_args)


def edm_training_sigmas(key: jax.Array, shape, p_mean: float = -1.2,
                        p_std: float = 1.2) -> jax.Array:
  """EDM training noise levels (Karras et al. 2022, Table 1): ln sigma ~ N(p_mean, p_std^2)."""
  return jnp.exp(p_mean + p_std * jax.random.normal(key, shape, jnp.float32))


# ---------------------------------------------------------------------------------------------
# Sampling grids: float32 [N + 1], decreasing, trailing 0.


def _grid(sigmas) -> jax.Array:
  if isinstance(sigmas, jax.Array):   # e.g. traced: the range of a learned schedule
    return jnp.concatenate([sigmas.astype(jnp.float32), jnp.zeros((1,), jnp.float32)])
  return jnp.asarray(np.append(np.asarray(sigmas, np.float64), 0.0), jnp.float32)


def karras_sigmas(n: int, sigma_min: float = 0.002, sigma_max: float = 80.,
                  rho: float = 7.) -> jax.Array:
  """EDM eq. 5: sigma_i = (sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho,
  i < n, then sigma_n = 0."""
  if n < 1:
    raise ValueError(f'karras_sigmas: n={n} must be >= 1')
  ramp = np.linspace(0, 1, n) if n > 1 else np.zeros(1)
  lo, hi = sigma_min**(1 / rho), sigma_max**(1 / rho)
  return _grid((hi + ramp * (lo - hi))**rho)


_SPACINGS = ('uniform', 'leading', 'trailing', 'linspace')


def discrete_timesteps(num_levels: int, n: int, spacing: str = 'uniform') -> np.ndarray:
  """n of the 0-based level indices 0..T-1 (index i is t = i + 1), noisiest first.

  Spacings (Lin et al. 2024, Table 2, there with 1-based t):
    'uniform'  DDIM's released sampler (Song et al. 2021, skip_type='uniform'):
               range(0, T, T // n)[:n] reversed. Includes the least noisy level t = 1, but
               not t = T unless n = T.
    'leading'  Lin et al.'s name for the same grid (Stable Diffusion's default): identical.
    'trailing' Lin et al. 2024: round(T - k T / n) - 1 for k < n: starts at t = T, so sampling
               begins at the level the prior matches.
    'linspace' Nichol & Dhariwal 2021: round(linspace(0, T - 1, n)): both t = 1 and t = T.
  Every spacing gives all T levels when n = T.
  """
  if spacing not in _SPACINGS:
    raise ValueError(f'discrete_sigmas: spacing={spacing!r} is not one of {_SPACINGS}')
  if not 1 <= n <= num_levels:
    raise ValueError(f'discrete_sigmas: n={n} must be in [1, T={num_levels}]')
  if spacing in ('uniform', 'leading'):
    steps = np.arange(n) * (num_levels // n)
  elif spacing == 'trailing':
    steps = np.round(num_levels - np.arange(n) * (num_levels / n)).astype(np.int64) - 1
  else:
    steps = np.round(np.linspace(0, num_levels - 1, n)).astype(np.int64)
  return np.sort(steps)[::-1]


def discrete_sigmas(logsnr_T, n: int, spacing: str = 'uniform') -> jax.Array:
  """Grid through n of a discrete model's T training levels (logsnr_T from discrete_logsnr),
  noisiest first, then 0; see discrete_timesteps for the spacings. With n = T and the `ddpm`
  sampler this is exactly Ho et al.'s T-step ancestral sampler (Algorithm 2)."""
  logsnr_T = np.asarray(logsnr_T, np.float64)
  steps = discrete_timesteps(len(logsnr_T), n, spacing)
  return _grid(np.exp(-0.5 * logsnr_T[steps]))


def logsnr_uniform_sigmas(n: int, sigma_min: float, sigma_max: float) -> jax.Array:
  """Uniform in lambda = -2 log sigma from sigma_max down to sigma_min (the DPM-Solver grid, Lu et
  al. 2022, "logSNR" time steps), then 0."""
  if n < 1:
    raise ValueError(f'logsnr_uniform_sigmas: n={n} must be >= 1')
  if isinstance(sigma_min, jax.Array) or isinstance(sigma_max, jax.Array):
    return _grid(jnp.exp(jnp.linspace(jnp.log(sigma_max), jnp.log(sigma_min), n)))
  return _grid(np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), n)))


def logsnr_level_sigmas(logsnr_T, n: int) -> jax.Array:
  """A discrete model's grid through its training levels nearest to n log-SNR-uniform targets
  (from the noisiest level to the least noisy; duplicates dropped, so at most n steps), then 0:
  DPM-Solver's spacing without querying the network between the levels it was trained on."""
  levels = np.asarray(logsnr_T, np.float64)
  targets = np.linspace(levels[-1], levels[0], n)     # noisiest first
  picks = np.unique([int(np.argmin(np.abs(levels - t))) for t in targets])[::-1]
  return _grid(np.exp(-0.5 * levels[picks]))


def continuous_sigmas(logsnr_fn: Callable[[jax.Array], jax.Array], n: int,
                      t_min: float = 0.) -> jax.Array:
  """n steps uniform in t from 1 down to t_min for a continuous schedule: sigma(t_k) at
  t_k = 1 - k (1 - t_min) / n, k < n, then 0 (the last step lands on clean data, standing in for
  t_min, so lambda(t_min) = inf as for linear_logsnr(0) is fine). Jittable."""
  if n < 1:
    raise ValueError(f'continuous_sigmas: n={n} must be >= 1')
  t = 1.0 - jnp.arange(n, dtype=jnp.float32) * ((1.0 - t_min) / n)
  sigmas = sigma_from_logsnr(jnp.asarray(logsnr_fn(t), jnp.float32))
  return jnp.append(sigmas, jnp.zeros((1,), jnp.float32))
