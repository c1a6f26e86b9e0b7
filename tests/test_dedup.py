"""Deduplication: planted exact and near duplicates in images and texts are found, nothing else."""
import subprocess
import sys

import numpy as np
import pytest

from research.evaluation import dedup
from tests import helpers


def _planted_images(seed=0):
  """500 random 16x16 uint8 images, then 10 exact copies and 10 noisy copies (+-3 grey levels)."""
  rng = np.random.default_rng(seed)
  base = rng.integers(0, 256, size=(500, 16, 16, 1), dtype=np.uint8)
  exact_src = rng.choice(500, 10, replace=False)
  near_src = rng.choice(np.setdiff1d(np.arange(500), exact_src), 10, replace=False)
  noise = rng.integers(-3, 4, size=(10, 16, 16, 1))
  noise[:, 0, 0, 0] = 3   # make sure no noisy copy is byte-identical to its source
  noisy = np.clip(base[near_src].astype(int) + noise, 0, 255).astype(np.uint8)
  images = np.concatenate([base, base[exact_src], noisy])
  return images, exact_src, near_src


def test_planted_image_duplicates_all_found_no_false_positives():
  images, exact_src, near_src = _planted_images()
  # Noisy copies are ~0.04 * 16 = 0.64 away in [0, 1] units; random pairs are ~6.5 apart.
  rep = dedup.dedup_images(images, threshold=1.0, chunk=128)
  assert rep.n == 520
  groups = {tuple(g) for g in rep.exact_groups}
  assert groups == {(s, 500 + k) for k, s in enumerate(exact_src)}
  near = {tuple(p) for p in rep.near_pairs}
  assert near == {(s, 510 + k) for k, s in enumerate(near_src)}
  np.testing.assert_array_equal(rep.drop_indices, np.arange(500, 520))
  assert rep.num_exact_dropped == 10 and rep.num_near_dropped == 10
  mask = dedup.keep_mask(rep, 520)
  assert mask.sum() == 500 and not mask[500:].any()
  assert rep.counts()['kept'] == 500
  # Only exact copies at threshold 0; chunking does not change the answer.
  rep0 = dedup.dedup_images(images, threshold=0.0, chunk=37)
  np.testing.assert_array_equal(rep0.drop_indices, np.arange(500, 510))
  assert len(rep0.near_pairs) == 0


def test_near_duplicate_pairs_matches_brute_force():
  rng = np.random.default_rng(1)
  v = rng.normal(size=(60, 5))
  d = np.linalg.norm(v[:, None] - v[None], axis=-1)
  t = float(np.quantile(d[np.triu_indices(60, 1)], 0.05))
  i, j = np.nonzero(np.triu(d <= t, 1))
  np.testing.assert_array_equal(dedup.near_duplicate_pairs(v, t, chunk=7), np.stack([i, j], 1))


def test_keep_mask_keeps_first_of_each_chain_and_checks_size():
  rep = dedup._build_report(6, [np.array([1, 4])], np.array([[4, 5], [0, 2]]))
  np.testing.assert_array_equal(rep.drop_indices, [2, 4, 5])   # {1,4,5} keeps 1, {0,2} keeps 0
  assert rep.num_exact_dropped == 1 and rep.num_near_dropped == 2
  np.testing.assert_array_equal(dedup.keep_mask(rep), [1, 1, 0, 1, 0, 0])
  with pytest.raises(ValueError):
    dedup.keep_mask(rep, 7)


def test_dataset_dedup_counts_uint8():
  images, _, _ = _planted_images(2)
  c = dedup.dataset_dedup_counts(images, rms_threshold=0.06)   # threshold 0.96 on 256-d
  assert c['threshold'] == pytest.approx(0.96)
  assert (c['exact_dropped'], c['near_dropped'], c['kept']) == (10, 10, 500)
  with pytest.raises(ValueError):
    dedup.dataset_dedup_counts(images.astype(np.float32))


_WORDS = ('apple river mountain quietly seven orange bicycle thunder lantern copper violin '
          'garden pepper silver tiger window marble candle forest rocket meadow pillow harbor '
          'jacket puzzle sunset velvet walnut anchor breeze').split()


def _planted_texts(seed=0):
  rng = np.random.default_rng(seed)
  base = [' '.join(rng.choice(_WORDS, 12)) for _ in range(200)]
  exact_src, edit_src = [3, 50, 120], [10, 77, 150, 199]
  exact = [base[i].upper() + '  ' for i in exact_src]      # equal after normalization
  edited = []
  for i in edit_src:
    words = base[i].split()
    words[5] = 'zebra'                                      # one word substituted
    edited.append(' '.join(words) + '!')
  return base + exact + edited, exact_src, edit_src


def test_planted_text_duplicates_found_by_minhash():
  texts, exact_src, edit_src = _planted_texts()
  rep = dedup.dedup_texts(texts)
  assert [tuple(g) for g in rep.exact_groups] == [(s, 200 + k) for k, s in enumerate(exact_src)]
  assert {tuple(p) for p in rep.near_pairs} == {(s, 203 + k) for k, s in enumerate(edit_src)}
  np.testing.assert_array_equal(rep.drop_indices, np.arange(200, 207))
  assert dedup.keep_mask(rep).sum() == 200
  # Deterministic: same seed, same signatures.
  sets = [dedup.shingles(t) for t in texts[:5]]
  np.testing.assert_array_equal(dedup.minhash_signatures(sets, seed=3),
                                dedup.minhash_signatures(sets, seed=3))


def test_unrelated_sentences_not_paired():
  texts = ['The quick brown fox jumps over the lazy dog.',
           'A journey of a thousand miles begins with a single step.',
           'To be or not to be, that is the question.',
           'All that glitters is not gold.',
           'The early bird catches the worm.',
           '', '']
  rep = dedup.dedup_texts(texts)
  assert len(rep.near_pairs) == 0
  assert [tuple(g) for g in rep.exact_groups] == [(5, 6)]
  np.testing.assert_array_equal(rep.drop_indices, [6])


def test_minhash_estimates_jaccard():
  a = dedup.shingles('the cat sat on the mat and looked at the dog by the door', k=3)
  b = dedup.shingles('the cat sat on the mat and stared at the dog by the gate', k=3)
  sig = dedup.minhash_signatures([a, b], num_perm=512, seed=0)
  est = float(np.mean(sig[0] == sig[1]))
  assert abs(est - dedup.jaccard(a, b)) < 0.08
  assert dedup.shingles('One two three four five six', k=2, unit='word') == {
      'one two', 'two three', 'three four', 'four five', 'five six'}


def test_the_dedup_command_measures_a_packaged_split():
  """`python -m research.dedup NAMES --rms=A,B` (absl flags like every command)."""
  proc = subprocess.run([sys.executable, '-m', 'research.dedup', 'digits',
                         '--rms=0.02,0.05', '--limit=500'], cwd=helpers.ROOT,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.strip().splitlines()
  assert [l.split(' {')[0] for l in lines] == [
      'digits/train shape=(500, 8, 8, 1) rms=0.02', 'digits/train shape=(500, 8, 8, 1) rms=0.05']
