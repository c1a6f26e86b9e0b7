r"""Sample-quality evaluation of a trained generative run, in a learned feature space.

  python -m research.evaluate --workdir=RUN [--num_samples=N] [--max_real=10000]

Reads RUN/config.json and the run's sample sets at its latest sampled step,
RUN/samples/samples_<step>[_<tag>].npz (key `images`, NHWC in [0, 1], or `points`), each with a
JSON beside it saying what drew it (sampler, steps, grid, ...; the tag names those settings).
Each set is scored on its own (`--samples=TAG,...` picks sets) and written to RUN/eval.json
(untagged) or RUN/eval_<tag>.json. With --num_samples=N larger than a set holds, first draws N
samples from the latest checkpoint with that set's settings (saved as
RUN/samples/eval_samples_<step>[_<tag>].npz). Features come from the dataset's
feature network (research/evaluation/features.py: a small CNN classifier trained and cached on
first use; no Inception weights exist offline), so every distance is reported as e.g.
"Frechet distance in <feature space> features", never as FID.

Computes, samples vs the training data (the first --max_real train images for the distribution
metrics; all train and test images for memorization): Frechet distance, kernel distance,
precision/recall, density/coverage, classifier score, class coverage (predicted-label histogram
vs the train labels) and memorization (nearest-neighbour copy test in feature space, with the
worst offenders as RUN/samples/worst_offenders_<step>.png). As a scale for the distances, the
same distances between an equally large slice of the test set and the same train reference
are reported under `reference_test_vs_train`. A metric the sample count is too small for is
skipped with a note. Prints a table per set and logs the scalars to RUN/tb under
`sample_quality[_<tag>]/`. 2-D toy runs get mode coverage (`evaluate_toy_run`); text runs (LM,
SFT, PPO, DPO) held-out and sample text metrics (`research/evaluate_text.py`).
"""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
from absl import app, flags

from research import sample_sets as sets_lib
from research import evaluate_text, metric_writers
from research.data import datasets, readers, toy
from research.evaluation import sample_quality as sq
from research.evaluation import class_coverage, features, memorization, stats, toy_mixtures
from research.metric_writers import MetricWriter

FLAGS = flags.FLAGS


def _define_flags():
  """Flags exist only when this module is the command (importing it defines none)."""
  flags.DEFINE_string('workdir', None, 'The run to evaluate.')
  flags.DEFINE_integer('num_samples', 0, 'Samples to evaluate; more than the latest samples file '
                       'holds are drawn from the latest checkpoint (0 = as saved).')
  flags.DEFINE_integer('max_real', 10000,
                       'Train images in the reference set of the distribution metrics.')
  flags.DEFINE_integer('draws', DEFAULT_DRAWS, 'Independent sample sets each metric is computed '
                       'on (the saved set, then new draws from its checkpoint and sampler, '
                       'cached): every metric is reported as mean ± standard error over them.')
  flags.DEFINE_list('samples', ['all'], 'Sample sets to score, by tag (the file-name part after '
                    'the step, e.g. ddim50-discrete): all = every set at the latest step, each '
                    'scored on its own.')
  flags.DEFINE_list('average', [], 'eval.json files of runs that differ only in their seed: '
                    'print each metric as mean ± s.e. over them (each run its mean over draws) '
                    'instead of evaluating; with --out, also write the table as JSON.')
  flags.DEFINE_string('out', '', 'With --average: the JSON file to write.')


DEFAULT_DRAWS = 5  # independent sample sets per metric: mean ± standard error


def _try(notes: dict, name: str, fn):
  try:
    return fn()
  except ValueError as e:
    notes[name] = f'skipped: {e}'
    return None


