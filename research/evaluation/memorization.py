"""Nearest-neighbour memorization (training-data copy) checks for generated samples.

For each generated sample x (a feature vector or a flattened image) we compute Euclidean
distances d1 / d2 to its nearest / second-nearest training example and dt to its nearest
held-out test example. x is flagged as a copy when

  d1 / d2 < ratio_threshold   (default 1/3: a Lowe-style ratio test, the criterion of
                               Yoon et al., 2023, "Diffusion probabilistic models generalize
                               when they fail to memorize": far closer to one training point
                               than to any other), OR
  d1 / dt < test_ratio        (default 0.5: much closer to the training set than to held-out
                               data from the same distribution, in the spirit of the
                               train-vs-test distance comparison of Meehan et al., 2020,
                               "A non-parametric test to detect data-copying").

Ties at zero: 0/0 counts as 0 for d1/d2 (an exact copy of a duplicated training example is
flagged) and as 1 for d1/dt (a point equal to both a train and a test example is no evidence
of copying by that rule); d1 > 0 with d2 or dt = 0 gives inf (not flagged).
"""
from __future__ import annotations

import numpy as np

from research.images import save_png


def _flatten(name: str, x) -> np.ndarray:
  x = np.asarray(x, np.float64)
  if x.ndim < 2:
    raise ValueError(f'{name} must be [n, ...] with n samples, got shape {x.shape}')
  return x.reshape(len(x), -1)


def _ratio(num: np.ndarray, den: np.ndarray, zero_over_zero: float) -> np.ndarray:
  with np.errstate(divide='ignore', invalid='ignore'):
    r = num / den
  return np.where((num == 0) & (den == 0), zero_over_zero, r)


