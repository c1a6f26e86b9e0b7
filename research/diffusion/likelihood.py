"""Negative log-likelihood bounds of discrete (8-bit) data under a VP diffusion model, in nats
per example; divide by (num_dims * ln 2) for bits/dim.

Dequantization is done by a discrete decoder, so the bound is on the probability of the 256-level
data itself, not on a continuous density (Ho et al. 2020 Sec. 3.3; Kingma et al. 2021 App. C):
  -log p(x) <= KL(q(z_1|x) || N(0, I)) + L_diffusion + E[-log p(x | z_0)].

Data x0 are the images mapped to [-1, 1] (x0 = 2 k / 255 - 1 for integer level k). Two bounds:
- `discrete_time_nll` for a model trained on T discrete levels (DDPM): the diffusion term is the
  sum over t = 2..T of KL(q(x_{t-1}|x_t, x0) || p(x_{t-1}|x_t)) with the reverse variance set to
  the posterior's, which is 0.5 (SNR_{t-1} - SNR_t) ||x0 - x0_hat(x_t)||^2 (VDM eq. 13), and the
  decoder is Ho et al.'s discretized Gaussian N(x0_hat(x_1), beta_1) over the 256 bins.
- `continuous_time_nll` (VDM eq. 17): L_diffusion = -0.5 E_t[lambda'(t) SNR(t) ||x0 - x0_hat||^2],
  and VDM's decoder, a per-pixel categorical with logits -(z_0/alpha_0 - k)^2 / (2 sigma_0^2).
Both are unbiased Monte-Carlo estimates over timesteps: average many examples (or samples).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from research.diffusion import parameterization as param
from research.diffusion.schedules import vp_alpha_sigma

NUM_LEVELS = 256
_BIN = 1.0 / (NUM_LEVELS - 1)   # half a bin width on [-1, 1]


def bits_per_dim(nll_nats: jax.Array, num_dims: int) -> jax.Array:
  return nll_nats / (num_dims * np.log(2.0))


def _sum_dims(x: jax.Array) -> jax.Array:
  return jnp.sum(x.reshape(x.shape[0], -1), axis=-1)


def prior_kl(x0: jax.Array, logsnr_max_t: jax.Array) -> jax.Array:
  """KL(q(z_T | x0) || N(0, I)) summed over dims, [B]; q(z_T|x0) = N(alpha x0, sigma^2)."""
  alpha, sigma = vp_alpha_sigma(logsnr_max_t)
  var = sigma ** 2
  return 0.5 * _sum_dims(var + (alpha * x0) ** 2 - 1.0 - jnp.log(var))


def _log_cdf_diff(upper: jax.Array, lower: jax.Array) -> jax.Array:
  """log(Phi(upper) - Phi(lower)) for standardized bounds, stable in both tails."""
  # Work on the tail that keeps precision: for lower > 0 use 1 - Phi(x) = Phi(-x).
  flip = lower > 0
  a = jnp.where(flip, -upper, lower)
  b = jnp.where(flip, -lower, upper)
  log_b, log_a = jax.scipy.special.log_ndtr(b), jax.scipy.special.log_ndtr(a)
  return log_b + jnp.log1p(-jnp.exp(jnp.minimum(log_a - log_b, -1e-12)))


def discretized_gaussian_log_prob(x0: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
  """log P(x0) for x0 on the 256-level grid of [-1, 1] under N(mean, std^2) integrated over
  each level's bin, with the outer bins extended to -inf / +inf (Ho et al. 2020 eq. 13). [B]."""
  upper = jnp.where(x0 > 1.0 - _BIN, jnp.inf, (x0 + _BIN - mean) / std)
  lower = jnp.where(x0 < -1.0 + _BIN, -jnp.inf, (x0 - _BIN - mean) / std)
  return _sum_dims(_log_cdf_diff(upper, lower))


def categorical_decoder_log_prob(x0: jax.Array, x_noisy: jax.Array, sigma: jax.Array):
  """VDM's decoder: log p(x0 | z_0) with p(k) ~ exp(-(x_noisy - v_k)^2 / (2 sigma^2)) over the
  256 levels v_k, where x_noisy = z_0 / alpha_0 = x0 + sigma eps (VE form). [B]."""
  levels = jnp.linspace(-1.0, 1.0, NUM_LEVELS, dtype=x0.dtype)
  sigma = param._bcast(sigma, x0)[..., None]
  logits = -0.5 * ((x_noisy[..., None] - levels) / sigma) ** 2
  index = jnp.round((x0 + 1.0) / (2 * _BIN)).astype(jnp.int32)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  return _sum_dims(jnp.take_along_axis(log_probs, index[..., None], axis=-1)[..., 0])