def evaluate_run(workdir: str, num_samples: int = 0, max_real: int = 10000,
                 tag: str | None = None, num_draws: int = DEFAULT_DRAWS) -> dict:
  """Computes every metric for one sample set of the run in `workdir` (`tag`, see
  `load_samples`) on `num_draws` independent draws of it: `metrics` holds each metric's mean
  over the draws and its standard error (`<name>_se`), `draws` the per-draw values. Writes
  eval.json (eval_<tag>.json) and TensorBoard scalars."""
  if num_draws < 1:
    raise ValueError(f'--draws={num_draws}: need at least 1 draw (3 or more for an error bar)')
  start = time.perf_counter()
  with open(os.path.join(workdir, 'config.json')) as f:
    config = features.config_from_json(json.load(f))
  if config.data.name not in datasets.DATASETS:
    raise ValueError(f'config.data.name={config.data.name!r} is not a known dataset')
  key = datasets.spec(config.data.name).key   # what a sample is: 2-D points, text or an image
  if key == 'x':
    return evaluate_toy_run(workdir, config, num_samples, tag, num_draws)
  if key == 'tokens':
    return evaluate_text.evaluate_text_run(workdir, config, num_samples, tag, num_draws)

  step, draws, made_by = sets_lib.load_samples(workdir, config, num_samples, 'images', tag,
                                               num_draws)
  feature_fn, probs_fn, info = features.load_feature_fn(config.data.name, config.data)
  space = info['feature_space']

  def split(name):
    read = datasets.reader(config.data, name)
    imgs, labels = read.rows(np.arange(read.num_examples))
    return readers.to_float(imgs), np.asarray(labels)

  train_x, train_y = split(config.data.train_split)
  test_x, _ = split(config.data.eval_split)
  train_f = feature_fn(train_x)
  test_f = feature_fn(test_x)
  real_f = train_f[:max_real]
  m = len(draws[0])
  notes = {}

  def distances(fake, prefix=''):
    out = {}
    fd = _try(notes, prefix + 'frechet_distance', lambda: sq.frechet_distance(real_f, fake))
    if fd is not None:
      out['frechet_distance'] = fd
    kd = _try(notes, prefix + 'kernel_distance',
              lambda: sq.kernel_distance(real_f, fake, subset_size=min(1000, len(fake))))
    if kd is not None:
      out['kernel_distance'] = kd['mean']
    pr = _try(notes, prefix + 'precision_recall', lambda: sq.precision_recall(real_f, fake))
    if pr is not None:
      out.update(pr)
    dc = _try(notes, prefix + 'density_coverage', lambda: sq.density_coverage(real_f, fake))
    if dc is not None:
      out.update(dc)
    return out

  def draw_metrics(images):
    fake_images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
    fake_f, fake_p = feature_fn(fake_images), probs_fn(fake_images)
    out = distances(fake_f)
    cs = _try(notes, 'classifier_score',
              lambda: sq.classifier_score(fake_p, num_splits=max(1, min(10, m))))
    if cs is not None:
      out['classifier_score'] = cs['mean']
    cov = class_coverage.label_histogram_stats(np.argmax(fake_p, -1), train_y,
                                               num_classes=info['num_classes'])
    out |= {'class_kl': cov['kl'], 'class_total_variation': cov['total_variation'],
            'classes_missing': cov['classes_missing']}
    mem = _try(notes, 'memorization',
               lambda: memorization.memorization_report(fake_f, train_f, test_f))
    if mem is not None:
      out |= {'copy_fraction': mem['copy_fraction'], 'memorization_median_d1': mem['median_d1'],
              'memorization_median_dt': mem['median_dt']}
    return out, cov, mem, fake_images

  per_draw, first = [], None
  for images in draws:
    out, cov, mem, fake_images = draw_metrics(images)
    per_draw.append(out)
    first = first or (cov, mem, fake_images)
  cov, mem, fake_images = first
  png = None
  if mem is not None:   # the first draw's worst offenders
    png = os.path.join(workdir, 'samples',
                       f'worst_offenders_{step:07d}{sets_lib.suffix(made_by["tag"])}.png')
    memorization.save_worst_offenders_png(png, fake_images, train_x, mem)
  metrics = stats.over_draws(per_draw)
  reference = distances(test_f[:m], 'reference_test_vs_train/')

  result = {
      'step': step,
      'samples': made_by,
      'num_samples': m,
      'num_draws': len(draws),
      'num_real': len(real_f),
      'feature_space': space,
      'feature_net_test_accuracy': info['test_accuracy'],
      'feature_net': info,
      'metrics': metrics,
      'draws': per_draw,
      'metric_names': {k: f'{k} in {space} features' for k in metrics},
      'reference_test_vs_train': reference,
      'class_histograms': {'fake': cov['fake_histogram'], 'data': cov['data_histogram']},
      'memorization': None if mem is None else {
          'num_flagged': int(len(mem['flagged_indices'])),
          'flagged_indices': mem['flagged_indices'][:100].tolist(),
          'worst_offenders_png': png},
      'notes': notes,
      'wall_time_s': time.perf_counter() - start,
  }
  _write_result(workdir, result)
  return result


