"""Sample-quality metrics against closed forms and constructed known answers."""
import numpy as np
import pytest

from research.evaluation import sample_quality as sq


def _rng(seed=0):
    return np.random.default_rng(seed)


def _random_spd(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def _modes(rng, n, centers, scale=0.1):
    """n points spread evenly over Gaussian blobs at the given centers."""
    idx = np.arange(n) % len(centers)
    return centers[idx] + scale * rng.normal(size=(n, centers.shape[1]))


# Four well-separated blobs in 2-D.
_CENTERS = 10.0 * np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float64)


# ---------------------------------------------------------------- Frechet


def test_frechet_from_stats_diagonal_closed_form():
    rng = _rng()
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    s1, s2 = rng.uniform(0.1, 2.0, size=5), rng.uniform(0.1, 2.0, size=5)
    want = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    got = sq.frechet_distance_from_stats(mu1, np.diag(s1), mu2, np.diag(s2))
    assert got == pytest.approx(want, rel=1e-10)


def test_frechet_from_stats_general_matches_sqrtm():
    scipy_linalg = pytest.importorskip('scipy.linalg')
    rng = _rng(1)
    d = 6
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = _random_spd(rng, d), _random_spd(rng, d)
    covmean = np.real(scipy_linalg.sqrtm(s1 @ s2))
    want = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean)
    got = sq.frechet_distance_from_stats(mu1, s1, mu2, s2)
    assert got == pytest.approx(want, rel=1e-8)


def test_frechet_from_stats_singular_covariance_is_finite():
    # Rank-deficient covariances (fewer samples than dims) must not blow up.
    rng = _rng(2)
    x, y = rng.normal(size=(3, 8)), rng.normal(size=(3, 8))
    fd = sq.frechet_distance(x, y)
    assert np.isfinite(fd) and fd >= 0


def test_frechet_samples_match_closed_form():
    rng = _rng(3)
    mu1, mu2 = np.array([0.0, 1.0, -1.0]), np.array([0.5, 1.0, 0.0])
    s1, s2 = np.array([1.0, 0.5, 2.0]), np.array([0.3, 0.5, 1.0])
    n = 200_000  # sampling error of the estimate ~0.01
    x = mu1 + np.sqrt(s1) * rng.normal(size=(n, 3))
    y = mu2 + np.sqrt(s2) * rng.normal(size=(n, 3))
    want = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert sq.frechet_distance(x, y) == pytest.approx(want, abs=0.04)


def test_frechet_identity_and_symmetry():
    rng = _rng(4)
    x = rng.normal(size=(500, 10))
    y = 2.0 * rng.normal(size=(400, 10)) + 1.0
    assert sq.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)
    assert sq.frechet_distance(x, y) == pytest.approx(
        sq.frechet_distance(y, x), rel=1e-8)
    assert sq.frechet_distance(x, y) > 1.0


# ---------------------------------------------------------------- kernel


def test_kernel_distance_same_distribution_near_zero():
    rng = _rng(5)
    x, y = rng.normal(size=(4000, 8)), rng.normal(size=(4000, 8))
    r = sq.kernel_distance(x, y, num_subsets=20, subset_size=200, seed=0)
    assert abs(r['mean']) < 3 * r['std_err']


def test_kernel_distance_different_distributions_positive():
    rng = _rng(6)
    x, y = rng.normal(size=(1000, 8)), rng.normal(size=(1000, 8)) + 0.5
    r = sq.kernel_distance(x, y, num_subsets=20, subset_size=200, seed=0)
    assert r['mean'] > 10 * r['std_err'] and r['mean'] > 0.1


def test_kernel_distance_subset_size_clipped_and_seeded():
    rng = _rng(7)
    x, y = rng.normal(size=(50, 4)), rng.normal(size=(30, 4))
    a = sq.kernel_distance(x, y, num_subsets=5, subset_size=1000, seed=3)
    b = sq.kernel_distance(x, y, num_subsets=5, subset_size=1000, seed=3)
    assert a == b and np.isfinite(a['mean'])


