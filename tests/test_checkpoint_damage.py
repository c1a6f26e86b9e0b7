"""A damaged newest checkpoint: one warning line, the previous good one restored, and the run
ends bitwise equal to an undamaged one; no usable checkpoint or another model: one-line errors."""
import glob
import logging
import os
import shutil
import signal

import jax
import numpy as np
import pytest

from research import checkpoint, parallel, trainer
from tests import helpers


def _config():
  return helpers.tiny_digits(num_steps=40, checkpoint_every=10, eval_every=40, sample_every=40,
                             keep_checkpoints=5)


def _train(workdir, stop_at=None):
  def on_step(step, batch):
    if step == stop_at:
      os.kill(os.getpid(), signal.SIGTERM)
  return trainer.train(_config(), str(workdir), on_step=on_step)


def _params(workdir):
  _, state, _, _ = trainer.restore(_config(), str(workdir), -1)
  return parallel.to_host(state.params)


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """A straight 40-step run, and one preempted at step 30 (checkpoints 10, 20, 30)."""
  root = tmp_path_factory.mktemp('damage')
  _train(root / 'straight')
  assert _train(root / 'cut', stop_at=30)['preempted']
  return root


def _largest_array_file(step_dir):
  return max(glob.glob(f'{step_dir}/state/**/d/*', recursive=True), key=os.path.getsize)


def _truncate(d):
  f = _largest_array_file(d)
  with open(f, 'r+b') as fh:
    fh.truncate(os.path.getsize(f) // 2)


def _flip_a_bit(d):
  f = _largest_array_file(d)
  data = bytearray(open(f, 'rb').read())
  data[len(data) // 2] ^= 0x10
  open(f, 'wb').write(bytes(data))


def _empty(d):
  for name in os.listdir(d):
    p = os.path.join(d, name)
    shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)


DAMAGE = {
    'manifest deleted': lambda d: os.remove(f'{d}/state/manifest.ocdbt'),
    'array file truncated': _truncate,
    'garbage metadata': lambda d: open(f'{d}/state/_METADATA', 'wb').write(b'\x00garbage\xff'),
    'step directory emptied': _empty,
    'one bit flipped': _flip_a_bit,
    'data position deleted': lambda d: os.remove(f'{d}/data/process_0-of-1.json'),
}


@pytest.mark.parametrize('kind', sorted(DAMAGE))
def test_damaged_newest_checkpoint_falls_back_to_the_previous(runs, tmp_path, kind, caplog):
  work = tmp_path / 'run'
  shutil.copytree(runs / 'cut', work)
  DAMAGE[kind](str(work / 'checkpoints' / '30'))
  with caplog.at_level(logging.WARNING):
    final = _train(work)
  assert final['step'] == 40 and not final['preempted']
  warnings = [r.getMessage() for r in caplog.records if 'damaged checkpoint' in r.getMessage()]
  assert len(warnings) == 1 and '\n' not in warnings[0], warnings
  assert warnings[0].endswith('restored step 20 instead') and '(step 30: ' in warnings[0]
  jax.tree.map(np.testing.assert_array_equal, _params(runs / 'straight'), _params(work))


def test_no_usable_checkpoint_is_one_line(runs, tmp_path):
  work = tmp_path / 'run'
  shutil.copytree(runs / 'cut', work)
  for step in (10, 20, 30):
    os.remove(work / 'checkpoints' / str(step) / 'state' / 'manifest.ocdbt')
  with pytest.raises(checkpoint.DamagedCheckpoint) as info:
    _train(work)
  msg = str(info.value)
  assert '\n' not in msg and msg.startswith(f'no usable checkpoint in {work}/checkpoints (step 30')
  assert 'step 10: state/manifest.ocdbt is missing' in msg and 'move the damaged' in msg
  # An explicit step is not replaced by another one.
  with pytest.raises(checkpoint.DamagedCheckpoint, match='step 20'):
    trainer.restore(_config(), str(work), 20)
  proc = helpers.cli(['--config=experiments/vae_digits/config.py', f'--workdir={work}',
                      '--config.train.num_steps=40', '--config.train.checkpoint_every=10',
                      '--config.train.batch_size=32'], check=False)
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr
  assert [l for l in proc.stderr.splitlines() if l.startswith('error:')] == [f'error: {msg}']


def test_resuming_with_another_model_is_one_line(runs, tmp_path):
  work = tmp_path / 'run'
  shutil.copytree(runs / 'cut', work)
  config = _config()
  config.model.hidden = '48'
  with pytest.raises(checkpoint.CheckpointMismatch) as info:
    trainer.train(config, str(work))
  msg = str(info.value)
  assert '\n' not in msg and 'hold another model or optimizer than this config builds' in msg
  assert "saved, " in msg and 'its config.json' in msg


def test_a_full_disk_stops_with_one_line_and_the_rerun_resumes(tmp_path, monkeypatch):
  """Not enough room for the next checkpoint: one line naming the space and the last complete
  checkpoint (before Orbax starts a write it cannot finish), and a rerun with room resumes."""
  work = tmp_path / 'run'
  real = checkpoint.shutil.disk_usage
  saves = []

  def disk_usage(path):
    usage = real(path)
    saves.append(path)
    return usage._replace(free=100_000) if len(saves) > 2 else usage   # full after 2 saves
  monkeypatch.setattr(checkpoint.shutil, 'disk_usage', disk_usage)
  with pytest.raises(checkpoint.CheckpointSaveError) as info:
    _train(work)
  msg = str(info.value)
  assert '\n' not in msg and msg.startswith(f'saving checkpoint 30 in {work}/checkpoints failed (')
  assert 'MiB free, about' in msg and 'last complete checkpoint: step 20' in msg
  monkeypatch.undo()
  final = _train(work)
  assert final['step'] == 40


def test_a_failed_write_is_one_line(tmp_path, monkeypatch):
  def fail(*a, **k):
    raise OSError(28, 'No space left on device')
  monkeypatch.setattr(checkpoint.Checkpointer, '_save', fail)
  with pytest.raises(checkpoint.CheckpointSaveError,
                     match=r'^saving checkpoint 10 in .* failed \(OSError: \[Errno 28\] No space '
                           r'left on device\); last complete checkpoint: none yet'):
    _train(tmp_path / 'run')


def test_a_really_full_disk_is_one_line_without_tracebacks(tmp_path):
  with helpers.tmpfs(tmp_path / 'small', 'size=600k') as mnt:
    proc = helpers.cli([f'--config={helpers.ROOT}/experiments/vae_digits/config.py',
                        f'--workdir={mnt}/run', '--config.train.num_steps=200',
                        '--config.train.checkpoint_every=10'], check=False)
  errors = [l for l in proc.stderr.splitlines() if l.startswith('error:')]
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  assert len(errors) == 1 and 'failed (' in errors[0] and 'MiB free' in errors[0], errors
