"""Shared pieces of the project's TFDS builders."""
from __future__ import annotations

import hashlib
import inspect

import numpy as np
import tensorflow_datasets as tfds
from etils import epath


class GenlabBuilder(tfds.core.GeneratorBasedBuilder):
  """Base of the project builders (abstract: TFDS does not register it).

  `code_path` is overridden because TFDS's own implementation needs the `importlib_resources`
  backport for modules inside packages; this one is the plain file path (used by TFDS only to
  look for a checksums file next to the builder, which offline builders do not have)."""

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path | None:
    try:
      return epath.Path(inspect.getfile(cls))
    except (TypeError, OSError):
      return None

  def _generate_examples(self, images: np.ndarray, labels: np.ndarray, prefix: str):
    """Yields (key, example); `images` uint8 [N, H, W, C], `labels` int [N]."""
    for i in range(len(images)):
      yield f'{prefix}_{i:06d}', {'image': images[i], 'label': int(labels[i])}


def stratified_test_mask(labels: np.ndarray, test_per_class: int, salt: str) -> np.ndarray:
  """Boolean mask of a deterministic stratified test split: for each class, the
  `test_per_class` examples whose SHA-256 of f'{salt}:{index}' sorts first.

  Depends only on the labels, their order and `salt` -- not on numpy's RNG streams -- so the
  split is the same on every machine and library version."""
  labels = np.asarray(labels)
  mask = np.zeros(len(labels), bool)
  for c in np.unique(labels):
    idx = np.flatnonzero(labels == c)
    if len(idx) < test_per_class:
      raise ValueError(f'class {c} has {len(idx)} examples, fewer than {test_per_class}')
    keys = [hashlib.sha256(f'{salt}:{i}'.encode()).hexdigest() for i in idx]
    mask[idx[np.argsort(keys, kind='stable')[:test_per_class]]] = True
  return mask
