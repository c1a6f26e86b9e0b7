"""The harness: one training loop, eval and sampling for every family.

It owns devices (a data-parallel mesh over every device of every host), the data pipeline,
checkpoints (resume, preemption, transfer), logging and the eval/sample cadence. A family only
supplies the pure per-device functions of `research.family.Family`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from absl import logging

from research import checkpoint as ckpt_lib
from research import configs, curriculum, optim, parallel, sharding, train_state
from research import images as image_lib
from research.data import pipeline, toy
from research.metric_writers import MetricWriter


class NonFiniteError(RuntimeError):
  """Training produced NaN/inf (metrics or state), or a loss beyond `train.divergence_limit`;
  raised before anything from that step is saved."""


@dataclasses.dataclass
class BoundFamily:
  """A family bound to a mesh: its compiled per-device functions and the run's keys."""
  config: ml_collections.ConfigDict
  family: Any
  mesh: jax.sharding.Mesh
  init: Callable
  train_step: Callable
  eval_step: Callable
  sample: Callable
  visualize: Callable

  @property
  def num_devices(self) -> int:
    return self.mesh.size


def make_mesh(config: ml_collections.ConfigDict, devices=None) -> jax.sharding.Mesh:
  """The run's mesh: 1-D over every device (default), or (batch, model) for the sharded path."""
  if config.parallel.mode == 'sharded':
    return sharding.make_mesh(config.parallel.model_axis, devices)
  return parallel.make_mesh(devices)


