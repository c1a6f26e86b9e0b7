"""LoRA: low-rank adapters on the transformer's kernels (Hu et al. 2021, arXiv:2106.09685), as a
transform of the parameter tree; research/lm/model.py is unchanged.

With `model.lora_rank` = r > 0 the LM's parameters are the base tree plus one more top-level
group, 'lora', whose paths mirror the adapted kernels:

  {'embedding', 'block_0': {...}, ..., 'norm_out': {...},
   'lora': {'block_0': {'attn': {'qkv': {'a': [d, r], 'b': [r, 3d]}, 'out': {...}},
                        'mlp': {'up': {...}, 'down': {...} (, 'gate': {...})}}, ...}}

Every kernel W [in, out] whose path matches `TARGETS` (attention qkv and out, MLP up, gate and
down) is used as W + (alpha / r) a @ b (`merge`), with a ~ N(0, 1 / in) and b = 0, so at init
the adapted model computes exactly what the base model does. The base is frozen twice over:
`merge` stops gradients into every base parameter, and the family adds `FROZEN_BASE` to
optimizer.frozen (zero updates, no optimizer state, and no decoupled weight decay, which would
otherwise shrink the base weights). Only the adapters train.

Transfer learning: the base paths are those of a run without LoRA, so
`--config.init_from.workdir=PRETRAINED` copies every base parameter and leaves the adapters at
their fresh (zero-effect) init. `merge(params, alpha, rank)` is a plain base tree again (to
export, or to load in a run without LoRA).
"""
from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp

from research import optim

GROUP = 'lora'
# The kernels that get adapters (paths as research/optim.py's param_path writes them).
TARGETS = r'^block_\d+/(attn/(qkv|out)|mlp/(up|gate|down))/kernel$'
# optimizer.frozen pattern for everything but the adapters.
FROZEN_BASE = rf'^(?!{GROUP}/)'

PyTree = Any


def _targets(base: PyTree) -> list[tuple[str, Any]]:
  """(path, kernel) of every adapted kernel of a base tree, in path order."""
  leaves = [(optim.param_path(kp), x) for kp, x in jax.tree_util.tree_flatten_with_path(base)[0]]
  return sorted((p, x) for p, x in leaves if re.search(TARGETS, p))


def init(base: PyTree, rank: int, key: jax.Array) -> dict:
  """The 'lora' group for `base`: per adapted kernel [in, out], a ~ N(0, 1/in) [in, rank] and
  b = 0 [rank, out]."""
  if rank < 1:
    raise ValueError(f'lora.init: rank must be >= 1, got {rank}')
  targets = _targets(base)
  if not targets:
    raise ValueError(f'lora.init: no parameter path matches {TARGETS!r}')
  group: dict = {}
  for i, (path, w) in enumerate(targets):
    fan_in, fan_out = w.shape
    node = group
    for part in path.split('/')[:-1]:        # mirror the module path, without 'kernel'
      node = node.setdefault(part, {})
    a = jax.random.normal(jax.random.fold_in(key, i), (fan_in, rank), jnp.float32)
    node['a'] = a / jnp.sqrt(jnp.float32(fan_in))
    node['b'] = jnp.zeros((rank, fan_out), jnp.float32)
  return group


def add(base: PyTree, rank: int, key: jax.Array) -> dict:
  """`base` with a fresh 'lora' group (see `init`)."""
  if GROUP in base:
    raise ValueError(f'lora.add: the params already have a {GROUP!r} group')
  return {**base, GROUP: init(base, rank, key)}


def split(params: PyTree) -> tuple[dict, dict]:
  """(base tree, 'lora' group) of LoRA params."""
  return {k: v for k, v in params.items() if k != GROUP}, params[GROUP]


def merge(params: PyTree, alpha: float, rank: int) -> dict:
  """The base tree the network runs with: every adapted kernel W becomes
  W + (alpha / rank) a @ b; gradients reach the adapters only (the base is stopped)."""
  base, adapters = split(params)
  scale = float(alpha) / float(rank)

  def leaf(keypath, w):
    path = optim.param_path(keypath)
    w = jax.lax.stop_gradient(w)
    if not re.search(TARGETS, path):
      return w
    node = adapters
    for part in path.split('/')[:-1]:
      node = node[part]
    return w + scale * (node['a'] @ node['b']).astype(w.dtype)

  return jax.tree_util.tree_map_with_path(leaf, base)


def num_adapter_params(params: PyTree) -> int:
  """Scalars in the 'lora' group (0 without one)."""
  group = params.get(GROUP, {}) if isinstance(params, dict) else {}
  return int(sum(x.size for x in jax.tree.leaves(group)))
