"""A real SIGTERM during a long eval or sampling phase: the run saves and exits 0 within seconds,
and the resumed run redoes that step's eval and samples, ending equal to an uninterrupted run."""
import glob
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from research import checkpoint
from tests import helpers

# A phase this long would blow a cloud VM's ~30 s notice if the signal waited for it to end.
EXIT_WITHIN_S = 10.0


def _args(config: str, workdir: str, *overrides: str) -> list[str]:
  return [f'--config={os.path.join(helpers.ROOT, "experiments", config)}', f'--workdir={workdir}',
          '--config.train.num_steps=10', '--config.train.log_every=5',
          '--config.train.eval_every=10', '--config.train.sample_every=10',
          '--config.train.checkpoint_every=100', *overrides]


def _run(args: list[str], marker: str, signal_after: float | None = None):
  """Runs the CLI; with `signal_after`, sends SIGTERM that many seconds after the first log line
  containing `marker`. Returns (exit code, seconds from the signal -- or from the marker when
  none is sent -- to the exit, output)."""
  proc = subprocess.Popen([sys.executable, '-m', 'research.main', *args], cwd=helpers.ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  lines, seen = [], threading.Event()

  def read():
    for line in proc.stdout:
      lines.append(line)
      if marker in line:
        seen.set()
  reader = threading.Thread(target=read, daemon=True)
  reader.start()
  assert seen.wait(300), ''.join(lines)[-3000:]
  if signal_after is not None:
    time.sleep(signal_after)
    assert proc.poll() is None, f'ended before the signal:\n{"".join(lines)[-3000:]}'
    proc.send_signal(signal.SIGTERM)
  start = time.perf_counter()
  code = proc.wait(timeout=300)
  took = time.perf_counter() - start
  reader.join(10)
  return code, took, ''.join(lines)


def _evals(workdir) -> dict:
  lines = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]
  return {l['step']: l for l in lines if l['split'] == 'eval'}


def _assert_same_run(a, b):
  assert _evals(a) == _evals(b) and sorted(_evals(a)) == [10]
  names = sorted(os.listdir(os.path.join(a, 'samples')))
  assert [n for n in names if n.endswith('.npz')] and names == sorted(
      os.listdir(os.path.join(b, 'samples')))
  for n in names:
    if n.endswith('.npz'):
      x, y = np.load(os.path.join(a, 'samples', n)), np.load(os.path.join(b, 'samples', n))
      for k in x:
        np.testing.assert_array_equal(x[k], y[k])
  pa, pb = (checkpoint.Checkpointer(os.path.join(w, 'checkpoints'), read_only=True)
            .restore_params(10) for w in (a, b))
  np.testing.assert_equal(pa, pb)


def _pending(workdir) -> list[str]:
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, 'checkpoints'), read_only=True)
  try:
    assert ckpt.latest_step() == 10
    return ckpt.read_meta(10)['pending']
  finally:
    ckpt.close()


def test_sigterm_during_a_1000_step_sampler_saves_and_exits_at_once(tmp_path):
  # diffusion_toy2d's 1000 ancestral steps on 1000 points: one compiled call of ~20 s here.
  args = ('diffusion_toy2d/config.py:ring8', '--config.eval.num_samples=1000',
          '--config.optimizer.schedule.warmup_steps=5')
  straight, cut = str(tmp_path / 'straight'), str(tmp_path / 'cut')
  code, phase, out = _run(_args(args[0], straight, *args[1:]), 'eval at step 10')
  assert code == 0, out[-3000:]
  code, took, out = _run(_args(args[0], cut, *args[1:]), 'eval at step 10', signal_after=1.0)
  assert code == 0, out[-3000:]
  # Out within seconds, well before the sampling phase (and the process) would have ended.
  assert took < min(EXIT_WITHIN_S, phase / 2), f'{took:.1f} s to exit; sampling takes {phase:.1f}'
  assert 'preempted during sampling at step 10' in out and 'Traceback' not in out
  assert _pending(cut) == ['sample']
  final = json.load(open(os.path.join(cut, 'final_metrics.json')))
  assert final['preempted'] and final['step'] == 10
  assert not glob.glob(os.path.join(cut, 'samples', '*.npz'))
  resumed = helpers.cli(_args(args[0], cut, *args[1:]))
  assert 'redoing its sample' in resumed.stderr
  _assert_same_run(straight, cut)


def test_sigterm_during_a_long_eval_stops_between_batches(tmp_path):
  # vae_digits with IWAE k=20000 over 30 batches of 10 digits: an eval of many short calls
  # (about 10 s on an idle 2-core machine).
  args = ('vae_digits/config.py', '--config.eval.iwae_k=20000', '--config.eval.iwae_chunk=500',
          '--config.eval.batch_size=10', '--config.eval.num_samples=16')
  straight, cut = str(tmp_path / 'straight'), str(tmp_path / 'cut')
  code, phase, out = _run(_args(args[0], straight, *args[1:]), 'step 10: eval')
  assert code == 0, out[-3000:]
  code, took, out = _run(_args(args[0], cut, *args[1:]), 'step 10: eval', signal_after=1.0)
  assert code == 0, out[-3000:]
  assert took < min(EXIT_WITHIN_S, phase / 2), f'{took:.1f} s to exit; the eval takes {phase:.1f}'
  assert 'eval at step 10' not in out and 'Traceback' not in out
  assert _pending(cut) == ['eval', 'sample']
  assert not os.path.exists(os.path.join(cut, 'metrics.jsonl')) or not _evals(cut)
  resumed = helpers.cli(_args(args[0], cut, *args[1:]))
  assert 'redoing its eval and sample' in resumed.stderr
  _assert_same_run(straight, cut)
