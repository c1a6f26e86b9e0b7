"""A run's sample sets: `samples/samples_<step>[_<tag>].npz`, each with a JSON of what drew it.

The harness writes one set per sampler setting at each sample step (`trainer.write_samples`; the
tag comes from `Family.sample_settings`); the evaluation commands read them, draw more from the
same checkpoint and settings when a set holds too few, and draw independent sets for error
bars (`eval_samples_<step>[_<tag>]_draw<d>.npz`, cached).
"""
from __future__ import annotations

import glob
import json
import os
import re

import jax
import numpy as np

from research import images as image_lib
from research import parallel, trainer

_CHUNK = 1000  # samples drawn per call when drawing more


_SET = re.compile(r'samples_(\d+)(?:_(.+))?\.npz$')


def sample_sets(workdir: str) -> dict[str, dict[int, str]]:
  """The run's saved sample sets: tag ('' for an untagged family) -> {step: .npz path}. A tag
  names the settings that drew the set (e.g. 'ddim50-discrete'; `Family.sample_settings`)."""
  sets = {}
  for p in glob.glob(os.path.join(workdir, 'samples', 'samples_*.npz')):
    if m := _SET.match(os.path.basename(p)):
      sets.setdefault(m.group(2) or '', {})[int(m.group(1))] = p
  return sets


def latest_tags(workdir: str) -> list[str]:
  """Tags of the sample sets saved at the run's latest sampled step (sorted)."""
  sets = sample_sets(workdir)
  if not sets:
    return []
  last = max(max(steps) for steps in sets.values())
  return sorted(t for t, steps in sets.items() if last in steps)


def sample_info(npz_path: str) -> dict:
  """The JSON written beside a sample file (what made it), or {} for older runs."""
  path = os.path.splitext(npz_path)[0] + '.json'
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def with_settings(config, settings: dict):
  """`config` with the `config` overrides of a sample set's settings (the sampler that drew it)."""
  config = config.copy_and_resolve_references()
  for k, v in settings.get('config', {}).items():
    if isinstance(v, dict):
      config[k].update(v)
    else:
      config[k] = v
  return config


def suffix(tag: str, draw: int = 0) -> str:
  """The file-name part after the step: '_<tag>' and '_draw<d>' for draw d > 0."""
  return (f'_{tag}' if tag else '') + (f'_draw{draw}' if draw else '')


def _keys(key) -> tuple[str, ...]:
  return (key,) if isinstance(key, str) else tuple(key)


def _read(path: str, key) -> dict | None:
  """The arrays `key` (a name or several) of a saved set, or None if it lacks one."""
  with np.load(path) as z:
    return {k: np.asarray(z[k]) for k in _keys(key)} if all(k in z for k in _keys(key)) else None


def _out(arrays: dict, key, num: int | None = None):
  """The first `num` rows of each array: the array itself for one key, a dict for several."""
  arrays = {k: v[:num] for k, v in arrays.items()}
  return arrays[key] if isinstance(key, str) else arrays


