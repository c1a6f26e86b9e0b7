"""One run per workdir (a lock the kernel drops with its holder), and a stopped sweep stops its
trials and resumes them to completion (research/launch.py under sweep and seeds)."""
import fcntl
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

from tests import helpers

TOY = os.path.join(helpers.ROOT, 'experiments', 'diffusion_toy2d', 'config.py')
# diffusion_toy2d runs ~40 steps/s here: long enough to signal a run in the middle.
TOY_ARGS = ['--config.train.log_every=50', '--config.train.checkpoint_every=100',
            '--config.eval.num_samples=100', '--config.sampler.name=ddim',
            '--config.sampler.steps=10', '--config.optimizer.schedule.warmup_steps=10']


def _start(args: list[str], module: str = 'research.main'):
  """A subprocess and an Event set once its output shows a training-progress line."""
  proc = subprocess.Popen([sys.executable, '-m', module, *args], cwd=helpers.ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  out, training = [], threading.Event()

  def read():
    for line in proc.stdout:
      out.append(line)
      if '] step ' in line or 'resumed from step' in line:
        training.set()
  threading.Thread(target=read, daemon=True).start()
  return proc, out, training


def _lock_is_free(workdir: str) -> bool:
  with open(os.path.join(workdir, '.lock'), 'a+') as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      return False
    fcntl.flock(f, fcntl.LOCK_UN)
    return True


def test_a_second_run_on_a_busy_workdir_exits_2_and_a_killed_holder_frees_it(tmp_path):
  work = str(tmp_path / 'run')
  args = [f'--config={TOY}:ring8', f'--workdir={work}', '--config.train.num_steps=3000',
          *TOY_ARGS]
  first, out, training = _start(args)
  try:
    assert training.wait(300), ''.join(out)[-3000:]
    before = sorted(os.listdir(work))
    second = helpers.cli(args, check=False)
    assert second.returncode == 2, second.stderr[-3000:]
    errors = [l for l in second.stderr.splitlines() if l.startswith('error:')]
    assert errors == [f'error: --workdir={work} is in use by another run (pid {first.pid} on '
                      f'{os.uname().nodename} since {errors[0].split(" since ")[1]}'], errors
    assert 'Traceback' not in second.stderr and first.poll() is None
    assert sorted(os.listdir(work)) == before          # the refused run wrote nothing
    assert not _lock_is_free(work)
  finally:
    first.kill()                                       # SIGKILL: no chance to clean up
    first.wait()
  assert _lock_is_free(work)
  third, out, training = _start(args)                  # the stale lock file blocks nothing
  assert training.wait(300), ''.join(out)[-3000:]
  third.send_signal(signal.SIGTERM)
  assert third.wait(120) == 0, ''.join(out)[-3000:]
  assert any('resumed from step' in l for l in out)


def _sweep_file(tmp_path):
  sweep_file = tmp_path / 'sweep.py'
  sweep_file.write_text(textwrap.dedent(f'''
      from research.sweep import choice
      def get_sweep():
        return {{'config': {TOY!r}, 'metric': 'eval.loss', 'mode': 'min', 'method': 'grid',
                'space': {{'optimizer.lr': choice([1e-3])}},
                'overrides': {{'train.num_steps': 800, 'train.eval_every': 800,
                              'train.sample_every': 800, 'train.log_every': 50,
                              'train.checkpoint_every': 100, 'eval.num_samples': 100,
                              'sampler.name': 'ddim', 'sampler.steps': 10,
                              'optimizer.schedule.warmup_steps': 10}}}}
  '''))
  return sweep_file


def _start_sweep(tmp_path):
  """A one-trial sweep, returned once its trial is training: (process, output, args, workdir,
  the trial's workdir)."""
  work = str(tmp_path / 'sweep')
  trial = os.path.join(work, 'trial_000')
  args = [f'--sweep={_sweep_file(tmp_path)}', f'--workdir={work}']
  sweep, out, _ = _start(args, module='research.sweep')
  log = os.path.join(trial, 'run.log')
  deadline = time.time() + 300
  while not (os.path.exists(log) and '] step ' in open(log).read()):
    assert time.time() < deadline and sweep.poll() is None, ''.join(out)[-3000:]
    time.sleep(0.2)
  return sweep, out, args, work, trial


def test_a_stopped_sweep_stops_its_trials_then_resumes_them_to_the_end(tmp_path):
  sweep, out, args, work, trial = _start_sweep(tmp_path)
  sweep.send_signal(signal.SIGTERM)
  assert sweep.wait(120) == 1, ''.join(out)[-3000:]       # stopped: not every trial finished
  assert _lock_is_free(trial)                             # the trial's process is gone too
  record = [json.loads(l) for l in open(os.path.join(work, 'trials.jsonl'))][-1]
  assert record['status'] == 'preempted' and record['metric'] is None, record
  final = json.load(open(os.path.join(trial, 'final_metrics.json')))
  assert final['preempted'] and 0 < final['step'] < 800
  assert 'rerun the same command to resume' in ''.join(out)
  rerun = subprocess.run([sys.executable, '-m', 'research.sweep', *args], cwd=helpers.ROOT,
                         capture_output=True, text=True, timeout=600)
  assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-3000:]
  record = [json.loads(l) for l in open(os.path.join(work, 'trials.jsonl'))][-1]
  final = json.load(open(os.path.join(trial, 'final_metrics.json')))
  assert record['status'] == 'ok' and record['metric'] == final['eval']['loss']
  assert final['step'] == 800 and not final['preempted']
  assert f'resumed from step' in open(os.path.join(trial, 'run.log')).read()


def test_a_sweep_killed_outright_still_stops_its_trials(tmp_path):
  """SIGKILL reaches no handler: the trial learns of its launcher's death from the kernel
  (PR_SET_PDEATHSIG), checkpoints and exits, so no orphan keeps training."""
  sweep, out, _, _, trial = _start_sweep(tmp_path)
  sweep.kill()
  sweep.wait()
  deadline = time.time() + 60
  while not _lock_is_free(trial):
    assert time.time() < deadline, 'the trial kept running after its sweep was killed'
    time.sleep(0.2)
  final = json.load(open(os.path.join(trial, 'final_metrics.json')))
  assert final['preempted'] and 0 < final['step'] < 800
