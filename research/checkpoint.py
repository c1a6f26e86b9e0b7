"""Checkpoints with Orbax: the whole train state, the run's PRNG key and the data position.

A checkpoint is an Orbax `Composite` of three items:
  state: the family's train state as a state dict (params, optimizer state, EMA, step, ...) and
         the run's base PRNG key,
  data:  the grain iterator's position (per host), so a resumed run sees the same batches,
  meta:  JSON (config, step) for humans and tools.
The latest `keep` checkpoints are kept, plus the best one by an eval metric when one is named.
Restoring targets the current mesh, so a run may resume on another mesh or device count (on
another process count too, with the data order restarting: data positions are per host).
"""
from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import threading
from typing import Any

import flax.serialization
import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from orbax.checkpoint import checkpoint_managers as cm

from research import optim, parallel


class DamagedCheckpoint(Exception):
  """A checkpoint that fails to restore or fails an integrity check (one line)."""


class CheckpointSaveError(Exception):
  """A checkpoint could not be written (a full disk, a read-only or vanished directory)."""


# Room a save needs: the state's bytes times a margin (the OCDBT files' own overhead and the
# old checkpoint kept until the new one commits), plus the small metadata files.
SPACE_MARGIN = 1.25
SPACE_OVERHEAD_BYTES = 256 * 1024


class CheckpointMismatch(Exception):
  """The checkpoints hold another model or optimizer than the config builds (one line)."""


def _one_line(e: Exception) -> str:
  """The gist of a restore error: its type and first sentence (TensorStore appends pages)."""
  text = ' '.join(str(e).split()).split(' See full TensorStore details')[0]
  text = re.split(r' \[source locations=| \[tensorstore_spec=', text)[0] or type(e).__name__
  return (text if isinstance(e, DamagedCheckpoint) else f'{type(e).__name__}: {text}')[:160]


@jax.jit
def _leaf_sums(leaves: list) -> list:
  """Each leaf's bit patterns summed modulo 2**32: any flipped bit changes its sum."""
  out = []
  for x in leaves:
    width = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[x.dtype.itemsize]
    bits = jax.lax.bitcast_convert_type(x, width) if x.dtype != width else x
    out.append(jnp.sum(bits.astype(jnp.uint32), dtype=jnp.uint32))
  return out


def fingerprint(tree) -> list[int]:
  """A checksum per array leaf of `tree` (device or host arrays), computed where they live and
  stored in each checkpoint's meta, so a restore can tell a damaged array from a good one."""
  leaves = [x for x in jax.tree.leaves(tree) if hasattr(x, 'dtype') and np.ndim(x) >= 0
            and np.dtype(x.dtype).itemsize in (1, 2, 4) and np.dtype(x.dtype) != np.bool_]
  return [int(v) for v in jax.device_get(_leaf_sums(leaves))]


@jax.jit
def _all_finite(leaves: list) -> jax.Array:
  return jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])


def nonfinite_paths(tree) -> list[str]:
  """Paths of the tree's floating leaves holding NaN/inf (empty when all finite), from one
  small jitted reduction (one host transfer): cheap next to a save or a restore."""
  leaves = [(p, x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
            if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jnp.inexact)]
  if not leaves:
    return []
  ok = parallel.to_host(_all_finite([x for _, x in leaves]))
  return [jax.tree_util.keystr(p) for (p, _), good in zip(leaves, ok) if not good]


def _state_metadata(directory, step: int):
  """The saved state's tree of array metadata (shapes, dtypes), read without its arrays."""
  handler = ocp.PyTreeCheckpointHandler()
  try:
    meta = handler.metadata(epath.Path(directory) / str(step) / 'state')
  finally:
    handler.close()
  return getattr(meta, 'tree', meta)