def _write_result(workdir: str, result: dict) -> None:
  """eval.json (eval_<tag>.json) and the metrics as TensorBoard scalars."""
  tag, step = result['samples']['tag'], result['step']
  with open(sets_lib.eval_path(workdir, tag), 'w') as f:
    json.dump(result, f, indent=2, sort_keys=True)
  writer = MetricWriter(workdir, 0, 0)   # the run's own writer: TensorBoard and metrics.jsonl
  group = f'sample_quality_{tag}' if tag else 'sample_quality'
  writer.write_scalars(step, {k: float(v) for k, v in result['metrics'].items()}, group)
  writer.write_scalars(step, {k: float(v) for k, v in result['reference_test_vs_train'].items()},
                       'sample_quality_reference')
  writer.write_summary_text(step, f'{group}/feature_space', f"{result['feature_space']}; test "
                            f"accuracy {result['feature_net_test_accuracy']}")
  writer.close()


def toy_metrics(points, dataset: str, test) -> dict:
  """One draw of 2-D points: mode coverage by the PacGAN protocol on the first 2,500 (mixtures
  only; with the mode `histogram`) and the Frechet distance of the coordinates to `test`."""
  out = {}
  if (modes := toy.modes(dataset)) is not None:
    cov = toy_mixtures.mode_coverage(points[:toy_mixtures.PACGAN_NUM_SAMPLES], modes,
                                     toy.mode_std(dataset))
    out = {k: float(cov[k]) for k in ('modes_captured', 'high_quality_fraction', 'reverse_kl')}
    out['histogram'] = cov['histogram']
  out['frechet_distance_2d'] = sq.frechet_distance(test, points)
  return out


def evaluate_toy_run(workdir: str, config, num_samples: int = 0, tag: str | None = None,
                     num_draws: int = DEFAULT_DRAWS) -> dict:
  """2-D toy data: mode coverage by the PacGAN protocol for the mixtures (on the first 2,500
  samples), and Frechet distance and precision / recall on the raw coordinates against the
  test split for every toy set; mean and standard error over `num_draws` draws."""
  start = time.perf_counter()
  step, draws, made_by = sets_lib.load_samples(workdir, config, num_samples, 'points', tag,
                                               num_draws)
  read = datasets.reader(config.data, config.data.eval_split)
  test = np.asarray(read.rows(np.arange(read.num_examples))[0], np.float64)
  notes, per_draw, histograms = {}, [], []
  modes = toy.modes(config.data.name)
  for points in draws:
    if modes is not None and len(points) < toy_mixtures.PACGAN_NUM_SAMPLES:
      notes['mode_coverage'] = f'on {len(points)} samples, fewer than the protocol\'s 2,500'
    out = toy_metrics(points, config.data.name, test)
    histograms += [out.pop('histogram')] if 'histogram' in out else []
    pr = _try(notes, 'precision_recall', lambda: sq.precision_recall(test[:len(points)], points))
    per_draw.append(out | (pr or {}))
  metrics = stats.over_draws(per_draw)
  if modes is not None:
    metrics['num_modes'] = float(len(modes))
    notes['mode_histogram'] = str(histograms[0]) + (' (first draw)' if len(draws) > 1 else '')
  result = {'step': step, 'samples': made_by, 'num_samples': len(draws[0]),
            'num_draws': len(draws), 'num_real': len(test),
            'feature_space': 'raw 2-D coordinates', 'feature_net_test_accuracy': float('nan'),
            'metrics': metrics, 'draws': per_draw, 'reference_test_vs_train': {},
            'mode_histograms': histograms, 'notes': notes,
            'wall_time_s': time.perf_counter() - start}
  _write_result(workdir, result)
  return result


