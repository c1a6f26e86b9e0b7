"""Shared test helpers: load experiment configs, run the CLI in a subprocess."""
import importlib.util
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name: str):
  path = os.path.join(ROOT, 'experiments', name, 'config.py')
  spec = importlib.util.spec_from_file_location(f'cfg_{name}', path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


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