def _nearest_two(queries: np.ndarray, refs: np.ndarray, chunk: int, k: int):
  """Sorted k (1 or 2) smallest distances and indices of refs per query; O(chunk * len(refs))."""
  ref_sq = np.einsum('ij,ij->i', refs, refs)
  dists = np.empty((len(queries), k))
  idx = np.empty((len(queries), k), np.int64)
  for s in range(0, len(queries), chunk):
    q = queries[s:s + chunk]
    d2 = np.einsum('ij,ij->i', q, q)[:, None] + ref_sq[None, :] - 2.0 * q @ refs.T
    np.maximum(d2, 0.0, out=d2)
    part = np.argpartition(d2, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(d2, part, axis=1)
    order = np.argsort(vals, axis=1)
    idx[s:s + chunk] = np.take_along_axis(part, order, axis=1)
    dists[s:s + chunk] = np.sqrt(np.take_along_axis(vals, order, axis=1))
  return dists, idx


def memorization_report(fake, train, test, ratio_threshold: float = 1 / 3,
                        test_ratio: float = 0.5, chunk: int = 1024) -> dict:
  """Copy statistics of `fake` [M, ...] against `train` [N >= 2, ...] and `test` [T >= 1, ...].

  Returns dict with copy_fraction (flagged / M), median_d1, median_dt, flagged_indices (sorted
  int array), nearest_train_index [M], d1, d2, dt [M] (Euclidean distances, float64) and
  ratio (d1 / d2 [M]). Pairwise squared distances are formed `chunk` fakes at a time.
  """
  fake, train, test = _flatten('fake', fake), _flatten('train', train), _flatten('test', test)
  if not (fake.shape[1] == train.shape[1] == test.shape[1]):
    raise ValueError(f'feature sizes differ: fake {fake.shape[1]}, train {train.shape[1]}, '
                     f'test {test.shape[1]}')
  if len(fake) == 0 or len(train) < 2 or len(test) < 1:
    raise ValueError(f'need >= 1 fake, >= 2 train, >= 1 test samples; got '
                     f'{len(fake)}, {len(train)}, {len(test)}')
  if chunk < 1:
    raise ValueError(f'chunk must be >= 1, got {chunk}')
  dtrain, itrain = _nearest_two(fake, train, chunk, 2)
  dtest, _ = _nearest_two(fake, test, chunk, 1)
  d1, d2, dt = dtrain[:, 0], dtrain[:, 1], dtest[:, 0]
  ratio = _ratio(d1, d2, 0.0)
  flagged = (ratio < ratio_threshold) | (_ratio(d1, dt, 1.0) < test_ratio)
  return dict(copy_fraction=float(flagged.mean()),
              median_d1=float(np.median(d1)),
              median_dt=float(np.median(dt)),
              flagged_indices=np.flatnonzero(flagged),
              nearest_train_index=itrain[:, 0],
              d1=d1, d2=d2, dt=dt, ratio=ratio)


def save_worst_offenders_png(path: str, fake_images, train_images, report: dict, n: int = 16,
                             pairs_per_row: int = 4, scale: int = 1) -> np.ndarray:
  """PNG grid of the n fakes with the smallest d1/d2, each followed by its nearest train image.

  Images are NHWC floats in [0, 1]; each row holds `pairs_per_row` (fake, train) pairs.
  Returns the indices of the fakes shown, most suspicious first.
  """
  fake_images = np.asarray(fake_images, np.float32)
  train_images = np.asarray(train_images, np.float32)
  if fake_images.ndim != 4 or train_images.ndim != 4:
    raise ValueError(f'images must be NHWC, got {fake_images.shape} and {train_images.shape}')
  if fake_images.shape[1:] != train_images.shape[1:]:
    raise ValueError(f'image shapes differ: {fake_images.shape[1:]} vs {train_images.shape[1:]}')
  ratio = report.get('ratio')
  ratio = np.asarray(ratio if ratio is not None else
                     _ratio(np.asarray(report['d1']), np.asarray(report['d2']), 0.0))
  nearest = np.asarray(report['nearest_train_index'])
  if len(ratio) != len(fake_images) or len(nearest) != len(fake_images):
    raise ValueError(f'report covers {len(ratio)} fakes but {len(fake_images)} images given')
  if n < 1:
    raise ValueError(f'n must be >= 1, got {n}')
  worst = np.argsort(ratio, kind='stable')[:n]
  pairs = np.stack([fake_images[worst], train_images[nearest[worst]]], axis=1)  # [n, 2, H, W, C]
  save_png(path, pairs.reshape((-1,) + fake_images.shape[1:]),
           ncol=2 * min(pairs_per_row, len(worst)), scale=scale)
  return worst


def text_kgrams(train_text: str, k: int) -> set[str]:
  """Every k-character substring of the training text (for `text_overlaps(grams=...)`: build
  it once when scoring several sets of samples against one text)."""
  return {train_text[i:i + k] for i in range(len(train_text) - k + 1)}


def text_overlaps(samples, train_text: str, min_len: int = 10,
                  grams: set[str] | None = None) -> np.ndarray:
  """Per sample: the length (characters) of its longest span found verbatim in `train_text`,
  0 when no span of `min_len` or more is. One pass per sample: the match starting at i + 1 is
  at least the one at i minus a character, so each position extends the previous match (a
  substring search of the training text per extension) and positions whose first `min_len`
  characters never occur in the training text are skipped through a set of its k-grams."""
  if min_len < 1:
    raise ValueError(f'min_len must be >= 1, got {min_len}')
  k = min_len
  grams = text_kgrams(train_text, k) if grams is None else grams
  out = np.zeros(len(samples), np.int64)
  for j, s in enumerate(samples):
    best = length = 0
    for i in range(len(s)):
      length = max(length - 1, 0)
      if length < k:   # the carried match is too short: start afresh if the k-gram occurs
        if s[i:i + k] not in grams:
          length = 0
          continue
        length = k
      while i + length < len(s) and s[i:i + length + 1] in train_text:
        length += 1
      best = max(best, length)
    out[j] = best
  return out
