r"""Sample quality of one trained diffusion run under several samplers, at equal sample counts.

  python -m research.diffusion.sampler_table --workdir=RUN \
      --samplers=ddpm:1000,ddim:10,ddim:20,ddim:50,ddim:100,dpmpp_2m:10,dpmpp_2m:20,heun:18 \
      [--num_samples=1000] [--max_real=10000] [--output=RUN/sampler_table.json]
  python -m research.diffusion.sampler_table --merge=A.json,B.json [--output=OUT.json]

A sampler spec is `name:steps[:grid]` (grid as `config.sampler.grid`; default `auto`). For each
spec: samples drawn from the run's latest checkpoint (EMA parameters when kept, batched over the
local devices through the harness), wall time and NFE/s, then Frechet distance, precision /
recall and density / coverage against the first --max_real train images, in the dataset's
feature-network space (`research/evaluation/features.py`: never Inception, never "FID"). The
same distances between as many test images and the train reference are reported as a floor.
Writes RUN/sampler_table.json and prints a markdown table.
"""
from __future__ import annotations

import json
import os
import time

import numpy as np
from absl import app, flags

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
  flags.DEFINE_bool('clip_denoised', None, 'Clip each x0 estimate to the data range; '
                    '--noclip_denoised samples without (default: the run\'s '
                    'config.sampler.clip_denoised).')
  flags.DEFINE_string('output', None, 'Where the JSON goes (default RUN/sampler_table.json); '
                      'name one per process to split the samplers over processes (one CPU core '
                      'each), then `--merge` them.')
  flags.DEFINE_list('merge', None, 'Print the table of these JSON outputs (rows in order) and '
                    'write it to --output; samples nothing.')


def parse_spec(spec: str) -> dict:
  parts = spec.strip().split(':')
  if len(parts) not in (2, 3) or not parts[1].isdigit() or int(parts[1]) < 1:
    raise ValueError(f'--samplers: bad spec {spec!r}; use name:steps[:grid], e.g. ddim:50')
  return {'name': parts[0], 'steps': int(parts[1]), 'grid': parts[2] if len(parts) == 3 else
          'auto'}


