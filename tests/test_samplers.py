"""Noise schedules and samplers against closed forms.

The sampler tests use Gaussian data x0 ~ N(MU, SIGMA), whose optimal denoiser is exact:
E[x0 | x] = MU + SIGMA (SIGMA + sigma^2 I)^-1 (x - MU). Each sampler step is then affine in x, so
a deterministic sampler maps N(0, v I) noise to a Gaussian whose moments follow from a scalar
recursion per eigendirection of SIGMA; with whitened initial noise (sample mean exactly 0, sample
covariance exactly I) the sample moments equal that pushforward up to float32 rounding, free of
Monte Carlo error.
"""
from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.diffusion import samplers as M
from research.diffusion import schedules as S

MU = np.array([1.0, -1.0, 0.5])
STDS = np.array([1.0, 1.5, 2.0])
CORR = np.array([[1.0, 0.4, -0.2], [0.4, 1.0, 0.3], [-0.2, 0.3, 1.0]])
SIGMA = CORR * np.outer(STDS, STDS)
EIGVALS, EIGVECS = np.linalg.eigh(SIGMA)  # eigen-stds 0.77 .. 2.09

LOGSNR_T = S.discrete_logsnr(S.linear_betas())           # Ho et al.'s linear schedule, T = 1000
SIGMA_T = float(np.exp(-0.5 * np.float64(LOGSNR_T[-1])))  # ~157: VP prior level
SIGMA_1 = float(np.exp(-0.5 * np.float64(LOGSNR_T[0])))   # ~0.01: least noisy training level


def gaussian_denoiser(mu, eigvals=EIGVALS, eigvecs=EIGVECS):
  """E[x0 | x0 + sigma eps = x] for x0 ~ N(mu, U diag(eigvals) U^T); mu [3] or per example."""
  mu, lam, u = (jnp.asarray(a, jnp.float32) for a in (mu, eigvals, eigvecs))

  def denoiser(x, sigma):
    return mu + (((x - mu) @ u) * (lam / (lam + sigma**2))) @ u.T

  return denoiser


DENOISER = gaussian_denoiser(MU)


def whitened_noise(key, n):
  """[n, 3] float32 noise with sample mean 0 and sample covariance I."""
  z = np.asarray(jax.random.normal(key, (n, 3)), np.float64)
  z -= z.mean(0)
  z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z.T, bias=True))).T
  return jnp.asarray(z, jnp.float32)


def moments(x):
  x = np.asarray(x, np.float64)
  return x.mean(0), np.cov(x.T, bias=True)


# ---------------------------------------------------------------------------------------------
# Schedules.


def test_vp_conversions():
  logsnr = jnp.array([-30., -3., 0., 2.5, 30.])
  alpha, sigma_vp = S.vp_alpha_sigma(logsnr)
  np.testing.assert_allclose(alpha**2 + sigma_vp**2, 1.0, rtol=1e-6)
  # sigma_vp stays accurate where 1 - alpha^2 cancels: sqrt(sigmoid(-30)) ~ exp(-15).
  np.testing.assert_allclose(sigma_vp[-1], math.exp(-15), rtol=1e-5)
  np.testing.assert_allclose(sigma_vp / alpha, S.sigma_from_logsnr(logsnr), rtol=1e-5)
  np.testing.assert_allclose(S.logsnr_from_sigma(S.sigma_from_logsnr(logsnr)), logsnr, atol=1e-5)


def test_discrete_logsnr_matches_float64_reference():
  betas = np.linspace(1e-4, 0.02, 1000)
  alpha_bar = np.cumprod(1 - betas)
  reference = np.log(alpha_bar / (1 - alpha_bar))
  assert LOGSNR_T.dtype == jnp.float32 and LOGSNR_T.shape == (1000,)
  np.testing.assert_allclose(LOGSNR_T, reference, rtol=1e-6, atol=1e-6)
  assert np.all(np.diff(np.asarray(LOGSNR_T)) < 0)
  np.testing.assert_allclose(LOGSNR_T[0], math.log((1 - 1e-4) / 1e-4), rtol=1e-6)
  # Cosine: alpha_bar_t = f(t)/f(0) until the beta clip bites at the very end.
  f = np.cos(np.pi / 2 * (np.arange(1001) / 1000 + 0.008) / 1.008)**2
  np.testing.assert_allclose(S.cosine_alpha_bars()[:990], (f[1:] / f[0])[:990], rtol=1e-9)
  assert np.all(S.cosine_betas() <= 0.999)