# ---------------------------------------------------------------- precision / recall


def test_precision_recall_identical_sets():
    x = _modes(_rng(8), 400, _CENTERS)
    assert sq.precision_recall(x, x, k=3) == {'precision': 1.0, 'recall': 1.0}


def test_precision_recall_far_shift():
    x = _modes(_rng(9), 400, _CENTERS)
    assert sq.precision_recall(x, x + 1000.0, k=3) == {
        'precision': 0.0, 'recall': 0.0}


def test_precision_recall_half_the_modes():
    rng = _rng(10)
    real = _modes(rng, 800, _CENTERS)
    fake = _modes(rng, 800, _CENTERS[:2])  # mode collapse onto 2 of 4 blobs
    r = sq.precision_recall(real, fake, k=3)
    assert r['precision'] > 0.9  # blob-edge fakes can fall outside
    assert r['recall'] == pytest.approx(0.5, abs=0.05)


# ---------------------------------------------------------------- density / coverage


def test_density_coverage_same_distribution():
    rng = _rng(11)
    real, fake = _modes(rng, 1000, _CENTERS), _modes(rng, 1000, _CENTERS)
    r = sq.density_coverage(real, fake, k=5)
    # Naeem et al.: E[density] = 1, E[coverage] ~ 1 - 2^-k for M = N.
    assert r['density'] == pytest.approx(1.0, abs=0.1)
    assert r['coverage'] == pytest.approx(1 - 0.5 ** 5, abs=0.03)


def test_density_coverage_identical_far_and_half():
    rng = _rng(12)
    real = _modes(rng, 800, _CENTERS)
    same = sq.density_coverage(real, real, k=5)
    # Each real ball holds its centre plus k neighbours: density = (k+1)/k.
    assert same['coverage'] == 1.0
    assert same['density'] == pytest.approx(6 / 5, abs=1e-3)
    assert sq.density_coverage(real, real + 1000.0, k=5) == {
        'density': 0.0, 'coverage': 0.0}
    half = sq.density_coverage(real, _modes(rng, 800, _CENTERS[:2]), k=5)
    assert half['coverage'] == pytest.approx(0.5, abs=0.05)
    assert half['density'] > 0.8


def test_knn_metrics_chunking_matches_brute_force(monkeypatch):
    monkeypatch.setattr(sq, '_CHUNK', 7)  # force many ragged chunks
    rng = _rng(14)
    real, fake = rng.normal(size=(60, 3)), rng.normal(size=(45, 3)) + 0.3
    k = 3
    d_rf = np.linalg.norm(real[:, None] - fake[None], axis=-1)
    r_real = np.sort(np.linalg.norm(real[:, None] - real[None], axis=-1), 1)[:, k]
    r_fake = np.sort(np.linalg.norm(fake[:, None] - fake[None], axis=-1), 1)[:, k]
    in_real = d_rf <= r_real[:, None]  # [real, fake]
    pr = sq.precision_recall(real, fake, k=k)
    assert pr['precision'] == pytest.approx(in_real.any(0).mean())
    assert pr['recall'] == pytest.approx((d_rf <= r_fake[None]).any(1).mean())
    dc = sq.density_coverage(real, fake, k=k)
    assert dc['density'] == pytest.approx(in_real.sum() / (k * len(fake)))
    assert dc['coverage'] == pytest.approx(
        (d_rf.min(1) <= r_real).mean())


# ---------------------------------------------------------------- classifier score


def test_classifier_score_uniform_one_hot_is_num_classes():
    c, splits = 7, 10
    probs = np.eye(c)[np.arange(c * splits * 3) % c]  # every split balanced
    r = sq.classifier_score(probs, num_splits=splits)
    assert r['mean'] == pytest.approx(c, rel=1e-12)
    assert r['std'] == pytest.approx(0.0, abs=1e-12)


