"""Tokenizers for the language models: 'byte', 'char' and 'bpe' behind one interface.

Every kind reserves the same special ids -- pad 0, bos 1, eos 2, unk 3 -- so padding with zeros
is padding with `pad_id`, and the data pipeline never emits pad: a target equal to pad_id is
padding. `decode` drops pad/bos/eos; an unknown id decodes to U+FFFD (byte, char) or ' ⁇ ' (bpe).
`char_lengths()[i]` is the number of characters id i spells (0 for pad/bos/eos and for UTF-8
continuation bytes, 1 for unk), so summing it over the ids of a text gives len(text): bits per
character from any tokenizer's loss.

| kind | vocabulary                                                         | round trip         |
|------|--------------------------------------------------------------------|--------------------|
| byte | the 256 UTF-8 byte values, ids 4..259 (vocab 260)                  | any text           |
| char | the sorted characters of the training text, ids 4.. (+ the specials)| training characters|
| bpe  | sentencepiece BPE of `vocab_size` pieces trained on the training    | any text (unseen   |
|      | text: '\\n' is a piece, 256 byte-fallback pieces, no normalization  | chars: their bytes)|

BPE training is deterministic (one thread, no sampling or shuffling of the input, fixed seed; the
model is written to memory, not to files), so the same text gives the same model bytes.

`save(directory)` writes tokenizer.json (kind, vocab size, specials and the vocabulary; bpe adds
bpe.model next to it) and `load(directory)` restores any kind. `make(data_cfg, text)` builds the
configured one (`data.tokenizer`, `data.vocab_size`); research/data/corpus.py caches it on disk next
to the prepared dataset.
"""
from __future__ import annotations

import abc
import io
import json
import os
from typing import ClassVar, Iterable

import numpy as np

from research.config_checks import one_of, require

KINDS = ('byte', 'char', 'bpe')
SPECIALS = ('<pad>', '<bos>', '<eos>', '<unk>')
PAD, BOS, EOS, UNK = 0, 1, 2, 3
NUM_SPECIAL = len(SPECIALS)
# BPE pieces that exist whatever the text: the specials, '\n' and the 256 byte-fallback pieces.
BPE_RESERVED = NUM_SPECIAL + 1 + 256
_REPLACEMENT = '\ufffd'
_CONFIG = 'tokenizer.json'
_BPE_MODEL = 'bpe.model'


class Tokenizer(abc.ABC):
  """text <-> int ids. `vocab_size` counts the specials (ids 0..3, see the module docstring)."""
  kind: ClassVar[str]
  pad_id, bos_id, eos_id, unk_id = PAD, BOS, EOS, UNK

  @property
  @abc.abstractmethod
  def vocab_size(self) -> int:
    ...

  @abc.abstractmethod
  def encode(self, text: str) -> list[int]:
    """Ids of `text`, without bos/eos."""

  @abc.abstractmethod
  def decode(self, ids: Iterable[int]) -> str:
    """The text of `ids`; pad, bos and eos are dropped."""

  def encode_array(self, text: str) -> np.ndarray:
    """`encode` as int32 [n] (the data pipeline's path; kinds may make it faster)."""
    return np.asarray(self.encode(text), np.int32)

  @abc.abstractmethod
  def char_lengths(self) -> np.ndarray:
    """int32 [vocab_size]: the characters each id spells (see the module docstring)."""

  @abc.abstractmethod
  def _vocab(self) -> dict:
    """The kind-specific part of tokenizer.json."""

  def save(self, directory: str) -> None:
    os.makedirs(directory, exist_ok=True)
    config = {'kind': self.kind, 'vocab_size': self.vocab_size, 'specials': list(SPECIALS),
              **self._vocab()}
    with open(os.path.join(directory, _CONFIG), 'w', encoding='utf-8') as f:
      json.dump(config, f, ensure_ascii=False, indent=1)

  def __eq__(self, other) -> bool:
    return type(self) is type(other) and self._vocab() == other._vocab()

  def __hash__(self) -> int:
    return hash((self.kind, self.vocab_size))

  def __repr__(self) -> str:
    return f'{type(self).__name__}(vocab_size={self.vocab_size})'

  def _real(self, ids: Iterable[int]) -> list[int]:
    """`ids` as ints without pad/bos/eos; raises on ids outside the vocabulary."""
    out = []
    for i in ids:
      i = int(i)
      if not 0 <= i < self.vocab_size:
        raise ValueError(f'id {i} is outside the vocabulary [0, {self.vocab_size})')
      if i not in (PAD, BOS, EOS):
        out.append(i)
    return out


