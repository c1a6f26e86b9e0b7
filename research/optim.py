"""Optimizers and learning-rate schedules from the `optimizer` config section (all optax).

    tx, schedule = optim.make(config.optimizer, config.train.num_steps,
                              moments_dtype=config.precision.moments)

The chain built by `make` is, per trainable parameter:

    clip_by_global_norm  (optimizer.clip_grad_norm > 0)
    add_decayed_weights  (L2 for sgd/momentum/adam/adagrad/rmsprop when weight_decay > 0)
    <optimizer>(schedule) (adamw and lamb apply their decoupled weight decay inside)

and parameters whose path matches `optimizer.frozen` get `optax.set_to_zero()` instead, through
`optax.partition` (alias `multi_transform`): zero updates and no optimizer state. The global
norm for clipping is taken over the trainable parameters only.

Weight decay skips 1-D parameters (biases, norm scales/offsets) and scalars unless
`optimizer.decay_norms_and_biases`; the mask is a function of the params tree, so it works for
any family.

Gradient accumulation and EMA live in `research/train_state.py`; their fields are only checked
here.

Moments (`config.precision.moments`, passed as `moments_dtype`): 'bfloat16' stores the first
moment in bf16 -- Adam's mu (adam, adamw, lamb: optax's `mu_dtype`) or the momentum trace
(momentum: optax's `accumulator_dtype`); each update still computes in float32 and rounds the
stored moment. The second moment (nu) always stays float32. Optimizers without a first moment
(sgd, adagrad, rmsprop) raise a ConfigError with bf16 moments.

Schedules (`optimizer.schedule.name`), with lr = optimizer.lr, W = warmup_steps,
D = decay_steps or train.num_steps (the decay horizon, counted from step 0, warmup included),
end = end_value * lr:

  constant       lr (after a linear 0 -> lr warmup over W steps when W > 0)
  warmup_cosine  0 -> lr linearly over W, then cosine lr -> end, reaching end at step D
  warmup_linear  0 -> lr linearly over W, then linearly lr -> end, reaching end at step D
  exponential    lr * decay_rate ** ((step - W) / D) after the warmup (so lr * decay_rate ** (step
                 / D) when W = 0); floored at end when end_value > 0 and decay_rate < 1
  piecewise      lr * prod(scales[i] for boundaries[i] <= step) (optax's cumulative scales:
                 boundaries '1000,2000' scales '0.1,0.1' gives lr, lr/10, lr/100); boundaries
                 are absolute steps; the W-step warmup, if any, replaces the start
  warmup_rsqrt   lr * min(step / W, sqrt(W / step)): linear warmup to lr at step W, then
                 inverse-square-root decay (lr/2 at 4W); floored at end. Needs W > 0.
"""
from __future__ import annotations

import math
import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import optax
from absl import logging

from research import precision
from research.config_checks import ConfigError, one_of, parse_list, require

OPTIMIZERS = ('sgd', 'momentum', 'adam', 'adamw', 'adagrad', 'rmsprop', 'lamb')
SCHEDULES = ('constant', 'warmup_cosine', 'warmup_linear', 'exponential', 'piecewise',
             'warmup_rsqrt')
# optax.partition is the newer name of optax.multi_transform.
_partition = getattr(optax, 'partition', None) or optax.multi_transform
_DECOUPLED = ('adamw', 'lamb')   # weight decay inside the optimizer; the rest use L2
MOMENTS = tuple(precision.DTYPES)                # config.precision.moments
WITH_FIRST_MOMENT = ('adam', 'adamw', 'lamb', 'momentum')  # what bf16 moments can apply to

FROZEN, TRAINABLE = 'frozen', 'trainable'


# ---------------------------------------------------------------------------------------------
# Parameter paths


def param_path(keypath: Sequence[Any]) -> str:
  """A jax key path (from `jax.tree_util.tree_map_with_path` / `tree_flatten_with_path`) ->
  'a/b/kernel'. Dict keys, attribute names and sequence indices each give one component."""
  parts = []
  for k in keypath:
    if isinstance(k, jax.tree_util.DictKey):
      parts.append(str(k.key))
    elif isinstance(k, jax.tree_util.GetAttrKey):
      parts.append(str(k.name))
    elif isinstance(k, jax.tree_util.SequenceKey):
      parts.append(str(k.idx))
    elif isinstance(k, jax.tree_util.FlattenedIndexKey):
      parts.append(str(k.key))
    else:
      parts.append(str(k))
  return '/'.join(parts)


