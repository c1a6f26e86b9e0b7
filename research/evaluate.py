r"""Sample-quality evaluation of a trained generative run, in a learned feature space.

  python -m research.evaluate --workdir=RUN [--num_samples=N] [--max_real=10000]

Reads RUN/config.json and the latest RUN/samples/samples_*.npz (key `images`, NHWC in [0, 1]);
with --num_samples=N larger than that file holds, first draws N samples from the latest
checkpoint (saved as RUN/samples/eval_samples_<step>.npz). Features come from the dataset's
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
skipped with a note. Writes RUN/eval.json, prints a table and logs the scalars to RUN/tb under
`sample_quality/`.
"""
from __future__ import annotations

import glob
import json
import os
import re
import sys
import time

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS


def _define_flags():
  """Flags exist only when this module is the command (importing it defines none)."""
  flags.DEFINE_string('workdir', None, 'The run to evaluate.')
  flags.DEFINE_integer('num_samples', 0, 'Samples to evaluate; more than the latest samples file '
                       'holds are drawn from the latest checkpoint (0 = as saved).')
  flags.DEFINE_integer('max_real', 10000,
                       'Train images in the reference set of the distribution metrics.')


_CHUNK = 1000  # samples drawn per call when drawing more


def _latest_samples(workdir: str):
  paths = glob.glob(os.path.join(workdir, 'samples', 'samples_*.npz'))
  steps = {}
  for p in paths:
    m = re.match(r'samples_(\d+)\.npz$', os.path.basename(p))
    if m:
      steps[int(m.group(1))] = p
  if not steps:
    return None, None
  step = max(steps)
  return step, steps[step]


