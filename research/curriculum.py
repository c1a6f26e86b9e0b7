"""A step-dependent curriculum value (sequence length, resolution, difficulty, ...) for families.

The trainer evaluates `make(config.curriculum)(step)` on the host and hands the value to
`Family.apply_curriculum(batch, value)`, which transforms the host batch before it goes to the
devices. What the value means is the family's business; the two transforms below cover the
common cases.

Curricula (`curriculum.name`), with `start`, `end`, `steps` from the config:

  none         no curriculum (`make` returns None)
  linear       start -> end linearly over `steps`, then end
  cosine       start -> end with a half-cosine ease over `steps` (slow at both ends), then end
  exponential  start -> end geometrically over `steps` (start, end > 0), e.g. a sequence length
               that doubles at a steady pace: 64 -> 1024 over 4 equal stretches
  step         start before `steps`, end from `steps` on
  piecewise    levels[i] on [boundaries[i-1], boundaries[i]): `levels` has one more entry than
               `boundaries`, e.g. boundaries '1000,3000' levels '8,16,28'
"""
from __future__ import annotations

import bisect
import math
from typing import Callable

import numpy as np

from research.config_checks import ConfigError, one_of, parse_list, require

CURRICULA = ('none', 'linear', 'cosine', 'exponential', 'step', 'piecewise')
_NEED_STEPS = ('linear', 'cosine', 'exponential', 'step')


def validate(cur_cfg) -> None:
  """Raises a one-line ConfigError for the first bad field of the `curriculum` section."""
  c = cur_cfg
  one_of(c.name, CURRICULA, 'curriculum.name')
  if c.name in _NEED_STEPS:
    require(c.steps > 0, 'curriculum.steps', c.steps,
            f'{c.name} needs curriculum.steps > 0 (the step where it reaches end)')
    for f in ('start', 'end'):
      require(math.isfinite(c[f]), f'curriculum.{f}', c[f], 'must be finite')
  if c.name == 'exponential':
    for f in ('start', 'end'):
      require(c[f] > 0, f'curriculum.{f}', c[f], 'exponential needs start and end > 0')
  if c.name == 'piecewise' or c.boundaries.strip() or c.levels.strip():
    boundaries = parse_list(c.boundaries, 'curriculum.boundaries', int)
    values = parse_list(c.levels, 'curriculum.levels', float)
    require(len(values) == len(boundaries) + 1, 'curriculum.levels', c.levels,
            f'needs one more value than boundaries ({len(boundaries)}: {c.boundaries!r}), '
            'e.g. boundaries "1000" levels "8,16"')
    require(all(b >= 0 for b in boundaries), 'curriculum.boundaries', c.boundaries,
            'steps must be >= 0')
    require(all(a < b for a, b in zip(boundaries, boundaries[1:])), 'curriculum.boundaries',
            c.boundaries, 'must be strictly increasing, e.g. "1000,2000"')


def make(cur_cfg) -> Callable[[int], float] | None:
  """step -> curriculum value (a Python float), or None for 'none'."""
  c = cur_cfg
  name, start, end, steps = c.name, float(c.start), float(c.end), int(c.steps)
  if name == 'none':
    return None
  frac = lambda step: min(max(step, 0) / steps, 1.0)
  if name == 'linear':
    return lambda step: start + (end - start) * frac(step)
  if name == 'cosine':
    return lambda step: end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * frac(step)))
  if name == 'exponential':
    return lambda step: start * (end / start) ** frac(step)
  if name == 'step':
    return lambda step: start if step < steps else end
  if name == 'piecewise':
    boundaries = parse_list(c.boundaries, 'curriculum.boundaries', int)
    values = parse_list(c.levels, 'curriculum.levels', float)
    return lambda step: values[bisect.bisect_right(boundaries, step)]
  raise ConfigError(f'config.curriculum.name={name!r}: must be one of {list(CURRICULA)}')


# ---------------------------------------------------------------------------------------------
# Host-side batch transforms


def crop_sequence(batch: dict, length: float, key: str | tuple[str, ...] = 'tokens',
                  multiple_of: int = 1) -> dict:
  """Truncates `batch[key]` (shape [B, T, ...]) to the first `length` positions along axis 1.

  `length` is rounded down to a multiple of `multiple_of` (at least `multiple_of`) and capped at
  T. `key` may be a tuple of keys cropped together (e.g. tokens and their mask). Each distinct
  length is a new shape and so one more compile of the train step: keep the number of lengths
  small (a piecewise curriculum, or a coarse `multiple_of`).
  """
  keys = (key,) if isinstance(key, str) else tuple(key)
  out = dict(batch)
  for k in keys:
    x = batch[k]
    n = max(int(length) // multiple_of * multiple_of, multiple_of)
    out[k] = x[:, :min(n, x.shape[1])]
  return out


def downsample_images(batch: dict, resolution: float, key: str = 'image') -> dict:
  """Average-pools NHWC `batch[key]` to about `resolution` pixels a side, then nearest-upsamples
  back to the original size: the image carries less detail but keeps its shape.

  Shapes stay static on purpose: a train step is compiled for one input shape, so a batch whose
  shape followed the curriculum would recompile the step at every new resolution (and the model
  would need resolution-dependent layers). Pooling then upsampling gives the low-resolution
  signal at the full size, so one compiled step serves the whole curriculum.

  The pooling factor is the largest divisor of both H and W that is at most H / resolution, so
  the effective resolution is the smallest evenly dividing one >= `resolution` (28x28 asked for
  10 gives 14). `resolution >= H` returns the batch unchanged.
  """
  x = np.asarray(batch[key])
  n, h, w, ch = x.shape
  limit = int(h // max(float(resolution), 1.0))
  g = math.gcd(h, w)
  f = max([d for d in range(1, max(limit, 1) + 1) if g % d == 0])
  if f <= 1:
    return batch
  pooled = x.reshape(n, h // f, f, w // f, f, ch).mean(axis=(2, 4), dtype=np.float32)
  up = np.repeat(np.repeat(pooled, f, axis=1), f, axis=2).astype(x.dtype, copy=False)
  out = dict(batch)
  out[key] = up
  return out
