r"""Runs one config over several seeds and reports mean ± standard error of the final metrics.

  python -m research.seeds --config=experiments/vae_digits/config.py --workdir=/tmp/vae_seeds \
      --seeds=0,1,2,3,4 [--parallel=2] [--metrics=eval.neg_elbo,eval.iwae_nll] [--timeout=0] \
      [--curves=eval.modes_captured] [--config.x.y=... overrides, passed verbatim to every seed]

Each seed is an ordinary `python -m research.main` run in WORKDIR/seed_<k> with `--config.seed=k`
(its stdout and stderr appended to WORKDIR/seed_<k>/run.log), at most --parallel at a time.
Rerunning the command skips finished seeds and resumes the others from their checkpoints. A
failed seed is recorded, not fatal. Writes WORKDIR/seeds.json and WORKDIR/seeds.md and prints
the table (and WORKDIR/curves.md: mean ± s.e. at every logged step of the --curves metrics);
exits 0 only if every seed finished (1 otherwise, 2 for a config or flag error).

From Python: `summarize(workdir)` aggregates the finished seed_<k> runs under a workdir, and
`mean_se(values)` is the statistic itself.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Sequence

from absl import app, flags
from ml_collections import config_flags

from research import configs, launch
from research.evaluation.stats import mean_se  # noqa: F401  (research.seeds.mean_se)
from research.launch import finished, read_json

FLAGS = flags.FLAGS


def _define_flags():
  """Flags exist only when this module is the command: importing it (tests, notebooks, other
  commands with their own --workdir) defines none."""
  config_flags.DEFINE_config_file('config', None, 'Experiment config file (as for research.main).',
                                  lock_config=True)
  flags.DEFINE_string('workdir', None, 'Parent directory; seed k runs in seed_<k>.')
  flags.DEFINE_list('seeds', ['0', '1', '2', '3', '4'], 'Comma-separated seeds.')
  flags.DEFINE_integer('parallel', 1, 'Seeds run at the same time.')
  flags.DEFINE_list('metrics', [], 'Dotted final-metric paths (eval.reverse_kl); '
                    'default: every numeric scalar under eval.')
  flags.DEFINE_list('curves', [], 'Logged metrics (eval.modes_captured, train.g_loss) whose '
                    'mean ± s.e. at every logged step goes to WORKDIR/curves.md and seeds.json.')
  flags.DEFINE_float('timeout', 0.0, 'Seconds per seed before it is stopped (SIGTERM: '
                     'it checkpoints, so a rerun resumes it); 0 = none.')


_raw_argv: list[str] = []


# ---------------------------------------------------------------------------------------------
# Statistics and tables


def seed_dir(workdir: str, seed: int) -> str:
  return os.path.join(workdir, f'seed_{seed}')


def _is_number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


def _flatten(tree: dict, prefix: str) -> dict[str, float]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out |= _flatten(v, f'{prefix}.{k}')
    elif _is_number(v) and k != 'num_examples':  # a count, not a result
      out[f'{prefix}.{k}'] = float(v)
  return out


def _lookup(tree: dict, path: str) -> float | None:
  for part in path.split('.'):
    if not isinstance(tree, dict) or part not in tree:
      return None
    tree = tree[part]
  return float(tree) if _is_number(tree) else None


def summarize(workdir: str, metrics: Sequence[str] | None = None,
              seeds: Sequence[int] | None = None) -> dict:
  """Mean ± standard error over the finished runs WORKDIR/seed_<k>.

  `metrics` are dotted paths into final_metrics.json (default: every numeric scalar under
  'eval'); `seeds` defaults to every seed_<k> directory. Non-finite values are counted
  ('non_finite') and left out of mean, se and n. Returns {'seeds': finished seeds,
  'unfinished': the rest, 'per_seed': {seed: {metric: value}}, 'metrics': {metric: {'mean',
  'se', 'n', 'non_finite', 'missing', 'values'}}} with 'values' in the order of 'seeds'.
  """
  if seeds is None:
    seeds = sorted(int(d[5:]) for d in os.listdir(workdir)
                   if d.startswith('seed_') and d[5:].lstrip('-').isdigit())
  done = [k for k in seeds if finished(seed_dir(workdir, k))]
  finals = {k: read_json(os.path.join(seed_dir(workdir, k), 'final_metrics.json')) for k in done}
  if not metrics:
    names = {}  # ordered union over seeds
    for final in finals.values():
      names |= dict.fromkeys(_flatten(final.get('eval') or {}, 'eval'))
    metrics = list(names)
  per_seed = {k: {m: _lookup(finals[k], m) for m in metrics} for k in done}
  table = {}
  for m in metrics:
    values = [per_seed[k][m] for k in done]
    present = [v for v in values if v is not None]
    mean, se, n = mean_se(present)
    table[m] = {'mean': mean, 'se': se, 'n': n, 'non_finite': len(present) - n,
                'missing': len(values) - len(present), 'values': values}
  return {'workdir': workdir, 'seeds': done, 'unfinished': [k for k in seeds if k not in done],
          'per_seed': {str(k): v for k, v in per_seed.items()}, 'metrics': table}


def curves(workdir: str, metrics: Sequence[str], seeds: Sequence[int]) -> dict:
  """Learning curves: {metric: {step: (mean, se, n)}} over the seeds' logged metrics
  (WORKDIR/seed_<k>/metrics.jsonl; `metrics` as '<split>.<name>', e.g. 'eval.reverse_kl' or
  'train.g_loss'). A step counts the seeds that logged it, so an unfinished seed only shortens
  its own curve."""
  values: dict[str, dict[int, list[float]]] = {m: {} for m in metrics}
  for k in seeds:
    try:
      with open(os.path.join(seed_dir(workdir, k), 'metrics.jsonl')) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError):
      continue
    # A resumed run may log a step twice: keep its last row.
    latest = {(row.get('split'), row.get('step')): row for row in rows}
    for m in metrics:
      split, _, name = m.partition('.')
      for (row_split, step), row in latest.items():
        if row_split == split and _is_number(row.get(name)):
          values[m].setdefault(step, []).append(float(row[name]))
  return {m: {step: mean_se(v) for step, v in sorted(by_step.items())}
          for m, by_step in values.items()}


def format_curves(table: dict) -> str:
  """Markdown: step | mean ± s.e. (n) for each metric."""
  steps = sorted({step for by_step in table.values() for step in by_step})
  lines = ['| step | ' + ' | '.join(table) + ' |', '|---' * (len(table) + 1) + '|']
  for step in steps:
    cells = []
    for by_step in table.values():
      mean, se, n = by_step.get(step, (None, None, 0))
      cells.append(f'{_fmt(mean)} ± {_fmt(se)} ({n})' if n else '–')
    lines.append(f'| {step} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def _fmt(v: float | None) -> str:
  return '–' if v is None else f'{v:.4g}'


def format_table(summary: dict, failures: dict | None = None, title: str = '') -> str:
  """Markdown: metric | mean ± s.e. | n | per-seed values; then the failed seeds, if any."""
  seeds = summary['seeds']
  lines = [f'## {title}', ''] if title else []
  lines += [f'{len(seeds)} finished seeds ({", ".join(map(str, seeds)) or "none"}); '
            'mean ± standard error (sample std / sqrt(n)).', '',
            f'| metric | mean ± s.e. | n | per-seed values (seeds {", ".join(map(str, seeds))}) |',
            '|---|---|---|---|']
  non_finite = False
  for name, s in summary['metrics'].items():
    n = str(s['n'])
    if s['non_finite']:
      n += f' (+{s["non_finite"]} non-finite)'
      non_finite = True
    if s['missing']:
      n += f' ({s["missing"]} missing)'
    values = ', '.join(_fmt(v) for v in s['values'])
    lines.append(f'| {name} | {_fmt(s["mean"])} ± {_fmt(s["se"])} | {n} | {values} |')
  if non_finite:
    lines += ['', 'Non-finite values (nan/inf) are left out of the mean and s.e.; n counts '
              'the finite ones.']
  if failures:
    lines += ['', 'Unfinished seeds (rerun the same command: finished seeds are skipped, the '
              'rest resume from their checkpoints):', '',
              '| seed | status | exit code | last log line |', '|---|---|---|---|']
    for k, f in sorted(failures.items(), key=lambda kv: int(kv[0])):
      last = f.get('last_line', '').replace('|', '\\|')
      lines.append(f'| {k} | {f["status"]} | {f.get("exit_code")} | {last} |')
  return '\n'.join(lines) + '\n'


# ---------------------------------------------------------------------------------------------
# Running the seeds


def run_seeds(config_spec: str, overrides: Sequence[str], workdir: str, seeds: Sequence[int],
              num_steps: int, parallel: int = 1, timeout: float = 0.0) -> dict[int, dict]:
  """Runs the unfinished seeds as research.main subprocesses (`research.launch`); returns
  seed -> {'status': done | skipped | failed | timeout | preempted | not run, 'exit_code',
  'last_line', 'wall_s'}."""
  results, jobs = {}, []
  for k in seeds:
    d = seed_dir(workdir, k)
    if finished(d, num_steps):
      results[k] = {'status': 'skipped'}
      print(f'seed {k}: finished earlier, skipped', flush=True)
    else:
      jobs.append(launch.Job(k, d, (f'--config={config_spec}', f'--config.seed={k}',
                                    *overrides), num_steps))
  results |= launch.run(jobs, parallel, timeout, label='seed')
  return {k: results[k] for k in seeds}


# ---------------------------------------------------------------------------------------------
# Command line


def config_argv(argv: Sequence[str], config) -> tuple[str, list[str]]:
  """(the --config spec, the --config.* overrides) exactly as given; a separate value token
  stays with its override (all but boolean fields take one)."""
  spec, overrides, i = None, [], 0
  while i < len(argv):
    a = argv[i]
    name = a.lstrip('-').split('=', 1)[0]
    if a == '--':
      break
    if a.startswith('-') and name == 'config':
      if '=' in a:
        spec = a.split('=', 1)[1]
      else:
        spec, i = argv[i + 1], i + 1
    elif a.startswith('-') and name.startswith(('config.', 'noconfig.')):
      overrides.append(a)
      if '=' not in a and name.startswith('config.'):
        field = config
        for part in name.split('.')[1:]:
          field = field[part]
        if not isinstance(field, bool) and i + 1 < len(argv):
          overrides.append(argv[i + 1])
          i += 1
    i += 1
  return spec, overrides


def main(argv):
  del argv  # checked by parse_flags
  config = FLAGS.config
  spec, overrides = config_argv(_raw_argv[1:], config)
  try:
    seeds = [int(s) for s in FLAGS.seeds]
  except ValueError:
    _exit(f'flag error: --seeds={",".join(FLAGS.seeds)}: must be comma-separated integers')
  if not seeds or len(set(seeds)) != len(seeds):
    _exit(f'flag error: --seeds={",".join(FLAGS.seeds)}: must be distinct integers')
  if FLAGS.parallel < 1:
    _exit(f'flag error: --parallel={FLAGS.parallel}: must be >= 1')
  if any(not m.startswith(('eval.', 'train.')) for m in FLAGS.curves):
    _exit(f'flag error: --curves={",".join(FLAGS.curves)}: name logged metrics as '
          'eval.<name> or train.<name>, e.g. eval.modes_captured')
  if any(o.lstrip('-').split('=')[0] == 'config.seed' for o in overrides):
    _exit('config error: --config.seed: set the seeds with --seeds')
  # The same checks research.main runs, once, before any seed starts (on CPU: this process only
  # reads the config; the accelerator is left to the seeds).
  import jax
  jax.config.update('jax_platforms', 'cpu')
  try:
    configs.validate(config, num_devices=1)
  except configs.ConfigError as e:
    _exit(f'config error: {e}')

  workdir = FLAGS.workdir
  os.makedirs(workdir, exist_ok=True)
  results = run_seeds(spec, overrides, workdir, seeds, config.train.num_steps, FLAGS.parallel,
                      FLAGS.timeout)
  ok = [k for k, r in results.items() if r['status'] in ('done', 'skipped')]
  failures = {str(k): r for k, r in results.items() if k not in ok}
  summary = summarize(workdir, FLAGS.metrics or None, ok)
  summary |= {'config': spec, 'overrides': overrides, 'requested_seeds': seeds,
              'runs': {str(k): r for k, r in results.items()}, 'failed': failures}
  table = format_table(summary, failures, title=' '.join([spec, *overrides]))
  with open(os.path.join(workdir, 'seeds.md'), 'w') as f:
    f.write(table)
  if FLAGS.curves:
    curve = curves(workdir, FLAGS.curves, seeds)
    summary['curves'] = {m: {str(step): v for step, v in c.items()} for m, c in curve.items()}
    with open(os.path.join(workdir, 'curves.md'), 'w') as f:
      f.write(format_curves(curve))
  with open(os.path.join(workdir, 'seeds.json'), 'w') as f:
    json.dump(summary, f, indent=2)
  print(table, end='')
  sys.exit(1 if failures else 0)


def _exit(message: str, code: int = 2):
  print(message, file=sys.stderr)
  sys.exit(code)


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing with research.main's one-line errors (exit code 2); keeps the raw argv
  so the `--config.*` overrides reach every seed verbatim."""
  _raw_argv[:] = argv
  return configs.parse_command_flags(argv)

if __name__ == '__main__':
  _define_flags()
  app.run(main, flags_parser=parse_flags)
