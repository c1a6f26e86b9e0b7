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
in its own process, `--parallel` at a time. Each finished trial appends one line to
WORKDIR/trials.jsonl (params, metric, status 'ok' or 'failed' with the error's last line); a
failure is recorded and the sweep goes on. Resuming: rerunning the same command skips the
trials recorded as 'ok', reruns the failed ones and lets interrupted ones resume from their
checkpoints (the harness resumes any run whose workdir has one). Random trials are drawn from
the seed, so trial i has the same parameters every time. Optuna's study lives in
WORKDIR/optuna.db (SQLite), so TPE resumes with every finished trial's result.

At the end: WORKDIR/results.md (a table of every trial, best first) and WORKDIR/results.png
(the metric against each swept field).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import importlib.util
import itertools
import json
import math
import os
import subprocess
import sys
from typing import Any, Callable

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ('grid', 'random', 'optuna')


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
  return f'--config.{name}={value!r}' if isinstance(value, str) else f'--config.{name}={value}'


def run_trial(sweep: dict, workdir: str, i: int, params: dict, python: str = sys.executable,
              timeout_s: float | None = None) -> dict:
  """Runs one trial as a subprocess; returns its record (never raises on a failed run)."""
  trial_dir = os.path.join(workdir, f'trial_{i:03d}')
  cmd = [python, '-m', 'research.main', f'--config={sweep["config"]}', f'--workdir={trial_dir}']
  cmd += [_flag(k, v) for k, v in {**sweep['overrides'], **params}.items()]
  record = {'trial': i, 'params': params, 'workdir': trial_dir}
  try:
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
    ok = proc.returncode == 0
    error = '' if ok else (proc.stderr.strip().splitlines() or ['exit %d' % proc.returncode])[-1]
  except subprocess.TimeoutExpired:
    ok, error = False, f'timed out after {timeout_s} s'
  metric = None
  if ok:
    try:
      with open(os.path.join(trial_dir, 'final_metrics.json')) as f:
        final = json.load(f)
      split, name = sweep['metric'].split('.', 1)
      metric = float(final[split][name])
      if not math.isfinite(metric):
        ok, error = False, f'{sweep["metric"]} = {metric}'
    except (OSError, KeyError, TypeError, ValueError) as e:
      ok, error = False, f'no {sweep["metric"]} in final_metrics.json ({e})'
  return record | {'status': 'ok' if ok else 'failed', 'metric': metric, 'error': error}


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
              runner: Callable[..., dict] | None = None) -> list[dict]:
  """Runs (or resumes) the sweep; returns every trial's record, writes results.md/.png."""
  runner = runner or run_trial
  os.makedirs(workdir, exist_ok=True)
  done = {i: r for i, r in _records(workdir).items() if r['status'] == 'ok'}
  space, method = sweep['space'], sweep['method']
  if method == 'optuna':
    records = _run_optuna(sweep, workdir, parallel, runner, done)
  else:
    trials = (grid(space) if method == 'grid' else
              [random_params(space, sweep['seed'], i) for i in range(sweep['num_trials'])])
    todo = [(i, p) for i, p in enumerate(trials) if i not in done]
    with concurrent.futures.ThreadPoolExecutor(max(1, parallel)) as pool:
      futures = [pool.submit(runner, sweep, workdir, i, p) for i, p in todo]
      for fut in concurrent.futures.as_completed(futures):
        _append(workdir, fut.result())
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
  # Trials left RUNNING by a killed sweep are failed; their numbers are not reused.
  for t in study.get_trials(states=(optuna.trial.TrialState.RUNNING,)):
    study.tell(t.number, state=optuna.trial.TrialState.FAIL)
  finished = sum(1 for t in study.get_trials()
                 if t.state == optuna.trial.TrialState.COMPLETE)
  left = sweep['num_trials'] - finished
  with concurrent.futures.ThreadPoolExecutor(max(1, parallel)) as pool:
    while left > 0:
      batch = [study.ask() for _ in range(min(parallel, left))]
      params = [{n: d.suggest(t, n) for n, d in sweep['space'].items()} for t in batch]
      results = list(pool.map(lambda tp: runner(sweep, workdir, tp[0].number, tp[1]),
                              zip(batch, params)))
      for t, r in zip(batch, results):
        _append(workdir, r)
        if r['status'] == 'ok':
          study.tell(t.number, r['metric'])
          left -= 1
        else:
          study.tell(t.number, state=optuna.trial.TrialState.FAIL)
          left -= 1   # a failure counts as a trial: a broken space must not loop forever
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
    status = r['status'] if r['status'] == 'ok' else f"failed: {r['error'][:80]}"
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
  failed = sum(r['status'] != 'ok' for r in records)
  print(f'{len(records) - failed} trials ok, {failed} failed; {f.workdir}/results.md, results.png')


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
