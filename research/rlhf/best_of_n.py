"""Best-of-n sampling, the baseline every RLHF method is measured against (Gao et al. 2023;
Stiennon et al. 2020): draw n replies from the reference policy, keep the one a reward model
scores highest.

Its KL divergence from the reference policy has a closed form when the scores do not tie,
  KL_bon(n) = log n - (n - 1) / n      (nats; Stiennon et al. 2020, appendix G.3),
so best-of-n traces a gold-score-against-KL curve with no training at all: `kl(n)` gives the
x-axis, `select` the replies.
"""
from __future__ import annotations

import math

import numpy as np


def kl(n: int) -> float:
  """KL(best-of-n || reference) in nats for n >= 1 samples and untied scores."""
  if n < 1:
    raise ValueError(f'best-of-n needs n >= 1, got {n}')
  return math.log(n) - (n - 1) / n


def select(scores) -> np.ndarray:
  """Per prompt, the index of the highest-scored of its n replies: scores [P, n] -> int [P]
  (the first on a tie)."""
  scores = np.asarray(scores)
  if scores.ndim != 2 or scores.shape[1] < 1:
    raise ValueError(f'scores must be [prompts, n] with n >= 1, got shape {scores.shape}')
  return np.argmax(scores, axis=1)


def exact_kl(base_probs, n: int) -> float:
  """KL(best-of-n || base) of a discrete base distribution whose outcomes are listed in
  increasing score order (no ties): P_bon(i) = F(i)^n - F(i - 1)^n, F the base CDF. The test of
  `kl`: it tends to log n - (n - 1)/n as the outcomes get finer."""
  p = np.asarray(base_probs, np.float64)
  cdf = np.cumsum(p)
  q = cdf**n - np.concatenate([[0.0], cdf[:-1]])**n
  keep = q > 0
  return float(np.sum(q[keep] * np.log(q[keep] / p[keep])))


def expected_best(true_scores, proxy_scores, n: int) -> np.ndarray:
  """Per prompt, the expected true score of the proxy's best of n replies drawn without
  replacement from N >= n samples: true [P, N], proxy [P, N] -> [P].

  The unbiased estimator over all N samples (no resampling noise): with the samples sorted by
  proxy score, the i-th lowest (i = 1..N) is the best of a random n-subset with probability
  C(i - 1, n - 1) / C(N, n). Proxy ties are broken by sample order."""
  true_scores, proxy_scores = np.asarray(true_scores, np.float64), np.asarray(proxy_scores)
  p, big_n = true_scores.shape
  if not 1 <= n <= big_n:
    raise ValueError(f'n={n} must be in [1, {big_n}] (the samples per prompt)')
  order = np.argsort(proxy_scores, axis=1, kind='stable')
  ranked = np.take_along_axis(true_scores, order, axis=1)
  i = np.arange(1, big_n + 1)
  log_w = np.full(big_n, -np.inf)
  ok = i >= n
  log_w[ok] = (_log_comb(i[ok] - 1, n - 1) - _log_comb(big_n, n))
  return ranked @ np.exp(log_w)


def _log_comb(a, b):
  """log C(a, b), elementwise over a (b a scalar or broadcast), for 0 <= b <= a."""
  a, b = np.broadcast_arrays(np.asarray(a, np.float64), np.asarray(b, np.float64))
  return np.array([math.lgamma(x + 1) - math.lgamma(y + 1) - math.lgamma(x - y + 1)
                   for x, y in zip(a.ravel(), b.ravel())]).reshape(a.shape)