def parse_frozen(frozen: str | Sequence[str]) -> list[str]:
  """'enc/.*,decoder/conv0' -> ['enc/.*', 'decoder/conv0'] (a list passes through)."""
  if isinstance(frozen, str):
    return [p.strip() for p in frozen.split(',') if p.strip()]
  return [p for p in frozen if p]


def path_labels(params, regexes: str | Sequence[str]):
  """A tree like `params` of bools: True where the param's path ('a/b/kernel') matches any of
  `regexes` (a list, or a comma-separated string) with `re.search`."""
  compiled = [re.compile(r) for r in parse_frozen(regexes)]
  return jax.tree_util.tree_map_with_path(
      lambda kp, _: any(c.search(param_path(kp)) for c in compiled), params)


def decay_mask(params):
  """True for params that get weight decay: those with ndim > 1 (kernels, embeddings) unless
  their name says bias or scale (e.g. a per-pixel output bias); 1-D biases, norm scales and
  scalars are left alone."""
  def decays(keypath, p):
    name = param_path(keypath).rsplit('/', 1)[-1]
    return jnp.ndim(p) > 1 and not re.search('bias|scale', name)
  return jax.tree_util.tree_map_with_path(decays, params)


# ---------------------------------------------------------------------------------------------
# Validation


def _horizon(opt_cfg, num_steps: int) -> int:
  return opt_cfg.schedule.decay_steps or num_steps


def _piecewise(sched_cfg) -> tuple[list[int], list[float]]:
  f = 'optimizer.schedule'
  boundaries = parse_list(sched_cfg.boundaries, f'{f}.boundaries', int)
  scales = parse_list(sched_cfg.scales, f'{f}.scales', float)
  return boundaries, scales


def check_moments(name: str, moments: str = 'float32') -> None:
  """One-line ConfigError unless optimizer `name` can keep its first moment in `moments`
  (`config.precision.moments`)."""
  one_of(moments, MOMENTS, 'precision.moments')
  if moments != 'float32' and name not in WITH_FIRST_MOMENT:
    raise ConfigError(
        f'config.precision.moments={moments!r}: optimizer.name={name!r} keeps no first moment to '
        f"store in {moments}; use precision.moments='float32' or an optimizer with one "
        f'{list(WITH_FIRST_MOMENT)}')


