"""research/optim.py: schedules against closed forms, every optimizer, clipping, the weight-decay
mask, frozen params, and validation messages."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from research import configs, optim, train_state

NUM_STEPS = 100


def opt_cfg(**overrides):
  """The default `optimizer` section with dotted overrides ('schedule.name': 'piecewise')."""
  o = configs.common_defaults().optimizer
  for k, v in overrides.items():
    section = o
    *parents, leaf = k.split('.')
    for p in parents:
      section = section[p]
    section[leaf] = v
  return o


def params_tree(value=1.0):
  return {'enc': {'kernel': jnp.full((3, 4), value), 'bias': jnp.full((4,), value)},
          'dec': {'kernel': jnp.full((4, 2), value), 'bias': jnp.full((2,), value)},
          'norm': {'scale': jnp.full((2,), value)}}


def values(schedule, steps):
  return [float(schedule(s)) for s in steps]


# --- schedules ----------------------------------------------------------------------------------

SCHEDULE_CASES = [
    # (overrides, {step: expected lr}) with lr = 1
    ({'schedule.name': 'constant'}, {0: 1.0, 50: 1.0, 100: 1.0}),
    ({'schedule.name': 'constant', 'schedule.warmup_steps': 10},
     {0: 0.0, 5: 0.5, 10: 1.0, 99: 1.0}),
    ({'schedule.name': 'warmup_cosine', 'schedule.warmup_steps': 10, 'schedule.end_value': 0.1},
     {0: 0.0, 5: 0.5, 10: 1.0, 55: 0.55, 100: 0.1,
      # a quarter of the way through the decay: end + (1 - end) * (1 + cos(pi / 4)) / 2
      32.5: 0.1 + 0.9 * (1 + math.cos(math.pi / 4)) / 2}),
    ({'schedule.name': 'warmup_cosine', 'schedule.warmup_steps': 10, 'schedule.decay_steps': 50},
     {10: 1.0, 30: 0.5, 50: 0.0, 80: 0.0}),
    ({'schedule.name': 'warmup_linear', 'schedule.warmup_steps': 10, 'schedule.end_value': 0.1},
     {0: 0.0, 5: 0.5, 10: 1.0, 55: 0.55, 100: 0.1}),
    ({'schedule.name': 'exponential', 'schedule.decay_steps': 50, 'schedule.decay_rate': 0.1},
     {0: 1.0, 25: 0.1 ** 0.5, 50: 0.1, 100: 0.01}),
    ({'schedule.name': 'exponential', 'schedule.decay_steps': 50, 'schedule.decay_rate': 0.1,
      'schedule.end_value': 0.05}, {50: 0.1, 100: 0.05}),
    ({'schedule.name': 'exponential', 'schedule.decay_steps': 50, 'schedule.decay_rate': 0.1,
      'schedule.warmup_steps': 10}, {5: 0.5, 10: 1.0, 60: 0.1}),
    ({'schedule.name': 'piecewise', 'schedule.boundaries': '30,60', 'schedule.scales': '0.1,0.5'},
     {0: 1.0, 29: 1.0, 30: 0.1, 59: 0.1, 60: 0.05, 100: 0.05}),
    ({'schedule.name': 'piecewise', 'schedule.boundaries': '30,60', 'schedule.scales': '0.1,0.5',
      'schedule.warmup_steps': 10}, {5: 0.5, 10: 1.0, 29: 1.0, 30: 0.1, 60: 0.05}),
    ({'schedule.name': 'warmup_rsqrt', 'schedule.warmup_steps': 16},
     {0: 0.0, 8: 0.5, 16: 1.0, 64: 0.5, 100: 0.4}),
    ({'schedule.name': 'warmup_rsqrt', 'schedule.warmup_steps': 16, 'schedule.end_value': 0.45},
     {16: 1.0, 64: 0.5, 100: 0.45}),
]


@pytest.mark.parametrize('overrides,expected', SCHEDULE_CASES,
                         ids=[f'{i}-{c[0]["schedule.name"]}' for i, c in enumerate(SCHEDULE_CASES)])
def test_schedule_closed_forms(overrides, expected):
  cfg = opt_cfg(lr=1.0, **overrides)
  optim.validate(cfg, NUM_STEPS)
  schedule = optim.make_schedule(cfg, NUM_STEPS)
  steps = list(expected)
  np.testing.assert_allclose(values(schedule, steps), [expected[s] for s in steps],
                             rtol=1e-5, atol=1e-6)


def test_schedule_scales_with_lr_and_jits():
  cfg = opt_cfg(lr=3e-4, **{'schedule.name': 'warmup_cosine', 'schedule.warmup_steps': 10})
  schedule = optim.make_schedule(cfg, NUM_STEPS)
  assert float(jax.jit(schedule)(jnp.asarray(10))) == pytest.approx(3e-4)


# --- optimizers ---------------------------------------------------------------------------------


@pytest.mark.parametrize('name', optim.OPTIMIZERS)
def test_every_optimizer_steps(name):
  cfg = opt_cfg(name=name, lr=0.1, weight_decay=1e-2, clip_grad_norm=1.0)
  optim.validate(cfg, NUM_STEPS)
  tx, _ = optim.make(cfg, NUM_STEPS)
  params = params_tree()
  state = tx.init(params)
  grads = jax.tree.map(lambda p: 0.5 * jnp.ones_like(p), params)
  updates, state = jax.jit(tx.update)(grads, state, params)
  for u in jax.tree.leaves(updates):
    assert np.all(np.isfinite(u))
  new = optax.apply_updates(params, updates)
  # every param moved, and downhill (grads are positive)
  for p, q in zip(jax.tree.leaves(params), jax.tree.leaves(new)):
    assert np.all(np.asarray(q) < np.asarray(p))


def test_momentum_and_nesterov_differ():
  params = params_tree()
  grads = jax.tree.map(jnp.ones_like, params)

  def two_steps(nesterov):
    tx, _ = optim.make(opt_cfg(name='momentum', lr=0.1, nesterov=nesterov), NUM_STEPS)
    s = tx.init(params)
    _, s = tx.update(grads, s, params)
    u, _ = tx.update(grads, s, params)
    return float(u['dec']['bias'][0])
  np.testing.assert_allclose(two_steps(False), -0.1 * (1 + 0.9), rtol=1e-6)
  np.testing.assert_allclose(two_steps(True), -0.1 * (1 + 0.9 + 0.9 ** 2), rtol=1e-6)


def test_clipping_caps_global_norm():
  tx, _ = optim.make(opt_cfg(name='sgd', lr=1.0, clip_grad_norm=1.0), NUM_STEPS)
  params = params_tree()
  big = jax.tree.map(lambda p: 10.0 * jnp.ones_like(p), params)
  updates, _ = jax.jit(tx.update)(big, tx.init(params), params)
  assert float(optax.global_norm(updates)) == pytest.approx(1.0, rel=1e-5)
  small = jax.tree.map(lambda p: 0.01 * jnp.ones_like(p), params)
  updates, _ = jax.jit(tx.update)(small, tx.init(params), params)
  assert float(optax.global_norm(updates)) == pytest.approx(float(optax.global_norm(small)))


WD_CASES = [(n, False) for n in optim.OPTIMIZERS] + [('momentum', True), ('adamw', True)]


@pytest.mark.parametrize('name,decay_all', WD_CASES)
def test_weight_decay_mask(name, decay_all):
  """Zero gradients: only weight decay moves params. Kernels shrink; 1-D params are left alone
  unless decay_norms_and_biases."""
  cfg = opt_cfg(name=name, lr=0.01, weight_decay=0.1, decay_norms_and_biases=decay_all)
  tx, _ = optim.make(cfg, NUM_STEPS)
  params = params_tree()
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = jax.jit(tx.update)(zeros, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  for path in ('enc/kernel', 'dec/kernel'):
    a, b = path.split('/')
    assert np.all(np.abs(new[a][b]) < 1.0), (name, path)
  for a, b in (('enc', 'bias'), ('dec', 'bias'), ('norm', 'scale')):
    if decay_all:
      assert np.all(np.abs(new[a][b]) < 1.0), (name, a, b)
    else:
      np.testing.assert_array_equal(new[a][b], params[a][b])


def test_no_weight_decay_means_no_change_with_zero_grads():
  tx, _ = optim.make(opt_cfg(name='adamw', lr=0.01, weight_decay=0.0), NUM_STEPS)
  params = params_tree()
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = jax.jit(tx.update)(zeros, tx.init(params), params)
  for u in jax.tree.leaves(updates):
    np.testing.assert_array_equal(u, 0.0)


def _array_size(tree):
  return sum(np.size(x) for x in jax.tree.leaves(tree) if hasattr(x, 'shape'))


@pytest.mark.parametrize('name', ['adam', 'adamw', 'momentum'])
def test_frozen_params_get_zero_updates_and_no_state(name):
  cfg = opt_cfg(name=name, lr=0.1, weight_decay=0.1, clip_grad_norm=1.0, frozen='^enc/, scale$')
  optim.validate(cfg, NUM_STEPS)
  tx, _ = optim.make(cfg, NUM_STEPS)
  params = params_tree()
  grads = jax.tree.map(jnp.ones_like, params)
  opt_state = tx.init(params)
  updates, _ = jax.jit(tx.update)(grads, opt_state, params)
  for frozen in (updates['enc']['kernel'], updates['enc']['bias'], updates['norm']['scale']):
    np.testing.assert_array_equal(frozen, 0.0)
  for trained in (updates['dec']['kernel'], updates['dec']['bias']):
    assert np.all(np.asarray(trained) < 0)
  # State only for the trained params: dec is 4*2 + 2 = 10 numbers per moment.
  per_moment = {'adam': 2, 'adamw': 2, 'momentum': 1}[name]
  assert _array_size(opt_state) - 10 * per_moment <= 2   # plus step counters


def test_frozen_clipping_ignores_frozen_grads():
  """The clip norm is over the trained params only: huge grads on a frozen param do not shrink
  the trained params' updates."""
  tx, _ = optim.make(opt_cfg(name='sgd', lr=1.0, clip_grad_norm=1.0, frozen='^enc/'), NUM_STEPS)
  params = params_tree()
  grads = jax.tree.map(lambda p: 0.01 * jnp.ones_like(p), params)
  grads['enc']['kernel'] = 1e6 * grads['enc']['kernel']
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  np.testing.assert_allclose(updates['dec']['kernel'], -0.01, rtol=1e-6)