def _check_files(step_dir: str) -> None:
  """Cheap checks before Orbax reads a step (whose failures deep inside its async reads also
  print stray tracebacks): the items' directories, the state's metadata JSON, the OCDBT
  manifests."""
  for item in ('state', 'meta'):
    if not os.path.isdir(os.path.join(step_dir, item)):
      raise DamagedCheckpoint(f'its {item}/ directory is missing')
  state = os.path.join(step_dir, 'state')
  try:
    with open(os.path.join(state, '_METADATA'), 'rb') as f:
      json.loads(f.read().decode('utf-8'))
  except (OSError, ValueError) as e:
    raise DamagedCheckpoint(f'state/_METADATA is unreadable ({type(e).__name__})') from None
  manifests = [os.path.join(state, 'manifest.ocdbt')] + [
      os.path.join(state, d, 'manifest.ocdbt') for d in os.listdir(state)
      if d.startswith('ocdbt.process_')]
  if os.path.isdir(os.path.join(state, 'd')):   # the OCDBT format (Orbax's default)
    for m in manifests:
      if not os.path.isfile(m) or os.path.getsize(m) == 0:
        raise DamagedCheckpoint(f'{os.path.relpath(m, step_dir)} is missing or empty')


def _check_same_tree(manager, step: int, target: dict) -> None:
  """Raises CheckpointMismatch when the saved state's array paths or shapes differ from the
  target's (a changed model or optimizer config); metadata it cannot read is left to restore."""
  try:
    meta = _state_metadata(manager.directory, step)
    if meta is None:
      return
    saved = {jax.tree_util.keystr(p): tuple(m.shape)
             for p, m in jax.tree_util.tree_flatten_with_path(meta)[0] if hasattr(m, 'shape')}
  except Exception:  # pylint: disable=broad-except  (a damaged checkpoint: restore reports it)
    return
  want = {jax.tree_util.keystr(p): tuple(np.shape(x))
          for p, x in jax.tree_util.tree_flatten_with_path(target)[0]}
  if saved == want:
    return
  missing, extra = sorted(set(want) - set(saved)), sorted(set(saved) - set(want))
  shapes = [f'{k} {saved[k]} saved, {want[k]} now' for k in sorted(set(want) & set(saved))
            if saved[k] != want[k]]
  what = shapes[:2] or [part for part in (
      missing and f'{len(missing)} arrays not in the checkpoint, e.g. {missing[0]}',
      extra and f'{len(extra)} saved arrays this config lacks, e.g. {extra[0]}') if part]
  raise CheckpointMismatch(
      f'the checkpoints in {manager.directory} hold another model or optimizer than this '
      f'config builds ({"; ".join(what)}): run with the config the run was started with '
      '(its config.json), or use a new --workdir')