def draw_samples(config, workdir: str, num: int, key: str = 'images'):
  """`num` samples from the run's latest checkpoint, drawn `_CHUNK` at a time; (step, samples)
  where samples are the family's `key` output ('images', or 'points' for 2-D toy data)."""
  import jax  # pylint: disable=g-import-not-at-top
  from research import parallel, trainer  # pylint: disable=g-import-not-at-top
  config = config.copy_and_resolve_references()
  config.eval.num_samples = min(num, _CHUNK)
  exp, state, _, sample_key = trainer.restore(config, workdir, -1)
  step = int(parallel.to_host(state.step))
  out = []
  for i in range(-(-num // config.eval.num_samples)):
    s = parallel.to_host(exp.sample(state, jax.random.fold_in(sample_key, i)))
    if key not in s:
      raise ValueError(f'the {config.family!r} family draws no {key}')
    out.append(np.asarray(s[key])[:config.eval.num_samples])
  samples = np.concatenate(out)[:num]
  from research import images as image_lib  # pylint: disable=g-import-not-at-top
  if jax.process_index() == 0:
    image_lib.save_npz(os.path.join(workdir, 'samples', f'eval_samples_{step:07d}.npz'),
                       {key: samples})
  return step, samples


def _try(notes: dict, name: str, fn):
  try:
    return fn()
  except ValueError as e:
    notes[name] = f'skipped: {e}'
    return None


def evaluate_run(workdir: str, num_samples: int = 0, max_real: int = 10000) -> dict:
  """Computes every metric for the run in `workdir`, writes eval.json and TensorBoard scalars."""
  from research.data import datasets, pipeline  # pylint: disable=g-import-not-at-top
  from research.evaluation import class_coverage, features, memorization  # pylint: disable=g-import-not-at-top
  from research.evaluation import sample_quality as sq  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  with open(os.path.join(workdir, 'config.json')) as f:
    config = features.config_from_json(json.load(f))
  if datasets.is_toy(config.data.name):
    return evaluate_toy_run(workdir, config, num_samples)
  if config.data.name not in datasets.DATASETS:
    raise ValueError(f'config.data.name={config.data.name!r} is not an image dataset')

  step, path = _latest_samples(workdir)
  images = None
  if path is not None:
    with np.load(path) as z:
      images = np.asarray(z['images']) if 'images' in z else None
  if images is None or (num_samples and len(images) < num_samples):
    if not num_samples:
      raise FileNotFoundError(f'no samples/samples_*.npz with images under {workdir}: train '
                              'or run --mode=sample first, or pass --num_samples')
    step, images = draw_samples(config, workdir, num_samples)
  if num_samples:
    images = images[:num_samples]
  fake_images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
  m = len(fake_images)

  feature_fn, probs_fn, info = features.load_feature_fn(config.data.name, config.data)
  space = info['feature_space']

  def split(name):
    read = pipeline.reader(config.data, name)
    imgs, labels = read.rows(np.arange(read.num_examples))
    return pipeline.to_float(imgs), np.asarray(labels)

  train_x, train_y = split(config.data.train_split)
  test_x, _ = split(config.data.eval_split)
  train_f = feature_fn(train_x)
  test_f = feature_fn(test_x)
  fake_f, fake_p = feature_fn(fake_images), probs_fn(fake_images)
  real_f = train_f[:max_real]

  notes, metrics = {}, {}

  def distances(fake, prefix=''):
    out = {}
    fd = _try(notes, prefix + 'frechet_distance', lambda: sq.frechet_distance(real_f, fake))
    if fd is not None:
      out['frechet_distance'] = fd
    kd = _try(notes, prefix + 'kernel_distance',
              lambda: sq.kernel_distance(real_f, fake, subset_size=min(1000, len(fake))))
    if kd is not None:
      out['kernel_distance'], out['kernel_distance_std_err'] = kd['mean'], kd['std_err']
    pr = _try(notes, prefix + 'precision_recall', lambda: sq.precision_recall(real_f, fake))
    if pr is not None:
      out.update(pr)
    dc = _try(notes, prefix + 'density_coverage', lambda: sq.density_coverage(real_f, fake))
    if dc is not None:
      out.update(dc)
    return out

  metrics.update(distances(fake_f))
  cs = _try(notes, 'classifier_score',
            lambda: sq.classifier_score(fake_p, num_splits=max(1, min(10, m))))
  if cs is not None:
    metrics['classifier_score'], metrics['classifier_score_std'] = cs['mean'], cs['std']
  cov = class_coverage.label_histogram_stats(np.argmax(fake_p, -1), train_y,
                                             num_classes=info['num_classes'])
  metrics['class_kl'] = cov['kl']
  metrics['class_total_variation'] = cov['total_variation']
  metrics['classes_missing'] = cov['classes_missing']

  mem = _try(notes, 'memorization',
             lambda: memorization.memorization_report(fake_f, train_f, test_f))
  png = None
  if mem is not None:
    metrics['copy_fraction'] = mem['copy_fraction']
    metrics['memorization_median_d1'] = mem['median_d1']
    metrics['memorization_median_dt'] = mem['median_dt']
    png = os.path.join(workdir, 'samples', f'worst_offenders_{step:07d}.png')
    memorization.save_worst_offenders_png(png, fake_images, train_x, mem)

  reference = distances(test_f[:m], 'reference_test_vs_train/')

  result = {
      'step': step,
      'num_samples': m,
      'num_real': len(real_f),
      'feature_space': space,
      'feature_net_test_accuracy': info['test_accuracy'],
      'feature_net': info,
      'metrics': metrics,
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
  with open(os.path.join(workdir, 'eval.json'), 'w') as f:
    json.dump(result, f, indent=2, sort_keys=True)

  from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  tb = SummaryWriter(os.path.join(workdir, 'tb'))
  for k, v in metrics.items():
    tb.add_scalar(f'sample_quality/{k}', float(v), step)
  for k, v in reference.items():
    tb.add_scalar(f'sample_quality_reference/{k}', float(v), step)
  tb.add_text('sample_quality/feature_space',
              f"{space}; test accuracy {info['test_accuracy']}", step)
  tb.close()
  return result


def _load_samples(workdir: str, config, num_samples: int, key: str):
  step, path = _latest_samples(workdir)
  samples = None
  if path is not None:
    with np.load(path) as z:
      samples = np.asarray(z[key]) if key in z else None
  if samples is None or (num_samples and len(samples) < num_samples):
    if not num_samples:
      raise FileNotFoundError(f'no samples/samples_*.npz with {key} under {workdir}: train '
                              'or run --mode=sample first, or pass --num_samples')
    step, samples = draw_samples(config, workdir, num_samples, key)
  return step, samples[:num_samples] if num_samples else samples


def evaluate_toy_run(workdir: str, config, num_samples: int = 0) -> dict:
  """2-D toy data: mode coverage by the PacGAN protocol for the mixtures (on the first 2,500
  samples), and Frechet distance and precision / recall on the raw coordinates against the
  test split for every toy set."""
  from research.data import pipeline, toy  # pylint: disable=g-import-not-at-top
  from research.evaluation import toy_mixtures  # pylint: disable=g-import-not-at-top
  from research.evaluation import sample_quality as sq  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  step, points = _load_samples(workdir, config, num_samples, 'points')
  read = pipeline.reader(config.data, config.data.eval_split)
  test = np.asarray(read.rows(np.arange(read.num_examples))[0], np.float64)
  notes, metrics = {}, {}
  if toy.modes(config.data.name) is not None:
    n = min(len(points), toy_mixtures.PACGAN_NUM_SAMPLES)
    if n < toy_mixtures.PACGAN_NUM_SAMPLES:
      notes['mode_coverage'] = f'on {n} samples, fewer than the protocol\'s 2,500'
    cov = toy_mixtures.mode_coverage(points[:n], toy.modes(config.data.name),
                                     toy.mode_std(config.data.name))
    metrics.update({k: float(cov[k]) for k in ('modes_captured', 'high_quality_fraction',
                                                'reverse_kl')})
    notes['mode_histogram'] = str(cov['histogram'])
    metrics['num_modes'] = float(len(toy.modes(config.data.name)))
  metrics['frechet_distance_2d'] = sq.frechet_distance(test, points)
  pr = _try(notes, 'precision_recall', lambda: sq.precision_recall(test[:len(points)], points))
  if pr is not None:
    metrics.update(pr)
  result = {'step': step, 'num_samples': len(points), 'num_real': len(test),
            'feature_space': 'raw 2-D coordinates', 'feature_net_test_accuracy': float('nan'),
            'metrics': metrics, 'reference_test_vs_train': {}, 'notes': notes,
            'wall_time_s': time.perf_counter() - start}
  with open(os.path.join(workdir, 'eval.json'), 'w') as f:
    json.dump(result, f, indent=2, sort_keys=True)
  return result


def format_table(result: dict) -> str:
  ref = result['reference_test_vs_train']
  lines = [f"feature space: {result['feature_space']} "
           f"(test accuracy {result['feature_net_test_accuracy']:.4f})",
           f"step {result['step']}: {result['num_samples']} samples vs {result['num_real']} "
           'train images',
           f"{'metric':32s} {'samples':>12s} {'test (ref)':>12s}"]
  for k, v in result['metrics'].items():
    r = ref.get(k)
    lines.append(f'{k:32s} {v:12.5g} ' + (f'{r:12.5g}' if r is not None else f"{'':>12s}"))
  for k, v in result['notes'].items():
    lines.append(f'note: {k}: {v}')
  return '\n'.join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if FLAGS.workdir is None:
    raise app.UsageError('--workdir is required')
  from research import metric_writers  # pylint: disable=g-import-not-at-top
  metric_writers.console_logging()
  try:
    result = evaluate_run(FLAGS.workdir, FLAGS.num_samples, FLAGS.max_real)
  except (FileNotFoundError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  print(format_table(result))
  print(f"wrote {os.path.join(FLAGS.workdir, 'eval.json')}")


if __name__ == '__main__':
  _define_flags()
  app.run(main)
