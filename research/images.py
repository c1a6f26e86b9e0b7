"""Image grids as PNG and raw arrays as .npz (host side, numpy only)."""
from __future__ import annotations

import math
import os

import numpy as np
from PIL import Image


def make_grid(images: np.ndarray, ncol: int | None = None, pad: int = 1) -> np.ndarray:
  """[N, H, W, C] floats in [0, 1] -> one uint8 [rows*(H+pad)+pad, ..., C] grid, white gaps."""
  images = np.asarray(images, np.float32)
  if images.ndim != 4:
    raise ValueError(f'make_grid wants [N, H, W, C] images, got shape {images.shape}')
  n, h, w, c = images.shape
  ncol = ncol or int(math.ceil(math.sqrt(n)))
  nrow = int(math.ceil(n / ncol))
  grid = np.ones((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), np.float32)
  for i, img in enumerate(images):
    r, col = divmod(i, ncol)
    grid[pad + r * (h + pad):pad + r * (h + pad) + h,
         pad + col * (w + pad):pad + col * (w + pad) + w] = img
  grid = np.nan_to_num(grid, nan=0.0)  # a diverged sample shows black, not a cast warning
  return (np.clip(grid, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def save_png(path: str, images: np.ndarray, ncol: int | None = None, scale: int = 1) -> None:
  """Writes a grid of images; `scale` enlarges small images (8x8 digits) by pixel repetition."""
  grid = make_grid(images, ncol)
  if scale > 1:
    grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
  if grid.shape[-1] == 1:
    grid = grid[..., 0]
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  Image.fromarray(grid).save(path)


def save_npz(path: str, arrays: dict) -> None:
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  np.savez_compressed(path, **{k: np.asarray(v) for k, v in arrays.items()})


def scatter(real: np.ndarray, fake: np.ndarray, modes: np.ndarray | None = None,
            radius: float | None = None, size: int = 480) -> tuple[np.ndarray, int]:
  """A scatter plot of 2-D points as a uint8 [size, size, 3] image: generated points blue, real
  points black on top, each mode's high-quality disc (`radius` around it, e.g. 3 std) outlined
  in red.
  The view spans the real points and the central 98% of the generated ones (so a few far
  outliers do not shrink the picture); returns (image, number of generated points outside)."""
  from PIL import ImageDraw  # pylint: disable=g-import-not-at-top  (PIL is a core dependency)
  real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
  finite = fake[np.isfinite(fake).all(1)]
  parts = [real] + ([np.percentile(finite, [1, 99], axis=0)] if len(finite) else [])
  lo, hi = (np.min([p.min(0) for p in parts], 0), np.max([p.max(0) for p in parts], 0))
  center, half = (lo + hi) / 2, max(float((hi - lo).max()) / 2, 1e-6) * 1.1
  def pixel(p):   # y up
    u = (p - center) / half
    return np.stack([(u[:, 0] + 1) / 2 * (size - 1), (1 - u[:, 1]) / 2 * (size - 1)], 1)
  img = Image.new('RGB', (size, size), 'white')
  draw = ImageDraw.Draw(img)
  px = pixel(finite)
  inside = ((px >= 0) & (px <= size - 1)).all(1)
  for (x, y) in px[inside]:
    draw.rectangle((x - 1, y - 1, x + 1, y + 1), fill=(31, 119, 180))
  for (x, y) in pixel(real):
    draw.point((x, y), fill=(0, 0, 0))
  if modes is not None:
    r = (radius or 0.0) / half * (size - 1) / 2
    for (x, y) in pixel(np.asarray(modes, np.float64)):
      draw.ellipse((x - max(r, 3), y - max(r, 3), x + max(r, 3), y + max(r, 3)),
                   outline=(214, 39, 40), width=2)
  return np.asarray(img), int(len(fake) - inside.sum())