def test_linear_logsnr_is_the_continuous_limit_of_the_discrete_schedule():
  t = jnp.arange(1, 1001, dtype=jnp.float32) / 1000
  gap = np.abs(np.asarray(S.linear_logsnr(t)) - np.asarray(LOGSNR_T))
  # The gaps are the discretisation: beta integrated over a step vs beta at its start (t = 1/T)
  # and the sum of beta^2/2 dropped by log(1 - beta) ~ -beta (t = 1).
  assert gap.max() < 0.1 and gap[50:600].max() < 0.02
  assert jnp.isinf(S.linear_logsnr(jnp.zeros(())))
  # Closed-form derivative: lambda = -log expm1(u), u = T (b0 t + (b1 - b0) t^2 / 2).
  t = jnp.linspace(0.05, 1.0, 20)
  u = 1000 * (1e-4 * t + 0.5 * 0.0199 * t**2)
  du = 1000 * (1e-4 + 0.0199 * t)
  value, deriv = S.logsnr_and_derivative(S.linear_logsnr, t)
  np.testing.assert_allclose(value, -np.log(np.expm1(u)), rtol=1e-5)
  np.testing.assert_allclose(deriv, -np.exp(u) / np.expm1(u) * du, rtol=1e-4)


def test_cosine_logsnr():
  t = jnp.linspace(0., 1., 101)
  for s in (0.008, 0.):
    ends = S.cosine_logsnr(jnp.array([0., 1.]), s=s)
    np.testing.assert_allclose(ends, [20., -20.], atol=1e-4)
    assert np.all(np.diff(np.asarray(S.cosine_logsnr(t, s=s))) < 0)
  np.testing.assert_allclose(S.cosine_logsnr(jnp.array([0., 1.]), logsnr_min=-10., logsnr_max=5.),
                             [5., -10.], atol=1e-4)
  # s = 0 is the usual truncated form -2 log tan(a t + b), here in float64.
  b = math.atan(math.exp(-10.))
  a = math.atan(math.exp(10.)) - b
  t64 = np.linspace(0., 1., 101)
  np.testing.assert_allclose(S.cosine_logsnr(t, s=0.), -2 * np.log(np.tan(a * t64 + b)), atol=2e-4)
  _, deriv = S.logsnr_and_derivative(lambda t: S.cosine_logsnr(t, s=0.), t[1:-1])
  np.testing.assert_allclose(deriv, -4 * a / np.sin(2 * (a * t64[1:-1] + b)), rtol=1e-3)
  # s > 0: alpha_bar = cos^2(u) / cos^2(u0) with an angle u affine in t.
  u0 = 0.5 * math.pi * 0.008 / 1.008
  alpha_bar = 1 / (1 + np.exp(-np.asarray(S.cosine_logsnr(t), np.float64)))
  u = np.arccos(np.sqrt(alpha_bar * math.cos(u0)**2))
  np.testing.assert_allclose(np.diff(u, 2), 0., atol=2e-6)


def test_learned_logsnr_is_monotone_with_learned_endpoints():
  model = S.LearnedLogSNR()
  params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((4,)))
  apply = jax.jit(model.apply)
  t = jnp.linspace(0., 1., 1001)
  logsnr = apply(params, t)
  assert logsnr.shape == (1001,)
  np.testing.assert_allclose(logsnr[jnp.array([0, -1])], [13.3, -5.0], rtol=1e-5)
  assert np.all(np.diff(np.asarray(logsnr)) < 0)
  # Monotone for any weights: randomise every kernel and bias (large l3 so the nonlinear term
  # dominates), keep the endpoints.
  rng = np.random.default_rng(1)
  for _ in range(4):
    net = {name: {k: rng.normal(0., 100. if name == 'l3' else 5., v.shape).astype(np.float32)
                  for k, v in layer.items()}
           for name, layer in params['params'].items() if name.startswith('l')}
    logsnr = apply({'params': dict(params['params'], **net)}, t)
    np.testing.assert_allclose(logsnr[jnp.array([0, -1])], [13.3, -5.0], rtol=1e-4)
    assert np.all(np.diff(np.asarray(logsnr)) < 0)


