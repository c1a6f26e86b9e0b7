"""2-D toy datasets, generated deterministically in memory (no TFDS build, no files).

| name       | distribution                                                 | labels          |
|------------|--------------------------------------------------------------|-----------------|
| ring8      | 8 equal-weight Gaussians on the unit circle, std 0.01        | mode index 0..7 |
| grid25     | 25 equal-weight Gaussians at {-4,-2,0,2,4}^2, std 0.05       | mode index 0..24|
| swiss_roll | 2-D swiss roll (t cos t, t sin t), t ~ U[1.5 pi, 4.5 pi],    | 0               |
|            | + N(0, 0.5^2) noise, centred and scaled to ~unit variance    |                 |

The mixtures are exactly those of the PacGAN mode-coverage metric
(research/evaluation/toy_mixtures.py), so `modes(name)` / `mode_std(name)` are the parameters to
evaluate generated samples against. A mixture point's label is its nearest mode, the assignment
`toy_mixtures.mode_coverage` uses (with modes >= 20 std apart it is the drawn component).

Each split is a fixed set of points ('train' 100,000 as in PacGAN, 'test' 10,000) drawn from a seed fixed per
(name, split), so every process and machine sees the same data; train and test are independent
draws. Splits accept TFDS-style slicing ('train[:90%]', 'train[1000:]', 'train+test').
"""
from __future__ import annotations

import functools
import math
import re
import zlib
from typing import Optional

import numpy as np

from research.evaluation import toy_mixtures

NAMES = ('ring8', 'grid25', 'swiss_roll')
SPLITS = {'train': 100000, 'test': 10000}   # train: PacGAN's 100k points
NUM_CLASSES = {'ring8': 8, 'grid25': 25, 'swiss_roll': 1}
SHAPE = (2,)

SWISS_ROLL_NOISE = 0.5   # std of the isotropic noise, in the units of the raw (t cos t, t sin t)


def _swiss_roll_moments() -> tuple[np.ndarray, float]:
  """(mean [2], per-coordinate std) of the noisy raw swiss roll, in closed form:
  E[t cos t, t sin t] = (2, 2 / (3 pi)) and E[t^2] = (b^3 - a^3) / (3 (b - a)) for t ~ U[a, b]."""
  a, b = 1.5 * math.pi, 4.5 * math.pi
  mean = np.array([2.0, 2.0 / (3.0 * math.pi)])
  second_moment = (b**3 - a**3) / (3.0 * (b - a))
  var = (second_moment - float(mean @ mean)) / 2.0 + SWISS_ROLL_NOISE**2
  return mean, math.sqrt(var)


SWISS_ROLL_CENTER, SWISS_ROLL_SCALE = _swiss_roll_moments()

_SPLIT_PART = re.compile(r'^(?P<name>\w+)(\[(?P<from>-?\d+%?)?:(?P<to>-?\d+%?)?\])?'
                         r'(\((closest|pct1_dropremainder)\))?$')


def _check_name(name: str) -> None:
  if name not in NAMES:
    raise ValueError(f'unknown toy dataset {name!r}; use one of {list(NAMES)}')


def modes(name: str) -> Optional[np.ndarray]:
  """The [K, 2] mode centres of a mixture dataset (a fresh copy), None for swiss_roll."""
  _check_name(name)
  if name == 'ring8':
    return toy_mixtures.ring8_modes()
  if name == 'grid25':
    return toy_mixtures.grid25_modes()
  return None


def mode_std(name: str) -> Optional[float]:
  """The per-coordinate std of each mixture component, None for swiss_roll."""
  _check_name(name)
  return {'ring8': toy_mixtures.RING8_STD,
          'grid25': toy_mixtures.GRID25_STD}.get(name)


