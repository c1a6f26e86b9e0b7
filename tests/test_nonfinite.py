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
