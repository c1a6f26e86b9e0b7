"""Error bars: mean and standard error over seeds or independent draws."""
from __future__ import annotations

import math
from typing import Iterable, Sequence


def mean_se(values: Iterable[float]) -> tuple[float, float, int]:
  """(mean, standard error, n) of the finite values; se = sample std (ddof=1) / sqrt(n), nan for
  n = 1; (nan, nan, 0) for none."""
  finite = [float(v) for v in values if math.isfinite(v)]
  n = len(finite)
  if not n:
    return math.nan, math.nan, 0
  mean = sum(finite) / n
  if n == 1:
    return mean, math.nan, 1
  var = sum((v - mean) ** 2 for v in finite) / (n - 1)
  return mean, math.sqrt(var / n), n


def over_draws(per_draw: Sequence[dict]) -> dict:
  """{name: mean, name_se: standard error} over the draws' numeric metrics (non-finite values
  left out, as `mean_se`); `num_draws` is the number of draws."""
  out = {}
  for k in per_draw[0]:
    if not all(isinstance(d.get(k), (int, float)) for d in per_draw):
      continue
    out[k], out[f'{k}_se'], _ = mean_se(d[k] for d in per_draw)
  return out | {'num_draws': len(per_draw)}


def format_mean_se(mean: float, se: float, digits: int = 4) -> str:
  """'0.231 ± 0.012' ('0.231' without an s.e.)."""
  if not math.isfinite(se):
    return f'{mean:.{digits}g}'
  return f'{mean:.{digits}g} ± {se:.2g}'