def _made_by(info: dict) -> str:
  """'samples/x.npz (sampler ddim, steps 50, grid discrete, ...; ema params)' for a table."""
  settings = info.get('sampler') or info.get('sample') or {}
  what = ', '.join(f'{k} {v}' for k, v in settings.items())
  params = f"{info['params']} params" if 'params' in info else ''
  detail = '; '.join(x for x in (what, params) if x)
  return f"{info.get('file')}" + (f' ({detail})' if detail else '')


def format_table(result: dict) -> str:
  if 'heldout' in result:   # a text run
    return evaluate_text.format_table(result)
  ref = result['reference_test_vs_train']
  lines = [f"samples: {_made_by(result.get('samples', {}))}",
           f"feature space: {result['feature_space']} "
           f"(test accuracy {result['feature_net_test_accuracy']:.4f})",
           f"step {result['step']}: {result.get('num_draws', 1)} draws of "
           f"{result['num_samples']} samples vs {result['num_real']} real points; mean ± s.e. "
           'over the draws',
           f"{'metric':32s} {'samples':>22s} {'test (ref)':>12s}"]
  metrics = result['metrics']
  for k, v in metrics.items():
    if k.endswith('_se') or k == 'num_draws':
      continue
    r = ref.get(k)
    value = stats.format_mean_se(v, metrics.get(f'{k}_se', float('nan')), 5)
    lines.append(f'{k:32s} {value:>22s} ' + (f'{r:12.5g}' if r is not None else ''))
  for k, v in result['notes'].items():
    lines.append(f'note: {k}: {v}')
  return '\n'.join(lines)


def average(paths: list[str]) -> dict:
  """Mean ± s.e. over runs (seeds) of each metric of their eval.json files, each run's value
  its mean over draws: {'metrics': {name, name_se}, 'n', 'per_run': {name: [values]}, 'files'}."""
  runs = []
  for p in paths:
    with open(p) as f:
      runs.append(json.load(f)['metrics'])
  names = [k for k in runs[0] if not k.endswith('_se') and k != 'num_draws'
           and all(isinstance(r.get(k), (int, float)) for r in runs)]
  per_run = {k: [float(r[k]) for r in runs] for k in names}
  return {'metrics': stats.over_draws([{k: v[i] for k, v in per_run.items()}
                                       for i in range(len(runs))]),
          'n': len(runs), 'per_run': per_run, 'files': list(paths)}


def format_average(result: dict) -> str:
  lines = [f"mean ± s.e. over {result['n']} runs (each run: its mean over draws)"]
  m = result['metrics']
  for k, values in result['per_run'].items():
    lines.append(f"{k:32s} {stats.format_mean_se(m[k], m[f'{k}_se'], 5):>22s}   "
                 + ', '.join(f'{v:.5g}' for v in values))
  return '\n'.join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if FLAGS.average:
    try:
      result = average(FLAGS.average)
    except (OSError, ValueError, KeyError) as e:
      print(f'error: --average: {e}', file=sys.stderr)
      sys.exit(2)
    print(format_average(result))
    if FLAGS.out:
      with open(FLAGS.out, 'w') as f:
        json.dump(result, f, indent=1, sort_keys=True)
    return
  if FLAGS.workdir is None:
    raise app.UsageError('--workdir is required')
  metric_writers.console_logging()
  tags = FLAGS.samples
  if tags == ['all']:
    tags = sets_lib.latest_tags(FLAGS.workdir) or [None]
  try:
    for tag in tags:
      result = evaluate_run(FLAGS.workdir, FLAGS.num_samples, FLAGS.max_real, tag, FLAGS.draws)
      print(format_table(result))
      print(f"wrote {sets_lib.eval_path(FLAGS.workdir, result['samples']['tag'])}")
  except (FileNotFoundError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  _define_flags()
  app.run(main)