def sample_chunks(sample, state, base_key, num: int, chunk: int, names, family: str = '',
                  first: int = 0) -> dict:
  """`num` samples from calls `sample(state, fold_in(base_key, first + i))` of `chunk` samples
  each: {name: array [num, ...]} for each of the family's outputs in `names`."""
  out = []
  for i in range(-(-num // chunk)):
    s = parallel.to_host(sample(state, jax.random.fold_in(base_key, first + i)))
    if missing := [k for k in names if k not in s]:
      raise ValueError(f'the {family!r} family draws no {missing[0]}')
    out.append({k: np.asarray(s[k])[:chunk] for k in names})
  return {k: np.concatenate([o[k] for o in out])[:num] for k in names}


def draw_samples(config, workdir: str, num: int, key='images', draws=(0,), step: int = -1):
  """Independent sets of `num` samples from the run's checkpoint at `step` (-1 = latest) with
  `config`'s sample settings, `_CHUNK` at a time, one per index in `draws` (draw 0 uses the
  run's sample key, draw d > 0 a key folded with d). Returns (step, [samples], settings); the
  samples are the family's `key` output ('images', 'points' for 2-D toy data; a tuple of names
  gives dicts, e.g. ('tokens', 'mask') of text), each set saved as
  samples/eval_samples_<step>[_<tag>][_draw<d>].npz with its JSON."""
  config = config.copy_and_resolve_references()
  config.eval.num_samples = min(num, _CHUNK)
  exp, state, _, sample_key = trainer.restore(config, workdir, step)
  step = int(parallel.to_host(state.step))
  settings = exp.family.sample_settings()
  sets = []
  for d in draws:
    base = jax.random.fold_in(sample_key, d) if d else sample_key
    arrays = sample_chunks(exp.sample, state, base, num, config.eval.num_samples, _keys(key),
                           config.family)
    sets.append(_out(arrays, key))
    if jax.process_index() == 0:
      path = os.path.join(workdir, 'samples',
                          f"eval_samples_{step:07d}{suffix(settings.get('tag', ''), d)}.npz")
      image_lib.save_npz(path, arrays)
      trainer.write_sample_info(path, settings, step=step, seed=config.seed, num_samples=num,
                                draw=d, params='ema' if config.optimizer.ema_decay else 'raw')
  return step, sets, settings


def _cached(path: str, key, num: int):
  """The first `num` samples of a saved set, or None if it is missing or holds fewer."""
  arrays = _read(path, key) if os.path.exists(path) else None
  if arrays is None or len(next(iter(arrays.values()))) < num:
    return None
  return _out(arrays, key, num)


def load_samples(workdir: str, config, num_samples: int, key, tag: str | None = None,
                 num_draws: int = 1):
  """(step, [samples per draw], info) of the sample set `tag` (None: the only set at the
  latest step) at its latest step (`key` as for `draw_samples`). Draw 0 is the saved set,
  drawn from the checkpoint with the set's settings when it holds fewer than `num_samples`;
  draws 1.. are new independent sets of as many samples from the same checkpoint and settings
  (cached, so reruns reuse them). `info` says what made them and where they are."""
  sets = sample_sets(workdir)
  if tag is None:
    tags = latest_tags(workdir)
    if len(tags) > 1:
      raise ValueError(f'{len(tags)} sample sets at the latest step ({", ".join(tags)}): '
                       'name one with --samples=TAG (or --samples=all)')
    tag = tags[0] if tags else ''
  if tag not in sets and tag:
    raise FileNotFoundError(f'no sample set {tag!r} under {workdir}/samples; saved sets: '
                            f'{", ".join(sorted(sets)) or "none"}')
  first, info, step = None, {}, -1
  if tag in sets:
    step = max(sets[tag])
    path = sets[tag][step]
    info = dict(sample_info(path), file=path, tag=tag)
    first = _read(path, key)
  size = len(next(iter(first.values()))) if first else 0
  if first is None or (num_samples and size < num_samples):
    if not num_samples:
      raise FileNotFoundError(f'no samples/samples_*.npz with {"/".join(_keys(key))} under '
                              f'{workdir}: train or run --mode=sample first, or pass '
                              '--num_samples')
    step, (drawn,), settings = draw_samples(with_settings(config, info), workdir, num_samples,
                                            key, step=step)
    first = {k: drawn[k] if len(_keys(key)) > 1 else drawn for k in _keys(key)}
    info = dict(settings, file='drawn from the checkpoint', step=step)
  n = num_samples or len(next(iter(first.values())))
  out = [_out(first, key, n)]
  missing = []
  for d in range(1, num_draws):
    path = os.path.join(workdir, 'samples', f'eval_samples_{step:07d}{suffix(tag, d)}.npz')
    out.append(_cached(path, key, n))
    if out[-1] is None:
      missing.append(d)
  if missing:
    _, drawn, _ = draw_samples(with_settings(config, info), workdir, n, key, missing, step)
    for d, x in zip(missing, drawn):
      out[d] = x
  info.setdefault('tag', tag)
  return step, out, info


def eval_path(workdir: str, tag: str) -> str:
  """Where a set's evaluation goes: eval.json for an untagged set, eval_<tag>.json else."""
  return os.path.join(workdir, f'eval_{tag}.json' if tag else 'eval.json')