def test_variance_reduced_loss_gradients():
  """net_args get grad mean(L); gamma_args get grad mean(L^2), also through a learned schedule."""
  batch = 6
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(batch, 3)), jnp.float32)
  net = {'w': jnp.array([0.3, -0.7, 1.1]), 'b': jnp.array(0.4)}
  gamma = {'logsnr': jnp.linspace(-3., 5., batch), 'dlogsnr': -jnp.linspace(1., 9., batch),
           'extra': jnp.asarray(rng.normal(size=(batch, 2)), jnp.float32)}
  schedule = S.LearnedLogSNR(hidden=16)
  t = jnp.asarray(rng.uniform(size=batch), jnp.float32)

  def loss_fn(net, gamma):
    pred = jnp.tanh(x @ net['w'] + net['b'] * gamma['logsnr'])
    err = (pred - 0.5 * x[:, 0])**2 * jnp.exp(0.1 * gamma['logsnr'])
    return -0.5 * gamma['dlogsnr'] * err + gamma['extra'].sum(-1) ** 2

  def gamma_of(p):  # schedule params -> (lambda(t), lambda'(t)) -> loss
    logsnr, dlogsnr = S.logsnr_and_derivative(lambda u: schedule.apply(p, u), t)
    return dict(gamma, logsnr=0.3 * logsnr, dlogsnr=dlogsnr)

  @jax.jit
  def check(net, gamma, sched_params):
    vr_mean = lambda n, g: S.variance_reduced_loss(loss_fn, n, g).mean()  # noqa: E731
    return dict(
        value=S.variance_reduced_loss(loss_fn, net, gamma), plain_value=loss_fn(net, gamma),
        got=jax.grad(vr_mean, argnums=(0, 1))(net, gamma),
        want=(jax.grad(lambda n: loss_fn(n, gamma).mean())(net),
              jax.grad(lambda g: (loss_fn(net, g)**2).mean())(gamma)),
        plain_gamma=jax.grad(lambda g: loss_fn(net, g).mean())(gamma),
        got_sched=jax.grad(lambda p: vr_mean(net, gamma_of(p)))(sched_params),
        want_sched=jax.grad(lambda p: (loss_fn(net, gamma_of(p))**2).mean())(sched_params))

  r = check(net, gamma, jax.jit(schedule.init)(jax.random.PRNGKey(2), t))
  np.testing.assert_allclose(r['value'], r['plain_value'], rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               r['got'], r['want'])
  # Plain and variance-minimising gamma gradients differ, so the check above can fail.
  assert not np.allclose(r['plain_gamma']['logsnr'], r['want'][1]['logsnr'], rtol=1e-2)
  scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(r['want_sched']))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4 * scale),
               r['got_sched'], r['want_sched'])


def test_edm_training_sigmas_are_log_normal():
  sigmas = S.edm_training_sigmas(jax.random.PRNGKey(3), (100_000,))
  log_s = np.log(np.asarray(sigmas, np.float64))
  assert sigmas.dtype == jnp.float32 and np.all(sigmas > 0)
  assert abs(log_s.mean() + 1.2) < 0.02 and abs(log_s.std() - 1.2) < 0.02


def test_karras_and_logsnr_uniform_grids():
  grid = np.asarray(S.karras_sigmas(18), np.float64)
  assert len(grid) == 19 and grid[-1] == 0
  np.testing.assert_allclose(grid[[0, 17]], [80., 0.002], rtol=1e-6)
  # EDM eq. 5 at i = 9 of N = 18.
  mid = (80**(1 / 7) + 9 / 17 * (0.002**(1 / 7) - 80**(1 / 7)))**7
  np.testing.assert_allclose(grid[9], mid, rtol=1e-6)
  assert np.all(np.diff(grid) < 0) and S.karras_sigmas(18).dtype == jnp.float32
  np.testing.assert_allclose(S.karras_sigmas(1), [80., 0.])
  grid = np.asarray(S.logsnr_uniform_sigmas(5, 0.01, 100.), np.float64)
  np.testing.assert_allclose(grid, [100., 10., 1., 0.1, 0.01, 0.], rtol=1e-6)


