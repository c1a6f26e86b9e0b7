"""The dataset registry: a dataset name -> its catalog entry (research/data/catalog.py: kind,
shape, sources, split sizes) -> its kind's spec, which checks, sizes and reads it:

| kind        | spec                                | batches                                     |
|-------------|-------------------------------------|---------------------------------------------|
| image       | `specs.ImageSpec`                   | 'image' float32 [B, H, W, C], 'label'       |
| toy         | `specs.ToySpec`                     | 'x' float32 [B, 2], 'label'                 |
| corpus      | `corpus.CorpusSpec`                 | 'tokens' int32 [B, L + 1] (windows)         |
| dialogue    | `dialogue.DialogueSpec`             | 'tokens', 'loss_mask' (response only)       |
| prompts     | `dialogue.PromptSpec`               | 'tokens' int32 [B, L] (left-padded)         |
| preferences | `preferences.PreferenceSpec`        | 'tokens', 'loss_mask', 'rejected', ...      |

Adding a dataset of a known kind is one catalog entry (and a package builder, if it ships in a
package); adding a kind is one spec. `validate()` is cheap (no TFDS import, no preparing): the
common checks here, then the kind's own. `info()` and `reader()` prepare on first use and are
cached.
"""
from __future__ import annotations

from research.config_checks import one_of, require
from research.data import catalog
from research.data import corpus
from research.data import dialogue
from research.data import preferences
from research.data import readers
from research.data import sources
from research.data import specs

DatasetInfo = specs.DatasetInfo
DATASETS = catalog.DATASETS
SOURCES = catalog.SOURCES
BINARIZE_MODES = ('none', 'dynamic', 'threshold')
DEDUP_MODES = ('none', 'exact', 'near')

SPECS = {s.kind: s for s in (specs.IMAGE, specs.TOY, corpus.CORPUS, dialogue.DIALOGUE,
                             dialogue.PROMPTS, preferences.PREFERENCES)}
assert set(SPECS) == set(catalog.KINDS)

# The optional config.data fields (with their defaults, as configs.py sets them) and whose they
# are: a kind reads those in its spec's `fields`, and must leave the others at the default.
_TEXT = catalog.names_of('corpus')
_DERIVED = [n for n, e in DATASETS.items() if e.corpus]
_FIELD_GROUPS = (
    (corpus.FIELDS, f'text datasets {_TEXT} (and the datasets derived from them {_DERIVED})'),
    (preferences.FIELDS, f'the preference datasets {catalog.names_of("preferences")}'),
)


def names_of(kind: str) -> list[str]:
  """The datasets of one kind (research/data/catalog.py `KINDS`), in catalog order."""
  return catalog.names_of(kind)


def spec(name: str) -> specs.DatasetSpec:
  """The spec of the dataset `name` (a KeyError for an unknown name: validate first)."""
  return SPECS[catalog.DATASETS[name].kind]


def require_kind(data_cfg, kind: str, why: str) -> None:
  """A one-line ConfigError on data.name unless the dataset is of `kind` (a family that reads
  one kind of data only, e.g. a reward model reads preference pairs)."""
  require(catalog.DATASETS[data_cfg.name].kind == kind, 'data.name', data_cfg.name,
          f'{why}: use one of {catalog.names_of(kind)}')


def validate(data_cfg) -> None:
  """Checks `config.data`; raises a one-line ConfigError naming the field and the fix.

  Cheap: imports nothing heavy and prepares nothing; only checks names, numbers and that the
  package files / modules the dataset needs are installed."""
  require(data_cfg.name in DATASETS, 'data.name', data_cfg.name,
          f'unknown dataset; use one of {sorted(DATASETS)}')
  one_of(data_cfg.source, SOURCES, 'data.source')
  s = spec(data_cfg.name)
  s.check_source(data_cfg)
  var = catalog.variant(data_cfg)
  sources.check_split('data.train_split', data_cfg.train_split, var.splits)
  sources.check_split('data.eval_split', data_cfg.eval_split, var.splits)
  n = data_cfg.num_eval_examples
  require(n == -1 or n > 0, 'data.num_eval_examples', n, 'must be -1 (all) or > 0')
  a = data_cfg.augment
  one_of(a.binarize, BINARIZE_MODES, 'data.augment.binarize')
  require(a.crop_pad >= 0, 'data.augment.crop_pad', a.crop_pad,
          'must be >= 0 (0 = no pad-and-crop)')
  require(not (a.dequantize and a.binarize != 'none'), 'data.augment.dequantize',
          a.dequantize, f'cannot combine with binarize={a.binarize!r}; pick one')
  require(data_cfg.read_threads >= 1, 'data.read_threads', data_cfg.read_threads,
          'must be >= 1')
  one_of(data_cfg.get('dedup', 'none'), DEDUP_MODES, 'data.dedup')
  rms = data_cfg.get('dedup_rms', 0.02)
  require(isinstance(rms, (int, float)) and not isinstance(rms, bool) and rms > 0,
          'data.dedup_rms', rms, 'must be a number > 0 (per-pixel RMS distance)')
  s.validate(data_cfg)
  for fields, whose in _FIELD_GROUPS:
    for field, default in fields.items():
      if field not in s.fields:
        require(data_cfg.get(field, default) == default, f'data.{field}',
                data_cfg.get(field, default), f'applies only to {whose}; leave it at {default!r}')
  require(isinstance(data_cfg.data_dir, str), 'data.data_dir', data_cfg.data_dir,
          "must be a path string ('' = the TFDS default)")
  sources.check_installed(data_cfg)
  s.check_installed(data_cfg)


def info(data_cfg) -> DatasetInfo:
  """Shapes and sizes of the configured dataset (no preparing, except for text, whose spec counts
  windows / pairs / prompts and caches them)."""
  validate(data_cfg)
  return spec(data_cfg.name).info(data_cfg)


def reader(data_cfg, split: str, train: bool = False) -> readers.Reader:
  """The reader of one split, cached for the process: prepares the dataset on first use (images:
  a split that fits in memory is read once; toy data: generated; text: every window of the
  split, the last one padded, or with `train` the full windows only)."""
  validate(data_cfg)
  return spec(data_cfg.name).reader(data_cfg, split, train)


def data_source(data_cfg, split: str):
  """A random-access source (len, [i] -> {'image': uint8 HWC, 'label': int, ...}) of `split`
  ({'x': float32 [2], 'label'} for toy data; documents for text) -- research/data/sources.py."""
  validate(data_cfg)
  return sources.open_source(data_cfg.name, data_cfg.source, data_cfg.data_dir, split)
