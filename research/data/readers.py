"""Readers: the rows of one split, as the pipeline (research/data/pipeline.py) batches them.

A reader has `key` (the batch entry its rows go under), `num_examples`, and
  rows(indices)        -> (stored rows [n, ...], int64 labels [n] or None)
  to_features(rows)    -> the float32 (or int32 token) batch entry
  row_entries(indices) -> per-example entries beyond `key` and 'label' (e.g. a loss mask)
  eval_entries(batch)  -> entries an eval batch adds (e.g. text's loss mask of real targets)
Each dataset spec builds its kind's reader (research/data/specs.py, corpus.py, dialogue.py,
preferences.py); the pipeline shuffles, shards, pads and resumes over any of them alike.
"""
from __future__ import annotations

import numpy as np


def to_float(images: np.ndarray) -> np.ndarray:
  """uint8 -> float32 in [0, 1] (x / 255)."""
  return np.asarray(images, np.uint8).astype(np.float32) / np.float32(255)


class Reader:
  """rows(indices) -> (uint8 images [n, H, W, C], int64 labels [n]) from one split: from arrays
  in memory when given, else read from the random-access `source`. `to_features` turns rows into
  the float32 batch entry `key`. The base of every reader; `arrays` (None when streamed) is what
  dedup filters."""
  key = 'image'

  def __init__(self, source, arrays=None):
    self._source, self.arrays = source, arrays
    self.num_examples = len(arrays[1]) if arrays is not None else len(source)

  def rows(self, indices: np.ndarray):
    if self.arrays is not None:
      images, labels = self.arrays
      return images[indices], labels[indices]
    idx = [int(i) for i in indices]
    examples = (self._source.__getitems__(idx) if hasattr(self._source, '__getitems__')
                else [self._source[i] for i in idx])
    if not examples:
      return (np.zeros((0, *self._source_shape()), np.uint8), np.zeros((0,), np.int64))
    return (np.stack([np.asarray(e['image'], np.uint8) for e in examples]),
            np.array([e['label'] for e in examples], np.int64))

  def _source_shape(self):
    return np.asarray(self._source[0]['image']).shape

  def eval_entries(self, batch: dict) -> dict:  # pylint: disable=unused-argument
    """Entries an eval batch adds for this reader (text: the loss mask); none here."""
    return {}

  def row_entries(self, indices: np.ndarray) -> dict:  # pylint: disable=unused-argument
    """Per-example entries beyond `key` and 'label' that train and eval batches carry, arrays
    with leading dim len(indices) (dialogue text: the response-only 'loss_mask'); none here.
    Eval pads them with zeros."""
    return {}

  @staticmethod
  def to_features(rows: np.ndarray) -> np.ndarray:
    return to_float(rows)


class PointsReader(Reader):
  """rows(indices) -> (float32 points [n, 2], int64 labels [n]) of a toy split in memory; the
  points are model inputs already, so `to_features` passes them through."""
  key = 'x'

  def __init__(self, points: np.ndarray, labels: np.ndarray):
    super().__init__(None, (points, labels))

  @staticmethod
  def to_features(rows: np.ndarray) -> np.ndarray:
    return np.asarray(rows, np.float32)


class TokenArrayReader(Reader):
  """rows(indices) -> (int32 token rows [n, ...], None) of arrays in memory, and
  row_entries(indices) -> the same rows of each array in `entries` (e.g. a loss mask). No
  labels. The dialogue pairs, the RLHF prompts and the preference pairs are readers of this."""
  key = 'tokens'

  # pylint: disable-next=super-init-not-called
  def __init__(self, tokens: np.ndarray, entries: dict[str, np.ndarray] | None = None):
    self._source, self.arrays = None, None   # not an image reader: rows come from the arrays
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


def read_all(source, n: int, image_shape, chunk: int = 4096):
  """(uint8 images [n, ...], int64 labels [n]) of a random-access image source, in chunks."""
  images = np.empty((n, *image_shape), np.uint8)
  labels = np.empty((n,), np.int64)
  for start in range(0, n, chunk):
    idx = list(range(start, min(n, start + chunk)))
    examples = (source.__getitems__(idx) if hasattr(source, '__getitems__')
                else [source[i] for i in idx])
    for j, e in enumerate(examples):
      images[start + j] = e['image']
      labels[start + j] = e['label']
  return images, labels