def build(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh | None = None) -> BoundFamily:
  """Binds the config's family to a mesh and wraps its per-device functions: data parallelism
  over a replicated state (default), or the sharded path (`research/sharding.py`)."""
  mesh = mesh or make_mesh(config)
  family = configs.family_class(config.family)(config)
  ndev = mesh.shape[parallel.AXIS]  # devices that split the batch
  samples_per_device = -(-config.eval.num_samples // ndev)  # ceil

  def train_step(state, batch, key):
    return family.train_step(state, batch, jax.random.fold_in(key, state.step))

  def eval_step(state, batch, key):
    return family.eval_step(state, batch, key), batch['mask']

  def sample(state, key):
    return family.sample(state, parallel.device_key(key), samples_per_device)

  def visualize(state, batch, key):
    return family.visualize(state, batch, parallel.device_key(key))

  dp = parallel.data_parallel
  if config.parallel.mode == 'sharded':   # the state's layout and the update are the path's own
    init, step = sharding.init_and_train_step(family, config, mesh)
  else:
    init = dp(family.init_state, mesh, batch_args=(1,), out_batched=False)
    step = dp(train_step, mesh, batch_args=(1,), out_batched=(False, False), donate_argnums=(0,))
  # Eval, sampling and visualisation read the state in whatever layout it has.
  return BoundFamily(
      config=config, family=family, mesh=mesh, init=init, train_step=step,
      eval_step=dp(eval_step, mesh, batch_args=(1,), out_batched=True),
      sample=dp(sample, mesh, batch_args=(), out_batched=True),
      visualize=dp(visualize, mesh, batch_args=(1,), out_batched=True))


def _keys(seed: int, mesh: jax.sharding.Mesh):
  """(init, train, eval, sample) keys, replicated on the mesh (so checkpoints restore them with
  the same sharding as the state, on any number of hosts)."""
  keys = jax.random.key_data(jax.random.split(jax.random.key(seed), 4))
  return tuple(jax.random.wrap_key_data(k) for k in parallel.put_replicated(list(keys), mesh))


def _train_iterator(config):
  return pipeline.train_iterator(config.data, config.train.batch_size, config.seed,
                                 jax.process_index(), jax.process_count())


def _eval_batches(config):
  return pipeline.eval_batches(config.data, config.eval.batch_size, jax.process_index(),
                               jax.process_count(), seed=config.seed)


def init_state(exp: BoundFamily, data_iter):
  """Fresh, replicated train state. Peeks at one batch for shapes without consuming it."""
  position = data_iter.get_state()
  batch = next(data_iter)
  data_iter.set_state(position)
  init_key = _keys(exp.config.seed, exp.mesh)[0]
  return exp.init(init_key, parallel.host_batch_to_global(batch, exp.mesh))


# Eval metrics where lower is better and an EMA should not be far behind the raw parameters.
_EMA_CHECKED = ('loss', 'bpd', 'nll', 'neg_elbo')
STALE_EMA_RATIO = 1.25


def stale_ema_warning(metrics: dict, step: int, decay: float) -> str | None:
  """One line when an EMA metric (of `_EMA_CHECKED`) is over STALE_EMA_RATIO x its raw-params
  value `raw_<name>`, e.g. a 0.999 EMA after a few hundred steps without the warm-up."""
  for k, ema in metrics.items():
    raw = metrics.get(f'raw_{k}')
    if raw is None or not any(w in k for w in _EMA_CHECKED) or not raw > 0:
      continue
    if ema > STALE_EMA_RATIO * raw:
      return (f'eval at step {step}: EMA {k} {ema:.4g} is {ema / raw:.1f}x the raw parameters\' '
              f'{raw:.4g}: the EMA (optimizer.ema_decay={decay:g}) lags the model; train longer, '
              'lower optimizer.ema_decay or set optimizer.ema_warmup=True')
  return None


def evaluate(exp: BoundFamily, state, key, stop: Callable[[], bool] | None = None) -> dict:
  """Per-example eval metrics averaged over the whole eval split (padding dropped), then the
  family's host-side eval. With an EMA (and `eval.compare_raw`) the per-example metrics are
  also computed on the raw parameters (`raw_*`), with a warning when the EMA is far worse.
  `stop()` is asked before every eval batch; when true, `checkpoint.Preempted` is raised."""
  metrics = _split_means(exp, state, key, stop)
  if exp.config.eval.compare_raw and train_state.has_ema(state):
    raw = _split_means(exp, train_state.raw_params_view(state), key, stop)
    metrics |= {f'raw_{k}': v for k, v in raw.items() if k != 'num_examples'}
    step = int(parallel.to_host(state.step))
    if warning := stale_ema_warning(metrics, step, exp.config.optimizer.ema_decay):
      logging.warning(warning)
  return metrics | exp.family.host_eval(state, _stoppable(_eval_batches(exp.config), stop), key)


def _stoppable(batches, stop: Callable[[], bool] | None):
  """The batches, asking `stop()` before each one (raising `checkpoint.Preempted`)."""
  for batch in batches:
    if stop is not None and stop():
      raise ckpt_lib.Preempted()
    yield batch


def _split_means(exp: BoundFamily, state, key, stop=None) -> dict:
  """`eval_step`'s per-example metrics averaged over the eval split, and `finalize_eval`'s."""
  sums, count = {}, 0.0
  for i, batch in enumerate(_stoppable(_eval_batches(exp.config), stop)):
    out, mask = exp.eval_step(state, parallel.host_batch_to_global(batch, exp.mesh),
                              jax.random.fold_in(key, i))
    out, mask = parallel.to_host((out, mask))
    out = exp.family.host_metrics(out)
    for k, v in out.items():
      sums[k] = sums.get(k, 0.0) + float(np.sum(np.asarray(v, np.float64) * mask))
    count += float(mask.sum())
  metrics = {k: v / count for k, v in sums.items()} | {'num_examples': int(count)}
  return metrics | exp.family.finalize_eval(metrics)


def write_samples(exp: BoundFamily, state, key, writer: MetricWriter, step: int) -> dict:
  """Sample grids (PNG), raw samples (.npz, with a JSON of what made them) and the family's
  visualizations of a data batch. Samples of other sampler settings get other file names."""
  out = {}
  batch = next(iter(_eval_batches(exp.config)))
  if exp.config.eval.num_samples:
    samples = parallel.to_host(exp.sample(state, key))
    samples = {k: v[:exp.config.eval.num_samples] for k, v in samples.items()}
    settings = exp.family.sample_settings()
    suffix = f"_{settings['tag']}" if settings.get('tag') else ''
    if 'images' in samples:
      writer.write_images(step, {'samples': samples['images']}, suffix)
    if texts := exp.family.sample_text(samples):
      out['text'] = writer.write_text(step, 'samples', texts, suffix)
    out['npz'] = writer.write_arrays(step, 'samples', samples, suffix)
    if 'points' in samples:   # 2-D toy data: generated against real points, modes marked
      writer.write_images(step, {'scatter': toy_scatter(exp.config.data.name, batch['x'],
                                                        samples['points'])}, suffix)
    if out['npz']:
      write_sample_info(out['npz'], settings, step=step, seed=exp.config.seed,
                        num_samples=len(next(iter(samples.values()))),
                        params='ema' if train_state.has_ema(state) else 'raw')
  grids = parallel.to_host(exp.visualize(
      state, parallel.host_batch_to_global(batch, exp.mesh), jax.random.fold_in(key, 1)))
  writer.write_images(step, grids)
  return out


def toy_scatter(dataset: str, real, fake) -> np.ndarray:
  """[1, H, W, 3] floats: a scatter PNG of generated vs real 2-D points, each mixture mode's
  high-quality disc (3 std, the PacGAN protocol) outlined."""
  std = toy.mode_std(dataset)
  img, outside = image_lib.scatter(real, fake, toy.modes(dataset), 3 * std if std else None)
  if outside:
    logging.info('scatter: %d of %d generated points lie outside the view', outside, len(fake))
  return img[None].astype(np.float32) / 255.0


def write_sample_info(npz_path: str, settings: dict, **info) -> str:
  """The JSON beside a sample file (same name, .json): the family's sample settings (sampler,
  steps, grid, guidance, clipping, ...), the checkpoint step, the seed and which parameters."""
  path = os.path.splitext(npz_path)[0] + '.json'
  with open(path, 'w') as f:
    json.dump(dict(info, **settings), f, indent=2, sort_keys=True, default=str)
  return path


# Paths of a state's floating leaves holding NaN/inf, from one small jitted reduction.
_nonfinite_state = ckpt_lib.nonfinite_paths


def _nonfinite_metrics(host: list[dict], first_step: int, limit: float = 0.0) -> str | None:
  """'non-finite training at step S: loss=nan, ...' for the first of the per-step host metrics
  with NaN/inf, or 'diverged ...' for the first loss (a metric named *loss*) whose magnitude
  exceeds `limit` (0 = no limit)."""
  for i, m in enumerate(host):
    bad = sorted((k for k, v in m.items() if not np.all(np.isfinite(v))),
                 key=lambda k: (k != 'loss', k))
    what = 'non-finite training'
    if not bad and limit:
      bad = sorted(k for k, v in m.items() if 'loss' in k and np.any(np.abs(v) > limit))
      what = 'diverged training'
    if bad:
      values = ', '.join(f'{k}={float(np.mean(m[k])):g}' for k in bad)
      why = f' (|loss| > train.divergence_limit={limit:g})' if what[0] == 'd' else ''
      return f'{what} at step {first_step + i}: {values}{why}'
  return None


# Blow-up check: each step's train `loss` against the median of the earlier steps' losses, once
# there are this many of them (and that median is positive); the median covers the last
# BLOW_UP_HISTORY steps.
BLOW_UP_MIN_STEPS = 20
BLOW_UP_HISTORY = 10_000


def blow_up(history: list[float], losses: list[float], first_step: int,
            factor: float) -> str | None:
  """'diverged training ...' for the first of `losses` (steps first_step, first_step + 1, ...)
  that exceeds `factor` x the median of `history` (the earlier steps' losses), else None: a
  finite divergence, e.g. a too-high learning rate taking a loss of 30 to 1e8, which the NaN
  checks do not see until it overflows."""
  if not factor or len(history) < BLOW_UP_MIN_STEPS:
    return None
  median = float(np.median(history[-BLOW_UP_HISTORY:]))
  for i, loss in enumerate(losses):
    if median > 0 and loss > factor * median:
      return (f'diverged training at step {first_step + i}: loss={loss:.4g} is '
              f'{loss / median:.3g}x the median {median:.4g} of the earlier steps '
              f'(train.divergence_factor={factor:g}; 0 turns the check off)')
  return None


# Eval metrics that a healthy model never reports as NaN/inf (their names contain one of these).
_MUST_BE_FINITE = ('loss', 'nll', 'elbo', 'bpd', 'bits', 'perplexity')


def nonfinite_eval(metrics: dict, step: int) -> str | None:
  """'non-finite eval at step S: loss=nan, ...' for NaN/inf losses and likelihoods, else None."""
  bad = sorted(k for k, v in metrics.items() if any(w in k for w in _MUST_BE_FINITE)
               and isinstance(v, (int, float, np.floating)) and not np.isfinite(v))
  if bad:
    return f'non-finite eval at step {step}: ' + ', '.join(f'{k}={metrics[k]}' for k in bad)
  return None


def _nonfinite(state, pending: list, step: int, limit: float = 0.0) -> str | None:
  """Before state is evaluated, sampled or saved: the not-yet-logged metrics, then the state."""
  if pending:  # only transferred at log steps otherwise
    bad = _nonfinite_metrics(parallel.to_host(pending), step - len(pending) + 1, limit)
    if bad:
      return bad
  leaves = _nonfinite_state(state)
  if leaves:
    more = f' and {len(leaves) - 3} more' if len(leaves) > 3 else ''
    return f'non-finite training at step {step}: NaN/inf in state{", state".join(leaves[:3])}{more}'
  return None


def _stop_nonfinite(what: str, config, ckpt, writer, workdir: str):
  """Lets in-flight saves finish (the last good checkpoint stays intact), then raises."""
  ckpt.wait()
  last = ckpt.latest_step()
  ckpt.close()
  writer.close()
  where = os.path.join(workdir, 'checkpoints')
  saved = f'last checkpoint: step {last} in {where}' if last is not None else 'no checkpoint yet'
  fix = ('lower optimizer.lr' if config.optimizer.clip_grad_norm
         else 'lower optimizer.lr or set optimizer.clip_grad_norm')
  raise NonFiniteError(f'{what}; stopped without saving ({saved}); {fix}')


def _meta(config, step: int, pending: list[str]) -> dict:
  """A checkpoint's JSON: its step, the config, and the phases (eval, sample) of this step a
  preemption left undone, which a resumed run does first."""
  return {'step': step, 'config': json.loads(config.to_json_best_effort()),
          'pending': list(pending)}


def _transfer(exp: BoundFamily, state):
  """Initialises parameters from another run's checkpoint (transfer learning)."""
  src = exp.config.init_from
  source = ckpt_lib.Checkpointer(os.path.join(src.workdir, 'checkpoints'), read_only=True)
  tree = source.restore_params(None if src.step < 0 else src.step)
  source.close()
  host_params = parallel.to_host(state.params)
  params, report = ckpt_lib.transfer_params(host_params, tree['params'], src.param_map)
  if not report['copied']:
    raise configs.ConfigError(
        f'config.init_from.workdir={src.workdir!r}: no parameter matched by path and shape; '
        'map paths with init_from.param_map="dst_regex=src_prefix"')
  logging.info('transfer: copied %d params from %s, kept %d fresh: %s', len(report['copied']),
               src.workdir, len(report['kept']), report['kept'])
  params = parallel.put_global(params, sharding.layout(state.params))

  # Optimizer state and EMA restart from the transferred parameters (built under jit so the new
  # state is replicated on every host's devices).
  def fresh(params, model_state):
    return type(state).create(params, state.tx, model_state, state.ema_decay, state.ema_warmup)
  return jax.jit(fresh, out_shardings=sharding.layout(state))(params, state.model_state)


def train(config: ml_collections.ConfigDict, workdir: str,
          on_step: Callable[[int, dict], None] | None = None,
          mesh: jax.sharding.Mesh | None = None) -> dict:
  """Trains (or resumes) the run in `workdir`; returns the final metrics.

  `on_step(step, host_batch)` is called after each step (tests and tools use it). Raises
  `checkpoint.WorkdirInUse` when another live run trains in `workdir`.
  """
  # The guard covers start-up too: a signal while restoring or compiling ends the run at the
  # first step boundary (exit 0, nothing lost), not by the default handler.
  with ckpt_lib.workdir_lock(workdir), ckpt_lib.PreemptionGuard() as guard:
    return _train(config, workdir, on_step, mesh, guard)


def _train(config, workdir, on_step, mesh, guard) -> dict:
  exp = build(config, mesh)
  t = config.train
  _, train_key, eval_key, sample_key = _keys(config.seed, exp.mesh)
  data_iter = _train_iterator(config)
  state = init_state(exp, data_iter)
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, 'checkpoints'), keep=t.keep_checkpoints,
                               best_metric=config.eval.best_metric,
                               best_mode=config.eval.best_mode, async_save=t.async_checkpoints)
  redo = []
  if ckpt.latest_step() is not None:
    state, train_key = ckpt.restore(None, state, train_key, data_iter)
    redo = ckpt.read_meta(ckpt.restored_step).get('pending', [])
    logging.info('resumed from step %d in %s%s', int(state.step), workdir,
                 f' (redoing its {" and ".join(redo)})' if redo else '')
  else:
    if config.init_from.workdir:
      state = _transfer(exp, state)
    state = exp.family.prepare_state(state, exp.mesh)
  step = int(parallel.to_host(state.step))
  writer = MetricWriter(workdir, t.num_steps, t.batch_size)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2))
    exp.family.save_assets(workdir)
  _, schedule = optim.make(config.optimizer, t.num_steps)
  cur = curriculum.make(config.curriculum)
  n_params = sum(np.size(x) for x in jax.tree.leaves(getattr(state, 'params', state)))
  logging.info('%s: %d parameters, %d devices (mesh %s), global batch %d', config.family,
               n_params, exp.num_devices, dict(exp.mesh.shape), t.batch_size)

  pending, train_metrics, eval_metrics, rates, losses = [], {}, {}, {}, []
  start_time, start_step, preempted = time.perf_counter(), step, False

  def summary(preempted: bool) -> dict:
    elapsed = time.perf_counter() - start_time
    return {'step': step, 'train': train_metrics, 'eval': eval_metrics, 'preempted': preempted,
            'wall_time_s': elapsed, 'steps_per_sec': (step - start_step) / max(elapsed, 1e-9),
            'num_params': int(n_params), 'num_devices': exp.num_devices}

  def save(todo: list[str], metrics: dict | None = None) -> None:
    """Checkpoints this step; `todo` names the phases (eval, sample) a resume must redo."""
    if ckpt.latest_step() != step:   # a resumed step's redone phases: already saved
      ckpt.save(step, state, train_key, data_iter, _meta(config, step, todo), metrics=metrics)

  def exit_preempted() -> None:
    """A signal during sampling (its step already saved): wait for the save, then end now."""
    logging.warning('preempted during sampling at step %d: checkpoint saved; exiting (rerun the '
                    'same command to resume: the samples are redone)', step)
    try:
      ckpt.wait()
      writer.write_json('final_metrics.json', summary(True))
      writer.flush()
    except Exception as e:  # pylint: disable=broad-except  (this thread must end the process)
      print(f'error: {e}', file=sys.stderr, flush=True)
      os._exit(2)  # pylint: disable=protected-access
    os._exit(0)  # pylint: disable=protected-access

  def phases(do_eval: bool, do_sample: bool) -> tuple[dict | None, bool, bool]:
    """Eval and sampling at this step, preemption-safe: (eval metrics, preempted, saved)."""
    todo = [p for p, on in (('eval', do_eval), ('sample', do_sample)) if on]
    if not todo:
      return None, False, False
    stop = lambda: parallel.any_host(guard.requested)
    if stop():   # a notice gives seconds and these phases can take minutes: save first
      save(todo)
      return None, True, True
    logging.info('step %d: %s', step, ' and '.join(todo))
    evaluated = None
    if do_eval:
      try:
        evaluated = evaluate(exp, state, eval_key, stop=stop)
      except ckpt_lib.Preempted:
        save(todo)
        return None, True, True
      writer.write_scalars(step, evaluated, 'eval')
      logging.info('eval at step %d: %s', step, evaluated)
      if t.stop_on_nonfinite and (bad := nonfinite_eval(evaluated, step)):
        _stop_nonfinite(bad, config, ckpt, writer, workdir)
      if (best := config.eval.best_metric) and best not in evaluated:
        # A misspelled name would silently never keep a best checkpoint: stop at the first eval
        # with the names there are, the run saved (nothing lost; the rerun resumes).
        save(['sample'] if do_sample else [])
        ckpt.wait()
        raise configs.ConfigError(
            f'config.eval.best_metric={best!r}: not an eval metric of this run (it has '
            f'{", ".join(sorted(k for k in evaluated if not k.endswith("_se")))}); saved step '
            f'{step}: rerun with one of those names to resume')
    if do_sample:   # saved first: a signal during a long sampler call then ends the run at once
      save(['sample'], evaluated)
      with guard.exit_on_signal(exit_preempted):
        write_samples(exp, state, sample_key, writer, step)
      return evaluated, stop(), True
    return evaluated, False, False

  preempted = parallel.any_host(guard.requested)   # a signal during start-up
  if redo and not preempted:   # the phases a preempted run left undone at its last step
    evaluated, preempted, _ = phases('eval' in redo, 'sample' in redo)
    eval_metrics = evaluated or eval_metrics
  while step < t.num_steps and not preempted:
    batch = next(data_iter)
    if cur is not None:
      batch = exp.family.apply_curriculum(batch, cur(step))
    state, metrics = exp.train_step(state, parallel.host_batch_to_global(batch, exp.mesh),
                                    train_key)
    pending.append(metrics)
    step += 1
    if on_step is not None:
      on_step(step, batch)
    last = step == t.num_steps
    if step % t.log_every == 0 or last:
      host = parallel.to_host(pending)
      train_metrics = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
      train_metrics['lr'] = float(schedule(step - 1))
      if cur is not None:
        train_metrics['curriculum'] = float(cur(step - 1))
      rates = writer.progress(step, train_metrics)
      writer.write_scalars(step, train_metrics | rates, 'train')  # NaNs logged, then stop
      bad = t.stop_on_nonfinite and _nonfinite_metrics(host, step - len(host) + 1,
                                                           t.divergence_limit)
      if t.stop_on_nonfinite and not bad and 'loss' in host[0]:
        window = [float(np.mean(m['loss'])) for m in host]
        bad = blow_up(losses, window, step - len(host) + 1, t.divergence_factor)
        losses = (losses + window)[-BLOW_UP_HISTORY:]
      if bad:
        _stop_nonfinite(bad, config, ckpt, writer, workdir)
      pending = []
    do_eval = step % t.eval_every == 0 or last
    do_sample = step % t.sample_every == 0 or last
    # Also before eval/sampling: host-side metrics may fail obscurely on a NaN state.
    checked = t.stop_on_nonfinite and (do_eval or do_sample)
    if checked and (bad := _nonfinite(state, pending, step, t.divergence_limit)):
      _stop_nonfinite(bad, config, ckpt, writer, workdir)
    evaluated, preempted, saved = phases(do_eval, do_sample)
    eval_metrics = evaluated or eval_metrics
    preempted = preempted or parallel.any_host(guard.requested)
    if not saved and (step % t.checkpoint_every == 0 or last or preempted):
      bad = (t.stop_on_nonfinite and not checked
             and _nonfinite(state, pending, step, t.divergence_limit))
      if bad:
        _stop_nonfinite(bad, config, ckpt, writer, workdir)
      save([], evaluated)
  if preempted:
    ckpt.wait()
    logging.warning('preempted: %s; rerun the same command to resume', f'saved step {step}'
                    if ckpt.latest_step() == step else 'before a step (nothing new to save)')
  if not eval_metrics and not preempted and step >= t.num_steps:
    # Resumed from the final checkpoint (e.g. killed after saving it): the final metrics still
    # report the eval of the finished run.
    eval_metrics = evaluate(exp, state, eval_key)
    writer.write_scalars(step, eval_metrics, 'eval')
  ckpt.wait()
  ckpt.close()
  final = summary(preempted)
  writer.write_json('final_metrics.json', final)
  writer.close()
  return final


