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
