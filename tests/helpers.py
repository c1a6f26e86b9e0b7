"""Shared test helpers: load experiment configs, run the CLI in a subprocess."""
import contextlib
import importlib.util
import os
import socket
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name: str, *args):
  """experiments/<name>/config.py's get_config(*args) (`name:arg` on the command line)."""
  path = os.path.join(ROOT, 'experiments', name, 'config.py')
  spec = importlib.util.spec_from_file_location(f'cfg_{name}', path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(*args)


def tiny_digits(num_steps=20, **train):
  """The vae_digits config cut down for harness tests (seconds on CPU)."""
  c = load_config('vae_digits')
  c.train.num_steps = num_steps
  c.train.batch_size = 32
  c.train.log_every = 5
  c.train.eval_every = num_steps
  c.train.sample_every = num_steps
  c.train.checkpoint_every = num_steps
  c.eval.batch_size = 100
  c.eval.num_samples = 16
  for k, v in train.items():
    c.train[k] = v
  return c


def cli(args, timeout=600, env=None, check=True):
  """Runs `python -m research.main ARGS`; returns the CompletedProcess."""
  full_env = dict(os.environ, **(env or {}))
  proc = subprocess.run([sys.executable, '-m', 'research.main', *args], cwd=ROOT, env=full_env,
                        capture_output=True, text=True, timeout=timeout)
  if check and proc.returncode != 0:
    raise AssertionError(f'exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n'
                         f'{proc.stderr[-5000:]}')
  return proc


@contextlib.contextmanager
def tmpfs(path, options: str):
  """A tmpfs mounted at `path` (made) with mount `options` for the block; skips the test where
  it cannot be mounted (not root, no CAP_SYS_ADMIN). Root ignores permission bits, so a full or
  read-only filesystem is the only honest stand-in for a full disk or a read-only mount."""
  import pytest  # pylint: disable=g-import-not-at-top  (only tests use this helper)
  os.makedirs(path, exist_ok=True)
  if os.geteuid() != 0 or subprocess.run(['mount', '-t', 'tmpfs', '-o', options, 'tmpfs',
                                          str(path)], capture_output=True).returncode:
    pytest.skip('cannot mount a tmpfs here')
  try:
    yield str(path)
  finally:
    subprocess.run(['umount', str(path)], check=False)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def cli_processes(args, num_processes: int = 2, timeout=300) -> list[str]:
  """Runs `python -m research.main ARGS` as `num_processes` processes joined through
  jax.distributed on 127.0.0.1; asserts every one exits 0 and returns their outputs."""
  port = free_port()
  procs = [subprocess.Popen(
      [sys.executable, '-m', 'research.main', *args, f'--coordinator=127.0.0.1:{port}',
       f'--num_processes={num_processes}', f'--process_id={i}'],
      cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(num_processes)]
  try:
    outs = [p.communicate(timeout=timeout)[0] for p in procs]
  finally:
    for p in procs:
      p.kill()
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-4000:]
  return outs
