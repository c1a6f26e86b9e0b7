"""Sanity checks of the sample-quality metrics in the Fashion-MNIST feature space.

Uses the trained feature network (`load_feature_fn('fashion_mnist')`, cached under
$GENLAB_CACHE) on real data with known, controlled corruptions, and checks that every metric
moves the right way:

  * Frechet distance: train 10k vs test 10k (same distribution) must be far below train vs the
    same train images with strong Gaussian noise, and train vs train with one class dropped.
  * Precision / recall: two disjoint train halves (~1 / ~1) vs a set with 3 classes removed
    (recall must drop).
  * Class coverage: the classifier's predicted labels on the class-removed set must name the
    removed classes as missing (data mass, no predictions).
  * Memorization: 50 training images planted among 950 test images (real, never trained on:
    the hardest negatives) must be flagged (>= 95%) with few false positives (<= 1%).
  * KID: ~0 (within 3 s.e.) for train halves, clearly positive for train vs noisy.

  python scripts/feature_space_checks.py [--json OUT]

Every number is a metric in the `features_fashion_mnist` CNN feature space (not Inception):
"FD" below is the Frechet distance there, not FID.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

DATASET = 'fashion_mnist'
NUM_CLASSES = 10
NOISE_SIGMA = 0.5
DROPPED_CLASS = 0            # FD: train vs train without this class
REMOVED_CLASSES = (1, 5, 8)  # precision/recall + class coverage: trouser, sandal, bag
NUM_PLANTED = 50
NUM_FAKES = 1000
SEED = 0

# Acceptance conditions (asserted by tests/test_feature_space_checks.py).
FD_RATIO_MAX = 0.25          # FD(train, test) < 0.25 * min(FD(noisy), FD(class dropped))
# Precision and recall of two disjoint train halves, at the project default k = 5. Not exactly 1
# for finite sets: with 5k points in a 128-d space a same-distribution point falls outside the
# union of the other set's k-NN balls ~7% of the time at k = 5 (measured 0.933 / 0.931) and ~14%
# at the original paper's k = 3 (0.864 / 0.857, also reported). The halves' precision and recall
# must also agree within HALVES_PR_GAP_MAX (a same-distribution pair is symmetric).
HALVES_PR_MIN = 0.9
HALVES_PR_GAP_MAX = 0.05
RECALL_DROP_MIN = 0.1        # recall(halves) - recall(3 classes removed)
PLANTED_FLAGGED_MIN = 0.95
FALSE_POSITIVE_MAX = 0.01
KID_SE_MAX = 3.0             # |KID mean| < 3 s.e. for halves


def _features(feature_fn, probs_fn, images_u8_or_f):
  x = np.asarray(images_u8_or_f)
  if x.dtype == np.uint8:
    x = x.astype(np.float32) / 255.0
  x = np.ascontiguousarray(x, np.float32)
  return np.asarray(feature_fn(x), np.float64), np.asarray(probs_fn(x))


def run_checks(data_dir: str = '', verbose: bool = True) -> dict:
  """Runs every check; returns a dict of the numbers and the pass/fail of each condition."""
  from research.data import sources  # pylint: disable=g-import-not-at-top
  from research.evaluation import class_coverage, features, memorization, sample_quality  # pylint: disable=g-import-not-at-top

  t0 = time.perf_counter()
  log = print if verbose else (lambda *a, **k: None)
  rng = np.random.default_rng(SEED)
  train_x, train_y = sources.read_package_split(DATASET, data_dir, 'train')
  test_x, test_y = sources.read_package_split(DATASET, data_dir, 'test')
  train_y, test_y = np.asarray(train_y), np.asarray(test_y)
  feature_fn, probs_fn, info = features.load_feature_fn(DATASET)
  log(f'feature space: {info["feature_space"]}, test accuracy {info["test_accuracy"]}')

  # Features of all 60k train and 10k test images (one pass each).
  ftrain, ptrain = _features(feature_fn, probs_fn, train_x)
  ftest, _ = _features(feature_fn, probs_fn, test_x)
  perm = rng.permutation(len(train_x))
  ref = perm[:10_000]                  # "train 10k", the reference set everywhere
  rest = perm[10_000:]                 # disjoint train images for the corrupted sets
  noisy = np.clip(train_x[ref].astype(np.float32) / 255.0
                  + NOISE_SIGMA * rng.standard_normal(train_x[ref].shape).astype(np.float32),
                  0.0, 1.0)
  fnoisy, _ = _features(feature_fn, probs_fn, noisy)
  t_feat = time.perf_counter() - t0

  r = {'feature_space': info['feature_space'], 'test_accuracy': info['test_accuracy']}

  # --- Frechet distance ---------------------------------------------------------------------
  dropped = rest[train_y[rest] != DROPPED_CLASS][:10_000]
  fd = sample_quality.frechet_distance
  r['fd_train_test'] = fd(ftrain[ref], ftest)
  r['fd_train_noisy'] = fd(ftrain[ref], fnoisy)
  r['fd_train_class_dropped'] = fd(ftrain[ref], ftrain[dropped])
  r['fd_train_train_disjoint'] = fd(ftrain[ref], ftrain[rest[:10_000]])  # reference floor

  # --- Precision / recall (+ density / coverage) -------------------------------------------
  half_a, half_b = perm[:5_000], perm[5_000:10_000]
  removed = rest[~np.isin(train_y[rest], REMOVED_CLASSES)][:5_000]
  pr_halves = sample_quality.precision_recall(ftrain[half_a], ftrain[half_b])
  pr_removed = sample_quality.precision_recall(ftrain[half_a], ftrain[removed])
  pr_halves_k3 = sample_quality.precision_recall(ftrain[half_a], ftrain[half_b], k=3)
  dc_halves = sample_quality.density_coverage(ftrain[half_a], ftrain[half_b])
  dc_removed = sample_quality.density_coverage(ftrain[half_a], ftrain[removed])
  r.update(pr_halves_precision=pr_halves['precision'], pr_halves_recall=pr_halves['recall'],
           pr_removed_precision=pr_removed['precision'],
           pr_removed_recall=pr_removed['recall'],
           recall_drop=pr_halves['recall'] - pr_removed['recall'],
           pr_halves_k3_precision=pr_halves_k3['precision'],
           pr_halves_k3_recall=pr_halves_k3['recall'],
           dc_halves_density=dc_halves['density'], dc_halves_coverage=dc_halves['coverage'],
           dc_removed_density=dc_removed['density'],
           dc_removed_coverage=dc_removed['coverage'])

  # --- Class coverage of the classifier's predictions on the class-removed set -------------
  pred_removed = ptrain[removed].argmax(-1)
  stats = class_coverage.label_histogram_stats(pred_removed, train_y[ref], NUM_CLASSES)
  missing, under = stats['missing_classes'], stats['underrepresented_classes']
  r.update(removed_classes=list(REMOVED_CLASSES), classes_missing_count=stats['classes_missing'],
           classes_missing=[int(c) for c in missing],
           classes_underrepresented=[int(c) for c in under],
           label_kl=stats['kl'], label_tv=stats['total_variation'],
           pred_histogram_removed=stats['fake_histogram'])
  stats_ref = class_coverage.label_histogram_stats(ptrain[half_b].argmax(-1), train_y[ref],
                                                   NUM_CLASSES)
  r.update(label_kl_halves=stats_ref['kl'], label_tv_halves=stats_ref['total_variation'],
           classes_missing_halves=stats_ref['classes_missing'])

  # --- Memorization -------------------------------------------------------------------------
  test_perm = rng.permutation(len(test_x))
  neg = test_perm[:NUM_FAKES - NUM_PLANTED]          # 950 real test images, never trained on
  held_out = test_perm[NUM_FAKES - NUM_PLANTED:]     # the other 9050 test images
  planted_src = rng.choice(len(train_x), NUM_PLANTED, replace=False)
  fake_feats = np.concatenate([ftest[neg], ftrain[planted_src]])
  is_planted = np.r_[np.zeros(len(neg), bool), np.ones(NUM_PLANTED, bool)]
  mem = memorization.memorization_report(fake_feats, ftrain, ftest[held_out])
  flagged = np.zeros(len(fake_feats), bool)
  flagged[mem['flagged_indices']] = True
  d1_over_dt = np.where(mem['dt'] > 0, mem['d1'] / np.maximum(mem['dt'], 1e-300), np.inf)
  by_ratio = mem['ratio'] < 1 / 3          # the report's default thresholds, rule by rule
  by_test = d1_over_dt < 0.5
  r.update(mem_planted_flagged=float(flagged[is_planted].mean()),
           mem_false_positive_rate=float(flagged[~is_planted].mean()),
           mem_false_positives=int(flagged[~is_planted].sum()),
           mem_planted_nearest_is_source=float(np.mean(
               mem['nearest_train_index'][is_planted] == planted_src)),
           mem_planted_max_d1=float(mem['d1'][is_planted].max()),
           mem_negatives_min_ratio=float(mem['ratio'][~is_planted].min()),
           mem_negatives_min_d1_over_dt=float(d1_over_dt[~is_planted].min()),
           mem_fp_by_ratio_rule=int((by_ratio & ~is_planted).sum()),
           mem_fp_by_test_rule=int((by_test & ~is_planted).sum()),
           mem_planted_by_ratio_rule=float(by_ratio[is_planted].mean()),
           mem_copy_fraction=mem['copy_fraction'])

  # --- KID ----------------------------------------------------------------------------------
  kid_h = sample_quality.kernel_distance(ftrain[half_a], ftrain[half_b])
  kid_n = sample_quality.kernel_distance(ftrain[ref], fnoisy)
  r.update(kid_halves_mean=kid_h['mean'], kid_halves_se=kid_h['std_err'],
           kid_noisy_mean=kid_n['mean'], kid_noisy_se=kid_n['std_err'])

  # --- Acceptance ---------------------------------------------------------------------------
  r['checks'] = {
      'fd_train_test_far_below': bool(r['fd_train_test'] < FD_RATIO_MAX * min(
          r['fd_train_noisy'], r['fd_train_class_dropped'])),
      'halves_precision_recall': bool(
          min(r['pr_halves_precision'], r['pr_halves_recall']) >= HALVES_PR_MIN
          and abs(r['pr_halves_precision'] - r['pr_halves_recall']) <= HALVES_PR_GAP_MAX),
      'recall_drops': bool(r['recall_drop'] > RECALL_DROP_MIN),
      # label_histogram_stats' own `classes_missing` (zero predictions) is too strict with a
      # 90%-accurate classifier: a few kept images get predicted as a removed class. The named
      # classes are those with < 10% of their data share; the strict list is reported too.
      'missing_classes_named': sorted(r['classes_underrepresented']) == sorted(REMOVED_CLASSES),
      'missing_classes_strict_zero': sorted(r['classes_missing']) == sorted(REMOVED_CLASSES),
      'memorization_planted_flagged': bool(r['mem_planted_flagged'] >= PLANTED_FLAGGED_MIN),
      'memorization_false_positives': bool(r['mem_false_positive_rate']
                                           <= FALSE_POSITIVE_MAX),
      'kid_halves_zero': bool(abs(r['kid_halves_mean']) < KID_SE_MAX * r['kid_halves_se']),
      'kid_noisy_positive': bool(r['kid_noisy_mean'] > KID_SE_MAX * r['kid_noisy_se']),
  }
  r['seconds_features'] = t_feat
  r['seconds_total'] = time.perf_counter() - t0
  if verbose:
    print_table(r)
  return r


def print_table(r: dict) -> None:
  rows = [
      ('FD  train10k vs test10k', f'{r["fd_train_test"]:.3f}'),
      ('FD  train10k vs disjoint train10k', f'{r["fd_train_train_disjoint"]:.3f}'),
      (f'FD  train10k vs same + N(0,{NOISE_SIGMA}) noise', f'{r["fd_train_noisy"]:.3f}'),
      (f'FD  train10k vs train10k w/o class {DROPPED_CLASS}',
       f'{r["fd_train_class_dropped"]:.3f}'),
      ('P/R train halves 5k/5k, k=5', f'{r["pr_halves_precision"]:.4f} / {r["pr_halves_recall"]:.4f}'),
      (f'P/R train 5k vs 5k w/o classes {r["removed_classes"]}',
       f'{r["pr_removed_precision"]:.4f} / {r["pr_removed_recall"]:.4f}'),
      ('P/R train halves, k=3', f'{r["pr_halves_k3_precision"]:.4f} / '
       f'{r["pr_halves_k3_recall"]:.4f}'),
      ('recall drop', f'{r["recall_drop"]:.4f}'),
      ('D/C train halves', f'{r["dc_halves_density"]:.4f} / {r["dc_halves_coverage"]:.4f}'),
      ('D/C classes removed', f'{r["dc_removed_density"]:.4f} / {r["dc_removed_coverage"]:.4f}'),
      ('labels: halves KL / TV / #missing',
       f'{r["label_kl_halves"]:.4f} / {r["label_tv_halves"]:.4f} / '
       f'{r["classes_missing_halves"]}'),
      ('labels: removed KL / TV / #missing',
       f'{r["label_kl"]:.3f} / {r["label_tv"]:.4f} / {r["classes_missing_count"]}'),
      ('labels: classes missing (no predictions)', str(r['classes_missing'])),
      ('labels: classes < 10% of data share', str(r['classes_underrepresented'])),
      ('labels: predicted histogram (removed set)', str(r['pred_histogram_removed'])),
      ('memorization: planted flagged', f'{r["mem_planted_flagged"]:.3f} '
       f'(nearest = source: {r["mem_planted_nearest_is_source"]:.3f})'),
      ('memorization: false positives (of 950 test)',
       f'{r["mem_false_positive_rate"]:.4f} ({r["mem_false_positives"]})'),
      ('memorization: FPs by d1/d2<1/3, by d1/dt<0.5',
       f'{r["mem_fp_by_ratio_rule"]}, {r["mem_fp_by_test_rule"]} '
       f'(planted by d1/d2 rule alone: {r["mem_planted_by_ratio_rule"]:.3f})'),
      ('memorization: negatives min d1/d2, min d1/dt',
       f'{r["mem_negatives_min_ratio"]:.3f}, {r["mem_negatives_min_d1_over_dt"]:.3f}'),
      ('KID train halves (mean ± s.e.)', f'{r["kid_halves_mean"]:.2e} ± {r["kid_halves_se"]:.1e}'),
      ('KID train vs noisy (mean ± s.e.)', f'{r["kid_noisy_mean"]:.3e} ± {r["kid_noisy_se"]:.1e}'),
  ]
  print(f'\nfeature space: {r["feature_space"]}')
  w = max(len(k) for k, _ in rows)
  for k, v in rows:
    print(f'{k:<{w}}  {v}')
  print('\nacceptance:')
  for k, v in r['checks'].items():
    note = ' (informational, not required)' if k == 'missing_classes_strict_zero' else ''
    print(f'  {"PASS" if v else "FAIL"}  {k}{note}')
  print(f'\nruntime: {r["seconds_total"]:.1f} s (features {r["seconds_features"]:.1f} s)')


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--json', help='write the numbers to this JSON file')
  p.add_argument('--data_dir', default='', help="TFDS data_dir ('' = ~/tensorflow_datasets)")
  args = p.parse_args(argv)
  r = run_checks(args.data_dir)
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(r, f, indent=2)
  required = {k: v for k, v in r['checks'].items() if k != 'missing_classes_strict_zero'}
  return 0 if all(required.values()) else 1


if __name__ == '__main__':
  sys.exit(main())
