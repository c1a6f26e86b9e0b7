"""Where metrics go: TensorBoard events, a JSONL log, the console, PNG grids and .npz samples.

Only process 0 writes files; every process may call these methods.
"""
from __future__ import annotations

import datetime
import json
import logging as py_logging
import os
import time

import jax
import numpy as np
from absl import logging

from research import images as image_lib


class _QuietLibraries(py_logging.Filter):
  """Drops INFO chatter from checkpoint/data libraries; their warnings still show."""
  NOISY = ('/orbax/', '/grain/', '/tensorflow_datasets/', '/etils/', '/jax/_src/', '/optax/')

  # Orbax warnings that only restate what the project reports itself (a damaged or read-only
  # checkpoint directory).
  RESTATED = ('Metadata file does not exist', 'read_only=True, setting',
              'Given directory is read only')

  def filter(self, record):
    if any(n in record.pathname for n in self.NOISY):
      return record.levelno >= py_logging.WARNING and not any(
          r in str(record.msg) for r in self.RESTATED)
    return True


def console_logging() -> None:
  """INFO logging for the project's command lines, without the libraries' INFO chatter."""
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_QuietLibraries())


def _scalar(v):
  v = np.asarray(v)
  return v.item() if v.size == 1 else v.tolist()


def strict_json(obj, path: str = '') -> tuple:
  """(obj with numpy values as Python ones and NaN/inf floats as None, [dotted paths of those])."""
  if isinstance(obj, dict):
    out, bad = {}, []
    for k, v in obj.items():
      out[k], b = strict_json(v, f'{path}.{k}' if path else str(k))
      bad += b
    return out, bad
  if isinstance(obj, (list, tuple)):
    pairs = [strict_json(v, f'{path}[{i}]') for i, v in enumerate(obj)]
    return [v for v, _ in pairs], [p for _, b in pairs for p in b]
  if isinstance(obj, (np.ndarray, np.generic)):
    return strict_json(_scalar(obj), path)
  if isinstance(obj, float) and not np.isfinite(obj):
    return None, [path]
  if obj is None or isinstance(obj, (str, int, float, bool)):
    return obj, []
  return str(obj), []


class MetricWriter:
  """One writer per run; `workdir` layout: tb/, metrics.jsonl, samples/."""

  def __init__(self, workdir: str, total_steps: int, batch_size: int):
    self.workdir = workdir
    self.total_steps = total_steps
    self.batch_size = batch_size
    self.is_main = jax.process_index() == 0
    self._tb = None
    self._jsonl = None
    if self.is_main:
      from tensorboardX import SummaryWriter  # imported here: only process 0 needs it
      os.makedirs(workdir, exist_ok=True)
      self._tb = SummaryWriter(os.path.join(workdir, 'tb'))
      self._jsonl = open(os.path.join(workdir, 'metrics.jsonl'), 'a')
    self._last_time = None
    self._last_step = None

  def write_scalars(self, step: int, metrics: dict, prefix: str) -> None:
    if not self.is_main:
      return
    metrics = {k: _scalar(v) for k, v in metrics.items()}
    for k, v in metrics.items():
      if isinstance(v, (int, float)):
        self._tb.add_scalar(f'{prefix}/{k}', v, step)
    self._jsonl.write(json.dumps({'step': step, 'split': prefix, **metrics}) + '\n')
    self._jsonl.flush()
    self._tb.flush()

  def progress(self, step: int, metrics: dict) -> dict:
    """Console line with step, loss, steps/s, examples/s, ETA; returns the throughput numbers."""
    now = time.perf_counter()
    rates = {}
    if self._last_time is not None and step > self._last_step:
      sps = (step - self._last_step) / (now - self._last_time)
      rates = {'steps_per_sec': sps, 'examples_per_sec': sps * self.batch_size}
    self._last_time, self._last_step = now, step
    if self.is_main:
      parts = [f'step {step}/{self.total_steps}']
      parts += [f'{k} {_scalar(v):.4g}' for k, v in sorted(metrics.items())
                if np.asarray(v).size == 1]
      if rates:
        eta = (self.total_steps - step) / rates['steps_per_sec']
        parts += [f"{rates['steps_per_sec']:.1f} steps/s",
                  f"{rates['examples_per_sec']:.0f} ex/s",
                  f'ETA {datetime.timedelta(seconds=int(eta))}']
      logging.info(' | '.join(parts))
    return rates

  def write_images(self, step: int, grids: dict, suffix: str = '') -> None:
    """name -> [N, H, W, C] in [0, 1]: samples/<name>_<step><suffix>.png and a TensorBoard
    image (`suffix` tells apart samples that other settings made, e.g. '_ddim50-discrete')."""
    if not self.is_main:
      return
    for name, imgs in grids.items():
      imgs = np.asarray(imgs)
      scale = max(1, 64 // imgs.shape[1])
      ncol = 8 if len(imgs) % 8 == 0 else None  # keeps pairs / interpolation rows on one row
      image_lib.save_png(os.path.join(self.workdir, 'samples', f'{name}_{step:07d}{suffix}.png'),
                         imgs, ncol=ncol, scale=scale)
      self._tb.add_image(f'{name}{suffix}', image_lib.make_grid(imgs, ncol), step,
                         dataformats='HWC')

  def write_arrays(self, step: int, name: str, arrays: dict, suffix: str = '') -> str | None:
    if not self.is_main:
      return None
    path = os.path.join(self.workdir, 'samples', f'{name}_{step:07d}{suffix}.npz')
    image_lib.save_npz(path, arrays)
    return path

  def write_text(self, step: int, name: str, texts: list[str], suffix: str = '') -> str | None:
    """samples/<name>_<step><suffix>.txt (one sample per block) and a TensorBoard text summary."""
    if not self.is_main:
      return None
    path = os.path.join(self.workdir, 'samples', f'{name}_{step:07d}{suffix}.txt')
    os.makedirs(os.path.dirname(path), exist_ok=True)
    body = '\n\n'.join(f'--- sample {i} ---\n{t}' for i, t in enumerate(texts))
    with open(path, 'w') as f:
      f.write(body + '\n')
    self._tb.add_text(f'{name}{suffix}', body, step)
    return path

  def write_summary_text(self, step: int, tag: str, text: str) -> None:
    """A TensorBoard text summary only (no file)."""
    if self.is_main:
      self._tb.add_text(tag, text, step)
      self._tb.flush()

  def write_json(self, name: str, obj: dict) -> None:
    """Strict JSON: NaN/inf become null, their dotted paths listed under 'nonfinite'."""
    if self.is_main:
      obj, bad = strict_json(obj)
      if bad:
        obj['nonfinite'] = bad
      with open(os.path.join(self.workdir, name), 'w') as f:
        json.dump(obj, f, indent=2, sort_keys=True, allow_nan=False)

  def flush(self) -> None:
    if self.is_main:
      self._jsonl.flush()
      self._tb.flush()

  def close(self) -> None:
    if self.is_main:
      self._tb.close()
      self._jsonl.close()
