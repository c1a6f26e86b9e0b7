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
