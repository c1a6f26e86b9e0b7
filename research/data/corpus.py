"""Text corpora for the language models (kind 'corpus': 'shakespeare', 'shakespeare_tail',
'lm1b'), and what every text kind shares: documents, the tokenizer and its cache, and the
`TextSpec` base of the text specs (dialogue.py, preferences.py derive from a corpus).

Documents: the examples of a split ({'name', 'text'} as UTF-8 bytes, research/data/builders),
in name order.

Sentence corpora (`Entry.sentences`: 'lm1b', One Billion Word through TFDS, the cloud
path): 30M sentences are no single stream. Example i is sentence i, read and tokenized only when
its batch is read (`SentenceReader`): BOS sentence EOS cut to L + 1 tokens, padded with pad, no
packing (the loss mask skips the padding). The tokenizer is fit on the first sentences of the
train split up to `SENTENCE_TOKENIZER_CHARS` characters.

Tokenizer (`tokenizer(data_cfg)`): `data.tokenizer` ('byte' | 'char' | 'bpe' with
`data.vocab_size` pieces, research/data/tokenizers.py) fit on `train_text(data_cfg)`, the documents
of `data.train_split` (never the held-out text). It is built once and cached on disk next to the
prepared data, in <data_dir>/genlab_tokenizers/<name>-<kind>[<vocab_size>]-<sha256 of the text>/
(built under a file lock, written to a temporary directory and renamed), so every process and
every later run loads the same vocabulary.

Packing: a split is one token stream, BOS doc_1 EOS BOS doc_2 EOS ... BOS doc_n EOS (a document
starts after BOS, as a generation prompt does, and ends with EOS). Window k is
stream[k L : k L + L + 1] for L = `data.seq_len`: inputs w[:-1], targets w[1:]. Consecutive
windows share one token, so the targets tile the stream: every token after the leading BOS is a
target of exactly one window. Train keeps the full windows (the last partial one is dropped);
eval pads the last window with pad (id 0, never in a stream) so every token is scored exactly
once, and `loss_mask` marks the real targets.

Batches come from the same grain machinery as the images (research/data/pipeline.py): a
`WindowReader` whose rows are windows under the key 'tokens', so shuffling (a fresh permutation of
the windows every epoch), host sharding, exact resume and eval padding are the pipeline's:
  train: {'tokens': int32 [B_host, L + 1]}
  eval:  {'tokens': int32 [B_host, L + 1], 'loss_mask': float32 [B_host, L] (1 = a real target),
          'mask': float32 [B_host] (1 = a real window, 0 = a padding one)}
`info(data_cfg)` counts windows: num_train full train windows, num_eval padded eval windows.

`info(data_cfg)` of a corpus counts windows (`TextSpec.info`).

A dataset derived from a corpus (`catalog.Entry.corpus`: dialogue pairs, prompts, preferences)
reads the corpus's documents and uses the corpus's tokenizer fit on the corpus's 'train' split
(`DIALOGUE_TOKENIZER_SPLIT`), whatever its data.train_split says, so a model pretrained on the
corpus has the same vocabulary (the same cache directory, too). `tokenizer_mismatch` compares two
data configs' tokenizers without building them.

The functions here take a validated config (research/data/datasets.py `validate`).
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import math
import os
import shutil

import numpy as np

from research.config_checks import one_of, require
from research.data import catalog
from research.data import readers
from research.data import sources
from research.data import specs
from research.data import tokenizers

# The text kinds' config.data fields and their defaults (as in configs.py).
FIELDS = {'tokenizer': 'char', 'vocab_size': 2048, 'seq_len': 256}
# A sentence corpus's tokenizer is fit on its first sentences up to this many characters (the
# Flax lm1b example's sentencepiece sample size): the full 4 GB train split would add nothing.
SENTENCE_TOKENIZER_CHARS = 10_000_000
DIALOGUE_TOKENIZER_SPLIT = 'train'   # a derived dataset's tokenizer: its corpus's, fit on this

# ---------------------------------------------------------------------------------------------
# Documents and the tokenizer


@functools.lru_cache(maxsize=16)
def _documents(name: str, source: str, data_dir: str, split: str) -> tuple[tuple[str, str], ...]:
  src = sources.open_source(name, source, data_dir, split)
  docs = [(bytes(e['name']).decode(), bytes(e['text']).decode('utf-8'))
          for e in (src[i] for i in range(len(src)))]
  return tuple(sorted(docs))


def documents(data_cfg, split: str) -> list[tuple[str, str]]:
  """(name, text) of every document of `split` (a TFDS split spec) of the config's corpus, in
  name order."""
  return list(_documents(catalog.corpus(data_cfg.name), data_cfg.source, data_cfg.data_dir,
                         split))


def _is_derived(name: str) -> bool:
  return catalog.DATASETS[name].corpus is not None


def train_text(data_cfg) -> str:
  """The text the tokenizer is fit on: the documents of data.train_split, joined by newlines (a
  dialogue, prompt or preference dataset: of its corpus's DIALOGUE_TOKENIZER_SPLIT)."""
  split = DIALOGUE_TOKENIZER_SPLIT if _is_derived(data_cfg.name) else data_cfg.train_split
  return '\n'.join(t for _, t in documents(data_cfg, split))


def tokenizer_key(data_cfg) -> tuple:
  kind = data_cfg.get('tokenizer', FIELDS['tokenizer'])
  vocab_size = data_cfg.get('vocab_size', FIELDS['vocab_size'])
  vocab_size = vocab_size if kind == 'bpe' else 0  # the other kinds do not use it
  if _is_derived(data_cfg.name):  # its corpus's pretraining tokenizer (see above)
    return (catalog.corpus(data_cfg.name), data_cfg.source, data_cfg.data_dir,
            DIALOGUE_TOKENIZER_SPLIT, kind, vocab_size)
  return (data_cfg.name, data_cfg.source, data_cfg.data_dir, data_cfg.train_split, kind,
          vocab_size)


def tokenizer_mismatch(data_cfg, other) -> tuple[str, object, object] | None:
  """None when the data configs `data_cfg` and `other` give the same tokenizer (the same corpus,
  source, fitting split, kind and BPE size; data_dir may differ, as on another machine), else
  (the data field that makes them differ, its effective value for data_cfg -- e.g. the corpus,
  or the split a dialogue tokenizer is fit on --, and for other). Cheap: builds nothing."""
  a, b = tokenizer_key(data_cfg), tokenizer_key(other)
  for i, name in ((0, 'name'), (1, 'source'), (3, 'train_split'), (4, 'tokenizer'),
                  (5, 'vocab_size')):
    if a[i] != b[i]:
      return f'data.{name}', a[i], b[i]
  return None


def tokenizer_fix(data_cfg, field: str, theirs) -> str:
  """How to fine-tune `data_cfg` from a run whose tokenizer differs in `field` (its value there
  `theirs`; see `tokenizer_mismatch`)."""
  if field == 'data.train_split' and _is_derived(data_cfg.name):
    return (f'a dialogue dataset\'s tokenizer is fit on its corpus\'s '
            f'{DIALOGUE_TOKENIZER_SPLIT!r} split: start from a run pretrained with '
            f'data.train_split={DIALOGUE_TOKENIZER_SPLIT!r}')
  if field == 'data.name':
    return 'pretrain on the same corpus'
  return f'fine-tune with --config.{field}={theirs}'


def _sentence_sample(name: str, source: str, data_dir: str, split: str) -> str:
  """The first sentences of a sentence corpus's split, up to SENTENCE_TOKENIZER_CHARS
  characters, one per line: the text its tokenizer is fit on."""
  src = sources.open_source(name, source, data_dir, split)
  lines, size = [], 0
  for i in range(len(src)):
    if size >= SENTENCE_TOKENIZER_CHARS:
      break
    lines.append(bytes(src[i]['text']).decode('utf-8'))
    size += len(lines[-1]) + 1
  return '\n'.join(lines)


def _tokenizer_root(name: str, source: str, data_dir: str) -> str:
  if source == 'package':
    return os.path.join(sources.package_root(name, data_dir), 'genlab_tokenizers')
  data_dir = os.path.expanduser(data_dir) if data_dir else None
  return os.path.join(data_dir or os.path.expanduser('~/tensorflow_datasets'),
                      'genlab_tokenizers')


@functools.lru_cache(maxsize=8)
def _cached_tokenizer(name, source, data_dir, train_split, kind, vocab_size):
  """(tokenizer, its cache directory), built on first use by any process (see the docstring)."""
  if catalog.DATASETS[name].sentences:
    text = _sentence_sample(name, source, data_dir, train_split)
  else:
    text = '\n'.join(t for _, t in _documents(name, source, data_dir, train_split))
  digest = hashlib.sha256(text.encode('utf-8')).hexdigest()[:16]
  tag = f'{name}-{kind}{vocab_size or ""}-{digest}'
  root = _tokenizer_root(name, source, data_dir)
  path = os.path.join(root, tag)
  if not os.path.isfile(os.path.join(path, 'tokenizer.json')):
    with sources.file_lock(os.path.join(root, f'.{tag}.lock')):
      if not os.path.isfile(os.path.join(path, 'tokenizer.json')):
        tmp = f'{path}.tmp{os.getpid()}'
        shutil.rmtree(tmp, ignore_errors=True)
        tokenizers.make({'tokenizer': kind, 'vocab_size': vocab_size}, text).save(tmp)
        try:
          os.replace(tmp, path)
        except OSError:  # another machine on a shared disk won (same text: the same tokenizer)
          shutil.rmtree(tmp, ignore_errors=True)
  return tokenizers.load(path), path


def tokenizer(data_cfg) -> tokenizers.Tokenizer:
  """The configured tokenizer, fit on `train_text(data_cfg)`; cached on disk and per process.
  `tokenizer(cfg).vocab_size` is the model's vocabulary size."""
  return _cached_tokenizer(*tokenizer_key(data_cfg))[0]


def tokenizer_dir(data_cfg) -> str:
  """Where the configured tokenizer is saved (`tokenizers.load` reads it)."""
  return _cached_tokenizer(*tokenizer_key(data_cfg))[1]


def cached_tokenizer(tok_key: tuple) -> tokenizers.Tokenizer:
  """The tokenizer of a `tokenizer_key` (for the derived kinds' per-process caches)."""
  return _cached_tokenizer(*tok_key)[0]


def key_documents(tok_key: tuple, split: str) -> tuple[tuple[str, str], ...]:
  """The documents of `split` of a `tokenizer_key`'s corpus (for the derived kinds' caches)."""
  return _documents(*tok_key[:3], split)


# ---------------------------------------------------------------------------------------------
# Packing


@functools.lru_cache(maxsize=8)
def _cached_stream(tok_key: tuple, split: str) -> np.ndarray:
  tok = _cached_tokenizer(*tok_key)[0]
  name, source, data_dir = tok_key[:3]
  bos, eos = np.array([tokenizers.BOS], np.int32), np.array([tokenizers.EOS], np.int32)
  parts = []
  for _, text in _documents(name, source, data_dir, split):
    parts += [bos, tok.encode_array(text), eos]
  stream = np.concatenate(parts) if parts else np.zeros((0,), np.int32)
  stream.setflags(write=False)
  return stream


def token_stream(data_cfg, split: str) -> np.ndarray:
  """The split's tokens, BOS doc_1 EOS ... BOS doc_n EOS: int32 [T] (read-only)."""
  return _cached_stream(tokenizer_key(data_cfg), split)


def num_windows(num_tokens: int, seq_len: int, train: bool) -> int:
  """Windows of a stream of `num_tokens`: full ones only (train), or enough to score every target
  (eval). A stream has num_tokens - 1 targets."""
  targets = max(num_tokens - 1, 0)
  return targets // seq_len if train else math.ceil(targets / seq_len)


class WindowReader(readers.Reader):
  """rows(indices) -> (int32 windows [n, seq_len + 1], None): window k of a token stream (see the
  module docstring), the tail padded with pad (eval). No labels."""
  key = 'tokens'

  # pylint: disable-next=super-init-not-called
  def __init__(self, stream: np.ndarray, seq_len: int, train: bool):
    self._source, self.arrays = None, None   # not an image reader: rows come from the stream
    self.seq_len = seq_len
    self.num_examples = num_windows(len(stream), seq_len, train)
    size = self.num_examples * seq_len + 1
    self._stream = np.full(max(size, len(stream)), tokenizers.PAD, np.int32)
    self._stream[:len(stream)] = stream
    self._offsets = np.arange(seq_len + 1, dtype=np.int64)

  def rows(self, indices: np.ndarray):
    starts = np.asarray(indices, np.int64) * self.seq_len
    return self._stream[starts[:, None] + self._offsets], None

  @staticmethod
  def to_features(rows: np.ndarray) -> np.ndarray:
    return rows

  def eval_entries(self, batch: dict) -> dict:
    # pad never occurs in a stream, so a pad target is padding (tail or padding window).
    return {'loss_mask': (batch[self.key][:, 1:] != tokenizers.PAD).astype(np.float32)}


class SentenceReader(readers.Reader):
  """A sentence corpus (lm1b): example i is sentence i of the split, read and tokenized when
  its batch is read, as BOS sentence EOS cut to seq_len + 1 tokens and padded with pad. Rows
  are independent (no packing across sentences), so the split never sits in memory and random
  access (grain's shuffle, host sharding, exact resume) is the data source's."""
  key = 'tokens'

  # pylint: disable-next=super-init-not-called
  def __init__(self, source, tok: tokenizers.Tokenizer, seq_len: int):
    self._source, self.arrays = None, None   # rows come from `source` through the tokenizer
    self._sentences, self._tok, self.seq_len = source, tok, seq_len
    self.num_examples = len(source)

  def rows(self, indices: np.ndarray):
    out = np.full((len(indices), self.seq_len + 1), tokenizers.PAD, np.int32)
    for row, i in enumerate(np.asarray(indices, np.int64)):
      ids = self._tok.encode_array(bytes(self._sentences[int(i)]['text']).decode('utf-8'))
      seq = np.concatenate([[tokenizers.BOS], ids, [tokenizers.EOS]])[:self.seq_len + 1]
      out[row, :len(seq)] = seq
    return out, None

  @staticmethod
  def to_features(rows: np.ndarray) -> np.ndarray:
    return rows

  def eval_entries(self, batch: dict) -> dict:
    return {'loss_mask': (batch[self.key][:, 1:] != tokenizers.PAD).astype(np.float32)}


@functools.lru_cache(maxsize=8)
def _cached_sentence_reader(tok_key: tuple, split: str, seq_len: int) -> SentenceReader:
  name, source, data_dir = tok_key[:3]
  return SentenceReader(sources.open_source(name, source, data_dir, split),
                        _cached_tokenizer(*tok_key)[0], seq_len)


@functools.lru_cache(maxsize=8)
def _cached_window_reader(tok_key: tuple, split: str, seq_len: int, train: bool
                          ) -> WindowReader:
  return WindowReader(_cached_stream(tok_key, split), seq_len, train)


def split_stats(data_cfg, split: str) -> dict:
  """Documents, characters and tokens of a split. The targets are the tokens but the first BOS;
  they spell the characters (`Tokenizer.char_lengths`) plus one BOS (but the first) and one EOS
  per document."""
  docs = documents(data_cfg, split)
  return {'documents': len(docs), 'characters': sum(len(t) for _, t in docs),
          'tokens': len(token_stream(data_cfg, split))}


# ---------------------------------------------------------------------------------------------
# Specs


class TextSpec(specs.DatasetSpec):
  """What the text kinds share: batches under 'tokens', the tokenizer fields, no image options;
  `info` counts the reader's rows (which prepares the data and the tokenizer on first use)."""
  key = 'tokens'
  fields = FIELDS

  def validate(self, data_cfg) -> None:
    specs.check_no_image_options(data_cfg, 'the text dataset')
    kind = data_cfg.get('tokenizer', FIELDS['tokenizer'])
    one_of(kind, tokenizers.KINDS, 'data.tokenizer')
    seq_len = data_cfg.get('seq_len', FIELDS['seq_len'])
    require(isinstance(seq_len, int) and not isinstance(seq_len, bool) and seq_len > 0,
            'data.seq_len', seq_len, 'must be an int > 0 (tokens of context per window)')
    vocab_size = data_cfg.get('vocab_size', FIELDS['vocab_size'])
    if kind == 'bpe':
      require(isinstance(vocab_size, int) and vocab_size > tokenizers.BPE_RESERVED,
              'data.vocab_size', vocab_size,
              f'must exceed the {tokenizers.BPE_RESERVED} reserved bpe pieces (specials, '
              "newline, 256 bytes) plus the text's characters, e.g. 2048")

  def check_installed(self, data_cfg) -> None:
    if data_cfg.get('tokenizer', FIELDS['tokenizer']) == 'bpe':
      require(importlib.util.find_spec('sentencepiece') is not None, 'data.tokenizer', 'bpe',
              'needs sentencepiece (not installed); run: pip install sentencepiece==0.2.3')

  def row_shape(self, seq_len: int) -> tuple[int, ...]:
    return (seq_len + 1,)

  def info(self, data_cfg) -> specs.DatasetInfo:
    """num_train: the train reader's rows; num_eval: the eval reader's (at most
    num_eval_examples). Prepares the data and the tokenizer and reads both splits on first use
    (cached)."""
    num_eval = self.reader(data_cfg, data_cfg.eval_split).num_examples
    if data_cfg.num_eval_examples != -1:
      num_eval = min(num_eval, data_cfg.num_eval_examples)
    return specs.DatasetInfo(
        shape=self.row_shape(int(data_cfg.seq_len)), num_classes=0,
        num_train=self.reader(data_cfg, data_cfg.train_split, True).num_examples,
        num_eval=num_eval, key=self.key)


class CorpusSpec(TextSpec):
  """A corpus: windows of its split's token stream (full ones for train, all of them, the last
  padded, for eval), or one sentence per row for a sentence corpus."""
  kind = 'corpus'

  def reader(self, data_cfg, split: str, train: bool = False) -> readers.Reader:
    key, seq_len = tokenizer_key(data_cfg), int(data_cfg.seq_len)
    if catalog.DATASETS[data_cfg.name].sentences:
      return _cached_sentence_reader(key, split, seq_len)
    return _cached_window_reader(key, split, seq_len, train)


CORPUS = CorpusSpec()
