"""Bad input to the commands: one line naming the problem and the fix, exit code 2, no
traceback, and no stray workdir (or an existing run's workdir left as it was)."""
import os
import shutil
import subprocess
import sys

import pytest

from tests import helpers

VAE = 'experiments/vae_digits/config.py'
TINY = ['--config.train.num_steps=10', '--config.train.eval_every=10',
        '--config.train.sample_every=10', '--config.train.checkpoint_every=10',
        '--config.eval.num_samples=4']


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """A finished 10-step vae_digits run (checkpoint 10)."""
  work = str(tmp_path_factory.mktemp('bad_inputs') / 'trained')
  helpers.cli([f'--config={VAE}', f'--workdir={work}', *TINY])
  return work


def _snapshot(path):
  if not os.path.exists(path):
    return None
  if os.path.isfile(path):
    return ('file', os.path.getsize(path))
  # `.lock` is left out: a run that takes the workdir lock rewrites its holder line (pid, host,
  # time) before it can check the checkpoints, and that is bookkeeping, not a change to the run.
  return sorted((os.path.relpath(os.path.join(d, f), path), os.path.getsize(os.path.join(d, f)))
                for d, _, files in os.walk(path) for f in files
                if os.path.relpath(os.path.join(d, f), path) != '.lock')


# (name, command module, arguments ({new}: a fresh workdir path, {run}: the trained run's copy,
#  {file}: an existing file), expected exit code, the expected line's start and a part of it)
CASES = [
    ('config file missing', 'main', ['--config=nope/config.py', '--workdir={new}'],
     'flag error: --config=nope/config.py: no such file', "experiment's config.py"),
    ('config is a directory', 'main', ['--config=experiments/vae_digits', '--workdir={new}'],
     'flag error: --config=experiments/vae_digits: a directory', 'vae_digits/config.py'),
    ('config argument missing', 'main', ['--workdir={new}'],
     'flag error: --config is required', 'experiments/vae_digits/config.py'),
    ('workdir missing', 'main', [f'--config={VAE}'], 'flag error: --workdir is required', ''),
    ('stray positional argument', 'main', [f'--config={VAE}', '--workdir={new}', 'extra'],
     "flag error: unexpected arguments ['extra']", '--name=value'),
    ('unknown override', 'main', [f'--config={VAE}', '--workdir={new}',
                                  '--config.train.num_stepz=5'],
     'config error: --config.train.num_stepz: unknown field', ''),
    ('override of the wrong type', 'main', [f'--config={VAE}', '--workdir={new}',
                                            '--config.train.num_steps=many'],
     'config error: --config.train.num_steps', ''),
    ('negative step count', 'main', [f'--config={VAE}', '--workdir={new}',
                                     '--config.train.num_steps=-1'],
     'config error: config.train.num_steps=-1', ''),
    ('unknown optimizer', 'main', [f'--config={VAE}', '--workdir={new}',
                                   '--config.optimizer.name=adamm'],
     "config error: config.optimizer.name='adamm'", 'one of'),
    ('unknown schedule', 'main', [f'--config={VAE}', '--workdir={new}',
                                  '--config.optimizer.schedule.name=cosin'],
     "config error: config.optimizer.schedule.name='cosin'", 'one of'),
    ('unknown dataset', 'main', [f'--config={VAE}', '--workdir={new}',
                                 '--config.data.name=mnist3'],
     "config error: config.data.name='mnist3'", ''),
    ('unknown split', 'main', [f'--config={VAE}', '--workdir={new}',
                               '--config.data.eval_split=tset'],
     "config error: config.data.eval_split='tset'", 'unknown split'),
    ('eval batch of zero', 'main', [f'--config={VAE}', '--workdir={new}',
                                    '--config.eval.batch_size=0'],
     'config error: config.eval.batch_size=0', ''),
    ('EMA decay above 1', 'main', [f'--config={VAE}', '--workdir={new}',
                                   '--config.optimizer.ema_decay=1.5'],
     'config error: config.optimizer.ema_decay=1.5', ''),
    ('divergence factor below 1', 'main', [f'--config={VAE}', '--workdir={new}',
                                           '--config.train.divergence_factor=0.5'],
     'config error: config.train.divergence_factor=0.5', 'must be > 1'),
    ('gradient accumulation not dividing the batch', 'main',
     [f'--config={VAE}', '--workdir={new}', '--config.optimizer.grad_accum_steps=5'],
     'config error: config.optimizer.grad_accum_steps=5', 'per-device batch 64'),
    ('batch not dividing the devices', 'main',
     [f'--config={VAE}', '--workdir={new}', '--cpu_devices=2', '--config.train.batch_size=33'],
     'config error: config.train.batch_size=33', 'multiple of 2'),
    ('unknown mode', 'main', [f'--config={VAE}', '--workdir={new}', '--mode=trian'],
     'flag error: flag --mode=trian', 'train|eval|sample'),
    ('negative device count', 'main', [f'--config={VAE}', '--workdir={new}',
                                       '--cpu_devices=-1'],
     'flag error: flag --cpu_devices=-1', 'non-negative'),
    ('step below -1', 'main', [f'--config={VAE}', '--workdir={run}', '--mode=eval', '--step=-5'],
     'flag error: flag --step=-5', '>= -1'),
    ('workdir is a file', 'main', [f'--config={VAE}', '--workdir={file}', *TINY],
     'error: --workdir=', 'is a file, not a directory'),
    ('init_from a directory that does not exist', 'main',
     [f'--config={VAE}', '--workdir={new}', '--config.init_from.workdir=/nonexistent/run'],
     "config error: config.init_from.workdir='/nonexistent/run'", 'no such directory'),
    ('init_from a run without checkpoints', 'main',
     [f'--config={VAE}', '--workdir={new}', '--config.init_from.workdir={empty}'],
     'config error: config.init_from.workdir=', 'has no checkpoints'),
    ('eval without a checkpoint', 'main', [f'--config={VAE}', '--workdir={new}', '--mode=eval'],
     'error: no checkpoint under', 'train first'),
    ('eval of a step never saved', 'main',
     [f'--config={VAE}', '--workdir={run}', '--mode=eval', '--step=7'],
     'error: no checkpoint at step 7', 'saved steps: 10'),
    ('eval with another model', 'main',
     [f'--config={VAE}', '--workdir={run}', '--mode=eval', '--config.model.hidden=32'],
     'error: the checkpoints in', 'hold another model or optimizer'),
    ('resume with another optimizer', 'main',
     [f'--config={VAE}', '--workdir={run}', '--config.optimizer.name=sgd',
      '--config.train.num_steps=20'],
     'error: the checkpoints in', "run with the config the run was started with"),
    ('seeds: no workdir', 'seeds', [f'--config={VAE}', '--seeds=0'],
     'flag error: --workdir is required', ''),
    ('seeds: config file missing', 'seeds', ['--config=nope.py', '--workdir={new}'],
     'flag error: --config=nope.py: no such file', ''),
    ('seeds: bad seed list', 'seeds', [f'--config={VAE}', '--workdir={new}', '--seeds=a,b'],
     'flag error: --seeds=a,b', 'integers'),
    ('dedup: not an image dataset', 'dedup', ['shakespeare'],
     "flag error: 'shakespeare' is not a packaged image dataset", 'digits, mnist'),
    ('dedup: bad threshold', 'dedup', ['digits', '--rms=low'],
     'flag error: --rms=low', 'numbers'),
]