def test_discrete_sigma_grids():
  sigma_of = np.exp(-0.5 * np.asarray(LOGSNR_T, np.float64))
  full = np.asarray(S.discrete_sigmas(LOGSNR_T, 1000))
  np.testing.assert_allclose(full[:-1], sigma_of[::-1], rtol=1e-6)
  assert full[-1] == 0 and len(full) == 1001
  for spacing in ('uniform', 'leading', 'trailing', 'linspace'):
    np.testing.assert_array_equal(S.discrete_sigmas(LOGSNR_T, 1000, spacing), full)
  # 0-based level i is t = i + 1. DDIM's uniform spacing: t = 901, 801, ..., 1.
  expected = {'uniform': np.arange(900, -1, -100), 'leading': np.arange(900, -1, -100),
              'trailing': np.arange(999, 0, -100),
              'linspace': np.round(np.linspace(999, 0, 10)).astype(int)}
  for spacing, steps in expected.items():
    np.testing.assert_allclose(S.discrete_sigmas(LOGSNR_T, 10, spacing)[:-1], sigma_of[steps],
                               rtol=1e-6, err_msg=spacing)
  np.testing.assert_array_equal(S.discrete_timesteps(1000, 3, 'trailing'), [999, 666, 332])
  with pytest.raises(ValueError, match='spacing'):
    S.discrete_sigmas(LOGSNR_T, 10, 'even')
  with pytest.raises(ValueError, match='n=1001'):
    S.discrete_sigmas(LOGSNR_T, 1001)


def test_logsnr_level_grid_snaps_log_snr_targets_to_training_levels():
  levels = np.asarray(LOGSNR_T, np.float64)
  sigma_of = np.exp(-0.5 * levels)
  for n in (2, 10, 50, 300):
    grid = np.asarray(S.logsnr_level_sigmas(LOGSNR_T, n), np.float64)
    assert grid[-1] == 0 and 2 <= len(grid) - 1 <= n
    assert np.all(np.diff(grid) < 0)
    idx = [int(np.argmin(np.abs(sigma_of - g))) for g in grid[:-1]]
    np.testing.assert_allclose(grid[:-1], sigma_of[idx], rtol=1e-6)      # on the levels only
    assert idx[0] == len(levels) - 1 and idx[-1] == 0                    # noisiest .. least
    # Each step is the level nearest its log-SNR-uniform target.
    targets = np.linspace(levels[-1], levels[0], n)
    assert set(idx) == {int(np.argmin(np.abs(levels - t))) for t in targets}


