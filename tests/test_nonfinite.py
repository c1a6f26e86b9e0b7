"""The non-finite guard: a diverging run stops with one line and never saves NaN/inf."""
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import checkpoint, trainer
from tests import helpers


def _diverging(**train):
  """Adam at 1e-3 for 7 steps, then lr 100 (piecewise x1e5): NaN within two steps, after good
  checkpoints at steps 3 and 6. Logs only at the end, so the save-time check must find it."""
  c = helpers.tiny_digits(num_steps=12, log_every=100, checkpoint_every=3, **train)
  c.optimizer.schedule.name = 'piecewise'
  c.optimizer.schedule.boundaries = '7'
  c.optimizer.schedule.scales = '1e5'
  c.eval.iwae_k = 4
  c.eval.num_samples = 0
  return c


def test_diverging_run_stops_before_saving_non_finite_state(tmp_path):
  with pytest.raises(trainer.NonFiniteError) as info:
    trainer.train(_diverging(), str(tmp_path))
  msg = str(info.value)
  assert '\n' not in msg
  m = re.match(r'non-finite training at step (\d+): (.*); stopped without saving \(last '
               r'checkpoint: step (\d+) in .*checkpoints\); lower optimizer.lr', msg)
  assert m, msg
  failed, last = int(m[1]), int(m[3])
  assert 8 <= failed <= 9 and 'loss=' in m[2]  # found at the save of step 9
  ckpt = checkpoint.Checkpointer(str(tmp_path / 'checkpoints'), read_only=True)
  steps = sorted(ckpt.manager.all_steps())
  assert steps and steps[-1] == last < failed  # the failing save step was never written
  for step in steps:
    tree = ckpt.restore_params(step)
    for leaf in jax.tree.leaves(tree):
      if np.issubdtype(np.asarray(leaf).dtype, np.inexact):
        assert np.all(np.isfinite(leaf)), step
  ckpt.close()


def test_without_the_guard_the_same_run_completes_with_nan(tmp_path):
  final = trainer.train(_diverging(stop_on_nonfinite=False), str(tmp_path))
  assert final['step'] == 12 and not math.isfinite(final['train']['loss'])


def test_state_check_names_the_non_finite_leaves():
  tree = {'a': jnp.ones(3), 'b': {'c': jnp.array([1.0, jnp.inf])}, 'n': jnp.arange(3)}
  assert trainer._nonfinite_state(tree) == ["['b']['c']"]
  assert trainer._nonfinite_state({'a': jnp.ones(2), 'n': jnp.arange(2)}) == []


def test_cli_reports_one_line_and_exits_1(tmp_path):
  proc = helpers.cli(['--config=experiments/vae_digits/config.py', f'--workdir={tmp_path}',
                      '--config.optimizer.lr=10', '--config.train.num_steps=10',
                      '--config.train.log_every=5', '--config.eval.iwae_k=4'], check=False)
  assert proc.returncode == 1, proc.stderr[-3000:]
  errors = [l for l in proc.stderr.splitlines() if l.startswith('error:')]
  assert len(errors) == 1 and errors[0].startswith('error: non-finite training at step ')
  assert 'no checkpoint yet' in errors[0] and 'Traceback' not in proc.stderr


def _warmup_to(lr: float, **train):
  """vae_digits warming up linearly to `lr` over 250 steps: at lr 3 the loss goes from ~500 to
  1e10 while staying finite, and overflows to inf some 40 steps later."""
  c = helpers.tiny_digits(num_steps=200, log_every=50, **train)
  c.optimizer.lr = lr
  c.optimizer.schedule.name = 'warmup_linear'
  c.optimizer.schedule.warmup_steps = 250
  c.optimizer.schedule.decay_steps = 500
  c.eval.iwae_k = 4
  return c


def test_a_finite_blow_up_stops_before_it_overflows(tmp_path):
  with pytest.raises(trainer.NonFiniteError) as info:
    trainer.train(_warmup_to(3.0), str(tmp_path / 'a'))
  m = re.match(r'diverged training at step (\d+): loss=(\S+) is (\S+)x the median (\S+) of the '
               r'earlier steps \(train.divergence_factor=1000; 0 turns the check off\); stopped '
               r'without saving', str(info.value))
  assert m, str(info.value)
  assert float(m[2]) > 1000 * float(m[4]) and math.isfinite(float(m[2]))
  # Without the check the same run trains on with a finite loss of ~1e10 until the eval at its
  # last step overflows to NaN (which, since that is divergence too, also stops it).
  with pytest.raises(trainer.NonFiniteError) as late:
    trainer.train(_warmup_to(3.0, divergence_factor=0.0), str(tmp_path / 'b'))
  n = re.match(r'non-finite (?:training|eval) at step (\d+)', str(late.value))
  assert n and int(n[1]) > int(m[1]), str(late.value)


def test_blow_up_rule():
  history = list(np.linspace(500, 30, 100))          # a healthy, falling loss: median 265
  assert trainer.blow_up(history, [25.0, 40.0, 2e5], 101, 1000) is None
  assert trainer.blow_up(history, [25.0, 3e5, 1e9], 101, 1000).startswith(
      'diverged training at step 102: loss=3e+05 is')
  assert trainer.blow_up(history[:19], [1e9], 20, 1000) is None   # too few steps yet
  assert trainer.blow_up(history, [1e9], 101, 0) is None          # off
  assert trainer.blow_up([-1.0] * 50, [1e9], 51, 1000) is None    # a loss that is not positive


def test_nan_eval_is_divergence(tmp_path, monkeypatch):
  assert trainer.nonfinite_eval({'loss': 1.0, 'fid': float('nan')}, 5) is None
  assert trainer.nonfinite_eval({'neg_elbo': float('nan'), 'iwae_nll': float('inf')}, 5) == (
      'non-finite eval at step 5: iwae_nll=inf, neg_elbo=nan')
  monkeypatch.setattr(trainer, 'evaluate', lambda *a, **k: {'neg_elbo': float('nan')})
  with pytest.raises(trainer.NonFiniteError, match=r'^non-finite eval at step 10: neg_elbo=nan;'):
    trainer.train(helpers.tiny_digits(num_steps=20, eval_every=10), str(tmp_path))


def test_final_metrics_are_strict_json(tmp_path):
  import json
  trainer.train(_diverging(stop_on_nonfinite=False), str(tmp_path))
  text = open(tmp_path / 'final_metrics.json').read()
  final = json.loads(text, parse_constant=lambda c: pytest.fail(f'{c} in final_metrics.json'))
  assert final['train']['loss'] is None and 'train.loss' in final['nonfinite']
  assert final['step'] == 12
