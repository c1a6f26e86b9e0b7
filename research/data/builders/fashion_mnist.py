"""`genlab_fashion_mnist`: Fashion-MNIST from the Debian package dataset-fashion-mnist."""
from __future__ import annotations

import gzip
import os

import numpy as np
import tensorflow_datasets as tfds

from research.data import catalog
from research.data.builders import _base

_DESCRIPTION = """\
Fashion-MNIST (Zalando Research): 70000 grayscale 28x28 images of 10 kinds of clothing, the
standard 60000 train / 10000 test split. Read offline from the idx.gz files of the Debian
package dataset-fashion-mnist (/usr/share/datasets/fashion-mnist, or the directory in
$GENLAB_FASHION_MNIST_DIR). License: MIT (Zalando SE).
"""

_CITATION = """\
@online{xiao2017fashionmnist,
  author = {Han Xiao and Kashif Rasul and Roland Vollgraf},
  title  = {Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine Learning Algorithms},
  date   = {2017-08-28},
  year   = {2017},
  eprintclass = {cs.LG},
  eprinttype  = {arXiv},
  eprint      = {cs.LG/1708.07747},
}
"""

LABEL_NAMES = ['T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt',
               'Sneaker', 'Bag', 'Ankle boot']


def read_idx(path: str) -> np.ndarray:
  """An idx (optionally .gz) file -> uint8 array of its shape (big-endian header)."""
  opener = gzip.open if path.endswith('.gz') else open
  with opener(path, 'rb') as f:
    data = f.read()
  zero, dtype, ndim = data[0] * 256 + data[1], data[2], data[3]
  if zero != 0 or dtype != 0x08:
    raise ValueError(f'{path}: not an unsigned-byte idx file (magic {data[:4]!r})')
  shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim))
  return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


class GenlabFashionMnist(_base.GenlabBuilder):
  """Fashion-MNIST, 60000 train / 10000 test, 28x28x1 uint8, offline from a Debian package."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release: the standard train/test split.'}
  IMAGE_SHAPE = (28, 28, 1)
  LABEL_NAMES = LABEL_NAMES
  DESCRIPTION = _DESCRIPTION
  CITATION = _CITATION
  HOMEPAGE = 'https://github.com/zalandoresearch/fashion-mnist'
  LICENSE = 'MIT'

  def load_splits(self):
    d = catalog.FASHION_MNIST_DIR

    def load(prefix):
      images = read_idx(os.path.join(d, f'{prefix}-images-idx3-ubyte.gz'))[..., None]
      labels = read_idx(os.path.join(d, f'{prefix}-labels-idx1-ubyte.gz'))
      assert len(images) == len(labels), (images.shape, labels.shape)
      return images, labels

    return {'train': load('train'), 'test': load('t10k')}