def test_continuous_sigmas():
  grid = S.continuous_sigmas(S.cosine_logsnr, 4)
  t = jnp.array([1., 0.75, 0.5, 0.25])
  np.testing.assert_allclose(grid[:-1], jnp.exp(-0.5 * S.cosine_logsnr(t)), rtol=1e-6)
  np.testing.assert_allclose(grid[0], math.exp(10.), rtol=1e-4)
  assert grid[-1] == 0 and grid.dtype == jnp.float32
  grid = jax.jit(lambda: S.continuous_sigmas(S.linear_logsnr, 10, t_min=1e-3))()
  assert np.all(np.isfinite(grid)) and np.all(np.diff(np.asarray(grid)) < 0)
  np.testing.assert_allclose(grid[-2], jnp.exp(-0.5 * S.linear_logsnr(jnp.array(0.1009))),
                             rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Samplers: accuracy against the data distribution.

VP, VE = True, False
N_WHITE = 4096       # deterministic samplers: whitened noise, so no Monte Carlo error
N_STOCHASTIC = 1 << 15

ACCURACY_CASES = {
    # name: (sampler, grid, variance-preserving prior, options, samples, std / mean tolerance)
    'ddpm-1000': ('ddpm', lambda: S.discrete_sigmas(LOGSNR_T, 1000), VP, {}, N_STOCHASTIC, 0.02),
    'ddim-100': ('ddim', lambda: S.discrete_sigmas(LOGSNR_T, 100), VP, {}, N_WHITE, 0.02),
    # DPM-Solver's logSNR-uniform grid over the DDPM model's own range; on karras_sigmas(20) the
    # 2M solver is ~4-5% off in std on this data.
    'dpmpp_2m-20': ('dpmpp_2m', lambda: S.logsnr_uniform_sigmas(20, SIGMA_1, SIGMA_T), VP, {},
                    N_WHITE, 0.02),
    # EDM's 18-step Heun on its own grid overshoots Gaussian stds by 3.6-4.4% here (the exact
    # recursion in test_deterministic_samplers_match_the_exact_discrete_pushforward agrees); a
    # Gaussian is traversed at sigma ~ its std, where rho = 7 steps are long. 40 steps: < 1%.
    'heun-18': ('heun', lambda: S.karras_sigmas(18), VE, {}, N_WHITE, 0.05),
    'heun-40': ('heun', lambda: S.karras_sigmas(40), VE, {}, N_WHITE, 0.02),
    'euler-256': ('euler', lambda: S.karras_sigmas(256), VE, {}, N_WHITE, 0.02),
    'heun-churn-100': ('heun', lambda: S.karras_sigmas(100), VE,
                       dict(churn=40., s_tmin=0.05, s_tmax=50.), N_STOCHASTIC, 0.02),
}


@pytest.mark.parametrize('case', list(ACCURACY_CASES))
def test_sampler_matches_gaussian_data(case):
  name, grid_fn, vp, opts, n, tol = ACCURACY_CASES[case]
  sigmas = grid_fn()
  scale = math.sqrt(float(sigmas[0])**2 + 1) if vp else float(sigmas[0])
  x = whitened_noise(jax.random.PRNGKey(4), n) * scale
  sample = jax.jit(lambda x, s, k: M.run(name, DENOISER, x, s, k, **opts))
  mean, cov = moments(sample(x, sigmas, jax.random.PRNGKey(5)))
  assert np.all(np.abs(mean - MU) / STDS < 0.02), (mean - MU) / STDS
  assert np.all(np.abs(np.sqrt(np.diag(cov)) / STDS - 1) < tol), np.sqrt(np.diag(cov)) / STDS - 1
  assert np.linalg.norm(cov - SIGMA) / np.linalg.norm(SIGMA) < 2 * tol


# ---------------------------------------------------------------------------------------------
# Samplers: exactness of the discretisation, against independent float64 scalar recursions.


def reference_factor(name: str, lam: np.ndarray, sigmas) -> np.ndarray:
  """F with x_out - MU = F (x_in - MU) along an eigendirection of variance lam, following the
  published update rules with the exact denoiser D = MU + lam / (lam + sigma^2) (x - MU)."""
  sigmas = np.asarray(sigmas, np.float64)
  p = lambda s: lam / (lam + s**2)      # noqa: E731
  slope = lambda y, s: (1 - p(s)) * y / s   # noqa: E731 -- dx/dsigma
  y, d_prev = np.ones_like(lam), None
  for i in range(len(sigmas) - 1):
    s, s_next = sigmas[i], sigmas[i + 1]
    if name in ('ddim', 'euler'):      # Song et al. eq. 12 at eta = 0 / EDM Euler
      y = y + (s_next - s) * slope(y, s)
    elif name == 'heun':               # EDM Algorithm 2, no churn
      y_euler = y + (s_next - s) * slope(y, s)
      if s_next > 0:
        y = y + (s_next - s) * 0.5 * (slope(y, s) + slope(y_euler, s_next))
      else:
        y = y_euler
    elif name == 'dpmpp_2m':           # Lu et al. 2022, Algorithm 2
      d = p(s) * y
      d_used = d
      if d_prev is not None and s_next > 0:
        r = math.log(sigmas[i - 1] / s) / math.log(s / s_next)
        d_used = (1 + 1 / (2 * r)) * d - 1 / (2 * r) * d_prev
      y = (s_next / s) * y + (1 - s_next / s) * d_used
      d_prev = d
  return y


EXACT_CASES = [
    ('ddim', lambda: S.discrete_sigmas(LOGSNR_T, 100), VP),
    ('ddim', lambda: S.discrete_sigmas(LOGSNR_T, 50, 'trailing'), VP),
    ('euler', lambda: S.karras_sigmas(30), VE),
    ('heun', lambda: S.karras_sigmas(18), VE),
    ('heun', lambda: S.logsnr_uniform_sigmas(7, 0.01, 80.), VE),
    ('dpmpp_2m', lambda: S.logsnr_uniform_sigmas(20, SIGMA_1, SIGMA_T), VP),
    ('dpmpp_2m', lambda: S.karras_sigmas(12), VE),
]


@pytest.mark.parametrize('name,grid_fn,vp', EXACT_CASES)
def test_deterministic_samplers_match_the_exact_discrete_pushforward(name, grid_fn, vp):
  sigmas = grid_fn()
  var = float(sigmas[0])**2 + 1 if vp else float(sigmas[0])**2
  x = whitened_noise(jax.random.PRNGKey(6), N_WHITE) * math.sqrt(var)
  mean, cov = moments(jax.jit(lambda x, s: M.run(name, DENOISER, x, s))(x, sigmas))
  f = reference_factor(name, EIGVALS, sigmas)
  # Prior mean 0: the deviation x_in - MU has mean -MU, covariance var I.
  want_mean = MU + EIGVECS @ (f * (EIGVECS.T @ -MU))
  want_cov = EIGVECS @ np.diag(f**2 * var) @ EIGVECS.T
  np.testing.assert_allclose((mean - want_mean) / STDS, 0., atol=2e-4)
  np.testing.assert_allclose(cov / np.outer(STDS, STDS), want_cov / np.outer(STDS, STDS),
                             atol=5e-4)


def test_ddpm_is_ho_et_al_algorithm_2():
  """ddpm on the full 1000-level grid from the VP prior reproduces Ho et al.'s sampler in VP
  coordinates (float64 numpy, eps from a solve-based exact denoiser), given the same noise: step i
  draws its noise from fold_in(key, i)."""
  batch, key = 64, jax.random.PRNGKey(7)
  sigmas = S.discrete_sigmas(LOGSNR_T, 1000)
  x_T = M.prior_sample(jax.random.PRNGKey(8), (batch, 3), sigmas[0])
  out = np.asarray(jax.jit(lambda x: M.ddpm(DENOISER, x, sigmas, key))(x_T), np.float64)

  betas = S.linear_betas()
  alpha_bar = np.cumprod(1 - betas)
  noise = np.asarray(jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i),
                                                          (batch, 3)))(jnp.arange(1000)),
                     np.float64)
  z = np.asarray(x_T, np.float64) * np.sqrt(alpha_bar[-1])   # z_T = alpha_T x_T ~ N(0, I)
  for i, t in enumerate(range(1000, 0, -1)):
    ab, beta = alpha_bar[t - 1], betas[t - 1]
    ab_prev = alpha_bar[t - 2] if t > 1 else 1.0
    x = z / np.sqrt(ab)
    sigma2 = (1 - ab) / ab
    x0 = MU + (x - MU) @ np.linalg.solve(SIGMA + sigma2 * np.eye(3), SIGMA)  # symmetric
    eps = (z - np.sqrt(ab) * x0) / np.sqrt(1 - ab)
    z = (z - beta / np.sqrt(1 - ab) * eps) / np.sqrt(1 - beta)
    z += np.sqrt((1 - ab_prev) / (1 - ab) * beta) * noise[i]
  np.testing.assert_allclose(out, z, atol=2e-3)


