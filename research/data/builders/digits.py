"""`genlab_digits`: scikit-learn's 8x8 digits (UCI optdigits test set), 1797 images."""
from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from research.data.builders import _base

TEST_PER_CLASS = 30
SALT = 'genlab_digits'

_DESCRIPTION = """\
Digits: the 1797 8x8 handwritten digits of `sklearn.datasets.load_digits()` (the test part of
the UCI "Optical Recognition of Handwritten Digits" data set), 174-183 per class. Pixel counts
0..16 are scaled to uint8 by round(v * 255 / 16). Deterministic stratified split: for each class,
the 30 examples whose sha256(f'genlab_digits:{index}') (index = row in load_digits()) sorts
first are the test set, giving 1497 train / 300 test (30 per class). The split depends on no RNG.
scikit-learn is BSD-3-Clause; the UCI data is CC BY 4.0.
"""

_CITATION = """\
@misc{alpaydin1998optdigits,
  author       = {Alpaydin, E. and Kaynak, C.},
  title        = {{Optical Recognition of Handwritten Digits}},
  year         = {1998},
  howpublished = {UCI Machine Learning Repository},
  note         = {{DOI}: https://doi.org/10.24432/C50P49},
}
"""


def load_arrays() -> tuple[np.ndarray, np.ndarray]:
  """sklearn's digits as uint8 [1797, 8, 8, 1] (0..255) and labels int64 [1797]."""
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  d = load_digits()
  images = np.clip(np.round(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)[..., None]
  return images, np.asarray(d.target, np.int64)


class GenlabDigits(_base.GenlabBuilder):
  """8x8 digits: 1497 train / 300 test (stratified), 8x8x1 uint8, offline from scikit-learn."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release: stratified 1497/300 split (sha256 order).'}
  IMAGE_SHAPE = (8, 8, 1)
  DESCRIPTION = _DESCRIPTION
  CITATION = _CITATION
  HOMEPAGE = 'https://archive.ics.uci.edu/dataset/80/optical+recognition+of+handwritten+digits'
  LICENSE = 'CC BY 4.0 (data); BSD-3-Clause (scikit-learn)'

  def load_splits(self):
    return _base.stratified_splits(*load_arrays(), TEST_PER_CLASS, SALT)