@pytest.mark.parametrize('name,module,args,start,part', CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2(trained, tmp_path, name, module, args, start, part):
  del name
  run = str(tmp_path / 'run')
  shutil.copytree(trained, run)
  (tmp_path / 'a_file').write_text('not a workdir')
  os.makedirs(tmp_path / 'empty_run')
  paths = {'new': str(tmp_path / 'new'), 'run': run, 'file': str(tmp_path / 'a_file'),
           'empty': str(tmp_path / 'empty_run')}
  argv = [a.format(**paths) for a in args]
  before = {k: _snapshot(p) for k, p in paths.items()}
  proc = subprocess.run([sys.executable, '-m', f'research.{module}', *argv], cwd=helpers.ROOT,
                        capture_output=True, text=True, timeout=300)
  lines = [l for l in proc.stderr.splitlines()
           if l.startswith(('error:', 'config error:', 'flag error:'))]
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  assert len(lines) == 1 and lines[0].startswith(start) and part in lines[0], proc.stderr[-3000:]
  after = {k: _snapshot(p) for k, p in paths.items()}
  # No stray workdir; an existing run untouched (its eval or resume refused before writing).
  assert after == before, {k: (before[k], after[k]) for k in paths if before[k] != after[k]}


def test_a_misspelled_best_metric_stops_at_the_first_eval_with_the_run_saved(tmp_path):
  """Its names are known only after an eval: the run stops there (exit 2, one line listing the
  names), saved, and the corrected rerun resumes instead of starting over."""
  work = str(tmp_path / 'run')
  args = [f'--config={VAE}', f'--workdir={work}', '--config.train.num_steps=20',
          '--config.train.eval_every=10', '--config.train.checkpoint_every=100']
  proc = helpers.cli([*args, '--config.eval.best_metric=neg_elbow'], check=False)
  lines = [l for l in proc.stderr.splitlines() if l.startswith('config error:')]
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  assert lines == ["config error: config.eval.best_metric='neg_elbow': not an eval metric of "
                   'this run (it has iwae_nll, kl, neg_elbo, num_examples, recon); saved step 10: '
                   'rerun with one of those names to resume']
  rerun = helpers.cli([*args, '--config.eval.best_metric=neg_elbo'])
  assert 'resumed from step 10' in rerun.stderr


def test_a_read_only_workdir_is_one_line_exit_2(tmp_path):
  """A read-only filesystem (root's writes fail there too, unlike a chmod)."""
  with helpers.tmpfs(tmp_path / 'ro', 'ro,size=1m') as mnt:
    proc = subprocess.run([sys.executable, '-m', 'research.main', f'--config={VAE}',
                           f'--workdir={mnt}/run', *TINY], cwd=helpers.ROOT,
                          capture_output=True, text=True, timeout=300)
    assert not os.listdir(mnt)
  lines = [l for l in proc.stderr.splitlines() if l.startswith('error:')]
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  assert lines == [f'error: --workdir={mnt}/run: {mnt} is not writable; pick a writable path']