def test_one_step_grids_return_the_denoised_input():
  x = jax.random.normal(jax.random.PRNGKey(9), (8, 3)) * 5.
  sigmas = jnp.array([5., 0.])
  want = DENOISER(x, sigmas[0])
  for name in M.SAMPLERS:
    out = M.run(name, DENOISER, x, sigmas, jax.random.PRNGKey(0))
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5, err_msg=name)


def test_clipped_denoiser_bounds_every_estimate():
  x = jax.random.normal(jax.random.PRNGKey(9), (8, 3)) * 5.
  calls = []

  def wide(x, sigma):            # records what the sampler is given back
    out = 3. * DENOISER(x, sigma)
    calls.append(out)
    return out

  clipped = M.clipped(wide, -1., 1.)
  d = clipped(x, 5.)
  assert float(jnp.abs(d).max()) == 1. and float(jnp.abs(calls[-1]).max()) > 1.
  np.testing.assert_array_equal(d, jnp.clip(calls[-1], -1., 1.))
  # Every sampler's one-step output is the clipped estimate; a 10-step DDIM run stays in range
  # although the unclipped run leaves it.
  for name in M.SAMPLERS:
    out = M.run(name, clipped, x, jnp.array([5., 0.]), jax.random.PRNGKey(0))
    np.testing.assert_allclose(out, jnp.clip(3. * DENOISER(x, 5.), -1, 1), atol=1e-6)
  sigmas = jnp.geomspace(5., 0.01, 10).tolist() + [0.]
  assert float(jnp.abs(M.run('ddim', wide, x, jnp.array(sigmas), None)).max()) > 1.
  assert float(jnp.abs(M.run('ddim', clipped, x, jnp.array(sigmas), None)).max()) <= 1.


