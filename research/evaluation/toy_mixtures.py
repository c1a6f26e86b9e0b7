"""2-D Gaussian-mixture toys and the mode-coverage protocol of PacGAN (Lin et al., 2018).

The protocol (PacGAN sec. 5.1, following VEEGAN, Srivastava et al., 2017): draw
`PACGAN_NUM_SAMPLES` = 2,500 generated points, call a point *high quality* when its
Euclidean distance to the nearest mode is at most 3 standard deviations, call a mode
*captured* when at least one high-quality point falls to it, and report the reverse KL
between the generated distribution over modes and the true (uniform) one.

Data: ring-8 (8 modes on the unit circle, std 0.01) and grid-25 (modes at {-4,-2,0,2,4}^2,
std 0.05). Note that for an isotropic 2-D Gaussian the 3-sigma radius holds only
P(r <= 3 sigma) = 1 - exp(-4.5) ~= 0.9889 of the mass (chi with 2 dof), not 99.7%.
"""
from __future__ import annotations

import numpy as np

PACGAN_NUM_SAMPLES = 2500
RING8_STD = 0.01
GRID25_STD = 0.05


def ring8_modes(radius: float = 1.0) -> np.ndarray:
  """[8, 2] modes evenly spaced on the circle of `radius` (std `RING8_STD` in PacGAN)."""
  angles = 2.0 * np.pi * np.arange(8) / 8
  return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def grid25_modes() -> np.ndarray:
  """[25, 2] modes at {-4, -2, 0, 2, 4}^2 (std `GRID25_STD` in PacGAN)."""
  axis = np.arange(-4.0, 5.0, 2.0)
  xs, ys = np.meshgrid(axis, axis, indexing='ij')
  return np.stack([xs.ravel(), ys.ravel()], axis=1)


def _check_points(name: str, x) -> np.ndarray:
  x = np.asarray(x, np.float64)
  if x.ndim != 2 or x.shape[1] != 2:
    raise ValueError(f'{name} must have shape [n, 2], got {x.shape}')
  return x


def sample_mixture(modes, std: float, n: int, seed: int) -> np.ndarray:
  """[n, 2] draws from the equal-weight mixture of N(mode, std^2 I) (numpy Generator(seed))."""
  modes = _check_points('modes', modes)
  if len(modes) == 0 or n < 0 or std < 0:
    raise ValueError(f'need >= 1 mode, n >= 0, std >= 0; got {len(modes)} modes, n={n}, std={std}')
  rng = np.random.default_rng(seed)
  which = rng.integers(0, len(modes), size=n)
  return modes[which] + std * rng.standard_normal((n, 2))


def mode_coverage(samples, modes, std: float, threshold_stds: float = 3.0) -> dict:
  """PacGAN mode statistics of `samples` [N, 2] against `modes` [K, 2].

  Returns dict with:
    modes_captured: number of modes with >= 1 high-quality sample (distance to the nearest
      mode <= threshold_stds * std; each sample is assigned to its nearest mode).
    high_quality_fraction: high-quality samples / N.
    reverse_kl: KL(p || u) = sum_k p_k log(p_k K), where p is the histogram of high-quality
      samples over the K modes normalised to sum 1 (low-quality samples are dropped) and u is
      the true uniform distribution. Empty modes have p_k = 0 and contribute 0 (0 log 0 = 0),
      so missing modes are penalised only through the extra mass on the others: sampling
      k of K modes uniformly gives log(K / k). It is `inf` when no sample is high quality
      (p undefined).
    histogram: list[int] of length K, high-quality counts per mode.
  """
  samples = _check_points('samples', samples)
  modes = _check_points('modes', modes)
  if len(modes) == 0:
    raise ValueError('need at least one mode')
  if std <= 0 or threshold_stds <= 0:
    raise ValueError(f'std and threshold_stds must be > 0, got {std}, {threshold_stds}')
  k = len(modes)
  if len(samples) == 0:
    return dict(modes_captured=0, high_quality_fraction=0.0, reverse_kl=float('inf'),
                histogram=[0] * k)
  dist = np.linalg.norm(samples[:, None, :] - modes[None, :, :], axis=-1)  # [N, K]
  nearest = dist.argmin(axis=1)
  good = dist[np.arange(len(samples)), nearest] <= threshold_stds * std
  hist = np.bincount(nearest[good], minlength=k)
  total = hist.sum()
  if total == 0:
    reverse_kl = float('inf')
  else:
    p = hist[hist > 0] / total
    reverse_kl = float(np.sum(p * np.log(p * k)))
  return dict(modes_captured=int((hist > 0).sum()),
              high_quality_fraction=float(good.mean()),
              reverse_kl=reverse_kl,
              histogram=[int(c) for c in hist])
