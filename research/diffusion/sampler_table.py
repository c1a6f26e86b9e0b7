r"""Sample quality of one trained diffusion run under several samplers, at equal sample counts.

  python -m research.diffusion.sampler_table --workdir=RUN \
      --samplers=ddpm:1000,ddim:10,ddim:20,ddim:50,ddim:100,dpmpp_2m:10,dpmpp_2m:20,heun:18 \
      [--num_samples=1000] [--draws=1] [--bootstrap=20] [--step=-1] [--max_real=10000] \
      [--output=RUN/sampler_table.json]
  python -m research.diffusion.sampler_table --merge=A.json,B.json [--output=OUT.json]
  python -m research.diffusion.sampler_table --average=SEED0.json,SEED1.json,... [--output=OUT.json]

A sampler spec is `name:steps[:grid]` (grid as `config.sampler.grid`; default `auto`, each
sampler's own grid: `family.AUTO_GRIDS`). For each spec: samples drawn from the run's checkpoint
(`--step`, default the latest; EMA parameters when kept, batched over the local devices through
the harness), wall time and NFE/s, then the metrics:
- images: Frechet distance, precision / recall and density / coverage against the first
  --max_real train images, in the dataset's feature-network space
  (`research/evaluation/features.py`: never Inception, never "FID"). The same distances between
  as many test images and the train reference are reported as a floor.
- 2-D toy data: mode coverage (modes captured, high-quality fraction, reverse KL; the PacGAN
  protocol) and the Frechet distance of the raw coordinates to the test split.
Error bars: with --draws=K > 1, mean ± standard error over K independent sample sets; with one
draw, the standard deviation of the metric over --bootstrap resamples (with replacement) of the
generated samples, the reference fixed (a bootstrap standard error). Writes
RUN/sampler_table.json and prints a markdown table. `--average` combines the tables of runs
that differ only by seed: each metric's mean ± standard error over the runs (n = runs), the
rows matched by sampler, steps and grid.
"""
from __future__ import annotations

import json
import os
import time

import numpy as np
from absl import app, flags

from research import configs, evaluate, metric_writers, sample_sets, trainer
from research.data import datasets, readers
from research.diffusion import samplers
from research.evaluation import sample_quality as sq
from research.evaluation import features, stats

FLAGS = flags.FLAGS


def _define_flags():
  """Defined only when run as a command, so importing this module (tests, other commands with
  their own --workdir) defines no flags."""
  flags.DEFINE_string('workdir', None, 'The diffusion run.')
  flags.DEFINE_string(
      'samplers', 'ddpm:1000,ddim:10,ddim:20,ddim:50,ddim:100,dpmpp_2m:10,dpmpp_2m:20,heun:18',
      'Comma-separated name:steps[:grid] specs.')
  flags.DEFINE_integer('num_samples', 1000, 'Samples per sampler.')
  flags.DEFINE_integer('max_real', 10000, 'Train images in the reference set.')
  flags.DEFINE_integer('chunk', 500, 'Samples drawn per call.')
  flags.DEFINE_integer('draws', 1, 'Independent sample sets per sampler (mean ± s.e. over them).')
  flags.DEFINE_integer('bootstrap', 20, 'With one draw: bootstrap resamples for the s.e. '
                       '(0 = none).')
  flags.DEFINE_integer('step', -1, 'Checkpoint step (-1 = latest).')
  flags.DEFINE_bool('clip_denoised', None, 'Clip each x0 estimate to the data range; '
                    '--noclip_denoised samples without (default: the run\'s '
                    'config.sampler.clip_denoised).')
  flags.DEFINE_string('output', None, 'Where the JSON goes (default RUN/sampler_table.json); '
                      'name one per process to split the samplers over processes (one CPU core '
                      'each), then `--merge` them.')
  flags.DEFINE_list('average', None, 'Tables of one config trained with different seeds: print '
                    'and write (--output) each metric\'s mean ± s.e. over them; samples nothing.')
  flags.DEFINE_list('merge', None, 'Print the table of these JSON outputs (rows in order) and '
                    'write it to --output; samples nothing.')