def test_ddim_determinism_and_ddpm_equivalence():
  sigmas = S.discrete_sigmas(LOGSNR_T, 20)
  x = M.prior_sample(jax.random.PRNGKey(10), (16, 3), sigmas[0])
  ddim = jax.jit(lambda x, k, eta: M.ddim(DENOISER, x, sigmas, k, eta=eta), static_argnums=2)
  ddpm = jax.jit(lambda x, k: M.ddpm(DENOISER, x, sigmas, k))
  a = ddim(x, jax.random.PRNGKey(1), 0.)
  np.testing.assert_array_equal(a, ddim(x, jax.random.PRNGKey(2), 0.))
  key = jax.random.PRNGKey(3)
  np.testing.assert_array_equal(ddim(x, key, 1.), ddpm(x, key))
  assert not np.allclose(ddpm(x, jax.random.PRNGKey(4)), ddpm(x, key))
  # Euler is DDIM eta = 0 on the same grid.
  np.testing.assert_allclose(jax.jit(lambda x: M.euler(DENOISER, x, sigmas))(x), a, rtol=1e-4,
                             atol=1e-4)
  with pytest.raises(ValueError, match='key'):
    M.ddim(DENOISER, x, sigmas, eta=0.5)


def test_prior_sample_scales():
  key = jax.random.PRNGKey(11)
  vp = M.prior_sample(key, (1000, 3), 80.)
  ve = M.prior_sample(key, (1000, 3), 80., variance_preserving=False)
  np.testing.assert_allclose(vp / ve, math.sqrt(80.**2 + 1) / 80., rtol=1e-6)
  assert abs(float(jnp.std(ve)) / 80. - 1) < 0.05


@pytest.mark.parametrize('name', list(M.SAMPLERS))
def test_nfe_counts_denoiser_calls(name):
  calls = []

  def counting(x, sigma):
    calls.append(float(sigma))
    return DENOISER(x, sigma)

  opts = {'churn': 1.} if name == 'heun' else {}
  with jax.disable_jit():  # lax.scan then runs its body once per step
    M.run(name, counting, jnp.ones((2, 3)) * 80., S.karras_sigmas(7), jax.random.PRNGKey(0),
          **opts)
  assert len(calls) == M.nfe(name, 7)
  assert 0. not in calls
  assert M.nfe('heun', 18) == 35 and M.nfe('dpmpp_2m', 20) == 20


def test_run_validates_names_and_options():
  x, sigmas = jnp.ones((2, 3)), S.karras_sigmas(4)
  with pytest.raises(ValueError, match="'eta'"):
    M.run('heun', DENOISER, x, sigmas, eta=1.)
  with pytest.raises(ValueError, match="'unipc'"):
    M.run('unipc', DENOISER, x, sigmas)
  assert set(M.options('heun')) == {'churn', 's_tmin', 's_tmax', 's_noise'}
  np.testing.assert_array_equal(M.run('ddim', DENOISER, x, sigmas, eta=0.),
                                M.ddim(DENOISER, x, sigmas))


