"""Hyperparameter sweeps: grid, random and Bayesian (Optuna's TPE sampler) search over config
fields, each trial a normal run in its own workdir.

A sweep is a small Python file next to an experiment's config (e.g.
experiments/vae_digits/sweep.py) whose `get_sweep()` returns a dict:

  config:     the experiment's config.py (relative to the repository root or to the sweep file)
  metric:     what to optimise, 'eval.<name>' or 'train.<name>' of the run's final metrics
  mode:       'min' | 'max'
  method:     'grid' | 'random' | 'optuna'
  num_trials: trials for random / optuna (grid: the product of the choices)
  space:      {config field: choice([...]) | uniform(lo, hi) | loguniform(lo, hi) | intuniform(lo, hi)}
  overrides:  {config field: value} applied to every trial (e.g. a shorter budget)
  seed:       draws of the random / TPE samplers

  python -m research.sweep --sweep=experiments/vae_digits/sweep.py --workdir=workdirs/sweeps/vae \
      --parallel=2 [--method=optuna --num_trials=12]

Trial i runs `python -m research.main --config=... --workdir=WORKDIR/trial_i --config.F=V ...`
in its own process (`research/launch.py`, the launcher `research.seeds` uses too; its output in
WORKDIR/trial_i/run.log), `--parallel` at a time. Each trial appends one line to
WORKDIR/trials.jsonl (params, metric, status with the error's last line): 'ok' only when the
run reached its last step; 'failed' (recorded, the sweep goes on); 'preempted', 'timeout' or
'not run' when it was stopped first. SIGTERM or Ctrl-C to the sweep stops its running trials
(each checkpoints) and then the sweep. Resuming: rerunning the same command skips the trials
recorded as 'ok', reruns the failed ones and resumes the stopped ones from their checkpoints. Random trials are drawn from
the seed, so trial i has the same parameters every time. Optuna's study lives in
WORKDIR/optuna.db (SQLite), so TPE resumes with every finished trial's result.

At the end: WORKDIR/results.md (a table of every trial, best first) and WORKDIR/results.png
(the metric against each swept field).
"""
from __future__ import annotations

import collections
import dataclasses
import importlib.util
import itertools
import json
import math
import os
import sys
from typing import Callable

import numpy as np

from research import launch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ('grid', 'random', 'optuna')
# Trial statuses of runs stopped before their last step: a rerun of the sweep resumes them.
UNFINISHED = ('preempted', 'timeout', 'not run')


@dataclasses.dataclass(frozen=True)
class Dist:
  kind: str                     # choice | uniform | loguniform | intuniform
  args: tuple

  def sample(self, rng: np.random.Generator):
    if self.kind == 'choice':
      return self.args[int(rng.integers(len(self.args)))]
    lo, hi = self.args
    if self.kind == 'uniform':
      return float(rng.uniform(lo, hi))
    if self.kind == 'loguniform':
      return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    return int(rng.integers(lo, hi + 1))

  def suggest(self, trial, name: str):
    if self.kind == 'choice':
      return trial.suggest_categorical(name, list(self.args))
    lo, hi = self.args
    if self.kind == 'intuniform':
      return trial.suggest_int(name, lo, hi)
    return trial.suggest_float(name, lo, hi, log=self.kind == 'loguniform')


def choice(values) -> Dist:
  return Dist('choice', tuple(values))


def uniform(lo: float, hi: float) -> Dist:
  return Dist('uniform', (lo, hi))


def loguniform(lo: float, hi: float) -> Dist:
  if not 0 < lo < hi:
    raise ValueError(f'loguniform needs 0 < lo < hi, got ({lo}, {hi})')
  return Dist('loguniform', (lo, hi))


def intuniform(lo: int, hi: int) -> Dist:
  return Dist('intuniform', (int(lo), int(hi)))


# ---------------------------------------------------------------------------------------------


