"""grain input pipelines over the configured dataset.

Train: one infinite *global* stream per seed. Position i of the stream (i = 0, 1, 2, ...) is
example perm_e[i mod N] of the train split, where e = i // N is the epoch and perm_e a permutation
drawn from (seed, e) -- a fresh order every epoch. The example is scaled to float32 in [0, 1] and
augmented with an rng keyed on (seed, i). The stream is cut into host batches of
B_host = global_batch / P consecutive positions, and host p takes host batches p, p + P, p + 2P,
... So at step s the batches of processes 0..P-1, concatenated in process order, are exactly
(bitwise) the global batch a single process sees at step s, whatever P is, and every host
computes only its own rows.

Each host batch is one element of a random-access `grain.MapDataset` (batch-level: reading,
scaling and augmenting 128 examples as one element is ~10x cheaper than grain's per-element path),
turned into an iterator with `grain.ReadOptions(num_threads=read_threads)` prefetching. Its
position is one integer, so `it.get_state()` / `it.set_state()` and
`grain.checkpoint.CheckpointSave(it)` / `CheckpointRestore(it)` in an Orbax checkpoint resume
exactly.

Reading: each dataset kind's spec gives the reader of a split (research/data/datasets.py). For
images a split of up to `specs.MAX_IN_MEMORY_BYTES` decoded (all of the registered datasets;
CIFAR-10 train is 150 MB) is read into memory once per process in one sequential pass and cached;
bigger splits are read per batch from the TFDS data source, each host reading only its own
examples. Both give identical batches.

Dedup (`config.data.dedup` = 'exact' | 'near', train split only): a keep mask over the split is
computed once (research/evaluation/dedup.py: SHA-256 groups; 'near' adds L2 pairs within
dedup_rms * sqrt(H*W*C) on [0, 1] pixels, single linkage, the smallest index of a group kept),
cached in memory per process and on disk (`_dedup_cache_dir()`, keyed by dataset, split, mode,
threshold and a hash of the split's bytes). The stream above then runs over the kept examples
only: N = the number kept and perm_e permutes their positions, so every guarantee above holds
with the kept examples in place of the split (with nothing dropped the stream is unchanged).
Needs the in-memory reader.

Eval: one pass over the eval split in file order, padded to whole global batches and masked.

Toy data (kind 'toy': ring8, grid25, swiss_roll): the same train and eval machinery over a
reader of in-memory float32 points (research/data/toy.py). Batches carry them under 'x'
(float32 [B, 2]) instead of 'image'; there is no uint8 scaling, and validation has ruled out
augmentation and dedup. Ordering, exact resume and host sharding are as above.

Text (kind 'corpus': shakespeare): the same machinery again over a reader whose examples are
windows of a split's token stream (research/data/corpus.py): batches {'tokens': int32
[B, seq_len + 1]} with no label; eval batches add 'loss_mask' (float32 [B, seq_len]). Train reads
only the full windows; eval pads the last one. Dialogue text (kind 'dialogue':
shakespeare_dialogue): the reader's examples are (prompt, response) pairs, one padded sequence
each, and its `row_entries` add the response-only 'loss_mask' to train batches too. RLHF text:
prompts (kind 'prompts': shakespeare_prompts) are rows {'tokens': int32 [B, seq_len]},
BOS and the prompt's end LEFT-padded with PAD (mask = tokens != PAD; eval adds only 'mask');
preference pairs (kind 'preferences': shakespeare_preferences, read from the record store
config.data.records) put the chosen sequence under 'tokens' and `row_entries` add 'loss_mask',
'rejected' (int32 [B, seq_len + 1]) and 'rejected_loss_mask', in train and eval batches alike.
"""
from __future__ import annotations

import functools
import hashlib
import math
import os
import re
import sys
import threading
import weakref
from typing import Iterator, Sequence

from absl import logging
import grain
import numpy as np

from research.data import augment as augment_lib
from research.data import datasets
from research.data import readers
from research.data import specs
from research.evaluation import dedup as dedup_lib

# Tags that make independent seeds out of the one run seed.
_SHUFFLE, _AUGMENT, _EVAL_BINARIZE = 1, 2, 3


def derived_seed(seed: int, tag: int) -> int:
  """A 64-bit seed for one use (`tag`) of the run seed (SeedSequence: stable across numpy
  versions); unrelated for different seeds or tags."""
  ss = np.random.SeedSequence(int(seed) % 2**64, spawn_key=(tag,))
  return int(ss.generate_state(1, np.uint64)[0])


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  """The example order of one epoch: argsort of Philox raw draws (defined by the bit generator
  alone, so the same on every numpy version and machine)."""
  raw = np.random.Philox(key=derived_seed(seed, epoch)).random_raw(n)
  return np.argsort(raw, kind='stable')


