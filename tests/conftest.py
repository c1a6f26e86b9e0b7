"""Test setup: 2 fake CPU devices per process (more can deadlock on 2 cores, see shared notes),
and one persistent XLA compilation cache per pytest session.

The cache lives in a fresh temporary directory (removed at the end of the session), so a run
from a clean clone is hermetic; it is shared with the subprocesses the CLI and multi-process
tests start (through the JAX_* environment variables below), which compile the same train, eval
and sample steps of the same tiny configs again. A hit returns the executable XLA built for the
identical program (the key covers the HLO, the devices, the compile options, XLA flags and the
jax version), so no test runs different code. Tests that time compilation opt out with the
`no_compilation_cache` fixture.
"""
import contextlib
import os
import shutil
import sys
import tempfile

# Before jax is imported: subprocesses inherit these, and this process's jax reads them.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _CACHE_DIR = tempfile.mkdtemp(prefix='genlab-test-xla-cache-')
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _CACHE_DIR
else:
  _CACHE_DIR = None        # the caller chose a cache directory: use it, leave it in place
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.5')

import jax  # noqa: E402
import pytest  # noqa: E402
from jax._src import compilation_cache  # noqa: E402

jax.config.update('jax_num_cpu_devices', 2)
jax.config.update('jax_compilation_cache_dir', os.environ['JAX_COMPILATION_CACHE_DIR'])
jax.config.update('jax_persistent_cache_min_compile_time_secs',
                  float(os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS']))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def pytest_sessionfinish(session, exitstatus):
  if _CACHE_DIR is not None:
    shutil.rmtree(_CACHE_DIR, ignore_errors=True)


@contextlib.contextmanager
def compilation_cache_disabled():
  """Every compile in the block really compiles (no persistent-cache reads or writes)."""
  jax.config.update('jax_enable_compilation_cache', False)
  compilation_cache.reset_cache()         # is_cache_used() is decided once per task
  try:
    yield
  finally:
    jax.config.update('jax_enable_compilation_cache', True)
    compilation_cache.reset_cache()


@pytest.fixture
def no_compilation_cache():
  with compilation_cache_disabled():
    yield
