"""Training-data deduplication: exact duplicates by hash, near duplicates of images (L2 in pixel or
feature space) and of texts (MinHash + LSH banding over shingles, verified by exact Jaccard).

Every finder returns a `DedupReport`:
  exact_groups  list of sorted int64 arrays (len >= 2) of byte-identical items (SHA-256 of the raw
                bytes of an image row, or of the normalized UTF-8 text);
  near_pairs    int64 [P, 2] pairs (i < j) within the near-duplicate criterion that are NOT
                exact duplicates of each other;
  drop_indices  sorted int64: exact groups and near pairs are merged by single linkage
                (connected components -- a chain a~b~c is one group even if a and c are far
                apart) and every member except the smallest index of its component is dropped;
  num_exact_dropped = sum(len(g) - 1 for g in exact_groups); num_near_dropped = the additional
                drops due to near pairs (len(drop_indices) - num_exact_dropped).
`keep_mask(report, n)` turns it into a boolean filter (True = keep) for a data pipeline.

Images: `dedup_images(x, threshold)` flattens each item; uint8 input is scaled to [0, 1] first,
so `threshold` is the Euclidean distance between [0, 1]-pixel vectors (for float features it is in
the features' own units). Distances are formed chunk by chunk like memorization.py's
`_nearest_two` (|a|^2 + |b|^2 - 2 a.b in float32, upper triangle only), with a small slack, and
every candidate is re-checked exactly in float64, so results do not depend on float32 rounding.

Texts: `dedup_texts(texts)` normalizes (NFKC, lowercase, whitespace collapsed), hashes that for
exact groups, and builds character k-shingles (or word k-shingles). MinHash signatures use
num_perm universal hashes h(x) = (a x + b) mod (2^31 - 1) of each shingle's 32-bit BLAKE2b hash,
with (a, b) drawn from np.random.default_rng(seed) -- deterministic across runs and processes.
Signatures are cut into `bands` bands of num_perm / bands rows; items sharing any band bucket are
candidates, and a candidate pair is kept iff its exact shingle-set Jaccard >= jaccard_threshold.
With the defaults (128 perms, 32 bands x 4 rows) a pair is a candidate with probability
1 - (1 - J^4)^32: 0.87 at J = 0.5, 0.999 at J = 0.7, 0.05 at J = 0.2.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import re
import unicodedata
from typing import Iterable, Optional, Sequence

import numpy as np

_MERSENNE31 = (1 << 31) - 1


@dataclasses.dataclass
class DedupReport:
  n: int
  exact_groups: list            # list[np.ndarray int64], each sorted, len >= 2
  near_pairs: np.ndarray        # int64 [P, 2], i < j, not exact duplicates of each other
  drop_indices: np.ndarray      # int64, sorted
  num_exact_dropped: int
  num_near_dropped: int

  @property
  def num_dropped(self) -> int:
    return int(len(self.drop_indices))

  @property
  def num_kept(self) -> int:
    return self.n - self.num_dropped

  def counts(self) -> dict:
    return dict(n=self.n, exact_groups=len(self.exact_groups),
                exact_dropped=self.num_exact_dropped, near_pairs=int(len(self.near_pairs)),
                near_dropped=self.num_near_dropped, dropped=self.num_dropped,
                kept=self.num_kept)


def keep_mask(report: DedupReport, n: Optional[int] = None) -> np.ndarray:
  """Boolean [n] mask, False at report.drop_indices (n defaults to, and must equal, report.n)."""
  n = report.n if n is None else int(n)
  if n != report.n:
    raise ValueError(f'report covers {report.n} items, asked for a mask of {n}')
  mask = np.ones(n, bool)
  mask[report.drop_indices] = False
  return mask


# ---------------------------------------------------------------------------------------------
# Shared pieces


def sha256_hex(data) -> str:
  """SHA-256 of bytes, a str (UTF-8) or an array (its C-order raw bytes)."""
  if isinstance(data, str):
    data = data.encode('utf-8')
  elif isinstance(data, np.ndarray):
    data = np.ascontiguousarray(data).tobytes()
  return hashlib.sha256(data).hexdigest()


def exact_groups_from_keys(keys: Iterable) -> list:
  """Groups (sorted int64 arrays, len >= 2, ordered by first index) of positions with equal key."""
  where = collections.defaultdict(list)
  for i, k in enumerate(keys):
    where[k].append(i)
  groups = [np.asarray(v, np.int64) for v in where.values() if len(v) > 1]
  groups.sort(key=lambda g: g[0])
  return groups


def _build_report(n: int, exact_groups: list, near_pairs: np.ndarray) -> DedupReport:
  parent = np.arange(n)

  def find(i):
    root = i
    while parent[root] != root:
      root = parent[root]
    while parent[i] != root:
      parent[i], i = root, parent[i]
    return root

  def union(i, j):
    ri, rj = find(i), find(j)
    if ri != rj:   # the smaller index becomes the root, so roots are component minima
      parent[max(ri, rj)] = min(ri, rj)

  for g in exact_groups:
    for j in g[1:]:
      union(int(g[0]), int(j))
  for i, j in near_pairs:
    union(int(i), int(j))
  roots = np.fromiter((find(i) for i in range(n)), np.int64, n)
  drop = np.flatnonzero(roots != np.arange(n)).astype(np.int64)
  num_exact = int(sum(len(g) - 1 for g in exact_groups))
  return DedupReport(n=n, exact_groups=exact_groups,
                     near_pairs=np.asarray(near_pairs, np.int64).reshape(-1, 2),
                     drop_indices=drop, num_exact_dropped=num_exact,
                     num_near_dropped=int(len(drop)) - num_exact)


def _drop_exact_pairs(pairs: np.ndarray, n: int, exact_groups: list) -> np.ndarray:
  """Pairs whose two members are not in the same exact group."""
  if not len(pairs) or not exact_groups:
    return pairs
  gid = np.full(n, -1, np.int64)
  for k, g in enumerate(exact_groups):
    gid[g] = k
  same = (gid[pairs[:, 0]] >= 0) & (gid[pairs[:, 0]] == gid[pairs[:, 1]])
  return pairs[~same]


# ---------------------------------------------------------------------------------------------
# Images / feature vectors


def _as_vectors(x) -> np.ndarray:
  x = np.asarray(x)
  if x.ndim < 2:
    raise ValueError(f'expected [n, ...] items, got shape {x.shape}')
  v = x.reshape(len(x), -1)
  if v.dtype == np.uint8:
    return v.astype(np.float32) / 255.0
  return v.astype(np.float32)


def near_duplicate_pairs(vectors, threshold: float, chunk: int = 1024) -> np.ndarray:
  """All pairs (i < j) with ||v_i - v_j||_2 <= threshold, int64 [P, 2] sorted by (i, j).

  Squared distances are formed in float32 for `chunk` rows against the rows after them
  (O(chunk * n) memory); candidates within a slack of the threshold are re-checked in float64."""
  v = np.asarray(vectors)
  v = v.reshape(len(v), -1)
  if threshold < 0:
    raise ValueError(f'threshold must be >= 0, got {threshold}')
  if chunk < 1:
    raise ValueError(f'chunk must be >= 1, got {chunk}')
  v32 = v.astype(np.float32)
  sq = np.einsum('ij,ij->i', v32, v32)
  # float32 rounding of |a|^2 + |b|^2 - 2ab is ~ 1e-6 * (|a|^2 + |b|^2); allow 1e-4 of the scale.
  slack = 1e-4 * float(sq.max(initial=0.0)) * 2 + 1e-6
  t2 = float(threshold) ** 2
  out = []
  n = len(v)
  for s in range(0, n, chunk):
    e = min(s + chunk, n)
    d2 = sq[s:e, None] + sq[None, s:] - 2.0 * (v32[s:e] @ v32[s:].T)
    ii, jj = np.nonzero(d2 <= t2 + slack)
    ii, jj = ii + s, jj + s
    keep = jj > ii
    ii, jj = ii[keep], jj[keep]
    if len(ii):
      diff = v[ii].astype(np.float64) - v[jj].astype(np.float64)
      ok = np.einsum('ij,ij->i', diff, diff) <= t2
      out.append(np.stack([ii[ok], jj[ok]], axis=1))
  if not out:
    return np.zeros((0, 2), np.int64)
  pairs = np.concatenate(out).astype(np.int64)
  return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]


def dedup_images(images, threshold: float = 0.0, chunk: int = 1024,
                 near: bool = True) -> DedupReport:
  """Exact (SHA-256 of each item's raw bytes) and near (L2 <= threshold) duplicates of [n, ...]
  images or feature vectors. uint8 items are compared as [0, 1] floats (see module doc)."""
  x = np.ascontiguousarray(np.asarray(images))
  if x.ndim < 2:
    raise ValueError(f'expected [n, ...] items, got shape {x.shape}')
  n = len(x)
  exact = exact_groups_from_keys(hashlib.sha256(row.tobytes()).digest()
                                 for row in x.reshape(n, -1))
  pairs = np.zeros((0, 2), np.int64)
  if near and n > 1:
    pairs = _drop_exact_pairs(near_duplicate_pairs(_as_vectors(x), threshold, chunk), n, exact)
  return _build_report(n, exact, pairs)


def dataset_dedup_counts(images, threshold: Optional[float] = None, rms_threshold: float = 0.02,
                         chunk: int = 1024) -> dict:
  """Exact + near duplicate counts of uint8 images [n, H, W, C].

  Near = L2 distance of flattened [0, 1]-scaled pixels <= threshold; by default
  threshold = rms_threshold * sqrt(H*W*C) (a per-pixel RMS difference, comparable across image
  sizes: 0.02 ~ 5 grey levels RMS). Returns report.counts() plus 'threshold'."""
  x = np.asarray(images)
  if x.dtype != np.uint8:
    raise ValueError(f'expected uint8 images, got {x.dtype}')
  dim = int(np.prod(x.shape[1:]))
  if threshold is None:
    threshold = rms_threshold * float(np.sqrt(dim))
  rep = dedup_images(x, threshold=threshold, chunk=chunk)
  return dict(rep.counts(), threshold=float(threshold))


# ---------------------------------------------------------------------------------------------
# Texts


def normalize_text(text: str) -> str:
  """NFKC, lowercase, whitespace runs -> one space, stripped."""
  return re.sub(r'\s+', ' ', unicodedata.normalize('NFKC', text).lower()).strip()


def shingles(text: str, k: int = 5, unit: str = 'char') -> set:
  """The set of k-shingles of normalize_text(text): character k-grams (unit='char') or word
  k-grams (unit='word', joined by spaces). A non-empty text shorter than k is one shingle."""
  t = normalize_text(text)
  if unit == 'char':
    items = t
  elif unit == 'word':
    items = t.split(' ') if t else []
  else:
    raise ValueError(f"unit must be 'char' or 'word', got {unit!r}")
  if not items:
    return set()
  if len(items) <= k:
    return {t}
  if unit == 'char':
    return {t[i:i + k] for i in range(len(t) - k + 1)}
  return {' '.join(items[i:i + k]) for i in range(len(items) - k + 1)}


def _shingle_hashes(sh: set) -> np.ndarray:
  return np.fromiter((int.from_bytes(hashlib.blake2b(s.encode('utf-8'), digest_size=4).digest(),
                                     'little') for s in sh), np.uint64, len(sh))


def minhash_signatures(shingle_sets: Sequence[set], num_perm: int = 128,
                       seed: int = 0) -> np.ndarray:
  """uint64 [n, num_perm] MinHash signatures; an empty set gets all-(2^31 - 1) (matches nothing
  that is non-empty; empty sets are never near-paired, see dedup_texts)."""
  rng = np.random.default_rng(seed)
  a = rng.integers(1, _MERSENNE31, num_perm, dtype=np.uint64)
  b = rng.integers(0, _MERSENNE31, num_perm, dtype=np.uint64)
  p = np.uint64(_MERSENNE31)
  sig = np.full((len(shingle_sets), num_perm), _MERSENNE31, np.uint64)
  for i, sh in enumerate(shingle_sets):
    if sh:
      x = _shingle_hashes(sh) % p               # < 2^31, so a * x + b < 2^63: no overflow
      sig[i] = ((a[:, None] * x[None, :] + b[:, None]) % p).min(axis=1)
  return sig


def jaccard(a: set, b: set) -> float:
  if not a and not b:
    return 1.0
  return len(a & b) / len(a | b)


def dedup_texts(texts: Sequence[str], jaccard_threshold: float = 0.5, k: int = 5,
                unit: str = 'char', num_perm: int = 128, bands: int = 32,
                seed: int = 0) -> DedupReport:
  """Exact (SHA-256 of normalize_text) and near (MinHash-LSH candidates with shingle Jaccard >=
  jaccard_threshold) duplicates of `texts`. See the module doc for the banding probabilities."""
  if num_perm % bands:
    raise ValueError(f'num_perm ({num_perm}) must be a multiple of bands ({bands})')
  texts = list(texts)
  n = len(texts)
  exact = exact_groups_from_keys(sha256_hex(normalize_text(t)) for t in texts)
  # One representative per exact group is enough for near pairs; map back afterwards.
  rep_of = np.arange(n)
  for g in exact:
    rep_of[g] = g[0]
  reps = np.flatnonzero(rep_of == np.arange(n))
  sets = [shingles(texts[i], k, unit) for i in reps]
  sig = minhash_signatures(sets, num_perm, seed)
  rows = num_perm // bands
  candidates = set()
  for bnd in range(bands):
    buckets = collections.defaultdict(list)
    block = np.ascontiguousarray(sig[:, bnd * rows:(bnd + 1) * rows])
    for r in range(len(reps)):
      if sets[r]:
        buckets[block[r].tobytes()].append(r)
    for members in buckets.values():
      for x in range(len(members)):
        for y in range(x + 1, len(members)):
          candidates.add((members[x], members[y]))
  pairs = []
  for r, s in sorted(candidates):
    if jaccard(sets[r], sets[s]) >= jaccard_threshold:
      pairs.append((reps[r], reps[s]))
  pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
  return _build_report(n, exact, pairs)