def test_frozen_in_train_state():
  tx, _ = optim.make(opt_cfg(name='adam', lr=0.1, frozen='dec'), NUM_STEPS)
  params = params_tree()
  state = train_state.TrainState.create(params, tx)
  grads = jax.tree.map(jnp.ones_like, params)
  new = jax.jit(train_state.apply_gradients)(state, grads, {})
  np.testing.assert_array_equal(new.params['dec']['kernel'], params['dec']['kernel'])
  assert np.all(np.asarray(new.params['enc']['kernel']) < 1.0)


def test_param_path_and_labels():
  tree = {'a': {'b': {'kernel': 1, 'bias': 2}}, 'layers': [{'w': 3}, {'w': 4}]}
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  paths = sorted(optim.param_path(kp) for kp, _ in flat)
  assert paths == ['a/b/bias', 'a/b/kernel', 'layers/0/w', 'layers/1/w']
  labels = optim.path_labels(tree, 'kernel$,layers/1')
  assert labels == {'a': {'b': {'kernel': True, 'bias': False}},
                    'layers': [{'w': False}, {'w': True}]}
  assert optim.path_labels(tree, ['^a/']) == {'a': {'b': {'kernel': True, 'bias': True}},
                                              'layers': [{'w': False}, {'w': False}]}