def parse_spec(spec: str) -> dict:
  parts = spec.strip().split(':')
  if len(parts) not in (2, 3) or not parts[1].isdigit() or int(parts[1]) < 1:
    raise ValueError(f'--samplers: bad spec {spec!r}; use name:steps[:grid], e.g. ddim:50')
  return {'name': parts[0], 'steps': int(parts[1]), 'grid': parts[2] if len(parts) == 3 else
          'auto'}


def draw(config, state, mesh, spec: dict, num: int, chunk: int, key, clip_denoised=None,
         draws: int = 1):
  """([samples [num, ...] per draw], seconds of the first draw, the resolved grid) for one
  sampler spec on the restored state: images, or points for 2-D data. Draw d > 0 uses the key
  folded with d."""
  import jax  # pylint: disable=g-import-not-at-top
  cfg = config.copy_and_resolve_references()
  cfg.sampler.name, cfg.sampler.steps, cfg.sampler.grid = spec['name'], spec['steps'], spec[
      'grid']
  if clip_denoised is not None:
    cfg.sampler.clip_denoised = clip_denoised
  cfg.eval.num_samples = min(num, chunk)
  configs.validate(cfg, mesh.size, jax.process_count())
  exp = trainer.build(cfg, mesh)
  sample = exp.sample.lower(state, key).compile()   # compile only: a warm-up call would double
  # the cost of 1000 steps
  name = 'points' if datasets.spec(config.data.name).key == 'x' else 'images'
  sets, seconds = [], 0.0
  for d in range(draws):
    base = jax.random.fold_in(key, 1_000_003 * d) if d else key
    start = time.perf_counter()
    sets.append(sample_sets.sample_chunks(sample, state, base, num, cfg.eval.num_samples,
                                          (name,), cfg.family, first=1)[name])
    seconds = seconds or time.perf_counter() - start
  return sets, seconds, exp.family.grid()


def with_error_bars(metrics_fn, sets: list, bootstrap: int, seed: int = 0) -> dict:
  """`metrics_fn` on each set: mean ± s.e. over the sets (`stats.over_draws`) when there are
  several; for one set, its metrics with `<name>_se` = the std over `bootstrap` resamples of it
  (with replacement), the reference fixed."""
  if len(sets) > 1:
    return stats.over_draws([metrics_fn(x) for x in sets]) | {'se_method': 'draws'}
  out = dict(metrics_fn(sets[0]))
  if bootstrap > 1:
    rng = np.random.default_rng(seed)
    n = len(sets[0])
    boots = [metrics_fn(sets[0][rng.integers(0, n, n)]) for _ in range(bootstrap)]
    for k in [k for k, v in out.items() if isinstance(v, (int, float))]:
      vals = np.asarray([b[k] for b in boots], np.float64)
      out[f'{k}_se'] = float(np.std(vals[np.isfinite(vals)], ddof=1))
    out['num_bootstrap'] = bootstrap
  return out | {'num_draws': 1, 'se_method': f'bootstrap x{bootstrap}' if bootstrap > 1 else ''}


