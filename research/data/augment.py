"""Per-example numpy augmentations of float32 images in [0, 1], shape (H, W, C).

Each random function takes a `np.random.Generator` (the pipeline hands it one seeded from the run
seed and the example's position in the global stream, so results are reproducible and do not
depend on host or device count) and returns a new float32 array.
"""
from __future__ import annotations

import dataclasses

import numpy as np


def random_flip(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Mirrors left-right (the W axis) with probability 1/2."""
  return image[:, ::-1] if rng.random() < 0.5 else image


def random_crop(image: np.ndarray, rng: np.random.Generator, pad: int,
                mode: str = 'constant') -> np.ndarray:
  """Pads H and W by `pad` pixels on each side (zeros by default, or any `np.pad` mode) then
  crops a random window of the original size (each of the (2 pad + 1)^2 offsets equally likely).
  The shape is unchanged."""
  if pad <= 0:
    return image
  h, w = image.shape[:2]
  n = 2 * pad + 1
  dy, dx = int(rng.random() * n), int(rng.random() * n)   # (faster than rng.integers)
  if mode != 'constant':
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode=mode)
    return padded[dy:dy + h, dx:dx + w]
  # Zero padding without materializing the padded image: out[y, x] = image[y + sy, x + sx].
  sy, sx = dy - pad, dx - pad
  out = np.zeros_like(image)
  out[max(0, -sy):h - max(0, sy), max(0, -sx):w - max(0, sx)] = (
      image[max(0, sy):h - max(0, -sy), max(0, sx):w - max(0, -sx)])
  return out


def dequantize(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Uniform dequantization: x + u / 256 with u ~ U[0, 1) per pixel, on [0, 1] pixels, so a pixel
  with value x lands in [x, x + 1/256)."""
  out = rng.random(image.shape, dtype=np.float32)
  out *= np.float32(1 / 256)
  out += image
  return out


def binarize_dynamic(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Bernoulli(x) per pixel: 1 with probability x, else 0 (a fresh draw each call)."""
  return (rng.random(image.shape, dtype=np.float32) < image).astype(np.float32)


def binarize_threshold(image: np.ndarray) -> np.ndarray:
  """1 where x > 0.5, else 0."""
  return (image > 0.5).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Augment:
  """The train-time augmentations of `config.data.augment`, applied in this order:
  flip, pad-and-crop, then dequantize or binarize. Picklable (plain fields)."""
  flip: bool = False
  crop_pad: int = 0
  dequantize: bool = False
  binarize: str = 'none'      # none | dynamic | threshold

  @classmethod
  def from_config(cls, augment_cfg) -> 'Augment':
    return cls(flip=bool(augment_cfg.flip), crop_pad=int(augment_cfg.crop_pad),
               dequantize=bool(augment_cfg.dequantize), binarize=str(augment_cfg.binarize))

  @property
  def is_random(self) -> bool:
    return self.flip or self.crop_pad > 0 or self.dequantize or self.binarize == 'dynamic'

  def __call__(self, image: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
    if self.flip:
      image = random_flip(image, rng)
    if self.crop_pad > 0:
      image = random_crop(image, rng, self.crop_pad)
    if self.dequantize:
      image = dequantize(image, rng)
    if self.binarize == 'dynamic':
      image = binarize_dynamic(image, rng)
    elif self.binarize == 'threshold':
      image = binarize_threshold(image)
    return np.ascontiguousarray(image, dtype=np.float32)