@pytest.mark.parametrize('name', ['ddim', 'heun', 'dpmpp_2m'])
def test_compile_time_does_not_grow_with_steps(name, no_compilation_cache):
  # no_compilation_cache: the repeats below must compile, not load the first one's executable.
  x = jnp.zeros((8, 3))

  def compile_seconds(n):
    best = float('inf')
    for _ in range(3):
      fn = jax.jit(lambda x, s, k: M.run(name, gaussian_denoiser(MU), x, s, k))
      start = time.perf_counter()
      fn.lower(x, S.karras_sigmas(n), jax.random.PRNGKey(0)).compile()
      best = min(best, time.perf_counter() - start)
    return best

  small, large = compile_seconds(10), compile_seconds(1000)
  assert large < 3 * small and large < 10., (small, large)


# ---------------------------------------------------------------------------------------------
# Classifier-free guidance.

CLASS_MEANS = jnp.array([[0., 0., 0.], [0.3, -0.4, 0.2]])   # row 0: the null label


def labelled_denoiser(x, sigma, labels):
  return gaussian_denoiser(CLASS_MEANS[labels])(x, sigma)


def test_guided_scale_zero_is_the_conditional_model():
  cond, uncond = gaussian_denoiser(CLASS_MEANS[1]), gaussian_denoiser(CLASS_MEANS[0])
  assert M.guided(cond, uncond, 0.) is cond and M.guided(cond, uncond, 0) is cond
  sigmas = S.karras_sigmas(10)
  x = M.prior_sample(jax.random.PRNGKey(12), (64, 3), sigmas[0], variance_preserving=False)
  plain = jax.jit(lambda x: M.heun(cond, x, sigmas))(x)
  traced = jax.jit(lambda x, w: M.heun(M.guided(cond, uncond, w), x, sigmas))(x, 0.)
  np.testing.assert_array_equal(traced, plain)
  labels = jnp.ones((64,), jnp.int32)
  batched = jax.jit(lambda x, w: M.heun(M.guided_batched(labelled_denoiser, labels, 0, w), x,
                                        sigmas))(x, 0.)
  np.testing.assert_allclose(batched, plain, rtol=1e-6, atol=1e-6)


def test_guidance_extrapolates_away_from_the_unconditional_mean():
  """With equal covariances, D_c + w (D_c - D_u) is exactly the denoiser of
  N(mu_c + w (mu_c - mu_u), SIGMA), so guided samples have that mean and covariance SIGMA."""
  scale = 2.0
  mu_u, mu_c = np.asarray(CLASS_MEANS[0]), np.asarray(CLASS_MEANS[1])
  sigmas = S.logsnr_uniform_sigmas(40, SIGMA_1, SIGMA_T)
  x = whitened_noise(jax.random.PRNGKey(13), N_WHITE) * math.sqrt(float(sigmas[0])**2 + 1)
  labels = jnp.ones((N_WHITE,), jnp.int32)
  guided = M.guided(gaussian_denoiser(mu_c), gaussian_denoiser(mu_u), scale)
  out = jax.jit(lambda x: M.dpm_solver_pp_2m(guided, x, sigmas))(x)
  batched = M.guided_batched(labelled_denoiser, labels, 0, jnp.float32(scale))
  np.testing.assert_allclose(jax.jit(lambda x: M.dpm_solver_pp_2m(batched, x, sigmas))(x), out,
                             rtol=1e-4, atol=1e-4)
  mean, cov = moments(out)
  want = mu_c + scale * (mu_c - mu_u)
  assert np.all(np.abs(mean - want) / STDS < 0.02), (mean - want) / STDS
  assert np.dot(mean - mu_c, mu_c - mu_u) > 0.9 * scale * np.dot(mu_c - mu_u, mu_c - mu_u)
  assert np.all(np.abs(np.sqrt(np.diag(cov)) / STDS - 1) < 0.02)
  # In eps terms: eps_hat = (1 + scale) eps_c - scale eps_u, i.e. w = 1 + scale.
  xs, s = x[:4], jnp.float32(3.)
  eps = lambda d: (xs - d(xs, s)) / s   # noqa: E731
  np.testing.assert_allclose(eps(guided), (1 + scale) * eps(gaussian_denoiser(mu_c))
                             - scale * eps(gaussian_denoiser(mu_u)), rtol=1e-4, atol=1e-5)
