"""The standard train state and the standard per-device train step (one loss, one optimizer).

Families with a single objective (VAE, diffusion, LM, reward model, DPO) write only a loss
(`Family.objective`) and get `standard_train_step`; families with several players (GAN, PPO)
write their own step out of the same pieces (`grads_and_metrics`, `apply_gradients`).
"""
from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax import lax

from research import parallel

PyTree = Any
# loss_fn(params, model_state, batch, key) -> (loss, (metrics, new_model_state))
LossFn = Callable[[PyTree, PyTree, dict, jax.Array], tuple[jax.Array, tuple[dict, PyTree]]]


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: PyTree
  opt_state: PyTree
  ema_params: PyTree      # a copy of params when EMA is on, else None
  model_state: PyTree     # non-trainable collections, e.g. {'batch_stats': ...}; {} if none
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)
  ema_decay: float = flax.struct.field(pytree_node=False, default=0.0)
  ema_warmup: bool = flax.struct.field(pytree_node=False, default=True)

  @classmethod
  def create(cls, params, tx, model_state=None, ema_decay: float = 0.0,
             ema_warmup: bool = True) -> 'TrainState':
    return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
               ema_params=jax.tree.map(jnp.copy, params) if ema_decay else None,
               model_state=model_state if model_state is not None else {},
               tx=tx, ema_decay=ema_decay, ema_warmup=ema_warmup)

  @property
  def eval_params(self) -> PyTree:
    return self.ema_params if self.ema_decay else self.params


def grads_and_metrics(loss_fn: LossFn, params, model_state, batch, key, accum_steps: int = 1):
  """Per-device gradients and metrics, averaged over `accum_steps` microbatches with a scan
  (same result as one big batch for mean losses, at a fraction of the activation memory)."""
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if accum_steps == 1:
    (loss, (metrics, model_state)), grads = grad_fn(params, model_state, batch, key)
    return grads, dict(metrics, loss=loss), model_state

  def split(x):
    if x.shape[0] % accum_steps:
      raise ValueError(f'per-device batch {x.shape[0]} does not divide by '
                       f'optimizer.grad_accum_steps={accum_steps}')
    return x.reshape((accum_steps, x.shape[0] // accum_steps) + x.shape[1:])

  micro = jax.tree.map(split, batch)

  def body(carry, xs):
    grads_sum, ms = carry
    i, mb = xs
    (loss, (metrics, ms)), g = grad_fn(params, ms, mb, jax.random.fold_in(key, i))
    return (jax.tree.map(jnp.add, grads_sum, g), ms), dict(metrics, loss=loss)

  zeros = jax.tree.map(jnp.zeros_like, params)
  (grads, model_state), metrics = lax.scan(body, (zeros, model_state),
                                           (jnp.arange(accum_steps), micro))
  grads = jax.tree.map(lambda g: g / accum_steps, grads)
  return grads, jax.tree.map(jnp.mean, metrics), model_state


def ema_decay_at(decay: float, num_updates: jax.Array, warmup: bool = True) -> jax.Array:
  """The EMA decay for the update after `num_updates` updates: min(decay, (1 + n) / (10 + n))
  with the warm-up (TF's ExponentialMovingAverage with num_updates), else `decay`. Without it
  a 0.999 EMA still holds e^-1 = 37% of the random init after 1,000 steps."""
  if not warmup:
    return jnp.asarray(decay, jnp.float32)
  n = jnp.asarray(num_updates, jnp.float32)
  return jnp.minimum(jnp.float32(decay), (1.0 + n) / (10.0 + n))


def raw_params_view(state: PyTree) -> PyTree:
  """`state` with every EMA copy replaced by its raw parameters (same tree structure, so the
  compiled eval steps are reused): evaluating it measures what the EMA adds."""
  def raw(s):
    return s.replace(ema_params=s.params) if isinstance(s, TrainState) and s.ema_decay else s
  return jax.tree.map(raw, state, is_leaf=lambda x: isinstance(x, TrainState))


def has_ema(state: PyTree) -> bool:
  """Whether any train state inside `state` keeps an EMA of its parameters."""
  nodes = jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, TrainState))
  return any(isinstance(s, TrainState) and s.ema_decay for s in nodes)


def apply_gradients(state: TrainState, grads, model_state) -> TrainState:
  """Optimizer update (grads already averaged over devices) and EMA."""
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema = state.ema_params
  if state.ema_decay:
    decay = ema_decay_at(state.ema_decay, state.step, state.ema_warmup)
    ema = optax.incremental_update(params, ema, step_size=1.0 - decay)
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                       ema_params=ema, model_state=model_state)


def device_grads(loss_fn: LossFn, state: TrainState, batch, key, accum_steps: int = 1):
  """Per-device half of the standard step: grads and metrics averaged over the devices
  (`parallel.pmean`), and the new model state. The sharded path (`research/sharding.py`) runs
  only this per device and applies the update to the sharded state outside."""
  grads, metrics, model_state = grads_and_metrics(loss_fn, state.params, state.model_state,
                                                  batch, key, accum_steps)
  return parallel.pmean(grads), parallel.pmean(metrics), model_state


def standard_train_step(loss_fn: LossFn, state: TrainState, batch, key, accum_steps: int = 1):
  """The pmap-model train step: per-device grads, `lax.pmean` over devices, one update."""
  grads, metrics, model_state = device_grads(loss_fn, state, batch, key, accum_steps)
  metrics['grad_norm'] = optax.global_norm(grads)
  return apply_gradients(state, grads, model_state), metrics