def draw(config, state, mesh, spec: dict, num: int, chunk: int, key, clip_denoised=None):
  """(images [num, H, W, C], seconds) for one sampler spec on the restored state."""
  import jax  # pylint: disable=g-import-not-at-top
  from research import configs, parallel, trainer  # pylint: disable=g-import-not-at-top
  cfg = config.copy_and_resolve_references()
  cfg.sampler.name, cfg.sampler.steps, cfg.sampler.grid = spec['name'], spec['steps'], spec[
      'grid']
  if clip_denoised is not None:
    cfg.sampler.clip_denoised = clip_denoised
  cfg.eval.num_samples = min(num, chunk)
  configs.validate(cfg, mesh.size, jax.process_count())
  exp = trainer.build(cfg, mesh)
  sample = exp.sample.lower(state, key).compile()   # compile only: a warm-up call would double
  start, out = time.perf_counter(), []              # the cost of a 1000-step sampler
  for i in range(-(-num // cfg.eval.num_samples)):
    s = parallel.to_host(sample(state, jax.random.fold_in(key, i + 1)))
    out.append(np.asarray(s['images'])[:cfg.eval.num_samples])
  return np.concatenate(out)[:num], time.perf_counter() - start


def sampler_table(workdir: str, specs: list[dict], num_samples: int, max_real: int = 10000,
                  chunk: int = 500, output: str | None = None,
                  clip_denoised: bool | None = None) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  from research import trainer  # pylint: disable=g-import-not-at-top
  from research.data import pipeline  # pylint: disable=g-import-not-at-top
  from research.diffusion import samplers  # pylint: disable=g-import-not-at-top
  from research.evaluation import features  # pylint: disable=g-import-not-at-top
  from research.evaluation import sample_quality as sq  # pylint: disable=g-import-not-at-top
  with open(os.path.join(workdir, 'config.json')) as f:
    config = features.config_from_json(json.load(f))
  exp, state, _, sample_key = trainer.restore(config, workdir, -1)
  step = int(np.asarray(jax.device_get(state.step)))
  feature_fn, _, info = features.load_feature_fn(config.data.name, config.data)

  def split(name):
    read = pipeline.reader(config.data, name)
    imgs, _ = read.rows(np.arange(read.num_examples))
    return pipeline.to_float(imgs)

  real = feature_fn(split(config.data.train_split)[:max_real])
  test = feature_fn(split(config.data.eval_split)[:num_samples])

  def quality(fake):
    out = {'frechet_distance': sq.frechet_distance(real, fake)}
    out.update(sq.precision_recall(real, fake))
    out.update(sq.density_coverage(real, fake))
    return out

  rows = []
  for spec in specs:
    images, seconds = draw(config, state, exp.mesh, spec, num_samples, chunk, sample_key,
                           clip_denoised)
    nfe = samplers.nfe(spec['name'], spec['steps'])
    row = dict(spec, nfe=nfe, seconds=seconds, nfe_per_s=nfe * num_samples / seconds,
               **quality(feature_fn(images)))
    rows.append(row)
    print(format_row(row), flush=True)
  result = {'step': step, 'num_samples': num_samples, 'num_real': len(real),
            'feature_space': info['feature_space'], 'test_accuracy': info['test_accuracy'],
            'clip_denoised': (config.sampler.clip_denoised if clip_denoised is None
                              else clip_denoised),
            'rows': rows, 'reference_test_vs_train': quality(test)}
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
    for key in ('step', 'num_samples', 'num_real', 'feature_space', 'clip_denoised'):
      if part.get(key) != first.get(key):
        raise ValueError(f'--merge: {path} has {key}={part.get(key)!r}, {paths[0]} has '
                         f'{first.get(key)!r}; merge only tables of one run, sample count and '
                         'clipping')
  return dict(first, rows=[row for part in parts for row in part['rows']])


def format_row(r: dict) -> str:
  return (f"| {r['name']} {r['steps']} ({r['grid']}) | {r['nfe']} | {r['frechet_distance']:.2f} "
          f"| {r['precision']:.3f} / {r['recall']:.3f} | {r['density']:.3f} / "
          f"{r['coverage']:.3f} | {r['seconds']:.0f} s |")


def format_table(result: dict) -> str:
  lines = [f"feature space: {result['feature_space']} (test accuracy "
           f"{result['test_accuracy']}); {result['num_samples']} samples vs "
           f"{result['num_real']} train images; step {result['step']}", '',
           '| sampler | NFE | Frechet distance | precision / recall | density / coverage '
           '| time |', '|---|---|---|---|---|---|']
  lines += [format_row(r) for r in result['rows']]
  ref = result['reference_test_vs_train']
  lines.append(f"| test images (floor) | | {ref['frechet_distance']:.2f} | "
               f"{ref['precision']:.3f} / {ref['recall']:.3f} | {ref['density']:.3f} / "
               f"{ref['coverage']:.3f} | |")
  return '\n'.join(lines)


def main(argv):
  del argv
  if FLAGS.merge:
    result = merge(FLAGS.merge)
    if FLAGS.output:
      with open(FLAGS.output, 'w') as f:
        json.dump(result, f, indent=2)
    print(format_table(result))
    return
  from research import metric_writers  # pylint: disable=g-import-not-at-top
  metric_writers.console_logging()
  try:
    specs = [parse_spec(s) for s in FLAGS.samplers.split(',')]
  except ValueError as e:
    raise app.UsageError(str(e))
  print(format_table(sampler_table(FLAGS.workdir, specs, FLAGS.num_samples, FLAGS.max_real,
                                   FLAGS.chunk, FLAGS.output, FLAGS.clip_denoised)))


if __name__ == '__main__':
  _define_flags()
  flags.register_multi_flags_validator(
      ['workdir', 'merge'], lambda f: bool(f['workdir'] or f['merge']),
      '--workdir is required (unless --merge)')
  app.run(main)