class ByteTokenizer(Tokenizer):
  """UTF-8 bytes: byte b is id b + 4."""
  kind = 'byte'

  @property
  def vocab_size(self) -> int:
    return NUM_SPECIAL + 256

  def encode(self, text: str) -> list[int]:
    return [b + NUM_SPECIAL for b in text.encode('utf-8')]

  def encode_array(self, text: str) -> np.ndarray:
    return np.frombuffer(text.encode('utf-8'), np.uint8).astype(np.int32) + NUM_SPECIAL

  def char_lengths(self) -> np.ndarray:
    return np.array([0, 0, 0, 1] + [_starts_char(b) for b in range(256)], np.int32)

  def decode(self, ids: Iterable[int]) -> str:
    # unk never comes out of encode; a model may still emit it: one replacement character.
    parts, run = [], bytearray()
    for i in self._real(ids):
      if i == UNK:
        parts += [run.decode('utf-8', errors='replace'), _REPLACEMENT]
        run = bytearray()
      else:
        run.append(i - NUM_SPECIAL)
    return ''.join(parts) + run.decode('utf-8', errors='replace')

  def _vocab(self) -> dict:
    return {}


class CharTokenizer(Tokenizer):
  """The characters of the training text, sorted: chars[k] is id k + 4; others encode to unk."""
  kind = 'char'

  def __init__(self, chars: Iterable[str]):
    self.chars = ''.join(sorted(set(chars)))
    if any(len(c) != 1 for c in self.chars):
      raise ValueError('a char vocabulary holds single characters')
    self._ids = {c: k + NUM_SPECIAL for k, c in enumerate(self.chars)}

  @classmethod
  def from_text(cls, text: str) -> CharTokenizer:
    return cls(set(text))

  @property
  def vocab_size(self) -> int:
    return NUM_SPECIAL + len(self.chars)

  def encode(self, text: str) -> list[int]:
    get = self._ids.get
    return [get(c, UNK) for c in text]

  def char_lengths(self) -> np.ndarray:
    return np.array([0, 0, 0, 1] + [1] * len(self.chars), np.int32)

  def decode(self, ids: Iterable[int]) -> str:
    return ''.join(_REPLACEMENT if i == UNK else self.chars[i - NUM_SPECIAL]
                   for i in self._real(ids))

  def _vocab(self) -> dict:
    return {'chars': list(self.chars)}