class PositionRng:
  """np.random.Generators keyed by (seed, position): Philox with key `seed` and counter
  [0, 0, 0, position], reset in place (cheap) for each position. One per thread."""

  def __init__(self, seed: int):
    self._gen = np.random.Generator(np.random.Philox(key=seed))
    self._state = self._gen.bit_generator.state

  def at(self, position: int) -> np.random.Generator:
    s = self._state
    s['state']['counter'] = np.array([0, 0, 0, position], np.uint64)
    s['buffer'] = np.zeros(4, np.uint64)
    s['buffer_pos'], s['has_uint32'], s['uinteger'] = 4, 0, 0
    self._gen.bit_generator.state = s
    return self._gen


# ---------------------------------------------------------------------------------------------
# Dedup (train split only)


class _SubsetReader:
  """A reader over the examples `keep` (sorted int64 indices) of `base`: row i is base row
  keep[i]."""

  def __init__(self, base: readers.Reader, keep: np.ndarray):
    self._base, self._keep = base, np.asarray(keep, np.int64)
    self.num_examples = len(self._keep)

  @property
  def key(self) -> str:
    return self._base.key

  def rows(self, indices: np.ndarray):
    return self._base.rows(self._keep[np.asarray(indices, np.int64)])

  def to_features(self, rows: np.ndarray) -> np.ndarray:
    return self._base.to_features(rows)

  def row_entries(self, indices: np.ndarray) -> dict:
    return self._base.row_entries(self._keep[np.asarray(indices, np.int64)])


# base reader -> {(mode, threshold): _SubsetReader}: one dedup pass per process and reader.
_DEDUP_READERS = weakref.WeakKeyDictionary()
_DEDUP_LOCK = threading.Lock()


def _dedup_cache_dir(data_dir: str) -> str:
  """$GENLAB_CACHE if set, else the TFDS data_dir (config.data.data_dir, $TFDS_DATA_DIR or
  ~/tensorflow_datasets), under genlab_dedup/."""
  root = (os.environ.get('GENLAB_CACHE') or (os.path.expanduser(data_dir) if data_dir else '')
          or os.environ.get('TFDS_DATA_DIR') or os.path.expanduser('~/tensorflow_datasets'))
  return os.path.join(root, 'genlab_dedup')


def _compute_keep(images: np.ndarray, mode: str, threshold: float):
  rep = dedup_lib.dedup_images(images, threshold=threshold, near=(mode == 'near'))
  return dedup_lib.keep_mask(rep, len(images)), rep.num_exact_dropped, rep.num_near_dropped


def dedup_keep_mask(data_cfg, split: str, images: np.ndarray):
  """(bool keep mask [N], exact dropped, near dropped) of the uint8 images [N, H, W, C] of
  `split` under config.data.dedup, read from / written to the disk cache."""
  mode = data_cfg.get('dedup', 'none')
  images = np.ascontiguousarray(images)
  threshold = (float(data_cfg.get('dedup_rms', 0.02)) * math.sqrt(math.prod(images.shape[1:]))
               if mode == 'near' else 0.0)
  digest = hashlib.sha256(images.data).hexdigest()[:16]
  name = re.sub(r'[^\w.%+-]', '_', f'{data_cfg.name}-{data_cfg.source}-{split}-{mode}-'
                f'{threshold!r}-{images.shape[0]}-{digest}.npz')
  path = os.path.join(_dedup_cache_dir(data_cfg.data_dir), name)
  try:
    with np.load(path) as f:
      keep, counts = f['keep'], f['counts']
    if keep.dtype == bool and keep.shape == (len(images),):
      return keep, int(counts[0]), int(counts[1])
  except (OSError, KeyError, ValueError):
    pass
  keep, exact, near = _compute_keep(images, mode, threshold)
  try:  # best effort: written whole, then renamed, so readers never see a partial file
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f'{path}.tmp{os.getpid()}.{threading.get_ident()}.npz'
    np.savez(tmp, keep=keep, counts=np.array([exact, near], np.int64))
    os.replace(tmp, path)
  except OSError as e:
    logging.warning('dedup: could not cache the keep mask at %s: %s', path, e)
  return keep, exact, near


