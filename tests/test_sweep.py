"""research/sweep.py: grid, random and Optuna sweeps; failures recorded and not fatal; a killed
sweep resumes without redoing finished trials; results table and plot; real trials as
subprocesses of research.main."""
import json
import os

import pytest

from research import sweep as sweep_lib
from tests.helpers import ROOT


def _sweep(method='random', num_trials=6, **kw):
  s = {'config': os.path.join(ROOT, 'experiments/vae_digits/config.py'),
       'metric': 'eval.neg_elbo', 'mode': 'min', 'method': method, 'num_trials': num_trials,
       'space': {'optimizer.lr': sweep_lib.loguniform(1e-4, 1e-1),
                 'objective.beta': sweep_lib.uniform(0.5, 2.0)},
       'overrides': {}, 'seed': 0}
  s.update(kw)
  return s


class FakeRunner:
  """A trial's metric is a known function of its params; lr > 0.05 'diverges' (fails)."""

  def __init__(self):
    self.calls = []

  def __call__(self, sweep, workdir, trials, parallel):
    return [self.one(i, params) for i, params in trials]

  def one(self, i, params):
    self.calls.append(i)
    if params['optimizer.lr'] > 0.05:
      return {'trial': i, 'params': params, 'workdir': '', 'status': 'failed', 'metric': None,
              'error': 'NonFiniteError: diverged'}
    metric = (params['optimizer.lr'] - 1e-3) ** 2 * 1e4 + (params['objective.beta'] - 1) ** 2
    return {'trial': i, 'params': params, 'workdir': '', 'status': 'ok', 'metric': metric,
            'error': ''}


def test_random_sweep_records_failures_and_resumes(tmp_path):
  s = _sweep(num_trials=8)
  runner = FakeRunner()
  records = sweep_lib.run_sweep(s, str(tmp_path), parallel=2, runner=runner)
  assert sorted(r['trial'] for r in records) == list(range(8))
  # Parameters are drawn per (seed, trial): the same on every call.
  for r in records:
    assert r['params'] == sweep_lib.random_params(s['space'], 0, r['trial'])
  failed = [r['trial'] for r in records if r['status'] == 'failed']
  assert all(records[i]['params']['optimizer.lr'] > 0.05 for i in failed)
  # Resume: finished trials are not rerun; failed ones are.
  runner2 = FakeRunner()
  sweep_lib.run_sweep(s, str(tmp_path), parallel=2, runner=runner2)
  assert sorted(runner2.calls) == sorted(failed)
  table = open(os.path.join(tmp_path, 'results.md')).read()
  ok = sorted((r for r in records if r['status'] == 'ok'), key=lambda r: r['metric'])
  assert table.splitlines()[2].startswith(f"| {ok[0]['trial']} |")   # best first
  assert os.path.getsize(os.path.join(tmp_path, 'results.png')) > 1000
  if failed:
    assert 'failed: NonFiniteError' in table


def test_grid_is_the_product_of_choices(tmp_path):
  s = _sweep('grid', space={'optimizer.lr': sweep_lib.choice([1e-3, 1e-2]),
                            'objective.beta': sweep_lib.choice([0.5, 1.0, 2.0])})
  records = sweep_lib.run_sweep(s, str(tmp_path), runner=FakeRunner())
  assert {(r['params']['optimizer.lr'], r['params']['objective.beta']) for r in records} == {
      (a, b) for a in (1e-3, 1e-2) for b in (0.5, 1.0, 2.0)}
  with pytest.raises(ValueError, match='grid search needs choice'):
    sweep_lib.grid(_sweep()['space'])


def test_optuna_sweep_counts_trials_and_resumes(tmp_path):
  pytest.importorskip('optuna')
  s = _sweep('optuna', num_trials=6)
  runner = FakeRunner()
  sweep_lib.run_sweep(s, str(tmp_path), parallel=2, runner=runner)
  assert len(runner.calls) == 6
  # A larger budget on the same study runs only the new trials, numbered after the old ones.
  s['num_trials'] = 9
  runner2 = FakeRunner()
  records = sweep_lib.run_sweep(s, str(tmp_path), parallel=2, runner=runner2)
  ok_first = sum(1 for r in records if r['trial'] in runner.calls and r['status'] == 'ok')
  # Complete trials count toward the budget; failed ones are replaced by new trials.
  assert len(runner2.calls) == 9 - ok_first
  assert min(runner2.calls) >= 6
  assert len(records) == len(set(runner.calls) | set(runner2.calls))


def test_load_sweep_file_and_errors(tmp_path):
  s = sweep_lib.load_sweep(os.path.join(ROOT, 'experiments/vae_digits/sweep.py'))
  assert os.path.isfile(s['config']) and s['num_trials'] == 12
  bad = tmp_path / 'bad.py'
  bad.write_text("def get_sweep():\n  return {'config': 'experiments/vae_digits/config.py', "
                 "'metric': 'neg_elbo', 'space': {}}\n")
  with pytest.raises(ValueError, match="metric must be 'eval.<name>'"):
    sweep_lib.load_sweep(str(bad))


def test_real_trials_run_as_processes(tmp_path):
  """Two real (tiny) vae_digits trials and one whose config is invalid: the invalid one is
  recorded as failed with the one-line config error; the others report eval.neg_elbo."""
  s = _sweep('grid', space={'objective.beta': sweep_lib.choice([1.0, -1.0, 0.5])},
             overrides={'train.num_steps': 10, 'train.eval_every': 10, 'train.log_every': 5,
                        'train.sample_every': 10, 'train.checkpoint_every': 10,
                        'eval.iwae_k': 1, 'eval.num_samples': 0})
  records = sweep_lib.run_sweep(s, str(tmp_path), parallel=2)
  by_beta = {r['params']['objective.beta']: r for r in records}
  assert by_beta[-1.0]['status'] == 'failed'
  assert 'objective.beta' in by_beta[-1.0]['error']
  for beta in (1.0, 0.5):
    r = by_beta[beta]
    assert r['status'] == 'ok', r
    final = json.load(open(os.path.join(r['workdir'], 'final_metrics.json')))
    assert r['metric'] == final['eval']['neg_elbo'] and final['step'] == 10
