"""The feature network of the sample-quality metrics: a small CNN classifier per dataset.

No Inception weights exist offline, so each image dataset gets its own classifier
(`experiments/features_<dataset>/config.py`, the `classifier` family), trained on first use,
deterministically from the config's seed, into a cache directory and reused afterwards. Its
penultimate layer is the feature space and its softmax the class probabilities. Every metric
computed on these features names the feature space (`info['feature_space']`), e.g. "Frechet
distance in features_fashion_mnist (CNN, 128-d penultimate) features" -- never "FID".

  feature_fn, probs_fn, info = load_feature_fn('fashion_mnist')
  feats = feature_fn(images)        # images [N, H, W, C] in [0, 1] -> [N, feature_dim]
"""
from __future__ import annotations

import json
import os
import time
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from research import configs, parallel, trainer
from research.data import datasets, sources

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_BATCH = 500
# How many times this process trained a feature network (tests check the cache with it).
TRAIN_COUNT = 0


def cache_root() -> str:
  """$GENLAB_CACHE, else ~/.cache/genlab/features."""
  return os.path.expanduser(os.environ.get('GENLAB_CACHE') or '~/.cache/genlab/features')


def experiment_config(dataset: str) -> ml_collections.ConfigDict:
  """`experiments/features_<dataset>/config.py`'s config."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  name = f'features_{dataset}'
  path = os.path.join(ROOT, 'experiments', name, 'config.py')
  if not os.path.exists(path):
    raise FileNotFoundError(f'no feature-network experiment for dataset {dataset!r}: '
                            f'create {path} (see experiments/features_fashion_mnist)')
  spec = importlib.util.spec_from_file_location(f'_genlab_cfg_{name}', path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def config_from_json(d: dict) -> ml_collections.ConfigDict:
  """A run's `config.json` -> a full config (the family's defaults, overwritten by the file)."""
  cfg = configs.defaults(d.get('family', 'vae'))

  def update(dst, src):
    for k, v in src.items():
      if isinstance(v, dict) and k in dst and isinstance(dst[k], ml_collections.ConfigDict):
        update(dst[k], v)
      elif k in dst:
        dst[k] = tuple(v) if isinstance(dst[k], tuple) and isinstance(v, list) else v
  update(cfg, d)
  return cfg


def _finished(workdir: str, num_steps: int) -> dict | None:
  path = os.path.join(workdir, 'final_metrics.json')
  if not os.path.exists(path):
    return None
  with open(path) as f:
    final = json.load(f)
  return final if final.get('step') == num_steps and not final.get('preempted') else None


def _resolve(name_or_workdir: str, data_cfg=None):
  """(config, workdir) of the feature network for a dataset name or a classifier run dir."""
  if os.path.isfile(os.path.join(name_or_workdir, 'config.json')):
    with open(os.path.join(name_or_workdir, 'config.json')) as f:
      config = config_from_json(json.load(f))
    if config.family != 'classifier':
      raise ValueError(f'{name_or_workdir} is a {config.family!r} run, not a classifier run')
    return config, name_or_workdir, os.path.basename(os.path.normpath(name_or_workdir))
  config = experiment_config(name_or_workdir)
  experiment = f'features_{name_or_workdir}'
  if data_cfg is not None:  # same data source as the run being evaluated (e.g. TFDS 60k MNIST)
    config.data.source = data_cfg.source
    config.data.data_dir = data_cfg.data_dir
    if data_cfg.source != 'package':
      experiment += f'_{data_cfg.source}'
  return config, os.path.join(cache_root(), experiment), experiment


def ensure_trained(config, workdir: str) -> dict:
  """Trains the feature network in `workdir` unless a finished run is there; returns its final
  metrics. Deterministic from config.seed; a file lock keeps concurrent processes from training
  the same network twice (the second waits and reuses it)."""
  global TRAIN_COUNT
  final = _finished(workdir, config.train.num_steps)
  if final is not None:
    return final
  with sources.file_lock(os.path.join(os.path.dirname(os.path.normpath(workdir)),
                          f'.{os.path.basename(os.path.normpath(workdir))}.lock')):
    final = _finished(workdir, config.train.num_steps)
    if final is None:
      configs.validate(config, num_devices=jax.device_count(), num_processes=jax.process_count())
      logging.info('training the feature network %s (first use)', workdir)
      start = time.perf_counter()
      TRAIN_COUNT += 1
      final = trainer.train(config, workdir)
      logging.info('feature network trained in %.0f s: %s', time.perf_counter() - start,
                   final['eval'])
  return final


def load_feature_fn(name_or_workdir: str, data_cfg=None, batch_size: int = DEFAULT_BATCH
                    ) -> tuple[Callable, Callable, dict]:
  """(feature_fn, probs_fn, info) of the feature network for a dataset (trained and cached on
  first use under $GENLAB_CACHE) or of a finished classifier run directory.

  feature_fn(images [N, H, W, C] in [0, 1]) -> float32 [N, feature_dim]; probs_fn(images) ->
  float32 [N, num_classes]. Both run under plain jit on fixed-size, zero-padded batches.
  info: feature_space (the name every metric reports), experiment, workdir, test_accuracy,
  test_nll, feature_dim, num_classes, image_shape, step.
  """
  config, workdir, experiment = _resolve(name_or_workdir, data_cfg)
  final = ensure_trained(config, workdir)
  exp, state, _, _ = trainer.restore(config, workdir, -1)
  params = parallel.to_host(exp.family.eval_params_of(state))
  family = exp.family
  image_shape = tuple(datasets.DATASETS[config.data.name].image_shape)

  @jax.jit
  def apply(params, x):
    return family.features_and_probs(params, x)

  def run(images):
    x = np.asarray(images, np.float32)
    if x.ndim == 3 and image_shape[-1] == 1:
      x = x[..., None]
    if x.shape[1:] != image_shape:
      raise ValueError(f'images must be [N, {", ".join(map(str, image_shape))}] for the '
                       f'{experiment} feature network, got {x.shape}')
    feats, probs = [], []
    for s in range(0, len(x), batch_size):
      chunk = x[s:s + batch_size]
      n = len(chunk)
      if n < batch_size:
        chunk = np.concatenate([chunk, np.zeros((batch_size - n,) + image_shape, np.float32)])
      f, p = apply(params, jnp.asarray(chunk))
      feats.append(np.asarray(f)[:n])
      probs.append(np.asarray(p)[:n])
    if not feats:
      return (np.zeros((0, config.model.feature_dim), np.float32),
              np.zeros((0, family.num_classes), np.float32))
    return np.concatenate(feats), np.concatenate(probs)

  cache = {}

  def both(images):
    key = id(images)
    if key not in cache:
      cache.clear()
      cache[key] = (images, run(images))
    return cache[key][1]

  ev = final.get('eval') or {}
  info = {
      'feature_space': (f'{experiment} (CNN classifier, {config.model.feature_dim}-d '
                        'penultimate layer)'),
      'experiment': experiment,
      'workdir': workdir,
      'test_accuracy': ev.get('accuracy'),
      'test_nll': ev.get('nll'),
      'test_examples': ev.get('num_examples'),
      'feature_dim': int(config.model.feature_dim),
      'num_classes': int(family.num_classes),
      'image_shape': list(image_shape),
      'step': int(parallel.to_host(state.step)),
  }
  return (lambda images: both(images)[0]), (lambda images: both(images)[1]), info
