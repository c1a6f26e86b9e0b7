"""research.rlhf.study: the overoptimization study's report from curves, and (slow) the whole
study at --scale=tiny, run twice: the second run redoes nothing."""
import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from research.rlhf import best_of_n, overoptimization, study
from tests import helpers


def _bon_rows(alpha, beta, seed_shift):
  return [{'n': n, 'kl': best_of_n.kl(n), 'rm_score': float(n),
           'true_reward': 1.0 + seed_shift + float(overoptimization.predict(
               [best_of_n.kl(n)], {'alpha': alpha, 'beta': beta}, 'bon')[0])}
          for n in (1, 2, 4, 8, 16, 32, 64)]


def test_report_recovers_planted_curves(tmp_path):
  rl = [[{'step': k, 'kl': 0.5 * k, 'base': 2.0 + shift, 'rm_score': 0.1 * k,
          'true_reward': 2.0 + shift + float(overoptimization.predict(
              [0.5 * k], {'alpha': 0.8, 'beta': 0.3}, 'rl')[0])} for k in range(1, 12)]
        for shift in (0.0, 0.5)]
  curves = {'bon_rm1000': [_bon_rows(0.6, 0.1, 0.0), _bon_rows(0.6, 0.1, 0.2)], 'ppo_rm1000': rl}
  rep = study.report(curves, str(tmp_path))
  assert rep['bon_rm1000']['fit']['alpha'] == pytest.approx(0.6, abs=1e-6)
  assert rep['bon_rm1000']['fit']['beta'] == pytest.approx(0.1, abs=1e-6)
  assert rep['ppo_rm1000']['fit']['alpha'] == pytest.approx(0.8, abs=1e-6)
  assert rep['ppo_rm1000']['fit']['beta'] == pytest.approx(0.3, abs=1e-6)
  pts = rep['bon_rm1000']['points']
  assert pts[0]['x'] == 1 and pts[0]['gain'] == 0 and all(p['n_seeds'] == 2 for p in pts)
  kl, gain = rep['ppo_rm1000']['peak']
  assert kl == pytest.approx(math.exp(2 * (0.8 / 0.3 - 1)))      # d* = exp(alpha/beta - 1)
  for name in ('study.json', 'study.md', 'study.png'):
    assert os.path.getsize(tmp_path / name) > 100
  json.loads((tmp_path / 'study.json').read_text())                # strict JSON (no Infinity)
  assert '| ppo_rm1000 | rl | 11 | 2 |' in (tmp_path / 'study.md').read_text()


@pytest.mark.slow
def test_tiny_study_runs_and_resumes(tmp_path):
  cmd = [sys.executable, '-m', 'research.rlhf.study', f'--workdir={tmp_path / "w"}',
         '--scale=tiny', '--seeds=0', '--sizes=4,8']
  first = subprocess.run(cmd + [f'--results={tmp_path / "r1"}'], cwd=helpers.ROOT,
                         capture_output=True, text=True, timeout=1800)
  assert first.returncode == 0, first.stderr[-3000:]
  rep = json.loads((tmp_path / 'r1' / 'study.json').read_text())
  assert set(rep) == {'bon_rm4', 'bon_rm8', 'bon_rm4_small', 'bon_rm8_small', 'ppo_rm4',
                      'ppo_rm8', 'ppo_gold', 'dpo'}
  for arm, r in rep.items():
    assert r['points'], arm
  np.testing.assert_allclose([p['kl'] for p in rep['bon_rm8']['points']],
                             [best_of_n.kl(n) for n in (1, 2, 4)])
  start = time.monotonic()
  second = subprocess.run(cmd + [f'--results={tmp_path / "r2"}'], cwd=helpers.ROOT,
                          capture_output=True, text=True, timeout=600)
  assert second.returncode == 0, second.stderr[-3000:]
  assert time.monotonic() - start < 120 and 'started' not in second.stdout   # nothing redone
  same = (tmp_path / 'r2' / 'study.json').read_text() == (tmp_path / 'r1' / 'study.json').read_text()
  assert same
