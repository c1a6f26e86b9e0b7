"""Preference pairs from a record store, for a reward model and DPO (kind 'preferences'), derived
from a corpus like the dialogue datasets (research/data/dialogue.py): the corpus's tokenizer and
the dialogue's prompt format.

Preferences (kind 'preferences': 'shakespeare_preferences'), for a reward model and DPO:
the pairs (prompt, chosen, rejected) of the preferences table of the SQLite record store
data.records (research/records.py), those of data.preference_source ('human' | 'synthetic' |
'model', or 'all'), in store id order (`preference_pairs`). Splits 'train' and 'test' only: a
pair's split is its metadata['split'] when that is 'train' or 'test', else 'test' when
int(sha256(prompt UTF-8).hexdigest(), 16) % 10 == 0 and 'train' otherwise
(`preference_split`), so pairs on one prompt never straddle the splits. `data.max_pairs` = N
keeps the first N pairs of the train split (0 = all): reward models by data size read one store.
Each side is one sequence of L + 1 tokens (`encode_preference`):

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
import os
import sqlite3
import urllib.parse
from typing import NamedTuple

import numpy as np

from research import records
from research.config_checks import one_of, require
from research.data import catalog
from research.data import corpus
from research.data import dialogue
from research.data import readers
from research.data import tokenizers

# The preference datasets' config.data fields and their defaults (as in configs.py); every
# other dataset leaves them so.
FIELDS = {'records': '', 'preference_source': 'synthetic', 'max_pairs': 0}
SOURCES = ('human', 'synthetic', 'model', 'all')   # records.SOURCES + 'all'
SPLITS = ('train', 'test')


def preference_split(prompt: str, metadata: dict | None) -> str:
  """'train' or 'test': metadata['split'] when it is one of them, else by a hash of the prompt
  (1 in 10 prompts is 'test'), so every pair on one prompt lands in the same split."""
  split = metadata.get('split') if isinstance(metadata, dict) else None
  if split in SPLITS:
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
  if split not in SPLITS:
    raise ValueError(f'preference split {split!r}: a preference dataset has the splits '
                     f'{list(SPLITS)} (no slices)')
  return [r for r in _store_pairs(path, source, fingerprint)
          if preference_split(r['prompt'], r.get('metadata')) == split]


def _records_path(data_cfg) -> str:
  return os.path.abspath(os.path.expanduser(data_cfg.records))


def preference_pairs(data_cfg, split: str) -> list[dict]:
  """The record store's pairs of data.preference_source in `split` ('train' | 'test'), in id
  order: dicts with id, prompt, chosen, rejected, source, score, metadata, ... (row i of the
  split's `PreferenceReader` is pair i)."""
  if catalog.DATASETS[data_cfg.name].kind != 'preferences':
    raise ValueError(f'preference_pairs: {data_cfg.name!r} is not a preference dataset; use one '
                     f'of {catalog.names_of("preferences")}')
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
  ctx = tok.encode_array(prompt + dialogue.SEPARATOR)
  c_resp, r_resp = tok.encode_array(chosen), tok.encode_array(rejected)
  keep_ctx = dialogue.prompt_keep(len(ctx), max(len(c_resp), len(r_resp)), seq_len)
  c, cm, c_cut = dialogue.pack(ctx, keep_ctx, c_resp, seq_len)
  r, rm, r_cut = dialogue.pack(ctx, keep_ctx, r_resp, seq_len)
  return EncodedPreference(c, cm, r, rm, len(ctx) - keep_ctx, c_cut, r_cut)


class PreferenceReader(readers.TokenArrayReader):
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
                              split: str, seq_len: int, limit: int = 0) -> PreferenceReader:
  tok = corpus.cached_tokenizer(tok_key)
  rows = _split_pairs(path, source, fingerprint, split)
  rows = rows[:limit] if limit else rows
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


def _reader(data_cfg, split: str) -> PreferenceReader:
  path, source = _records_path(data_cfg), data_cfg.preference_source
  fingerprint = _store_fingerprint(path)
  limit = int(data_cfg.get('max_pairs', 0)) if split == data_cfg.train_split else 0
  read = _cached_preference_reader(corpus.tokenizer_key(data_cfg), path, source, fingerprint, split,
                                   int(data_cfg.seq_len), limit)
  if read.num_examples == 0:
    total = len(_store_pairs(path, source, fingerprint))
    raise ValueError(
        f'no preference pairs in split {split!r}: config.data.records={data_cfg.records!r} holds '
        f'{total} pair(s) of config.data.preference_source={source!r}, none in {split!r} '
        f"(a pair's split is its metadata 'split', else a hash of its prompt); add pairs, or "
        "pick another source ('all' for every source)")
  return read


# ---------------------------------------------------------------------------------------------
# The spec


class PreferenceSpec(corpus.TextSpec):
  """Pairs of the record store config.data.records; splits 'train' and 'test' only."""
  kind = 'preferences'
  fields = {**corpus.FIELDS, **FIELDS}

  def validate(self, data_cfg) -> None:
    super().validate(data_cfg)
    name = data_cfg.name
    for field in ('train_split', 'eval_split'):
      require(data_cfg[field] in SPLITS, f'data.{field}', data_cfg[field],
              f'the preference dataset {name!r} has the splits {list(SPLITS)} '
              "(by the pair's metadata 'split', else a hash of its prompt), no slices")
    one_of(data_cfg.get('preference_source', FIELDS['preference_source']), SOURCES,
           'data.preference_source')
    path = data_cfg.get('records', FIELDS['records'])
    fix = ('generate pairs with python -m research.rlhf.preferences ... or import JSONL with '
           "research.records (RecordStore.import_jsonl('preferences', path))")
    require(isinstance(path, str) and bool(path), 'data.records', path,
            f'{name!r} reads its pairs from a record store: set it to the SQLite file; {fix}')
    require(os.path.isfile(os.path.expanduser(path)), 'data.records', path,
            f'no such file; {fix}')
    n = data_cfg.get('max_pairs', FIELDS['max_pairs'])
    require(isinstance(n, int) and not isinstance(n, bool) and n >= 0, 'data.max_pairs', n,
            'must be an int >= 0 (the first N train pairs; 0 = all)')

  def reader(self, data_cfg, split: str, train: bool = False) -> PreferenceReader:
    del train
    return _reader(data_cfg, split)


PREFERENCES = PreferenceSpec()
