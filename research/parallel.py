"""Data parallelism: per-device functions run over every device with `jax.shard_map` under `jit`.

This is the pmap programming model (a named batch axis, explicit `lax.pmean`) written the way
`jax.pmap` itself lowers today. Functions are written per device; `data_parallel` maps them over a
1-D mesh of all devices (every host's), with the batch split along `AXIS` and the state replicated.
Multi-host: each host feeds only its shard of the global batch (`host_batch_to_global`).
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXIS = 'batch'


def initialize_distributed(coordinator: str = '', num_processes: int = 0,
                           process_id: int = -1) -> None:
  """Multi-host start-up. With a coordinator address, connects explicitly (e.g. 127.0.0.1:1234
  for a local multi-process test); with none, lets JAX read the cloud environment (TPU VM pods,
  SLURM). Single-host runs call nothing."""
  if coordinator:
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id)
  else:
    jax.distributed.initialize()


def make_mesh(devices=None) -> Mesh:
  """A 1-D data-parallel mesh over all devices (of all hosts), with Auto axis types so ordinary
  jnp code works on the sharded arrays."""
  devices = np.asarray(jax.devices() if devices is None else devices)
  return Mesh(devices, (AXIS,), axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(AXIS))


def per_device(fn: Callable, mesh: Mesh, batch_args: tuple[int, ...] = (1,),
               out_batched: Any = False) -> Callable:
  """Maps per-device `fn(*args)` over the batch axis `AXIS` of `mesh` (not jitted).

  Arguments whose position is in `batch_args` are split along their leading axis (the batch);
  all others are replicated. `out_batched` is a pytree prefix of the output saying which outputs
  are per-example (concatenated over devices) rather than replicated (e.g. `(False, False)` for
  `(state, metrics)`). `check_vma=False` gives pmap semantics: gradients stay per device until the
  function's own `lax.pmean`. Only `AXIS` is manual: on the sharded path's 2-D mesh, XLA
  partitions the `model` axis automatically.
  """
  @functools.wraps(fn)
  def wrapped(*args):
    in_specs = tuple(P(AXIS) if i in batch_args else P() for i in range(len(args)))
    out_specs = jax.tree.map(lambda b: P(AXIS) if b else P(), out_batched)
    return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs,
                         axis_names={AXIS}, check_vma=False)(*args)
  return wrapped


def data_parallel(fn: Callable, mesh: Mesh, *, batch_args: tuple[int, ...] = (1,),
                  out_batched: Any = False, donate_argnums: tuple[int, ...] = ()) -> Callable:
  """`per_device(fn, ...)` under `jit`: over every device of the default 1-D mesh (on the
  sharded path's 2-D mesh, over its batch axis)."""
  return jax.jit(per_device(fn, mesh, batch_args, out_batched), donate_argnums=donate_argnums)


def pmean(tree: Any, axis: str = AXIS) -> Any:
  """`lax.pmean` over the batch axis, skipped when that axis has one device: the same values,
  and it sidesteps XLA's partitioner, which rejects a collective over a size-1 manual axis when
  the other mesh axis shards the operands (the sharded path's 1 x N mesh)."""
  if jax.lax.axis_size(axis) == 1:
    return tree
  return jax.lax.pmean(tree, axis)


def device_key(key: jax.Array) -> jax.Array:
  """A key that differs per device (for noise whose per-example layout does not matter, e.g.
  dropout). Call inside a per-device function."""
  return jax.random.fold_in(key, jax.lax.axis_index(AXIS))


def per_example_keys(key: jax.Array, local_batch: int) -> jax.Array:
  """One key per example, keyed by the example's position in the *global* batch, so per-example
  noise is the same whatever the device count. Call inside a per-device function."""
  start = jax.lax.axis_index(AXIS) * local_batch
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(start + jnp.arange(local_batch))


def put_replicated(tree: Any, mesh: Mesh) -> Any:
  """Host values (identical on every host) -> arrays replicated on every device of the mesh."""
  return put_global(tree, replicated(mesh))


def put_global(tree: Any, shardings: Any) -> Any:
  """Whole host values (identical on every host) -> global arrays laid out by `shardings` (a
  tree of them, or one for all); each device takes its slice."""
  if not isinstance(shardings, jax.sharding.Sharding):
    return jax.tree.map(lambda x, s: put_global(x, s), tree, shardings)
  return jax.tree.map(lambda x: jax.make_array_from_callback(
      np.shape(x), shardings, lambda index, x=np.asarray(x): x[index]), tree)


def host_batch_to_global(batch: Any, mesh: Mesh) -> Any:
  """This host's shard of the batch -> one global array sharded over `AXIS` on every host."""
  sharding = batch_sharded(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def to_host(tree: Any) -> Any:
  """Global arrays -> numpy on every host (replicated ones read locally, sharded ones gathered)."""
  def get(x):
    if not isinstance(x, jax.Array):
      return np.asarray(x)
    if x.is_fully_replicated:
      return np.asarray(x.addressable_data(0))
    if x.is_fully_addressable:
      return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return jax.tree.map(get, tree)


def any_host(flag: bool) -> bool:
  """True if `flag` is true on any host (e.g. a preemption signal seen by one of them)."""
  if jax.process_count() == 1:
    return flag
  flags = multihost_utils.process_allgather(np.array([flag], np.int32))
  return bool(np.any(flags))