def swiss_roll(n: int, seed: int) -> np.ndarray:
  """[n, 2] float64 swiss-roll points (numpy Generator(seed)), centred, ~unit variance."""
  rng = np.random.default_rng(seed)
  t = 1.5 * np.pi * (1.0 + 2.0 * rng.random(n))
  raw = np.stack([t * np.cos(t), t * np.sin(t)], axis=1)
  raw += SWISS_ROLL_NOISE * rng.standard_normal((n, 2))
  return (raw - SWISS_ROLL_CENTER) / SWISS_ROLL_SCALE


def nearest_mode(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
  """int64 [n]: index of the nearest of `centres` [K, 2] for each of `points` [n, 2]."""
  d2 = ((points[:, None, :] - centres[None, :, :])**2).sum(-1)
  return d2.argmin(axis=1).astype(np.int64)


def sample(name: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(float32 points [n, 2], int64 labels [n]): n draws of dataset `name` from `seed`."""
  _check_name(name)
  if name == 'swiss_roll':
    return swiss_roll(n, seed).astype(np.float32), np.zeros((n,), np.int64)
  centres = modes(name)
  points = toy_mixtures.sample_mixture(centres, mode_std(name), n, seed)
  return points.astype(np.float32), nearest_mode(points, centres)


def split_seed(name: str, split: str) -> int:
  """The fixed seed of one base split (CRC-32 of the names: stable everywhere)."""
  return zlib.crc32(f'genlab/toy/{name}/{split}'.encode())


def _bound(spec: Optional[str], n: int, default: int) -> int:
  if spec is None:
    return default
  if spec.endswith('%'):
    # Every base split size is a multiple of 100, so TFDS's rounding modes all agree.
    pct = int(spec[:-1])
    value = n * pct // 100 if pct >= 0 else -(n * -pct // 100)
  else:
    value = int(spec)
  if value < 0:
    value += n
  return min(max(value, 0), n)


def split_indices(split: str) -> list[tuple[str, np.ndarray]]:
  """[(base split, int64 indices)] of a split spec, in order; TFDS slicing semantics (python-style
  bounds, ints or percents, '+' concatenates). Raises ValueError if malformed or unknown."""
  out = []
  for part in split.replace(' ', '').split('+'):
    m = _SPLIT_PART.match(part)
    if not m or m.group('name') not in SPLITS:
      raise ValueError(f'bad toy split {split!r}; use one of {sorted(SPLITS)} with an optional '
                       "slice, e.g. 'train[:90%]'")
    n = SPLITS[m.group('name')]
    lo, hi = _bound(m.group('from'), n, 0), _bound(m.group('to'), n, n)
    out.append((m.group('name'), np.arange(lo, max(lo, hi), dtype=np.int64)))
  return out


def split_size(split: str) -> int:
  return sum(len(idx) for _, idx in split_indices(split))


@functools.lru_cache(maxsize=None)
def _base_split(name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  points, labels = sample(name, SPLITS[split], split_seed(name, split))
  points.flags.writeable = False   # shared by every reader of the process
  labels.flags.writeable = False
  return points, labels


@functools.lru_cache(maxsize=16)
def split_arrays(name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  """(float32 points [N, 2], int64 labels [N]) of a split spec (read-only, cached)."""
  _check_name(name)
  if split in SPLITS:
    return _base_split(name, split)
  parts = [(_base_split(name, base), idx) for base, idx in split_indices(split)]
  points = np.concatenate([p[idx] for (p, _), idx in parts])
  labels = np.concatenate([l[idx] for (_, l), idx in parts])
  points.flags.writeable = False
  labels.flags.writeable = False
  return points, labels


class Source:
  """A random-access source ([i] -> {'x': float32 [2], 'label': int64}) over a split, like the
  TFDS data sources of the image datasets."""

  def __init__(self, name: str, split: str):
    self.points, self.labels = split_arrays(name, split)

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, i: int) -> dict:
    return {'x': self.points[i], 'label': self.labels[i]}

  def __getitems__(self, indices) -> list[dict]:
    return [self[int(i)] for i in indices]