def _dedup_reader(data_cfg, split: str, read: readers.Reader):
  """`read` restricted to the examples config.data.dedup keeps (`read` itself for 'none')."""
  mode = data_cfg.get('dedup', 'none')
  if mode == 'none':
    return read
  if read.arrays is None:
    raise ValueError(
        f'config.data.dedup={mode!r} needs the train split in memory, but '
        f'{data_cfg.name}/{split} exceeds MAX_IN_MEMORY_BYTES={specs.MAX_IN_MEMORY_BYTES} and is '
        "streamed; use dedup='none' (or a smaller train_split)")
  key = (mode, float(data_cfg.get('dedup_rms', 0.02)) if mode == 'near' else 0.0,
         data_cfg.name, data_cfg.source, split)
  with _DEDUP_LOCK:
    cached = _DEDUP_READERS.setdefault(read, {})
    if key not in cached:
      keep, exact, near = dedup_keep_mask(data_cfg, split, read.arrays[0])
      kept = np.flatnonzero(keep).astype(np.int64)
      logging.info('dedup: kept %d of %d train examples (exact dropped %d, near dropped %d)',
                   len(kept), len(keep), exact, near)
      cached[key] = _SubsetReader(read, kept)
    return cached[key]


# ---------------------------------------------------------------------------------------------
# Train


def _host_batch_size(global_batch_size: int, process_index: int, process_count: int) -> int:
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index} must be in [0, {process_count})')
  if global_batch_size < 1 or global_batch_size % process_count:
    raise ValueError(f'global batch size {global_batch_size} must be > 0 and divide by the '
                     f'{process_count} processes')
  return global_batch_size // process_count


def _read_options(data_cfg) -> grain.ReadOptions:
  threads = int(data_cfg.read_threads)
  # Elements are whole batches: a couple per thread are plenty of look-ahead.
  return grain.ReadOptions(num_threads=threads, prefetch_buffer_size=2 * threads)


def _augment_rows(images: np.ndarray, positions: Sequence[int], aug: augment_lib.Augment,
                  rng: PositionRng | None) -> np.ndarray:
  """Per-example augmentation of float32 [n, H, W, C], example i with the rng of positions[i]
  (the identity for the default Augment(), the only one toy data allows)."""
  if aug == augment_lib.Augment():
    return images
  if not aug.is_random:  # threshold binarization only
    return augment_lib.binarize_threshold(images)
  out = np.empty_like(images)
  for i, pos in enumerate(positions):
    out[i] = aug(images[i], rng.at(int(pos)))
  return out


def _permutation(seed: int, n: int, epoch: int) -> np.ndarray:
  return epoch_permutation(seed, epoch, n)


class TrainBatches:
  """Random-access source of host batches: element j = stream positions [j*b, (j+1)*b).
  Infinite (length sys.maxsize); thread-safe."""

  def __init__(self, read: readers.Reader, batch_size: int, seed: int, aug: augment_lib.Augment):
    self._read, self._b, self._aug = read, batch_size, aug
    self._shuffle_seed = derived_seed(seed, _SHUFFLE)
    self._aug_seed = derived_seed(seed, _AUGMENT)
    self.__setstate__(self.__dict__)

  def __getstate__(self):  # picklable (e.g. for grain's multiprocessing prefetch)
    return {k: v for k, v in self.__dict__.items() if k not in ('_local', '_perm')}

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._local = threading.local()
    self._perm = functools.lru_cache(maxsize=4)(
        functools.partial(_permutation, self._shuffle_seed, self._read.num_examples))

  def __len__(self) -> int:
    return sys.maxsize

  def __getitem__(self, j: int) -> dict:
    n = self._read.num_examples
    positions = np.arange(j * self._b, (j + 1) * self._b, dtype=np.int64)
    epochs, offsets = np.divmod(positions, n)
    indices = np.empty_like(positions)
    for e in np.unique(epochs):
      sel = epochs == e
      indices[sel] = self._perm(int(e))[offsets[sel]]
    stored, labels = self._read.rows(indices)
    x = _augment_rows(self._read.to_features(stored), positions, self._aug, self._rng())
    batch = {self._read.key: x}
    if labels is not None:  # text windows have none
      batch['label'] = labels.astype(np.int32)
    return batch | self._read.row_entries(indices)

  def _rng(self) -> PositionRng | None:
    if not self._aug.is_random:
      return None
    if not hasattr(self._local, 'rng'):
      self._local.rng = PositionRng(self._aug_seed)
    return self._local.rng


def train_dataset(data_cfg, global_batch_size: int, seed: int, process_index: int = 0,
                  process_count: int = 1) -> grain.MapDataset:
  """This host's infinite random-access dataset of batches (see the module docstring)."""
  b = _host_batch_size(global_batch_size, process_index, process_count)
  read = datasets.reader(data_cfg, data_cfg.train_split, train=True)  # text: full windows only
  if read.num_examples == 0:
    raise ValueError(f'config.data.train_split={data_cfg.train_split!r} is empty')
  read = _dedup_reader(data_cfg, data_cfg.train_split, read)
  aug = augment_lib.Augment.from_config(data_cfg.augment)
  ds = grain.MapDataset.source(TrainBatches(read, b, seed, aug))
  return ds[process_index::process_count] if process_count > 1 else ds


