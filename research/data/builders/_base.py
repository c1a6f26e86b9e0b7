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


def read_split_arrays(builder: tfds.core.DatasetBuilder, split: str,
                      chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
  """A whole (prepared) split of a project builder as arrays: uint8 images [N, H, W, C] and int64
  labels [N], in the split's record order.

  Parses the stored `tf.train.Example` records directly (image: raw bytes, label: int64), about
  10x faster than TFDS's per-example decoding (7 s -> under 1 s for Fashion-MNIST's 60000).
  Only for the project builders, whose feature encoding is fixed above."""
  from tensorflow_datasets.proto import tf_example_pb2  # pylint: disable=g-import-not-at-top
  feature = builder.info.features['image']
  if getattr(feature, '_encoding', None) != tfds.features.Encoding.BYTES:
    raise ValueError(f'{builder.name}: image feature is not raw bytes; decode with TFDS')
  shape = tuple(feature.shape)
  raw = builder.as_data_source(split=split,
                               deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
  n = len(raw)
  images = np.empty((n, *shape), np.uint8)
  labels = np.empty((n,), np.int64)
  for start in range(0, n, chunk):
    records = raw.__getitems__(list(range(start, min(n, start + chunk))))
    for j, record in enumerate(records):
      f = tf_example_pb2.Example.FromString(record).features.feature
      images[start + j] = np.frombuffer(f['image'].bytes_list.value[0], np.uint8).reshape(shape)
      labels[start + j] = f['label'].int64_list.value[0]
  return images, labels
