"""research.seeds: one config over several seeds, mean ± standard error, resume, failures."""
import json
import math
import os
import subprocess
import sys

import numpy as np

from research import seeds
from tests import helpers

SMALL = ['--config.train.num_steps=10', '--config.train.batch_size=32',
         '--config.train.log_every=5', '--config.train.eval_every=10',
         '--config.train.sample_every=10', '--config.train.checkpoint_every=10',
         '--config.eval.iwae_k=4', '--config.eval.num_samples=0',
         '--config.data.num_eval_examples=100']


def _seeds_cli(args):
  return subprocess.run([sys.executable, '-m', 'research.seeds',
                         '--config=experiments/vae_digits/config.py', *args],
                        cwd=helpers.ROOT, capture_output=True, text=True, timeout=600)


def test_mean_se_matches_numpy():
  x = np.random.default_rng(0).normal(3.0, 2.0, size=7)
  mean, se, n = seeds.mean_se(x)
  assert n == 7 and np.isclose(mean, x.mean())
  assert np.isclose(se, x.std(ddof=1) / np.sqrt(7))
  mean, se, n = seeds.mean_se([1.0, 2.0, math.inf, math.nan])  # non-finite left out
  assert (mean, n) == (1.5, 2) and np.isclose(se, np.std([1, 2], ddof=1) / np.sqrt(2))
  mean, se, n = seeds.mean_se([4.0])
  assert mean == 4.0 and math.isnan(se) and n == 1
  assert seeds.mean_se([])[2] == 0


def _fake_run(path, step, eval_metrics, preempted=False):
  os.makedirs(path)
  json.dump({'train': {'num_steps': 10}}, open(os.path.join(path, 'config.json'), 'w'))
  json.dump({'step': step, 'preempted': preempted, 'eval': eval_metrics, 'train': {'loss': 1.0}},
            open(os.path.join(path, 'final_metrics.json'), 'w'))


def test_summarize_counts_non_finite_and_skips_unfinished(tmp_path):
  _fake_run(tmp_path / 'seed_0', 10, {'reverse_kl': 0.5, 'modes': 8, 'num_examples': 100})
  _fake_run(tmp_path / 'seed_1', 10, {'reverse_kl': math.inf, 'modes': 7, 'num_examples': 100})
  _fake_run(tmp_path / 'seed_2', 10, {'reverse_kl': 0.7, 'modes': 6}, preempted=True)
  _fake_run(tmp_path / 'seed_3', 4, {'reverse_kl': 0.9, 'modes': 5})  # stopped early
  s = seeds.summarize(str(tmp_path))
  assert s['seeds'] == [0, 1] and s['unfinished'] == [2, 3]
  assert list(s['metrics']) == ['eval.reverse_kl', 'eval.modes']  # counts are not results
  kl = s['metrics']['eval.reverse_kl']
  assert (kl['mean'], kl['n'], kl['non_finite']) == (0.5, 1, 1) and math.isnan(kl['se'])
  assert s['metrics']['eval.modes']['mean'] == 7.5
  table = seeds.format_table(s)
  assert '| eval.reverse_kl | 0.5 ± nan | 1 (+1 non-finite) | 0.5, inf |' in table
  assert 'left out of the mean' in table
  only = seeds.summarize(str(tmp_path), ['eval.modes', 'eval.fid'], seeds=[1])
  assert only['metrics']['eval.fid']['missing'] == 1 and only['metrics']['eval.modes']['n'] == 1


def _log_evals(path, rows):
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, 'metrics.jsonl'), 'w') as f:
    for step, value in rows:
      f.write(json.dumps({'step': step, 'split': 'train', 'modes': -1.0}) + '\n')
      f.write(json.dumps({'step': step, 'split': 'eval', 'modes': value}) + '\n')