def test_flax_params_paths():
  import flax.linen as nn

  class M(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.LayerNorm()(nn.Dense(3, name='enc')(x))
  params = M().init(jax.random.key(0), jnp.ones((1, 2)))['params']
  flat, _ = jax.tree_util.tree_flatten_with_path(params)
  assert sorted(optim.param_path(kp) for kp, _ in flat) == [
      'LayerNorm_0/bias', 'LayerNorm_0/scale', 'enc/bias', 'enc/kernel']
  mask = optim.decay_mask(params)
  assert mask['enc']['kernel'] and not mask['enc']['bias'] and not mask['LayerNorm_0']['scale']


# --- validation ---------------------------------------------------------------------------------

BAD = [
    ({'name': 'adamx'}, 'optimizer.name'),
    ({'lr': 0.0}, 'optimizer.lr'),
    ({'lr': -1e-3}, 'optimizer.lr'),
    ({'b1': 1.0}, 'optimizer.b1'),
    ({'b1': -0.1}, 'optimizer.b1'),
    ({'b2': 1.5}, 'optimizer.b2'),
    ({'eps': 0.0}, 'optimizer.eps'),
    ({'momentum': 1.0}, 'optimizer.momentum'),
    ({'weight_decay': -1e-4}, 'optimizer.weight_decay'),
    ({'clip_grad_norm': -1.0}, 'optimizer.clip_grad_norm'),
    ({'grad_accum_steps': 0}, 'optimizer.grad_accum_steps'),
    ({'ema_decay': 1.0}, 'optimizer.ema_decay'),
    ({'ema_decay': -0.5}, 'optimizer.ema_decay'),
    ({'frozen': 'enc/('}, 'optimizer.frozen'),
    ({'frozen': 'enc/,'}, 'optimizer.frozen'),
    ({'schedule.name': 'cosine'}, 'optimizer.schedule.name'),
    ({'schedule.warmup_steps': -1}, 'optimizer.schedule.warmup_steps'),
    ({'schedule.name': 'warmup_cosine', 'schedule.warmup_steps': 101},
     'optimizer.schedule.warmup_steps'),
    ({'schedule.name': 'warmup_linear', 'schedule.warmup_steps': 20, 'schedule.decay_steps': 10},
     'optimizer.schedule.warmup_steps'),
    ({'schedule.warmup_steps': 101}, 'optimizer.schedule.warmup_steps'),
    ({'schedule.name': 'warmup_rsqrt'}, 'optimizer.schedule.warmup_steps'),
    ({'schedule.decay_steps': -1}, 'optimizer.schedule.decay_steps'),
    ({'schedule.end_value': -0.1}, 'optimizer.schedule.end_value'),
    ({'schedule.name': 'exponential', 'schedule.decay_rate': 0.0},
     'optimizer.schedule.decay_rate'),
    ({'schedule.name': 'piecewise'}, 'optimizer.schedule.boundaries'),
    ({'schedule.name': 'piecewise', 'schedule.boundaries': '10,x', 'schedule.scales': '1,1'},
     'optimizer.schedule.boundaries'),
    ({'schedule.name': 'piecewise', 'schedule.boundaries': '10,20', 'schedule.scales': '0.1'},
     'optimizer.schedule.scales'),
    ({'schedule.name': 'piecewise', 'schedule.boundaries': '20,10', 'schedule.scales': '1,1'},
     'optimizer.schedule.boundaries'),
    ({'schedule.name': 'piecewise', 'schedule.boundaries': '10,10', 'schedule.scales': '1,1'},
     'optimizer.schedule.boundaries'),
    ({'schedule.name': 'piecewise', 'schedule.boundaries': '10', 'schedule.scales': '-1'},
     'optimizer.schedule.scales'),
    ({'schedule.boundaries': '10,x'}, 'optimizer.schedule.boundaries'),   # even if unused
]


@pytest.mark.parametrize('overrides,field', BAD, ids=[f'{i}-{b[1]}' for i, b in enumerate(BAD)])
def test_validate_rejects(overrides, field):
  with pytest.raises(configs.ConfigError) as e:
    optim.validate(opt_cfg(**overrides), NUM_STEPS)
  msg = str(e.value)
  assert f'config.{field}=' in msg
  assert '\n' not in msg


@pytest.mark.parametrize('overrides', [c[0] for c in SCHEDULE_CASES] + [
    {'frozen': 'enc/.*, ^dec/bias$'},
    {'schedule.name': 'warmup_cosine', 'schedule.warmup_steps': 100},
])
def test_validate_accepts(overrides):
  optim.validate(opt_cfg(**overrides), NUM_STEPS)
  optim.make(opt_cfg(**overrides), NUM_STEPS)


def test_unknown_names_list_choices():
  with pytest.raises(configs.ConfigError, match='adamw'):
    optim.validate(opt_cfg(name='adamx'), NUM_STEPS)
  with pytest.raises(configs.ConfigError, match='warmup_rsqrt'):
    optim.validate(opt_cfg(**{'schedule.name': 'cos'}), NUM_STEPS)


# --- EMA ------------------------------------------------------------------------------------

def test_ema_warmup_is_tf_num_updates_decay():
  at = lambda n, **kw: float(train_state.ema_decay_at(0.999, n, **kw))
  assert [at(n) for n in (0, 1, 10, 10_000)] == pytest.approx([0.1, 2 / 11, 11 / 20, 0.999])
  assert at(0, warmup=False) == pytest.approx(0.999)


@pytest.mark.parametrize('warmup', [True, False])
def test_short_run_ema_tracks_the_params_only_with_the_warmup(warmup):
  """SGD walks every param from 1 to 1 - 0.01 n. The warmed EMA (decay (1+n)/(10+n) here) lags
  a ramp by ~n/10 steps: 90% of the way after 300 steps; a plain 0.999 EMA covers ~14%."""
  tx, _ = optim.make(opt_cfg(name='sgd', lr=0.01), NUM_STEPS)
  params = params_tree()
  state = train_state.TrainState.create(params, tx, ema_decay=0.999, ema_warmup=warmup)
  grads = jax.tree.map(jnp.ones_like, params)
  step = jax.jit(train_state.apply_gradients)
  for _ in range(300):
    state = step(state, grads, {})
  moved = 1.0 - float(state.params['enc']['kernel'][0, 0])            # 3.0
  ema_moved = 1.0 - float(state.ema_params['enc']['kernel'][0, 0])
  if warmup:
    assert ema_moved / moved > 0.85, ema_moved
  else:
    assert ema_moved / moved < 0.3, ema_moved


def test_raw_params_view_swaps_every_ema_copy():
  tx, _ = optim.make(opt_cfg(), NUM_STEPS)
  with_ema = train_state.TrainState.create(params_tree(1.0), tx, ema_decay=0.9)
  with_ema = with_ema.replace(ema_params=params_tree(5.0))
  plain = train_state.TrainState.create(params_tree(2.0), tx)
  nested = {'g': with_ema, 'd': plain}
  assert train_state.has_ema(nested) and not train_state.has_ema(plain)
  raw = train_state.raw_params_view(nested)
  assert float(raw['g'].eval_params['enc']['bias'][0]) == 1.0      # was the EMA's 5.0
  assert float(nested['g'].eval_params['enc']['bias'][0]) == 5.0
  assert jax.tree.structure(raw) == jax.tree.structure(nested)      # compiled evals reused


def test_stale_ema_warning_names_the_fix():
  from research import trainer
  line = trainer.stale_ema_warning({'loss': 0.61, 'raw_loss': 0.19}, 1000, 0.999)
  assert 'loss 0.61 is 3.2x' in line and 'optimizer.ema_decay=0.999' in line
  assert trainer.stale_ema_warning({'loss': 0.20, 'raw_loss': 0.19}, 1000, 0.999) is None
  assert trainer.stale_ema_warning({'accuracy': 0.9, 'raw_accuracy': 0.1}, 1, 0.9) is None