def sampler_table(workdir: str, specs: list[dict], num_samples: int, max_real: int = 10000,
                  chunk: int = 500, output: str | None = None,
                  clip_denoised: bool | None = None, draws: int = 1, bootstrap: int = 20,
                  step: int = -1) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  with open(os.path.join(workdir, 'config.json')) as f:
    config = features.config_from_json(json.load(f))
  exp, state, _, sample_key = trainer.restore(config, workdir, step)
  step = int(np.asarray(jax.device_get(state.step)))
  toy = datasets.spec(config.data.name).key == 'x'   # 2-D points

  def split(name):
    read = datasets.reader(config.data, name)
    x, _ = read.rows(np.arange(read.num_examples))
    return np.asarray(x, np.float64) if toy else readers.to_float(x)

  if toy:
    test = split(config.data.eval_split)
    info = {'feature_space': 'raw 2-D coordinates', 'test_accuracy': float('nan')}
    quality = lambda points: {k: v for k, v in evaluate.toy_metrics(
        points, config.data.name, test).items() if k != 'histogram'}
    real = test
    reference = {}
  else:
    feature_fn, _, info = features.load_feature_fn(config.data.name, config.data)
    real = feature_fn(split(config.data.train_split)[:max_real])
    radii = sq.real_knn_radii(real)   # one reference for every sampler, draw and resample

    def quality(fake):
      out = {'frechet_distance': sq.frechet_distance(real, fake)}
      out.update(sq.precision_recall(real, fake, real_radii=radii))
      out.update(sq.density_coverage(real, fake, real_radii=radii))
      return out

    reference = quality(feature_fn(split(config.data.eval_split)[:num_samples]))

  rows = []
  for spec in specs:
    sets, seconds, grid = draw(config, state, exp.mesh, spec, num_samples, chunk, sample_key,
                               clip_denoised, draws)
    if not toy:
      sets = [feature_fn(x) for x in sets]
    nfe = samplers.nfe(spec['name'], spec['steps'])
    row = dict(spec, grid=grid, nfe=nfe, seconds=seconds, nfe_per_s=nfe * num_samples / seconds,
               **with_error_bars(quality, sets, bootstrap))
    rows.append(row)
    print(format_row(row), flush=True)
  result = {'step': step, 'num_samples': num_samples, 'num_real': len(real),
            'feature_space': info['feature_space'], 'test_accuracy': info['test_accuracy'],
            'toy': toy, 'draws': draws, 'bootstrap': bootstrap if draws == 1 else 0,
            'clip_denoised': (config.sampler.clip_denoised if clip_denoised is None
                              else clip_denoised),
            'rows': rows, 'reference_test_vs_train': reference}
  with open(output or os.path.join(workdir, 'sampler_table.json'), 'w') as f:
    json.dump(result, f, indent=2)
  return result


def merge(paths: list[str]) -> dict:
  """One result from several processes' outputs of the same run and sample count."""
  parts = []
  for path in paths:
    with open(path) as f:
      parts.append(json.load(f))
  first = parts[0]
  for path, part in zip(paths, parts):
    for key in ('step', 'num_samples', 'num_real', 'feature_space', 'clip_denoised', 'draws'):
      if part.get(key) != first.get(key):
        raise ValueError(f'--merge: {path} has {key}={part.get(key)!r}, {paths[0]} has '
                         f'{first.get(key)!r}; merge only tables of one run, sample count and '
                         'clipping')
  return dict(first, rows=[row for part in parts for row in part['rows']])


def _v(r: dict, k: str, digits: int = 3) -> str:
  """'0.812 ± 0.012' (the value alone when the row has no s.e.)."""
  se = r.get(f'{k}_se')
  text = f'{r[k]:.{digits}f}'
  return text + (f' ± {se:.{digits}f}' if se is not None and np.isfinite(se) else '')