def test_classifier_score_single_class_and_uninformative_is_one():
    one_class = np.tile(np.eye(5)[2], (100, 1))
    uniform = np.full((100, 5), 0.2)
    assert sq.classifier_score(one_class)['mean'] == pytest.approx(1.0)
    assert sq.classifier_score(uniform)['mean'] == pytest.approx(1.0)


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize('call', [
    lambda x: sq.frechet_distance(x, x[:, :3]),                # dim mismatch
    lambda x: sq.frechet_distance(x[0], x),                    # 1-D input
    lambda x: sq.frechet_distance(np.where(x > 1, np.nan, x), x),  # NaN
    lambda x: sq.frechet_distance(x[:1], x),                   # 1 sample
    lambda x: sq.kernel_distance(x, x[:, :2]),
    lambda x: sq.precision_recall(x[:3], x, k=3),              # N <= k
    lambda x: sq.density_coverage(x, x[:5], k=5),
    lambda x: sq.precision_recall(x, x, k=0),
    lambda x: sq.frechet_distance_from_stats(
        np.zeros(3), np.eye(3), np.zeros(2), np.eye(2)),
    lambda x: sq.classifier_score(np.full((10, 3), 0.5)),      # rows != 1
    lambda x: sq.classifier_score(np.full((10, 2), 0.5), num_splits=11),
    lambda x: sq.classifier_score(np.array([[np.nan, 1.0]])),
])
def test_bad_inputs_raise_value_error(call):
    x = _rng(13).normal(size=(20, 4))
    with pytest.raises(ValueError):
        call(x)


@pytest.mark.parametrize('seed', range(5))
def test_frechet_near_singular_matches_scipy(seed):
  """Random statistics with near-singular covariances (rank 8 of 32, plus 1e-6 I): equal to an
  independent SciPy computation (sqrtm of the product) to 1e-6."""
  scipy_linalg = pytest.importorskip('scipy.linalg')
  rng = np.random.default_rng(seed)
  d, r = 32, 8
  mats = [rng.normal(size=(d, r)) for _ in range(2)]
  s1, s2 = (m @ m.T + 1e-6 * np.eye(d) for m in mats)
  mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
  covmean = np.real(scipy_linalg.sqrtm(s1 @ s2))
  want = float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))
  got = sq.frechet_distance_from_stats(mu1, s1, mu2, s2)
  assert got == pytest.approx(want, rel=1e-6, abs=1e-6)


def test_over_draws_standard_error_is_std_over_sqrt_n():
  from research.evaluation import stats
  rng = np.random.default_rng(0)
  se = {}
  for n in (25, 400):
    draws = [{'fd': float(v), 'label': 'x'} for v in rng.normal(3.0, 2.0, n)]
    out = stats.over_draws(draws)
    assert out['num_draws'] == n and 'label' not in out
    se[n] = out['fd_se']
    assert se[n] == pytest.approx(2.0 / np.sqrt(n), rel=0.3)
  assert se[400] < se[25]
  one = stats.over_draws([{'fd': 1.0}])
  assert one['fd'] == 1.0 and np.isnan(one['fd_se'])
  assert stats.format_mean_se(0.2312, 0.0123) == '0.2312 ± 0.012'
  assert stats.format_mean_se(0.2312, float('nan')) == '0.2312'


def test_precomputed_real_radii_give_the_same_metrics():
  rng = np.random.default_rng(1)
  real, fake = rng.normal(size=(300, 4)), rng.normal(0.3, 1.0, size=(120, 4))
  radii = sq.real_knn_radii(real)
  assert sq.precision_recall(real, fake, real_radii=radii) == sq.precision_recall(real, fake)
  assert sq.density_coverage(real, fake, real_radii=radii) == sq.density_coverage(real, fake)
