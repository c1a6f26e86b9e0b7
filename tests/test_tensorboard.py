"""The README's `tensorboard --logdir workdirs` (the `viz` extra) serves what MetricWriter wrote:
scalars, the EMA/raw eval pair and a 2-D scatter image."""
import json
import os
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from research.metric_writers import MetricWriter
from tests import helpers

pytest.importorskip('tensorboard', reason='the viz extra: pip install -e .[viz]')


def _get(url: str):
  with urllib.request.urlopen(url, timeout=5) as r:
    return json.loads(r.read())


def test_tensorboard_serves_a_runs_scalars_and_images(tmp_path):
  run = tmp_path / 'workdirs' / 'run'
  writer = MetricWriter(str(run), total_steps=10, batch_size=4)
  writer.write_scalars(10, {'loss': 0.5, 'raw_loss': 0.4}, 'eval')
  writer.write_images(10, {'scatter': np.ones((1, 16, 16, 3), np.float32)}, '_ddpm5-discrete')
  writer.close()
  port = helpers.free_port()
  exe = os.path.join(os.path.dirname(sys.executable), 'tensorboard')
  proc = subprocess.Popen([exe, '--logdir', str(tmp_path / 'workdirs'), '--host', '127.0.0.1',
                           '--port', str(port)], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE)
  try:
    base, deadline, runs = f'http://127.0.0.1:{port}/data', time.time() + 90, None
    while time.time() < deadline and proc.poll() is None:
      try:
        runs = _get(f'{base}/runs')
        if runs:
          break
      except OSError:
        pass
      time.sleep(1)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    assert runs == ['run/tb'], runs
    scalars = _get(f'{base}/plugin/scalars/tags')['run/tb']
    assert {'eval/loss', 'eval/raw_loss'} <= set(scalars)
    assert 'scatter_ddpm5-discrete' in _get(f'{base}/plugin/images/tags')['run/tb']
  finally:
    proc.kill()
    proc.wait(timeout=30)