def validate(opt_cfg, num_steps: int, moments_dtype='float32') -> None:
  """Raises a one-line ConfigError for the first bad field of the `optimizer` section (and of
  `precision.moments`, given as `moments_dtype`). Cheap: builds nothing and compiles nothing."""
  o, s = opt_cfg, opt_cfg.schedule
  one_of(o.name, OPTIMIZERS, 'optimizer.name')
  check_moments(o.name, moments_dtype)
  require(o.lr > 0, 'optimizer.lr', o.lr, 'must be > 0 (the peak learning rate)')
  for name in ('b1', 'b2'):
    require(0 <= o[name] < 1, f'optimizer.{name}', o[name], 'must be in [0, 1), e.g. 0.9')
  require(o.eps > 0, 'optimizer.eps', o.eps, 'must be > 0, e.g. 1e-8')
  require(0 <= o.momentum < 1, 'optimizer.momentum', o.momentum, 'must be in [0, 1), e.g. 0.9')
  require(o.weight_decay >= 0, 'optimizer.weight_decay', o.weight_decay,
          'must be >= 0 (0 = no weight decay)')
  require(o.clip_grad_norm >= 0, 'optimizer.clip_grad_norm', o.clip_grad_norm,
          'must be >= 0 (0 = no clipping)')
  require(o.grad_accum_steps >= 1, 'optimizer.grad_accum_steps', o.grad_accum_steps,
          'must be >= 1 (1 = no accumulation)')
  require(0 <= o.ema_decay < 1, 'optimizer.ema_decay', o.ema_decay,
          'must be in [0, 1) (0 = no EMA; e.g. 0.999)')
  if o.frozen.strip():
    for item in o.frozen.split(','):
      require(item.strip() != '', 'optimizer.frozen', o.frozen,
              'has an empty pattern (which would freeze every param); remove the extra comma')
      try:
        re.compile(item.strip())
      except re.error as e:
        raise ConfigError(f'config.optimizer.frozen={o.frozen!r}: pattern {item.strip()!r} '
                          f'does not compile ({e}); fix the regex (commas split patterns)'
                          ) from None

  one_of(s.name, SCHEDULES, 'optimizer.schedule.name')
  f = 'optimizer.schedule'
  require(s.decay_steps >= 0, f'{f}.decay_steps', s.decay_steps,
          'must be >= 0 (0 = train.num_steps)')
  horizon = _horizon(o, num_steps)
  require(s.warmup_steps >= 0, f'{f}.warmup_steps', s.warmup_steps, 'must be >= 0')
  if s.name in ('warmup_cosine', 'warmup_linear'):
    require(s.warmup_steps <= horizon, f'{f}.warmup_steps', s.warmup_steps,
            f'must be <= the decay horizon {horizon} (schedule.decay_steps, or train.num_steps '
            f'when 0); lower it or raise decay_steps')
  else:
    require(s.warmup_steps <= num_steps, f'{f}.warmup_steps', s.warmup_steps,
            f'must be <= train.num_steps={num_steps}')
  if s.name == 'warmup_rsqrt':
    require(s.warmup_steps > 0, f'{f}.warmup_steps', s.warmup_steps,
            'warmup_rsqrt needs warmup_steps > 0 (the step where the lr peaks)')
  require(s.end_value >= 0, f'{f}.end_value', s.end_value,
          'must be >= 0 (a fraction of optimizer.lr, e.g. 0.1)')
  if s.name == 'exponential':
    require(s.decay_rate > 0, f'{f}.decay_rate', s.decay_rate,
            'must be > 0 (e.g. 0.1: lr falls 10x every decay_steps)')
  if s.name == 'piecewise' or s.boundaries.strip() or s.scales.strip():
    # Checked even when another schedule is picked: a malformed value is a mistake either way.
    boundaries, scales = _piecewise(s)
    if s.name == 'piecewise':
      require(len(boundaries) > 0, f'{f}.boundaries', s.boundaries,
              'piecewise needs comma-separated steps, e.g. "1000,2000"')
    require(len(boundaries) == len(scales), f'{f}.scales', s.scales,
            f'needs one scale per boundary ({len(boundaries)}: {s.boundaries!r})')
    require(all(b >= 0 for b in boundaries), f'{f}.boundaries', s.boundaries,
            'steps must be >= 0')
    require(all(a < b for a, b in zip(boundaries, boundaries[1:])), f'{f}.boundaries',
            s.boundaries, 'must be strictly increasing, e.g. "1000,2000"')
    require(all(x >= 0 and math.isfinite(x) for x in scales), f'{f}.scales', s.scales,
            'must be finite and >= 0')


# ---------------------------------------------------------------------------------------------
# Schedules


def make_schedule(opt_cfg, num_steps: int) -> optax.Schedule:
  """The learning-rate schedule (step -> lr); formulas in the module docstring."""
  s = opt_cfg.schedule
  lr = float(opt_cfg.lr)
  warmup = int(s.warmup_steps)
  horizon = int(_horizon(opt_cfg, num_steps))
  end = float(s.end_value) * lr

  def with_warmup(main: optax.Schedule, shift: bool = True) -> optax.Schedule:
    """Linear 0 -> lr for `warmup` steps, then `main` (given steps counted from the warmup end
    if `shift`, else absolute steps)."""
    if warmup <= 0:
      return main
    after = main if shift else (lambda step: main(step + warmup))
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), after], [warmup])

  name = s.name
  if name == 'constant':
    return with_warmup(optax.constant_schedule(lr))
  if name == 'warmup_cosine':
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(horizon, warmup + 1), end)
  if name == 'warmup_linear':
    return with_warmup(optax.linear_schedule(lr, end, max(horizon - warmup, 1)))
  if name == 'exponential':
    floor = end if (end > 0 and s.decay_rate < 1) else None
    return with_warmup(optax.exponential_decay(lr, max(horizon, 1), float(s.decay_rate),
                                               end_value=floor))
  if name == 'piecewise':
    boundaries, scales = _piecewise(s)
    pw = optax.piecewise_constant_schedule(lr, dict(zip(boundaries, scales)))
    return with_warmup(pw, shift=False)
  if name == 'warmup_rsqrt':
    w = float(max(warmup, 1))

    def rsqrt(step):
      step = jnp.asarray(step, jnp.float32)
      value = lr * jnp.minimum(step / w, jnp.sqrt(w / jnp.maximum(step, 1.0)))
      return jnp.maximum(value, end) if end > 0 else value
    return rsqrt
  raise ConfigError(f'config.optimizer.schedule.name={name!r}: must be one of {list(SCHEDULES)}')