def test_curves_average_each_eval_step_over_the_seeds_that_logged_it(tmp_path):
  _log_evals(tmp_path / 'seed_0', [(5, 10.0), (10, 20.0)])
  _log_evals(tmp_path / 'seed_1', [(5, 14.0), (10, 22.0), (10, 24.0)])  # resumed: last row wins
  _log_evals(tmp_path / 'seed_2', [(5, 12.0)])                         # unfinished
  curve = seeds.curves(str(tmp_path), ['eval.modes'], [0, 1, 2, 3])    # seed 3: no log
  (m5, se5, n5), (m10, se10, n10) = curve['eval.modes'][5], curve['eval.modes'][10]
  assert (m5, n5, m10, n10) == (12.0, 3, 22.0, 2)
  assert np.isclose(se5, np.std([10, 14, 12], ddof=1) / np.sqrt(3))
  assert np.isclose(se10, np.std([20, 24], ddof=1) / np.sqrt(2))
  table = seeds.format_curves(curve)
  assert '| 5 | 12 ± 1.155 (3) |' in table and '| 10 | 22 ± 2 (2) |' in table
  train = seeds.curves(str(tmp_path), ['train.modes'], [0])['train.modes']
  assert list(train) == [5, 10] and train[5][:1] == (-1.0,) and train[5][2] == 1


def test_config_argv_keeps_overrides_verbatim():
  config = helpers.load_config('vae_digits')
  argv = ['--config', 'experiments/vae_digits/config.py', '--workdir=/tmp/x',
          '--config.optimizer.lr', '10', '--config.train.async_checkpoints', '--seeds=0,1',
          '--config.model.hidden=32,32']
  spec, overrides = seeds.config_argv(argv, config)
  assert spec == 'experiments/vae_digits/config.py'
  assert overrides == ['--config.optimizer.lr', '10', '--config.train.async_checkpoints',
                       '--config.model.hidden=32,32']


def test_bad_flags_are_one_line_exit_2(tmp_path):
  proc = _seeds_cli([f'--workdir={tmp_path}', '--config.train.nope=1'])
  assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
      "config error: --config.train.nope: unknown field ('nope')"]
  proc = _seeds_cli([f'--workdir={tmp_path}', '--config.seed=3'])
  assert proc.returncode == 2 and '--seeds' in proc.stderr
  proc = _seeds_cli([f'--workdir={tmp_path}', '--curves=modes_captured'])
  assert proc.returncode == 2 and 'eval.modes_captured' in proc.stderr
  assert not os.listdir(tmp_path)


def test_two_seeds_in_parallel_then_skip_then_a_failure(tmp_path):
  wd = str(tmp_path)
  proc = _seeds_cli([f'--workdir={wd}', '--seeds=0,1', '--parallel=2', *SMALL])
  assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
  out = json.load(open(tmp_path / 'seeds.json'))
  elbo = out['metrics']['eval.neg_elbo']
  assert out['seeds'] == [0, 1] and elbo['n'] == 2 and elbo['values'][0] != elbo['values'][1]
  assert math.isfinite(elbo['se']) and '| eval.neg_elbo |' in open(tmp_path / 'seeds.md').read()
  for k in (0, 1):
    assert '--config.seed=%d' % k in open(tmp_path / f'seed_{k}' / 'run.log').readline()
  watched = [tmp_path / f'seed_{k}' / f for k in (0, 1) for f in ('run.log', 'final_metrics.json')]
  before = [os.stat(p).st_mtime_ns for p in watched]

  # A rerun starts no subprocess: both seeds are finished.
  proc = _seeds_cli([f'--workdir={wd}', '--seeds=0,1', '--curves=eval.neg_elbo', *SMALL])
  assert proc.returncode == 0 and proc.stdout.count('skipped') == 2
  assert [os.stat(p).st_mtime_ns for p in watched] == before
  # ... and a rerun with --curves adds the learning curves of the finished seeds.
  curve = json.load(open(tmp_path / 'seeds.json'))['curves']['eval.neg_elbo']
  assert curve['10'][2] == 2 and np.isclose(curve['10'][0], elbo['mean'])
  assert '| 10 |' in open(tmp_path / 'curves.md').read()

  # Seed 2's workdir is unusable (config.json is a directory): it fails for real; the others
  # are skipped, the failure is tabulated and the exit code is 1.
  os.makedirs(tmp_path / 'seed_2' / 'config.json')
  proc = _seeds_cli([f'--workdir={wd}', '--seeds=0,1,2', *SMALL])
  assert proc.returncode == 1, proc.stdout + proc.stderr[-3000:]
  out = json.load(open(tmp_path / 'seeds.json'))
  assert out['metrics']['eval.neg_elbo']['n'] == 2 and out['seeds'] == [0, 1]
  failed = out['failed']['2']
  assert failed['status'] == 'failed' and failed['exit_code'] == 1
  assert failed['last_line'].startswith('IsADirectoryError')
  assert '| 2 | failed | 1 | IsADirectoryError' in open(tmp_path / 'seeds.md').read()