def discrete_time_nll(x0_fn, x0: jax.Array, logsnrs: jax.Array, key: jax.Array,
                      num_timesteps: int = 1) -> dict:
  """The T-step bound for a DDPM, per example [B] nats, averaged over `num_timesteps`
  stratified timesteps per example.

  x0_fn(z, logsnr[B]) -> x0_hat from the VP input z; logsnrs: the model's T training levels,
  decreasing (index 0 is Ho's t = 1).
  """
  t_count = logsnrs.shape[0]
  b = x0.shape[0]
  k_t, k_eps = jax.random.split(key)

  def diffusion_term(i_key):
    i, key = i_key
    # Stratified over t = 2..T (indices 1..T-1): one uniform draw per stratum.
    u = (i + jax.random.uniform(jax.random.fold_in(key, 0), (b,))) / num_timesteps
    idx = 1 + jnp.minimum((u * (t_count - 1)).astype(jnp.int32), t_count - 2)
    logsnr, logsnr_prev = logsnrs[idx], logsnrs[idx - 1]
    alpha, sigma = vp_alpha_sigma(logsnr)
    eps = jax.random.normal(jax.random.fold_in(key, 1), x0.shape, x0.dtype)
    z = param._bcast(alpha, x0) * x0 + param._bcast(sigma, x0) * eps
    err = _sum_dims((x0 - x0_fn(z, logsnr)) ** 2)
    return (t_count - 1) * 0.5 * (jnp.exp(logsnr_prev) - jnp.exp(logsnr)) * err

  keys = jax.random.split(k_t, num_timesteps)
  diffusion = jnp.mean(jax.lax.map(diffusion_term, (jnp.arange(num_timesteps), keys)), axis=0)

  # Decoder at the first level: N(x0_hat(z_1), beta_1) discretized; beta_1 = sigma_vp(t=1)^2.
  alpha1, sigma1 = vp_alpha_sigma(logsnrs[0])
  z1 = alpha1 * x0 + sigma1 * jax.random.normal(k_eps, x0.shape, x0.dtype)
  logsnr1 = jnp.full((b,), logsnrs[0])
  recon = -discretized_gaussian_log_prob(x0, x0_fn(z1, logsnr1), sigma1)
  prior = prior_kl(x0, logsnrs[-1])
  return {'nll': prior + diffusion + recon, 'prior': prior, 'diffusion': diffusion,
          'recon': recon}


def continuous_diffusion_loss(x0_fn, x0: jax.Array, eps: jax.Array, logsnr: jax.Array,
                              dlogsnr: jax.Array) -> jax.Array:
  """One-sample estimate of VDM's continuous-time diffusion term at per-example log-SNR
  `logsnr` [B] with time derivative `dlogsnr` [B] (< 0): -0.5 lambda'(t) SNR(t) ||x0 - x0_hat||^2
  (= -0.5 lambda'(t) ||eps - eps_hat||^2), nats [B]."""
  alpha, sigma = vp_alpha_sigma(logsnr)
  z = param._bcast(alpha, x0) * x0 + param._bcast(sigma, x0) * eps
  err = _sum_dims((x0 - x0_fn(z, logsnr)) ** 2)
  return -0.5 * dlogsnr * jnp.exp(logsnr) * err


def endpoint_terms(x0: jax.Array, logsnr0: jax.Array, logsnr1: jax.Array, eps: jax.Array):
  """(prior KL at t = 1, decoder NLL at t = 0) of the continuous-time bound, nats [B] each;
  logsnr0 / logsnr1 are scalars or [B]; eps ~ N(0, I) like x0 draws z_0."""
  sigma0 = jnp.exp(-0.5 * logsnr0)                               # VE sigma at t = 0
  x_noisy = x0 + param._bcast(sigma0, x0) * eps
  recon = -categorical_decoder_log_prob(x0, x_noisy, sigma0)
  prior = prior_kl(x0, param._bcast(logsnr1, x0))
  return prior, recon


def low_discrepancy_times(key: jax.Array, batch: int, per_example: int = 1) -> jax.Array:
  """[per_example, B] times in [0, 1): one uniform offset shifted by i / n (VDM's sampler,
  stratified over the batch and over the samples of one example), unbiased per entry."""
  n = batch * per_example
  u = jax.random.uniform(key, ())
  t = jnp.mod(u + jnp.arange(n) / n, 1.0)
  return t.reshape(batch, per_example).T


def continuous_time_nll(x0_fn, x0: jax.Array, logsnr_fn, key: jax.Array,
                        num_timesteps: int = 1) -> dict:
  """The continuous-time bound (VDM eq. 17), per example [B] nats, averaged over
  `num_timesteps` low-discrepancy timesteps per example.

  x0_fn(z, logsnr[B]) -> x0_hat; logsnr_fn(t[B]) -> (logsnr, d logsnr/dt) for t in [0, 1]
  (decreasing in t).
  """
  b = x0.shape[0]
  k_t, k_eps, k_dec = jax.random.split(key, 3)
  ts = low_discrepancy_times(k_t, b, num_timesteps)

  def term(args):
    t, key = args
    logsnr, dlogsnr = logsnr_fn(t)
    eps = jax.random.normal(key, x0.shape, x0.dtype)
    return continuous_diffusion_loss(x0_fn, x0, eps, logsnr, dlogsnr)

  diffusion = jnp.mean(jax.lax.map(term, (ts, jax.random.split(k_eps, num_timesteps))), axis=0)
  logsnr0, _ = logsnr_fn(jnp.zeros((b,)))
  logsnr1, _ = logsnr_fn(jnp.ones((b,)))
  prior, recon = endpoint_terms(x0, logsnr0, logsnr1,
                                jax.random.normal(k_dec, x0.shape, x0.dtype))
  return {'nll': prior + diffusion + recon, 'prior': prior, 'diffusion': diffusion,
          'recon': recon}
