"""Mode coverage (PacGAN toys), class coverage / label bias, and memorization metrics."""
import math

import numpy as np
import pytest
from PIL import Image

from research.evaluation import class_coverage, memorization, toy_mixtures as tm

# P(|x - mu| <= 3 sigma) for an isotropic 2-D Gaussian (chi with 2 dof), and its binomial
# standard error at the protocol's 2,500 samples.
P3 = 1.0 - math.exp(-4.5)
SE = math.sqrt(P3 * (1 - P3) / tm.PACGAN_NUM_SAMPLES)


def test_modes_layout():
  ring = tm.ring8_modes()
  assert ring.shape == (8, 2)
  np.testing.assert_allclose(np.linalg.norm(ring, axis=1), 1.0)
  grid = tm.grid25_modes()
  assert grid.shape == (25, 2)
  assert set(np.unique(grid)) == {-4.0, -2.0, 0.0, 2.0, 4.0}
  assert len({tuple(m) for m in grid}) == 25


@pytest.mark.parametrize('modes,std', [(tm.ring8_modes(), tm.RING8_STD),
                                       (tm.grid25_modes(), tm.GRID25_STD)])
def test_true_mixture_covers_everything(modes, std):
  x = tm.sample_mixture(modes, std, tm.PACGAN_NUM_SAMPLES, seed=0)
  assert x.shape == (2500, 2)
  np.testing.assert_array_equal(x, tm.sample_mixture(modes, std, 2500, seed=0))
  r = tm.mode_coverage(x, modes, std)
  assert r['modes_captured'] == len(modes)
  assert abs(r['high_quality_fraction'] - P3) < 4 * SE
  assert 0.0 <= r['reverse_kl'] < 0.02   # ~ (K - 1) / (2 N) from sampling noise
  assert sum(r['histogram']) == round(r['high_quality_fraction'] * 2500)


def test_half_the_ring_gives_log2():
  modes = tm.ring8_modes()
  x = tm.sample_mixture(modes[::2], tm.RING8_STD, 2500, seed=1)
  r = tm.mode_coverage(x, modes, tm.RING8_STD)
  assert r['modes_captured'] == 4
  assert r['histogram'][1::2] == [0, 0, 0, 0]
  assert abs(r['reverse_kl'] - math.log(2)) < 0.01


def test_far_samples_capture_nothing():
  modes = tm.ring8_modes()
  x = tm.sample_mixture(modes, tm.RING8_STD, 100, seed=2) + 10.0
  r = tm.mode_coverage(x, modes, tm.RING8_STD)
  assert r['modes_captured'] == 0
  assert r['high_quality_fraction'] == 0.0
  assert r['reverse_kl'] == math.inf
  assert r['histogram'] == [0] * 8


def test_mode_coverage_shape_errors():
  with pytest.raises(ValueError, match=r'\[n, 2\]'):
    tm.mode_coverage(np.zeros((5, 3)), tm.ring8_modes(), 0.01)
  with pytest.raises(ValueError, match='std'):
    tm.mode_coverage(np.zeros((5, 2)), tm.ring8_modes(), 0.0)


def test_class_coverage_identical_and_collapsed():
  data = np.repeat(np.arange(10), 50)
  r = class_coverage.label_histogram_stats(np.random.default_rng(0).permutation(data), data, 10)
  assert r['kl'] == pytest.approx(0.0, abs=1e-12)
  assert r['total_variation'] == 0.0
  assert r['classes_missing'] == 0
  assert r['fake_histogram'] == [50] * 10

  r = class_coverage.label_histogram_stats(np.full(200, 3), None, 10,
                                           data_histogram=np.full(10, 0.1))
  assert r['classes_missing'] == 9
  assert r['total_variation'] == pytest.approx(0.9)
  assert r['kl'] == pytest.approx(math.log(10), abs=1e-3)   # KL(delta || uniform) = log K
  assert r['fake_histogram'][3] == 200


def test_class_coverage_errors():
  with pytest.raises(ValueError, match='exactly one'):
    class_coverage.label_histogram_stats([0, 1], None, 2)
  with pytest.raises(ValueError, match=r'\[0, 2\)'):
    class_coverage.label_histogram_stats([0, 2], [0, 1], 2)
  with pytest.raises(ValueError, match='shape'):
    class_coverage.label_histogram_stats([0, 1], None, 2, data_histogram=[1, 1, 1])