class BpeTokenizer(Tokenizer):
  """sentencepiece BPE, from a serialized model (`train` makes one)."""
  kind = 'bpe'

  def __init__(self, model: bytes):
    import sentencepiece as spm  # pylint: disable=g-import-not-at-top
    self.model = bytes(model)
    self._sp = spm.SentencePieceProcessor(model_proto=self.model)
    ids = (self._sp.pad_id(), self._sp.bos_id(), self._sp.eos_id(), self._sp.unk_id())
    if ids != (PAD, BOS, EOS, UNK):
      raise ValueError(f'bpe model has special ids {ids}, not {(PAD, BOS, EOS, UNK)}')

  def __getstate__(self):  # picklable: the processor is rebuilt from the model bytes
    return {'model': self.model}

  def __setstate__(self, state):
    self.__init__(state['model'])

  @classmethod
  def train(cls, text: str, vocab_size: int) -> BpeTokenizer:
    """BPE with `vocab_size` pieces trained on `text` (one sentence per line), deterministically.
    Raises ValueError when vocab_size cannot hold the reserved pieces and the characters."""
    import sentencepiece as spm  # pylint: disable=g-import-not-at-top
    chars = len(set(text) - {'\n'})
    if vocab_size < BPE_RESERVED + chars:
      raise ValueError(f'must be >= {BPE_RESERVED + chars} ({BPE_RESERVED} reserved pieces + '
                       f'the {chars} characters of the training text)')
    spm.set_random_generator_seed(0)  # BPE draws nothing; this pins any sampling spm adds
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text.split('\n')), model_writer=model, model_type='bpe',
        vocab_size=vocab_size, character_coverage=1.0, byte_fallback=True,
        # Exact round trips: no normalization, keep every space, '\n' is a piece of its own.
        normalization_rule_name='identity', remove_extra_whitespaces=False,
        add_dummy_prefix=False, user_defined_symbols=['\n'],
        pad_id=PAD, bos_id=BOS, eos_id=EOS, unk_id=UNK,
        # Deterministic: every sentence, in order, one thread.
        input_sentence_size=0, shuffle_input_sentence=False, num_threads=1, minloglevel=2)
    return cls(model.getvalue())

  @property
  def vocab_size(self) -> int:
    return self._sp.get_piece_size()

  def encode(self, text: str) -> list[int]:
    return self._sp.encode(text)

  def char_lengths(self) -> np.ndarray:
    sp = self._sp

    def length(i):
      if sp.is_control(i):  # pad, bos, eos
        return 0
      if sp.is_unknown(i):
        return 1
      piece = sp.id_to_piece(i)
      return _starts_char(int(piece[3:5], 16)) if sp.is_byte(i) else len(piece)  # '<0xE6>'

    return np.array([length(i) for i in range(self.vocab_size)], np.int32)

  def decode(self, ids: Iterable[int]) -> str:
    return self._sp.decode(self._real(ids))

  def _vocab(self) -> dict:
    return {'model_file': _BPE_MODEL,
            'pieces': [self._sp.id_to_piece(i) for i in range(self.vocab_size)]}

  def save(self, directory: str) -> None:
    super().save(directory)
    with open(os.path.join(directory, _BPE_MODEL), 'wb') as f:
      f.write(self.model)

  def __eq__(self, other) -> bool:
    return type(self) is type(other) and self.model == other.model

  def __hash__(self) -> int:
    return hash(self.model)


def _starts_char(byte: int) -> int:
  """1 unless `byte` is a UTF-8 continuation byte (0b10xxxxxx): each character has one."""
  return int(not 0x80 <= byte < 0xC0)


def load(directory: str) -> Tokenizer:
  """The tokenizer `save(directory)` wrote, of any kind."""
  with open(os.path.join(directory, _CONFIG), encoding='utf-8') as f:
    config = json.load(f)
  kind = config.get('kind')
  if kind == 'byte':
    tok = ByteTokenizer()
  elif kind == 'char':
    tok = CharTokenizer(config['chars'])
  elif kind == 'bpe':
    with open(os.path.join(directory, config['model_file']), 'rb') as f:
      tok = BpeTokenizer(f.read())
  else:
    raise ValueError(f'{directory}/{_CONFIG}: unknown tokenizer kind {kind!r}; one of {KINDS}')
  if tok.vocab_size != config['vocab_size']:
    raise ValueError(f'{directory}: vocab size {tok.vocab_size} != {config["vocab_size"]} in '
                     f'{_CONFIG} (a damaged tokenizer; delete the directory to rebuild it)')
  return tok


def make(data_cfg, train_text: str) -> Tokenizer:
  """The tokenizer `data_cfg.tokenizer` built from `train_text` (bpe: `data_cfg.vocab_size`)."""
  kind = data_cfg.get('tokenizer', 'char')
  one_of(kind, KINDS, 'data.tokenizer')
  if kind == 'byte':
    return ByteTokenizer()
  if kind == 'char':
    return CharTokenizer.from_text(train_text)
  vocab_size = data_cfg.get('vocab_size', 2048)
  try:
    return BpeTokenizer.train(train_text, vocab_size)
  except (ValueError, RuntimeError) as e:  # too small, or more pieces than the text can merge
    why = ' '.join(str(e).split())
    require(False, 'data.vocab_size', vocab_size, f'bpe training failed: {why}')
    raise