def restore(config, workdir: str, step: int = -1):
  """(experiment, state, eval_key, sample_key) of a saved run at `step` (-1 = latest), built on
  this process's devices (any count: checkpoints are device-count independent)."""
  exp = build(config)
  _, train_key, eval_key, sample_key = _keys(config.seed, exp.mesh)
  state = init_state(exp, _train_iterator(config))
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, 'checkpoints'), read_only=True)
  if ckpt.latest_step() is None:
    raise FileNotFoundError(f'no checkpoint under {workdir}/checkpoints: train first')
  state, _ = ckpt.restore(None if step < 0 else step, state, train_key)
  ckpt.close()
  return exp, state, eval_key, sample_key


def evaluate_checkpoint(config, workdir: str, step: int = -1) -> dict:
  """`--mode=eval`: eval a saved checkpoint; writes eval_<step>.json."""
  exp, state, eval_key, _ = restore(config, workdir, step)
  step = int(parallel.to_host(state.step))
  metrics = evaluate(exp, state, eval_key) | {'step': step}
  writer = MetricWriter(workdir, config.train.num_steps, config.train.batch_size)
  writer.write_json(f'eval_{step}.json', metrics)
  writer.close()
  logging.info('eval at step %d: %s', step, metrics)
  return metrics


def sample_checkpoint(config, workdir: str, step: int = -1) -> dict:
  """`--mode=sample`: sample grids and raw samples from a saved checkpoint."""
  exp, state, _, sample_key = restore(config, workdir, step)
  step = int(parallel.to_host(state.step))
  writer = MetricWriter(workdir, config.train.num_steps, config.train.batch_size)
  out = write_samples(exp, state, sample_key, writer, step)
  writer.close()
  logging.info('samples at step %d written under %s/samples', step, workdir)
  if out.get('text') and jax.process_index() == 0:  # text samples: the user asked to read them
    with open(out['text']) as f:
      print(f.read(), end='')
  return out