class Checkpointer:
  """Thin wrapper over `ocp.CheckpointManager` with the project's layout and policies."""

  def __init__(self, directory: str, *, keep: int = 3, best_metric: str = '',
               best_mode: str = 'min', async_save: bool = True, read_only: bool = False):
    policies = [cm.LatestN(keep)]
    if best_metric:
      policies.append(cm.BestN(get_metric_fn=lambda m: m[best_metric], n=1,
                               reverse=(best_mode == 'max'),
                               keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=cm.AnyPreservationPolicy(policies),
        enable_async_checkpointing=async_save, create=not read_only, read_only=read_only)
    self.best_metric = best_metric
    self.restored_step = None
    self.manager = ocp.CheckpointManager(os.path.abspath(directory), options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def _save_failed(self, step: int | None, why: str) -> 'CheckpointSaveError':
    done = [s for s in self.manager.all_steps() if s != step]
    last = f'step {max(done)}' if done else 'none yet'
    what = f'checkpoint {step}' if step is not None else 'a checkpoint'
    return CheckpointSaveError(
        f'saving {what} in {self.manager.directory} failed ({why}); last complete '
        f'checkpoint: {last}; free space there (or fix the directory) and rerun the same '
        'command: it resumes from that checkpoint')

  def save(self, step: int, state, rng: jax.Array, data_iter, meta: dict,
           metrics: dict | None = None) -> None:
    """Saves (asynchronously) after checking there is room for it; a failed save, now or one
    still in flight from before, raises CheckpointSaveError (one line)."""
    need = SPACE_MARGIN * sum(np.size(x) * np.dtype(x.dtype).itemsize
                              for x in jax.tree.leaves(state) if hasattr(x, 'dtype'))
    need += SPACE_OVERHEAD_BYTES
    free = shutil.disk_usage(self.manager.directory).free
    if free < need:
      self.wait()
      raise self._save_failed(step, f'{free / 2**20:.1f} MiB free, about {need / 2**20:.1f} MiB '
                                    'needed')
    try:
      self._save(step, state, rng, data_iter, meta, metrics)
    except Exception as e:  # pylint: disable=broad-except  (a full disk, a vanished directory)
      raise self._save_failed(step, _one_line(e)) from None

  def _save(self, step, state, rng, data_iter, meta, metrics) -> None:
    if metrics is not None and self.best_metric not in metrics:
      metrics = None  # only eval steps rank for "best"
    args = ocp.args.Composite(
        state=ocp.args.StandardSave({'train': flax.serialization.to_state_dict(state),
                                     'rng': jax.random.key_data(rng)}),
        data=grain.checkpoint.CheckpointSave(data_iter),
        meta=ocp.args.JsonSave(dict(meta, fingerprint=fingerprint(
            {'train': flax.serialization.to_state_dict(state), 'rng': jax.random.key_data(rng)}))))
    self.manager.save(step, args=args, metrics=metrics, force=True)

  def restore(self, step: int | None, state, rng: jax.Array, data_iter=None):
    """Restores onto the shardings of `state` (the freshly initialised state on this mesh).
    Returns (state, rng); moves `data_iter` to the saved position when given.

    `step` None: the newest checkpoint that restores and passes the integrity checks (its
    state's checksum, finite values, this process's data position): a damaged one is named
    in one warning line and the next older one is tried; `restored_step` says which was used.
    Raises DamagedCheckpoint (one line) when none is usable, or a given `step` is damaged, and
    CheckpointMismatch when the checkpoints hold another model or optimizer than `state`."""
    saved = sorted(self.manager.all_steps(), reverse=True)
    if step is not None and step not in saved:
      raise DamagedCheckpoint(
          f'no checkpoint at step {step} in {self.manager.directory} (saved steps: '
          f'{", ".join(map(str, sorted(saved))) or "none"}); pass one of them, or -1 for the latest')
    steps = [step] if step is not None else saved
    problems = []
    for s in steps:
      try:
        out = self._restore_step(s, state, rng, data_iter)
      except CheckpointMismatch:
        raise
      except Exception as e:  # pylint: disable=broad-except  (orbax raises many kinds)
        why = _one_line(e)
        problems.append(f'step {s}: {why}')
        continue
      if problems:
        logging.warning('damaged checkpoint%s in %s (%s): restored step %d instead',
                        's' if len(problems) > 1 else '', self.manager.directory,
                        '; '.join(problems), s)
      self.restored_step = s
      return out
    raise DamagedCheckpoint(
        f'no usable checkpoint in {self.manager.directory} ({"; ".join(problems)}); move the '
        'damaged step directories aside to resume from an older one or to start over')

  def _restore_step(self, step: int, state, rng: jax.Array, data_iter):
    _check_files(os.path.join(str(self.manager.directory), str(step)))
    target = {'train': flax.serialization.to_state_dict(state),
              'rng': jax.random.key_data(rng)}
    _check_same_tree(self.manager, step, target)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    items = {'state': ocp.args.StandardRestore(abstract), 'meta': ocp.args.JsonRestore()}
    if data_iter is not None:
      data_dir = f'{self.manager.directory}/{step}/data'
      own = f'process_{jax.process_index()}-of-{jax.process_count()}.json'
      files = os.listdir(data_dir) if os.path.isdir(data_dir) else []
      counts = {m[1] for f in files if (m := re.match(r'process_\d+-of-(\d+)\.json$', f))}
      if own in files:
        items['data'] = grain.checkpoint.CheckpointRestore(data_iter)
      elif counts and str(jax.process_count()) not in counts:
        # Saved by another number of hosts: their data positions do not map onto ours.
        logging.warning('checkpoint %d holds the data positions of %s processes, this run has '
                        '%d: the state resumes exactly, the data order restarts from the seed',
                        step, '/'.join(sorted(counts)), jax.process_count())
      else:
        raise DamagedCheckpoint(f'its data position {own} is missing')
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    tree = restored['state']
    saved = (restored['meta'] or {}).get('fingerprint')
    if saved is not None and fingerprint(tree) != saved:
      raise DamagedCheckpoint('its arrays differ from those saved (checksum mismatch)')
    if bad := nonfinite_paths(tree):
      raise DamagedCheckpoint(f'NaN/inf in {", ".join(bad[:3])}')
    state = flax.serialization.from_state_dict(state, tree['train'])
    return state, jax.random.wrap_key_data(tree['rng'])

  def restore_params(self, step: int | None) -> dict:
    """The raw (host numpy) train-state dict of a checkpoint, for transfer learning and tools.
    Reads every array whole, whatever devices and hosts wrote it (a pod run's checkpoint opens
    on a laptop)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'no checkpoint in {self.manager.directory}')
    reader = ocp.CheckpointManager(
        self.manager.directory, options=ocp.CheckpointManagerOptions(read_only=True),
        item_handlers={'state': ocp.PyTreeCheckpointHandler()})
    as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                            _state_metadata(self.manager.directory, step))
    restored = reader.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(restore_args=as_numpy)))
    reader.close()
    return restored['state']['train']

  def model_params(self, step: int | None = None) -> dict:
    """The parameters a checkpoint evaluates with (host numpy): its EMA copy when the run kept
    one, else its parameters."""
    tree = self.restore_params(step)
    return tree.get('ema_params') or tree['params']

  def read_meta(self, step: int | None = None) -> dict:
    """The JSON meta saved with checkpoint `step` (None = the latest): {'step', 'config'}."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'no checkpoint in {self.manager.directory}')
    restored = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return restored['meta']

  def wait(self) -> None:
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except  (the in-flight async save failed)
      raise self._save_failed(None, _one_line(e)) from None

  def close(self) -> None:
    self.manager.close()


# ---------------------------------------------------------------------------------------------
# Transfer learning


def parse_param_map(text: str) -> list[tuple[str, str]]:
  """'dst_regex=src_repl,...' -> [(dst_regex, src_repl)]; validated by configs."""
  rules = []
  for item in filter(None, (t.strip() for t in text.split(','))):
    dst, _, src = item.partition('=')
    rules.append((dst.strip(), src.strip()))
  return rules


def transfer_params(target: Any, source: dict, param_map: str = '') -> tuple[Any, dict]:
  """Copies parameters from `source` (a nested dict, e.g. another run's params) into `target`.

  Each target path ('encoder/Dense_0/kernel') is mapped to a source path by the first rule whose
  regex matches it (`re.sub(dst_regex, src_repl, path)`), or kept as is. A leaf is copied when
  the source has that path with the same shape; otherwise it keeps its fresh initialisation.
  Returns (new target, report with the copied and kept paths).
  """
  rules = [(re.compile(d), s) for d, s in parse_param_map(param_map)]
  flat_src = {optim.param_path(p): np.asarray(v)
              for p, v in jax.tree_util.tree_flatten_with_path(source)[0]}
  copied, kept = [], []

  def pick(path, leaf):
    name = optim.param_path(path)
    src = name
    for regex, repl in rules:
      if regex.search(name):
        src = regex.sub(repl, name)
        break
    value = flat_src.get(src)
    if value is not None and value.shape == np.shape(leaf):
      copied.append(name)
      return value.astype(np.asarray(leaf).dtype) if hasattr(leaf, 'dtype') else value
    kept.append(name)
    return leaf

  new = jax.tree_util.tree_map_with_path(pick, target)
  return new, {'copied': copied, 'kept': kept}


# ---------------------------------------------------------------------------------------------
# Preemption


class WorkdirInUse(Exception):
  """Another live process trains in this workdir (it holds WORKDIR/.lock)."""


@contextlib.contextmanager
def workdir_lock(workdir: str):
  """Holds an exclusive lock on WORKDIR/.lock (process 0 of a run) while training, so two runs
  never write one workdir. The kernel drops the lock when its process dies, however it dies
  (SIGKILL, a preempted VM), so a stale lock never blocks a rerun."""
  if jax.process_index() != 0:
    yield
    return
  os.makedirs(workdir, exist_ok=True)
  f = open(os.path.join(workdir, '.lock'), 'a+')
  try:
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    f.seek(0)
    holder = f.read().strip() or 'another process'
    f.close()
    raise WorkdirInUse(f'--workdir={workdir} is in use by another run ({holder}); wait for it '
                       'to end, or stop it, or pick another --workdir') from None
  f.seek(0)
  f.truncate()
  f.write(f'pid {os.getpid()} on {socket.gethostname()} since '
          f'{datetime.datetime.now().isoformat(timespec="seconds")}\n')
  f.flush()
  try:
    yield
  finally:
    fcntl.flock(f, fcntl.LOCK_UN)
    f.close()


class Preempted(Exception):
  """A preemption signal arrived during a phase that stops between its calls (eval batches)."""


class PreemptionGuard:
  """SIGTERM/SIGINT (TPU VM preemption, Ctrl-C) -> a flag the loop checks at step boundaries
  and between eval batches, so the run saves a checkpoint and exits 0 instead of dying mid-step.

  A Python signal handler runs only when the main thread next executes Python, which a long
  compiled call (a 1000-step sampler) can delay by minutes. So the guard also has the C-level
  handler write each signal to a pipe (`signal.set_wakeup_fd`) that a watcher thread reads at
  once: inside `exit_on_signal(callback)` -- a phase whose step is already checkpointed -- the
  watcher calls `callback` (which waits for the save and ends the process) within the signal's
  arrival, whatever the main thread is doing.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.requested = False
    self._previous = {}
    self._on_signal = None
    self._pipe = None
    self._old_wakeup = None
    self._watcher = None

  def _handler(self, signum, frame):
    del frame
    if not self.requested:
      logging.warning('received signal %d: checkpointing at the next step boundary', signum)
    self.requested = True

  def _watch(self, fd: int):
    while data := os.read(fd, 64):
      if any(b in {int(s) for s in self.SIGNALS} for b in data):
        self.requested = True
        if (callback := self._on_signal) is not None:
          callback()

  @contextlib.contextmanager
  def exit_on_signal(self, callback):
    """Within the block a signal calls `callback()` at once, from the watcher thread."""
    self._on_signal = callback
    try:
      yield
    finally:
      self._on_signal = None

  def __enter__(self):
    for s in self.SIGNALS:
      try:
        self._previous[s] = signal.signal(s, self._handler)
      except ValueError:  # not the main thread (e.g. inside some test runners): no handler
        return self
    r, w = os.pipe()
    os.set_blocking(w, False)
    try:
      self._old_wakeup = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    except ValueError:
      os.close(r), os.close(w)
      return self
    self._pipe = (r, w)
    self._watcher = threading.Thread(target=self._watch, args=(r,), daemon=True,
                                     name='preemption-watcher')
    self._watcher.start()
    return self

  def __exit__(self, *exc):
    if self._pipe is not None:
      signal.set_wakeup_fd(self._old_wakeup)
      r, w = self._pipe
      os.close(w)                 # the watcher's read returns b'': it ends
      self._watcher.join(timeout=5)
      os.close(r)
      self._pipe = None
    for s, h in self._previous.items():
      signal.signal(s, h)
    return False