def average(paths: list[str]) -> dict:
  """Tables of runs that differ only by seed -> one table of mean ± s.e. over the runs (the
  `_se` fields are now over runs; `num_runs` = n), rows matched by (name, steps, grid)."""
  parts = []
  for path in paths:
    with open(path) as f:
      parts.append(json.load(f))
  key = lambda r: (r['name'], r['steps'], r['grid'])
  rows = []
  for row in parts[0]['rows']:
    same = [next((r for r in p['rows'] if key(r) == key(row)), None) for p in parts]
    missing = [path for path, r in zip(paths, same) if r is None]
    if missing:
      raise ValueError(f'--average: {missing[0]} has no row {key(row)}; average tables of the '
                       'same samplers')
    metrics = [{k: v for k, v in r.items() if isinstance(v, (int, float)) and not
                k.endswith('_se') and k not in ('steps', 'nfe', 'num_draws', 'num_bootstrap')}
               for r in same]
    means = stats.over_draws(metrics)
    del means['num_draws']   # that is the number of runs here; each row keeps its draws
    rows.append(dict(row, **means, num_runs=len(same)))
  steps = sorted({p['step'] for p in parts})
  return dict(parts[0], rows=rows, runs=paths, num_runs=len(parts), step=steps[0] if len(
      steps) == 1 else steps, reference_test_vs_train={})


def format_row(r: dict) -> str:
  head = f"| {r['name']} {r['steps']} ({r['grid']}) | {r['nfe']} | "
  if 'modes_captured' in r:
    return head + (f"{_v(r, 'modes_captured', 2)} | {_v(r, 'high_quality_fraction')} | "
                   f"{_v(r, 'reverse_kl')} | {_v(r, 'frechet_distance_2d', 4)} | "
                   f"{r['seconds']:.0f} s |")
  return head + (f"{_v(r, 'frechet_distance', 2)} | {_v(r, 'precision')} / {_v(r, 'recall')} "
                 f"| {_v(r, 'density')} / {_v(r, 'coverage')} | {r['seconds']:.0f} s |")


def format_table(result: dict) -> str:
  draws = result.get('draws', 1)
  bars = (f"mean ± s.e. over {result['num_runs']} seeds (each seed's value: its mean over "
          f'{draws} draws)' if result.get('num_runs') else
          f'mean ± s.e. over {draws} draws' if draws > 1 else
          f"± bootstrap s.e. ({result['bootstrap']} resamples)" if result.get('bootstrap')
          else 'one draw, no error bar')
  lines = [f"feature space: {result['feature_space']} (test accuracy "
           f"{result['test_accuracy']}); {result['num_samples']} samples vs "
           f"{result['num_real']} real points; step {result['step']}; {bars}", '']
  if result.get('toy'):
    lines += ['| sampler | NFE | modes | high-quality | reverse KL | Frechet (2-D) | time |',
              '|---|---|---|---|---|---|---|']
  else:
    lines += ['| sampler | NFE | Frechet distance | precision / recall | density / coverage '
              '| time |', '|---|---|---|---|---|---|']
  lines += [format_row(r) for r in result['rows']]
  ref = result['reference_test_vs_train']
  if ref:
    lines.append(f"| test images (floor) | | {ref['frechet_distance']:.2f} | "
                 f"{ref['precision']:.3f} / {ref['recall']:.3f} | {ref['density']:.3f} / "
                 f"{ref['coverage']:.3f} | |")
  return '\n'.join(lines)


def main(argv):
  del argv
  if FLAGS.merge or FLAGS.average:
    result = merge(FLAGS.merge) if FLAGS.merge else average(FLAGS.average)
    if FLAGS.output:
      with open(FLAGS.output, 'w') as f:
        json.dump(result, f, indent=2)
    print(format_table(result))
    return
  metric_writers.console_logging()
  try:
    specs = [parse_spec(s) for s in FLAGS.samplers.split(',')]
  except ValueError as e:
    raise app.UsageError(str(e))
  print(format_table(sampler_table(FLAGS.workdir, specs, FLAGS.num_samples, FLAGS.max_real,
                                   FLAGS.chunk, FLAGS.output, FLAGS.clip_denoised, FLAGS.draws,
                                   FLAGS.bootstrap, FLAGS.step)))


if __name__ == '__main__':
  _define_flags()
  flags.register_multi_flags_validator(
      ['workdir', 'merge', 'average'],
      lambda f: bool(f['workdir'] or f['merge'] or f['average']),
      '--workdir is required (unless --merge or --average)')
  app.run(main)
