"""Dataset specs: one object per dataset kind that checks, sizes and reads the datasets of that
kind (`validate`, `info`, `reader`). The registry (research/data/datasets.py) maps a dataset
name to its catalog entry's kind and that kind's spec, so nothing else branches on kinds.

This module holds the base class and the two kinds without text: images and the 2-D toy data.
The text kinds live with their data: corpus.py, dialogue.py (dialogue pairs, prompts) and
preferences.py.
"""
from __future__ import annotations

import dataclasses
import functools
import math

from research.config_checks import require
from research.data import catalog
from research.data import readers
from research.data import sources
from research.data import toy

# Splits up to this size (decoded uint8 images) are held in memory; larger ones are streamed.
MAX_IN_MEMORY_BYTES = 2 << 30


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  shape: tuple[int, ...]              # one example: (H, W, C) for images, (2,) for toy data,
                                      # (seq_len + 1,) for text ((seq_len,) for prompts)
  num_classes: int
  num_train: int                      # examples in config.data.train_split
  num_eval: int                       # examples one eval pass covers (after num_eval_examples)
  key: str = 'image'                  # the batch key: 'image', 'x' (toy) or 'tokens' (text)

  @property
  def image_shape(self) -> tuple[int, ...]:  # the name image-only callers use
    return self.shape


class DatasetSpec:
  """How the datasets of one kind are checked, sized and read.

  `fields`: the optional `config.data` fields this kind reads, with their defaults (every other
  kind must leave them at the default). `validate` runs after the registry's common checks
  (name, source, splits, augmentation modes) and is cheap: it prepares nothing."""
  kind: str = ''
  key: str = 'image'                  # the batch entry the rows go under
  fields: dict = {}

  def validate(self, data_cfg) -> None:
    """The kind's own checks of a config; one-line ConfigErrors."""

  def check_installed(self, data_cfg) -> None:
    """What the kind needs installed beyond its source's (research/data/sources.py)."""

  def check_source(self, data_cfg) -> None:
    e = catalog.DATASETS[data_cfg.name]
    if data_cfg.source == 'package':
      require(e.package is not None, 'data.source', data_cfg.source,
              f'no offline package builder for name={data_cfg.name!r}; use source=tfds '
              "(needs TensorFlow: pip install -e .[tf])")
    else:
      require(e.tfds is not None, 'data.source', data_cfg.source,
              f'no TFDS catalog dataset for name={data_cfg.name!r}; use source=package')

  def info(self, data_cfg) -> DatasetInfo:
    """Shapes and sizes (of a validated config); no preparing except where a kind must count
    what it reads (text)."""
    e = catalog.DATASETS[data_cfg.name]
    num_eval = sources.split_size(data_cfg, data_cfg.eval_split)
    if data_cfg.num_eval_examples != -1:
      num_eval = min(num_eval, data_cfg.num_eval_examples)
    return DatasetInfo(shape=e.shape, num_classes=e.num_classes,
                       num_train=sources.split_size(data_cfg, data_cfg.train_split),
                       num_eval=num_eval, key=self.key)

  def reader(self, data_cfg, split: str, train: bool = False) -> readers.Reader:
    raise NotImplementedError


def check_no_image_options(data_cfg, what: str) -> None:
  """Image augmentations and dedup would silently mean nothing on 2-D points or text: reject
  them."""
  a = data_cfg.augment
  for field, default in (('flip', False), ('crop_pad', 0), ('dequantize', False),
                         ('binarize', 'none')):
    require(a[field] == default, f'data.augment.{field}', a[field],
            f'image augmentation does not apply to {what} {data_cfg.name!r}; leave it at '
            f'{default!r}')
  dedup = data_cfg.get('dedup', 'none')
  require(dedup == 'none', 'data.dedup', dedup,
          f"dedup does not apply to {what} {data_cfg.name!r}; use 'none'")


def _check_eval_examples(data_cfg) -> None:
  n, var = data_cfg.num_eval_examples, catalog.variant(data_cfg)
  if n > 0 and data_cfg.eval_split in var.splits:
    size = var.splits[data_cfg.eval_split]
    require(n <= size, 'data.num_eval_examples', n,
            f'larger than the {size} examples of eval_split={data_cfg.eval_split!r}; '
            'use -1 for all')


class ImageSpec(DatasetSpec):
  """Images (uint8 HWC and an int label per example) from a package builder or TFDS; batches
  {'image': float32 in [0, 1], 'label'}. A split of up to MAX_IN_MEMORY_BYTES is read into
  memory once per process (one sequential pass) and cached; bigger splits are read per batch."""
  kind, key = 'image', 'image'

  def validate(self, data_cfg) -> None:
    _check_eval_examples(data_cfg)

  def reader(self, data_cfg, split: str, train: bool = False) -> readers.Reader:
    del train  # the same rows for train and eval
    return _cached_image_reader(data_cfg.name, data_cfg.source, data_cfg.data_dir, split,
                                MAX_IN_MEMORY_BYTES)


@functools.lru_cache(maxsize=8)
def _cached_image_reader(name: str, source: str, data_dir: str, split: str,
                         in_memory_limit: int) -> readers.Reader:
  src = sources.open_source(name, source, data_dir, split)
  shape = catalog.DATASETS[name].image_shape
  if len(src) * math.prod(shape) > in_memory_limit:
    return readers.Reader(src)
  if source == 'package':
    try:
      return readers.Reader(src, sources.read_package_split(name, data_dir, split))
    except ValueError:  # not the raw-bytes image encoding: decode with TFDS below
      pass
  return readers.Reader(src, readers.read_all(src, len(src), shape))


class ToySpec(DatasetSpec):
  """2-D points generated in memory (research/data/toy.py); batches {'x': float32 [B, 2],
  'label'}. No TFDS version, no augmentation, no dedup."""
  kind, key = 'toy', 'x'

  def check_source(self, data_cfg) -> None:
    require(data_cfg.source == 'package', 'data.source', data_cfg.source,
            f'the toy dataset {data_cfg.name!r} is generated in memory and has no TFDS '
            "catalog version; use source='package'")

  def validate(self, data_cfg) -> None:
    _check_eval_examples(data_cfg)
    check_no_image_options(data_cfg, 'the 2-D toy dataset')

  def reader(self, data_cfg, split: str, train: bool = False) -> readers.Reader:
    del train
    return _cached_points_reader(data_cfg.name, split)


@functools.lru_cache(maxsize=8)
def _cached_points_reader(name: str, split: str) -> readers.PointsReader:
  return readers.PointsReader(*toy.split_arrays(name, split))


IMAGE, TOY = ImageSpec(), ToySpec()
