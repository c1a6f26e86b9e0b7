r"""Command line: train, evaluate or sample any experiment config.

  python -m research.main --config=experiments/vae_fashion_mnist/config.py --workdir=/tmp/vae \
      [--config.optimizer.lr=3e-4 ...] [--mode=train|eval|sample]

Rerunning the same train command resumes from the latest checkpoint in --workdir. Multi-host:
pass --distributed on a TPU VM pod / SLURM (JAX reads the environment), or --coordinator etc.
"""
from __future__ import annotations

import os
import signal
import sys

from absl import app, flags
import jax
from ml_collections import config_flags

from research import checkpoint, configs, metric_writers, parallel, trainer

FLAGS = flags.FLAGS


def _define_flags():
  """Flags exist only when this module is the command: importing `run` defines none, so it
  never clashes with another command's --workdir."""
  config_flags.DEFINE_config_file('config', None, 'Experiment config file.', lock_config=True)
  flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and samples.')
  flags.DEFINE_enum('mode', 'train', ['train', 'eval', 'sample'], 'What to run.')
  flags.DEFINE_integer('step', -1, 'Checkpoint step for eval/sample (-1 = latest).',
                       lower_bound=-1)
  flags.DEFINE_bool('distributed', False, 'Call jax.distributed.initialize() from the environment.')
  flags.DEFINE_string('coordinator', '', 'host:port of process 0 (multi-process).')
  flags.DEFINE_integer('num_processes', 1, 'Number of processes (with coordinator).')
  flags.DEFINE_integer('process_id', 0, 'This process (with coordinator).')
  flags.DEFINE_integer('cpu_devices', 0, 'Fake this many CPU devices (testing data parallelism).',
                       lower_bound=0)


def workdir_problem(workdir: str, mode: str) -> str | None:
  """Why `workdir` cannot hold this run (a file; not writable for training), else None."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    return f'--workdir={workdir} is a file, not a directory; pick another path'
  existing = os.path.abspath(workdir)
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if mode == 'train' and not os.access(existing, os.W_OK | os.X_OK):
    return f'--workdir={workdir}: {existing} is not writable; pick a writable path'
  return None


def run(config, workdir: str, mode: str = 'train', step: int = -1) -> dict:
  """Validates the config and the workdir (nothing compiles, workdir untouched on error), then
  runs `mode`."""
  configs.validate(config, num_devices=jax.device_count(), num_processes=jax.process_count())
  if problem := workdir_problem(workdir, mode):
    raise FileNotFoundError(problem)
  if mode == 'train':
    return trainer.train(config, workdir)
  if mode == 'eval':
    return trainer.evaluate_checkpoint(config, workdir, step)
  return trainer.sample_checkpoint(config, workdir, step)


def die_with_launcher() -> None:
  """Started by research.launch (seeds, sweeps): ask Linux to send SIGTERM when the launcher
  dies, however it dies, so the run checkpoints and exits instead of running on orphaned."""
  parent = os.environ.get('GENLAB_LAUNCHER_PID')   # research.launch.PARENT_ENV
  if not parent or not sys.platform.startswith('linux'):
    return
  import ctypes  # pylint: disable=g-import-not-at-top  (Linux only)
  pr_set_pdeathsig = 1
  ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM))
  if os.getppid() != int(parent):   # it died before the request took effect
    os.kill(os.getpid(), signal.SIGTERM)


def main(argv):
  del argv  # checked by parse_flags
  die_with_launcher()
  metric_writers.console_logging()
  if FLAGS.cpu_devices:
    jax.config.update('jax_num_cpu_devices', FLAGS.cpu_devices)
  if FLAGS.coordinator:
    parallel.initialize_distributed(FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id)
  elif FLAGS.distributed:
    parallel.initialize_distributed()
  try:
    run(FLAGS.config, FLAGS.workdir, FLAGS.mode, FLAGS.step)
  except configs.ConfigError as e:
    print(f'config error: {e}', file=sys.stderr)
    sys.exit(2)
  except (FileNotFoundError, checkpoint.WorkdirInUse, checkpoint.DamagedCheckpoint,
          checkpoint.CheckpointMismatch, checkpoint.CheckpointSaveError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  except trainer.NonFiniteError as e:  # a diverged run, not a bug: no traceback
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing; every bad flag, override or --config file is one line, exit code 2."""
  return configs.parse_command_flags(argv)

if __name__ == '__main__':
  _define_flags()
  app.run(main, flags_parser=parse_flags)