# ---------------------------------------------------------------------------------------------
# Optimizers


def _base(o, lr: optax.Schedule, mask, mu_dtype=None) -> optax.GradientTransformation:
  """The optimizer; `mu_dtype` (None = the params' float32) is its first moment's dtype."""
  wd = float(o.weight_decay)
  if o.name == 'sgd':
    return optax.sgd(lr)
  if o.name == 'momentum':
    return optax.sgd(lr, momentum=float(o.momentum), nesterov=bool(o.nesterov),
                     accumulator_dtype=mu_dtype)
  if o.name == 'adam':
    return optax.adam(lr, b1=o.b1, b2=o.b2, eps=o.eps, mu_dtype=mu_dtype)
  if o.name == 'adamw':
    return optax.adamw(lr, b1=o.b1, b2=o.b2, eps=o.eps, mu_dtype=mu_dtype, weight_decay=wd,
                       mask=mask)
  if o.name == 'adagrad':
    return optax.adagrad(lr, eps=o.eps)
  if o.name == 'rmsprop':   # b2 is the decay of the squared-gradient average
    return optax.rmsprop(lr, decay=o.b2, eps=o.eps)
  if o.name == 'lamb':
    if mu_dtype is None:
      return optax.lamb(lr, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=wd, mask=mask)
    # optax.lamb (0.2.8) has no mu_dtype: the same chain, with it on scale_by_adam (same state
    # structure, so checkpoints of either form restore into the other).
    return optax.chain(optax.scale_by_adam(b1=o.b1, b2=o.b2, eps=o.eps, mu_dtype=mu_dtype),
                       optax.add_decayed_weights(wd, mask=mask), optax.scale_by_trust_ratio(),
                       optax.scale_by_learning_rate(lr))
  raise ConfigError(f'config.optimizer.name={o.name!r}: must be one of {list(OPTIMIZERS)}')


def make(opt_cfg, num_steps: int, moments_dtype='float32'
         ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """(optimizer, lr schedule) for `config.optimizer`; see the module docstring for the chain.
  `moments_dtype` is `config.precision.moments` ('float32' | 'bfloat16'): the first moment's;
  a ConfigError for an optimizer without one when it is not float32."""
  o = opt_cfg
  check_moments(o.name, moments_dtype)
  mu_dtype = None if moments_dtype == 'float32' else precision.DTYPES[moments_dtype]
  schedule = make_schedule(o, num_steps)
  mask = None if o.decay_norms_and_biases else decay_mask
  parts = []
  if o.clip_grad_norm > 0:
    parts.append(optax.clip_by_global_norm(float(o.clip_grad_norm)))
  if o.weight_decay > 0 and o.name not in _DECOUPLED:
    parts.append(optax.add_decayed_weights(float(o.weight_decay), mask=mask))
  parts.append(_base(o, schedule, mask, mu_dtype))
  tx = optax.chain(*parts) if len(parts) > 1 else parts[0]

  regexes = parse_frozen(o.frozen)
  if regexes:
    tx = _partition({TRAINABLE: tx, FROZEN: optax.set_to_zero()},
                         _frozen_labeler(regexes))
  return tx, schedule


def _frozen_labeler(regexes: list[str]):
  warned = set()

  def labels(params):
    frozen = path_labels(params, regexes)
    # A pattern that matches nothing is almost always a typo: say so (once per pattern).
    paths = [param_path(kp) for kp, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    for r in regexes:
      if r not in warned and not any(re.search(r, p) for p in paths):
        warned.add(r)
        logging.warning('optimizer.frozen pattern %r matches no parameter (paths look like %r)',
                        r, paths[:3])
    return jax.tree.map(lambda f: FROZEN if f else TRAINABLE, frozen)
  return labels

