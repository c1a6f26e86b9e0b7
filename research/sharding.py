"""The sharded path (`parallel.mode='sharded'`): a 2-D mesh, the state sharded by rules, `jit`.

The default path (`research/parallel.py`) replicates the whole train state on every device. This
one stores it sharded over a (batch x model) mesh of NamedShardings, so models and optimizer
states that do not fit on one device still train, with the families' functions unchanged:

- **Mesh.** `parallel.model_axis` devices on the `model` axis (within one host: tensor
  parallelism talks at every layer), the rest on the batch axis `parallel.AXIS`.
- **Rules** give each state leaf a PartitionSpec from its path (`params/block_0/mlp/up/kernel`,
  `opt_state/.../mu/block_0/mlp/up/kernel`, `ema_params/...`: a parameter, its EMA and its
  optimizer moments match the same rules and so share one layout). First the config's
  `parallel.rules`, then the family's tensor-parallel rules (`Family.sharding_rules`: Megatron's
  column/row splits of attention and MLP), then FSDP (`parallel.fsdp`): every leaf of at least
  `parallel.fsdp_min_size` elements is split over the batch axis along its largest free dimension
  that divides (ZeRO-3: parameters, EMA and optimizer state each held once across the batch axis).
- **Train step.** Only the per-device half of the standard step runs per device: the family's
  `objective` under `jax.shard_map` that is manual over the batch axis alone (so the family's
  `parallel.pmean`, `per_example_keys` and `device_key` mean what they mean on the default
  path) and automatic over `model` (so XLA partitions the tensor-parallel matmuls). The
  parameters enter gathered over the batch axis (FSDP's all-gather); the averaged gradients
  leave constrained to the parameters' layout (a reduce-scatter), and the optimizer update runs
  outside, on the sharded parameters and moments. Same keys, same math: the step equals the
  data-parallel step up to float reassociation.
- **Eval, sampling, visualisation** are the default path's (`parallel.data_parallel`, manual
  over the batch axis only), reading the state in its sharded layout.
- **Checkpoints** hold global arrays: Orbax restores them onto whatever layout the restoring
  run's state has, so a run may resume on another mesh shape or on the default path.

Families with several players (GAN, PPO) write their own `train_step` and stay on the default path.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Sequence

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from research import optim, parallel, train_state
from research.config_checks import ConfigError

MODEL = 'model'
AXES = (parallel.AXIS, MODEL)
Rule = tuple[str, tuple]


def make_mesh(model_axis: int, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A (batch, model) mesh: consecutive devices of one host along `model`, hosts along batch."""
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  if model_axis < 1 or n % model_axis:
    raise ConfigError(f'config.parallel.model_axis={model_axis}: must divide the {n} devices')
  devices.sort(key=lambda d: (d.process_index, d.id))
  grid = np.array(devices, dtype=object).reshape(n // model_axis, model_axis)
  if any(len({d.process_index for d in row}) > 1 for row in grid):
    local = jax.local_device_count()
    raise ConfigError(f'config.parallel.model_axis={model_axis}: the model axis must lie within '
                      f'one host ({local} local devices); use a divisor of {local}')
  return Mesh(grid, AXES, axis_types=(jax.sharding.AxisType.Auto,) * 2)


def parse_rules(text: str) -> list[Rule]:
  """'regex=spec;regex=spec' with spec one mesh axis or '_' per dimension, e.g.
  'mlp/up/kernel$=_,model;mlp/down/kernel$=model,_' -> [(regex, (None, 'model')), ...]."""
  rules = []
  for item in filter(None, (t.strip() for t in text.split(';'))):
    regex, sep, spec = item.rpartition('=')
    if not sep or not regex:
      raise ConfigError(f'config.parallel.rules: {item!r} is not "regex=spec", e.g. '
                        '"mlp/up/kernel$=_,model"')
    try:
      re.compile(regex)
    except re.error as e:
      raise ConfigError(f'config.parallel.rules: bad regex {regex!r} ({e})') from None
    axes = tuple(None if a.strip() in ('_', '') else a.strip() for a in spec.split(','))
    bad = [a for a in axes if a is not None and a not in AXES]
    if bad:
      raise ConfigError(f'config.parallel.rules: {item!r} names axis {bad[0]!r}; use '
                        f"{' or '.join(AXES)} or _ (not sharded) per dimension")
    rules.append((regex, axes))
  return rules


def leaf_spec(path: str, shape: tuple[int, ...], rules: Sequence[Rule], mesh: Mesh,
              fsdp: bool, fsdp_min_size: int) -> P:
  """The PartitionSpec of one state leaf: the first matching rule, then FSDP on what is free."""
  spec: list = [None] * len(shape)
  for regex, axes in rules:
    if re.search(regex, path):
      if len(axes) != len(shape):
        raise ConfigError(f'sharding rule {regex!r}: spec {axes} has {len(axes)} dimensions but '
                          f'{path} has shape {shape}; give one axis or _ per dimension')
      for dim, axis in enumerate(axes):
        if axis is not None and shape[dim] % mesh.shape[axis]:
          raise ConfigError(f'sharding rule {regex!r}: dimension {dim} of {path} {shape} does '
                            f'not divide by the {mesh.shape[axis]} devices of axis {axis!r}')
      spec = list(axes)
      break
  n = mesh.shape[parallel.AXIS]
  if fsdp and n > 1 and parallel.AXIS not in spec and int(np.prod(shape)) >= fsdp_min_size:
    free = [d for d in range(len(shape)) if spec[d] is None and shape[d] % n == 0]
    if free:
      spec[max(free, key=lambda d: (shape[d], -d))] = parallel.AXIS
  return P(*spec)


def state_shardings(abstract_state: Any, mesh: Mesh, rules: Sequence[Rule], fsdp: bool,
                    fsdp_min_size: int) -> Any:
  """NamedShardings for every leaf of a (shape-only) state, by path."""
  def one(path, leaf):
    shape = tuple(getattr(leaf, 'shape', ()))
    return NamedSharding(mesh, leaf_spec(optim.param_path(path), shape, rules, mesh, fsdp,
                                         fsdp_min_size))
  return jax.tree_util.tree_map_with_path(one, abstract_state)


def bytes_per_device(tree: Any) -> int:
  """Bytes the first local device holds of a tree of global arrays (its shard of each)."""
  device = jax.local_devices()[0]
  total = 0
  for x in jax.tree.leaves(tree):
    if isinstance(x, jax.Array):
      total += sum(s.data.nbytes for s in x.addressable_shards if s.device == device)
  return total


def rules_for(config, family) -> list[Rule]:
  return parse_rules(config.parallel.rules) + list(family.sharding_rules())


def layout(tree: Any) -> Any:
  """The shardings of a tree of global arrays."""
  return jax.tree.map(lambda x: x.sharding, tree)


def init_and_train_step(family, config, mesh: Mesh) -> tuple[Callable, Callable]:
  """The sharded path's `init` (the state laid out by the rules) and `train_step` (which keeps
  every leaf in the layout it came in); `trainer.build` wraps the rest as on the default path."""
  rules, pc = rules_for(config, family), config.parallel
  repl = NamedSharding(mesh, P())
  init = parallel.per_device(family.init_state, mesh, batch_args=(1,), out_batched=False)
  accum = config.optimizer.grad_accum_steps

  def init_fn(key, example_batch):
    abstract = jax.eval_shape(init, key, example_batch)
    shardings = state_shardings(abstract, mesh, rules, pc.fsdp, pc.fsdp_min_size)
    return jax.jit(init, out_shardings=shardings)(key, example_batch)

  def make_train_step(shardings):
    def train_step(state, batch, key):
      key = jax.random.fold_in(key, state.step)
      slim = state.replace(opt_state=None, ema_params=None)  # all the loss may read

      def grads(slim, batch, key):
        return train_state.device_grads(family.objective(slim), slim, batch, key, accum)
      g, metrics, model_state = parallel.per_device(grads, mesh, (1,), False)(slim, batch, key)
      g = jax.lax.with_sharding_constraint(g, shardings.params)  # reduce-scatter under FSDP
      metrics['grad_norm'] = optax.global_norm(g)
      return train_state.apply_gradients(state, g, model_state), metrics
    return jax.jit(train_step, out_shardings=(shardings, repl), donate_argnums=(0,))

  compiled = {}

  def train_step_fn(state, batch, key):
    shardings = layout(state)
    tag = jax.tree.structure(shardings), tuple(jax.tree.leaves(shardings))
    if tag not in compiled:
      compiled[tag] = make_train_step(shardings)
    return compiled[tag](state, batch, key)

  return init_fn, train_step_fn
