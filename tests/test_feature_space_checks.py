"""Acceptance of scripts/feature_space_checks.py: the sample-quality metrics move the right way
in the Fashion-MNIST feature space under controlled corruptions of real data.

Slow (needs the trained, cached Fashion-MNIST feature network and ~1.5 min of CPU): excluded
from CI with -m "not slow".
"""
import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _script():
  spec = importlib.util.spec_from_file_location(
      '_feature_space_checks', os.path.join(ROOT, 'scripts', 'feature_space_checks.py'))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


@pytest.mark.slow
def test_feature_space_checks():
  fsc = _script()
  r = fsc.run_checks(verbose=False)

  # Same distribution far below both corruptions.
  assert r['fd_train_test'] < 0.25 * min(r['fd_train_noisy'], r['fd_train_class_dropped']), r

  # Two disjoint train halves at the default k=5: measured 0.933 / 0.931 (finite-sample k-NN
  # balls in 128-d leave ~7% of same-distribution points uncovered), so >= 0.9 and symmetric.
  assert min(r['pr_halves_precision'], r['pr_halves_recall']) >= fsc.HALVES_PR_MIN, r
  assert abs(r['pr_halves_precision'] - r['pr_halves_recall']) <= fsc.HALVES_PR_GAP_MAX, r
  # Removing 3 of 10 classes costs recall, not precision.
  assert r['recall_drop'] > fsc.RECALL_DROP_MIN, r
  assert r['pr_removed_precision'] >= fsc.HALVES_PR_MIN, r

  # The removed classes, and only they, are named. label_histogram_stats' strict
  # `classes_missing` (zero predictions) reports 0 here: the 90%-accurate classifier predicts a
  # handful of kept images as a removed class, so the named classes are those predicted at
  # < 10% of their data share.
  assert sorted(r['classes_underrepresented']) == sorted(fsc.REMOVED_CLASSES), r
  assert r['classes_missing_halves'] == 0 and r['label_tv_halves'] < 0.05, r

  # 50 planted train images among 950 real test images.
  assert r['mem_planted_flagged'] >= fsc.PLANTED_FLAGGED_MIN, r
  assert r['mem_false_positive_rate'] <= fsc.FALSE_POSITIVE_MAX, r

  # KID ~0 for halves, clearly positive for noise.
  assert abs(r['kid_halves_mean']) < fsc.KID_SE_MAX * r['kid_halves_se'], r
  assert r['kid_noisy_mean'] > fsc.KID_SE_MAX * r['kid_noisy_se'], r