def _image_data(seed, n, shape=(6, 6, 1)):
  return np.random.default_rng(seed).uniform(0.0, 1.0, (n,) + shape)


def test_memorization_flags_copies(tmp_path):
  train, test = _image_data(0, 300), _image_data(1, 300)
  copy_idx = np.arange(0, 40, 2)                      # 20 copies of train examples
  fresh = _image_data(2, 60)
  fake = np.concatenate([train[copy_idx], fresh])
  r = memorization.memorization_report(fake, train, test, chunk=17)   # chunking exercised
  assert set(range(20)) <= set(r['flagged_indices'].tolist())
  assert len(r['flagged_indices']) <= 20 + 3                           # fresh: mostly not
  assert r['copy_fraction'] == pytest.approx(len(r['flagged_indices']) / 80)
  assert r['copy_fraction'] == pytest.approx(20 / 80, abs=3 / 80)
  np.testing.assert_array_equal(r['nearest_train_index'][:20], copy_idx)
  np.testing.assert_allclose(r['d1'][:20], 0.0, atol=1e-6)
  assert np.all(r['d1'] <= r['d2'])
  assert r['median_dt'] > 0 and r['median_d1'] < r['median_dt']

  # Brute-force check of the chunked distances.
  f, t = fake.reshape(80, -1), train.reshape(300, -1)
  full = np.sort(np.linalg.norm(f[:, None] - t[None], axis=-1), axis=1)
  np.testing.assert_allclose(r['d1'], full[:, 0], atol=1e-6)
  np.testing.assert_allclose(r['d2'], full[:, 1], atol=1e-6)

  path = str(tmp_path / 'worst.png')
  shown = memorization.save_worst_offenders_png(path, fake, train, r, n=16)
  assert set(shown.tolist()) <= set(range(20))
  with Image.open(path) as im:
    # 16 pairs, 4 per row -> 4 rows x 8 columns of 6x6 tiles with 1-pixel gaps.
    assert im.size == (8 * 7 + 1, 4 * 7 + 1)


def test_memorization_test_ratio_and_errors():
  train = np.array([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0]])
  test = np.array([[10.0, 10.0]])
  # d1/d2 = 0.05/0.05 = 1 (not a ratio-test copy), but d1/dt << 0.5 -> flagged.
  r = memorization.memorization_report(np.array([[0.05, 0.0]]), train, test)
  assert r['flagged_indices'].tolist() == [0]
  r = memorization.memorization_report(np.array([[0.05, 0.0]]), train, test, test_ratio=0.0)
  assert r['flagged_indices'].tolist() == []
  with pytest.raises(ValueError, match='feature sizes'):
    memorization.memorization_report(np.zeros((2, 3)), train, test)
  with pytest.raises(ValueError, match='>= 2 train'):
    memorization.memorization_report(np.zeros((2, 2)), train[:1], test)


def test_label_histogram_names_dropped_classes_despite_stray_labels():
  data = np.repeat(np.arange(10), 100)
  # Classes 1, 5, 8 dropped; an imperfect classifier still puts a few samples in 1 and 8.
  kept = [c for c in range(10) if c not in (1, 5, 8)]
  fake = np.concatenate([np.repeat(kept, 100), [1, 1, 8]])
  stats = class_coverage.label_histogram_stats(fake, data, 10)
  assert stats['missing_classes'] == [5]
  assert stats['underrepresented_classes'] == [1, 5, 8]


def test_text_overlaps_is_the_longest_verbatim_span():
  from research.evaluation import memorization
  train = 'to be or not to be, that is the question\nwhether tis nobler in the mind'
  samples = ['xx that is the questionyy', 'nothing here at all', 'be or not tozz the mind',
             'whether tis nobler in the mind to suffer']
  got = memorization.text_overlaps(samples, train, min_len=6)
  brute = []
  for s in samples:   # brute force: every substring
    best = max((j - i for i in range(len(s)) for j in range(i + 1, len(s) + 1)
                if s[i:j] in train), default=0)
    brute.append(best if best >= 6 else 0)
  assert got.tolist() == brute == [21, 0, 12, 30]