def train_iterator(data_cfg, global_batch_size: int, seed: int, process_index: int = 0,
                   process_count: int = 1) -> grain.DatasetIterator:
  """Infinite iterator of this host's training batches:
  {'image': float32 [B_host, H, W, C] in [0, 1] (augmented), 'label': int32 [B_host]}
  (toy data: {'x': float32 [B_host, 2], 'label'}; text: {'tokens': int32 [B_host, seq_len + 1]}),
  B_host = global_batch_size // process_count.
  Deterministic from `seed`; see the module docstring for how host shards compose. Supports
  get_state()/set_state() and grain.checkpoint."""
  ds = train_dataset(data_cfg, global_batch_size, seed, process_index, process_count)
  return iter(ds.to_iter_dataset(_read_options(data_cfg)))


# ---------------------------------------------------------------------------------------------
# Eval


class EvalBatches:
  """Random-access source of host batches over the first `num_real` examples, padded (zeros,
  label 0, mask 0) to whole global batches: element j = rows [j*b, (j+1)*b)."""

  def __init__(self, read: readers.Reader, num_real: int, batch_size: int, num_host_batches: int,
               binarize: str, seed: int):
    self._read, self._n, self._b, self._len = read, num_real, batch_size, num_host_batches
    self._aug = augment_lib.Augment(binarize=binarize)
    self._seed = derived_seed(seed, _EVAL_BINARIZE)
    self._local = threading.local()

  def __getstate__(self):
    return {k: v for k, v in self.__dict__.items() if k != '_local'}

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._local = threading.local()

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, j: int) -> dict:
    if not 0 <= j < self._len:
      raise IndexError(j)
    rows = np.arange(j * self._b, (j + 1) * self._b, dtype=np.int64)
    real = rows[rows < self._n]
    stored, labels = self._read.rows(real)
    rng = None
    if self._aug.is_random:
      if not hasattr(self._local, 'rng'):
        self._local.rng = PositionRng(self._seed)
      rng = self._local.rng
    x = _augment_rows(self._read.to_features(stored), real, self._aug, rng)
    pad = self._b - len(real)
    batch = {self._read.key: np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])}
    if labels is not None:
      batch['label'] = np.concatenate([labels.astype(np.int32), np.zeros(pad, np.int32)])
    batch['mask'] = np.concatenate([np.ones(len(real), np.float32), np.zeros(pad, np.float32)])
    for k, v in self._read.row_entries(real).items():
      batch[k] = np.concatenate([v, np.zeros((pad, *v.shape[1:]), v.dtype)])
    return batch | self._read.eval_entries(batch)


def num_eval_batches(data_cfg, global_batch_size: int) -> int:
  """Global eval batches in one pass (the last one padded)."""
  if global_batch_size < 1:
    raise ValueError(f'eval batch size {global_batch_size} must be > 0')
  return math.ceil(datasets.info(data_cfg).num_eval / global_batch_size)


def eval_batches(data_cfg, global_batch_size: int, process_index: int = 0,
                 process_count: int = 1, seed: int = 0) -> Iterator[dict]:
  """One deterministic pass over `data_cfg.eval_split` (its first num_eval_examples if != -1).

  Yields {'image': float32 [B_host, H, W, C], 'label': int32 [B_host], 'mask': float32 [B_host]}
  (mask 1 = real example, 0 = padding; toy data: 'x' float32 [B_host, 2] for 'image'; text:
  {'tokens': int32 [B_host, seq_len + 1], 'loss_mask': float32 [B_host, seq_len], 'mask'}),
  B_host = global_batch_size // process_count, exactly `num_eval_batches()` batches on every
  host. Global batch k holds examples [k * global_batch_size, (k + 1) * global_batch_size) in
  split order and host p its p-th slice, so every real example appears exactly once across
  hosts and the hosts' batches concatenate to the single-process batch. No shuffling and no
  random augmentation, except binarization: 'threshold' thresholds; 'dynamic' binarizes once
  with an rng from `seed` and the example's index, so every call and every machine sees the same
  binary eval set."""
  b = _host_batch_size(global_batch_size, process_index, process_count)
  num_real = datasets.info(data_cfg).num_eval
  read = datasets.reader(data_cfg, data_cfg.eval_split)
  num_real = min(num_real, read.num_examples)
  num_global = math.ceil(num_real / global_batch_size)
  ds = grain.MapDataset.source(
      EvalBatches(read, num_real, b, num_global * process_count, data_cfg.augment.binarize,
                  seed))
  if process_count > 1:
    ds = ds[process_index::process_count]
  return iter(ds.to_iter_dataset(_read_options(data_cfg)))
