"""The functional forms of Gao, Schulman & Hilton (2023), "Scaling Laws for Reward Model
Overoptimization" (arXiv:2210.10760), fit to gold-score-against-KL curves.

With d = sqrt(KL(pi || pi_ref)) in nats, the gold score gained over the reference policy is

  best-of-n:  R_bon(d) = d (alpha_bon - beta_bon d)
  RL:         R_RL(d)  = d (alpha_RL  - beta_RL log d)

Both are linear in (alpha, beta), so `fit` is ordinary least squares with no intercept (R(0) = 0:
the reference policy itself). Gao et al.'s Figure 1 / Table 1: alpha > 0 and beta > 0 for every
proxy size (the curve rises, peaks and falls), and bigger proxies have a smaller beta (the peak
comes later and higher). `peak` gives the maximiser of a fitted curve.
"""
from __future__ import annotations

import math

import numpy as np

FORMS = ('bon', 'rl')


def features(d, form: str) -> np.ndarray:
  """The two regressors of R = alpha * f1 - beta * f2 at the distances d: [len(d), 2]."""
  d = np.asarray(d, np.float64)
  if form == 'bon':
    return np.stack([d, -d * d], axis=1)
  if form == 'rl':
    safe = np.where(d > 0, d, 1.0)
    return np.stack([d, -d * np.log(safe)], axis=1)
  raise ValueError(f'form={form!r}: use one of {FORMS}')


def fit(kl, gain, form: str) -> dict:
  """Least-squares (alpha, beta) of `form` to gold gains `gain` (over the reference) at KLs
  `kl` (nats): {'alpha', 'beta', 'rmse', 'n'}."""
  kl, gain = np.asarray(kl, np.float64), np.asarray(gain, np.float64)
  if kl.shape != gain.shape or kl.ndim != 1 or len(kl) < 2:
    raise ValueError(f'need matching 1-D kl and gain with >= 2 points, got {kl.shape}, '
                     f'{gain.shape}')
  x = features(np.sqrt(np.maximum(kl, 0.0)), form)
  coef, *_ = np.linalg.lstsq(x, gain, rcond=None)
  rmse = float(np.sqrt(np.mean((x @ coef - gain) ** 2)))
  return {'alpha': float(coef[0]), 'beta': float(coef[1]), 'rmse': rmse, 'n': int(len(kl))}


def predict(kl, params: dict, form: str) -> np.ndarray:
  x = features(np.sqrt(np.maximum(np.asarray(kl, np.float64), 0.0)), form)
  return x @ np.array([params['alpha'], params['beta']])


def peak(params: dict, form: str) -> tuple[float, float]:
  """(KL at the fitted curve's maximum, the gain there); (inf, inf) when beta <= 0 (no peak)."""
  a, b = params['alpha'], params['beta']
  if b <= 0:
    return math.inf, math.inf
  if form == 'bon':        # d (a - b d): maximum at d = a / (2 b)
    d = a / (2 * b)
  else:                    # d (a - b log d): derivative a - b log d - b = 0
    d = math.exp(a / b - 1)
  d = max(d, 0.0)
  return d * d, float(predict([d * d], params, form)[0])