def load_sweep(path: str) -> dict:
  spec = importlib.util.spec_from_file_location('genlab_sweep', path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  sweep = dict(mod.get_sweep())
  sweep.setdefault('mode', 'min')
  sweep.setdefault('method', 'random')
  sweep.setdefault('overrides', {})
  sweep.setdefault('seed', 0)
  for field in ('config', 'metric', 'space'):
    if field not in sweep:
      raise ValueError(f'{path}: get_sweep() must set {field!r}')
  config = sweep['config']
  for base in (ROOT, os.path.dirname(os.path.abspath(path))):
    if os.path.isfile(os.path.join(base, config)):
      sweep['config'] = os.path.join(base, config)
      break
  else:
    raise ValueError(f'{path}: config {config!r} not found')
  if sweep['mode'] not in ('min', 'max'):
    raise ValueError(f"{path}: mode must be 'min' or 'max', got {sweep['mode']!r}")
  if sweep['method'] not in METHODS:
    raise ValueError(f'{path}: method must be one of {METHODS}, got {sweep["method"]!r}')
  if not sweep['metric'].startswith(('eval.', 'train.')):
    raise ValueError(f"{path}: metric must be 'eval.<name>' or 'train.<name>'")
  return sweep


def grid(space: dict[str, Dist]) -> list[dict]:
  for name, d in space.items():
    if d.kind != 'choice':
      raise ValueError(f'grid search needs choice([...]) for every field; {name} is {d.kind}')
  names = list(space)
  return [dict(zip(names, values)) for values in itertools.product(*(space[n].args
                                                                      for n in names))]


def random_params(space: dict[str, Dist], seed: int, i: int) -> dict:
  """Trial i's parameters: a generator keyed by (seed, i), so resuming redraws the same."""
  rng = np.random.default_rng([seed, i])
  return {name: d.sample(rng) for name, d in space.items()}


def _flag(name: str, value) -> str:
  """One override argument; a string goes as it is (no shell: quotes would become part of it)."""
  return f'--config.{name}={value}'


def _flags(sweep: dict, params: dict) -> tuple[str, ...]:
  return (f'--config={sweep["config"]}',
          *(_flag(k, v) for k, v in {**sweep['overrides'], **params}.items()))


def run_trials(sweep: dict, workdir: str, trials: list[tuple[int, dict]], parallel: int = 1,
               timeout_s: float = 0.0) -> list[dict]:
  """Runs trials [(i, params)] as research.main subprocesses (`research.launch`), `parallel` at
  a time; returns their records (never raises on a failed run). A trial is 'ok' only when it
  reached its last step and reported a finite metric; a preempted one is 'preempted' (rerun:
  it resumes)."""
  jobs = [launch.Job(i, os.path.join(workdir, f'trial_{i:03d}'), _flags(sweep, p))
          for i, p in trials]
  results = launch.run(jobs, parallel, timeout_s, label='trial')
  return [_record(sweep, job, params, results[job.key])
          for job, (_, params) in zip(jobs, trials)]


def _record(sweep: dict, job: launch.Job, params: dict, result: dict) -> dict:
  record = {'trial': job.key, 'params': params, 'workdir': job.workdir}
  status, error, metric = result['status'], result.get('last_line', ''), None
  if status == 'done':
    final = launch.read_json(os.path.join(job.workdir, 'final_metrics.json')) or {}
    split, name = sweep['metric'].split('.', 1)
    value = (final.get(split) or {}).get(name)
    if value is None:
      status, error = 'failed', f'no finite {sweep["metric"]} in final_metrics.json'
    else:
      metric, status, error = float(value), 'ok', ''
  elif status not in ('preempted', 'timeout', 'not run'):
    status = 'failed'
  return record | {'status': status, 'metric': metric, 'error': error}


def _records(workdir: str) -> dict[int, dict]:
  """The latest record of each trial in trials.jsonl."""
  out = {}
  path = os.path.join(workdir, 'trials.jsonl')
  if os.path.isfile(path):
    with open(path) as f:
      for line in f:
        if line.strip():
          r = json.loads(line)
          out[r['trial']] = r
  return out


def _append(workdir: str, record: dict) -> None:
  with open(os.path.join(workdir, 'trials.jsonl'), 'a') as f:
    f.write(json.dumps(record) + '\n')


def run_sweep(sweep: dict, workdir: str, parallel: int = 1,
              runner: Callable[..., list[dict]] | None = None) -> list[dict]:
  """Runs (or resumes) the sweep; returns every trial's record, writes results.md/.png.
  `runner(sweep, workdir, [(i, params)], parallel)` -> records (default `run_trials`)."""
  runner = runner or run_trials
  os.makedirs(workdir, exist_ok=True)
  done = {i: r for i, r in _records(workdir).items() if r['status'] == 'ok'}
  space, method = sweep['space'], sweep['method']
  if method == 'optuna':
    records = _run_optuna(sweep, workdir, parallel, runner, done)
  else:
    trials = (grid(space) if method == 'grid' else
              [random_params(space, sweep['seed'], i) for i in range(sweep['num_trials'])])
    todo = [(i, p) for i, p in enumerate(trials) if i not in done]
    for record in runner(sweep, workdir, todo, parallel):
      _append(workdir, record)
    records = list(_records(workdir).values())
  records.sort(key=lambda r: r['trial'])
  write_results(sweep, workdir, records)
  return records


def _run_optuna(sweep, workdir, parallel, runner, done):
  import optuna  # pylint: disable=g-import-not-at-top  (optional extra: pip install -e .[sweep])
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  study = optuna.create_study(
      study_name='sweep', storage=f'sqlite:///{os.path.join(workdir, "optuna.db")}',
      load_if_exists=True, direction='minimize' if sweep['mode'] == 'min' else 'maximize',
      sampler=optuna.samplers.TPESampler(seed=sweep['seed']))
  # Trials left RUNNING whose run was stopped before its end (preempted, timed out, never
  # started) are run again (they resume from their checkpoints) and told then; those with no
  # record (a sweep killed outright) are failed, their numbers not reused.
  records = _records(workdir)
  resume = []
  for t in study.get_trials(states=(optuna.trial.TrialState.RUNNING,)):
    if records.get(t.number, {}).get('status') in UNFINISHED:
      resume.append((t.number, records[t.number]['params']))
    else:
      study.tell(t.number, state=optuna.trial.TrialState.FAIL)
  finished = sum(1 for t in study.get_trials()
                 if t.state == optuna.trial.TrialState.COMPLETE)
  left = sweep['num_trials'] - finished
  while left > 0 or resume:
    if resume:
      todo, resume = resume[:parallel], resume[parallel:]
    else:
      batch = [study.ask() for _ in range(min(parallel, left))]
      todo = [(t.number, {n: d.suggest(t, n) for n, d in sweep['space'].items()}) for t in batch]
    results = runner(sweep, workdir, todo, parallel)
    for (number, _), r in zip(todo, results):
      _append(workdir, r)
      if r['status'] in UNFINISHED:
        continue  # left RUNNING: a rerun of the sweep runs it on
      if r['status'] == 'ok':
        study.tell(number, r['metric'])
      else:
        study.tell(number, state=optuna.trial.TrialState.FAIL)
      left -= 1   # a failure counts as a trial: a broken space must not loop forever
    if any(r['status'] in UNFINISHED for r in results):
      break       # the sweep (or a trial) was stopped: a rerun goes on from here
  return list(_records(workdir).values())


def write_results(sweep: dict, workdir: str, records: list[dict]) -> str:
  ok = [r for r in records if r['status'] == 'ok']
  ok.sort(key=lambda r: r['metric'], reverse=sweep['mode'] == 'max')
  names = list(sweep['space'])
  lines = [f'| trial | {" | ".join(names)} | {sweep["metric"]} | status |',
           '|' + '---|' * (len(names) + 3)]
  fmt = lambda v: f'{v:.4g}' if isinstance(v, float) else str(v)
  for r in ok + [r for r in records if r['status'] != 'ok']:
    metric = fmt(r['metric']) if r['metric'] is not None else '-'
    status = r['status'] if r['status'] == 'ok' else f"{r['status']}: {r['error'][:80]}"
    lines.append(f"| {r['trial']} | {' | '.join(fmt(r['params'].get(n)) for n in names)} | "
                 f'{metric} | {status} |')
  text = '\n'.join(lines) + '\n'
  with open(os.path.join(workdir, 'results.md'), 'w') as f:
    f.write(text)
  if ok:
    _plot(sweep, ok, os.path.join(workdir, 'results.png'))
  return text


def _plot(sweep, ok, path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  names = list(sweep['space'])
  fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.2), squeeze=False)
  y = [r['metric'] for r in ok]
  for ax, name in zip(axes[0], names):
    x = [r['params'][name] for r in ok]
    ax.scatter([str(v) for v in x] if isinstance(x[0], str) else x, y)
    if sweep['space'][name].kind == 'loguniform':
      ax.set_xscale('log')
    ax.set_xlabel(name)
    ax.set_ylabel(sweep['metric'])
    ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main(argv):
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  sweep = load_sweep(f.sweep)
  if f.method:
    sweep['method'] = f.method
  if f.num_trials:
    sweep['num_trials'] = f.num_trials
  records = run_sweep(sweep, f.workdir, f.parallel)
  with open(os.path.join(f.workdir, 'results.md')) as fh:
    print(fh.read(), end='')
  counts = collections.Counter(r['status'] for r in records)
  stopped = sum(counts[s] for s in UNFINISHED)
  print(', '.join(f'{n} {s}' for s, n in sorted(counts.items())) + f' of {len(records)} trials; '
        f'{f.workdir}/results.md, results.png'
        + ('; rerun the same command to resume the stopped trials' if stopped else ''))
  sys.exit(1 if stopped else 0)   # failed trials are results; stopped ones are unfinished


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string('sweep', None, 'A sweep file with get_sweep().')
  flags.DEFINE_string('workdir', None, 'The sweep directory (one subdirectory per trial).')
  flags.DEFINE_integer('parallel', 1, 'Trials run at the same time (processes).')
  flags.DEFINE_enum('method', '', ('',) + METHODS, 'Override the sweep file\'s method.')
  flags.DEFINE_integer('num_trials', 0, 'Override the sweep file\'s num_trials.')
  flags.mark_flags_as_required(['sweep', 'workdir'])


if __name__ == '__main__':
  from absl import app  # pylint: disable=g-import-not-at-top
  _define_flags()
  app.run(main)
