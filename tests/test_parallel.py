"""Data parallelism: a 2-device step equals the 1-device step on the same global batch."""
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research import parallel, train_state, trainer
from research.data import pipeline
from tests import helpers


def _one_step(config, mesh, batch):
  exp = trainer.build(config, mesh)
  state = exp.init(jax.random.key(0), parallel.host_batch_to_global(batch, mesh))
  return exp.train_step(state, parallel.host_batch_to_global(batch, mesh), jax.random.key(1))


def test_two_device_step_equals_one_device_step():
  assert jax.device_count() == 2
  config = helpers.tiny_digits()
  config.optimizer.grad_accum_steps = 1
  batch = next(pipeline.train_iterator(config.data, config.train.batch_size, config.seed))
  state1, metrics1 = _one_step(config, parallel.make_mesh(jax.devices()[:1]), batch)
  state2, metrics2 = _one_step(config, parallel.make_mesh(jax.devices()), batch)
  host1, host2 = parallel.to_host((state1.params, metrics1)), parallel.to_host(
      (state2.params, metrics2))
  chex.assert_trees_all_close(host1, host2, atol=1e-5, rtol=1e-5)
  # The step really changed the parameters (the comparison is not trivially of two inits).
  init = parallel.to_host(trainer.build(config, parallel.make_mesh(jax.devices()[:1])).init(
      jax.random.key(0), batch).params)
  diff = jax.tree.map(lambda a, b: np.abs(a - b).max(), init, host1[0])
  assert max(jax.tree.leaves(diff)) > 0


def test_gradient_accumulation_matches_full_batch():
  """A scan over 4 microbatches gives the full-batch gradient (mean loss, no noise)."""
  w = {'w': jnp.array([0.5, -1.0, 2.0])}
  batch = {'x': jax.random.normal(jax.random.key(0), (16, 3)),
           'y': jax.random.normal(jax.random.key(1), (16,))}

  def loss_fn(params, model_state, b, key):
    loss = jnp.mean((b['x'] @ params['w'] - b['y']) ** 2)
    return loss, ({'mse': loss}, model_state)

  out = []
  for accum in (1, 4):
    f = parallel.data_parallel(
        lambda p, b, a=accum: train_state.grads_and_metrics(loss_fn, p, {}, b,
                                                            jax.random.key(2), a)[:2],
        parallel.make_mesh(jax.devices()[:1]), batch_args=(1,), out_batched=False)
    out.append(parallel.to_host(f(w, batch)))
  chex.assert_trees_all_close(out[0], out[1], atol=1e-6)
  assert np.abs(out[0][0]['w']).max() > 0


class _BN(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.BatchNorm(use_running_average=False, axis_name=parallel.AXIS, momentum=0.5)(x)


def test_batch_norm_statistics_are_global():
  x = jax.random.normal(jax.random.key(0), (8, 3)) * jnp.arange(1, 9)[:, None]
  model = _BN()

  def per_device(v, xb):
    y, updates = model.apply(v, xb, mutable=['batch_stats'])
    return y, updates['batch_stats']

  variables = model.init(jax.random.key(1), x[:1].repeat(2, 0))
  outs = []
  for devices in (jax.devices()[:1], jax.devices()):
    mesh = parallel.make_mesh(devices)
    f = parallel.data_parallel(per_device, mesh, batch_args=(1,), out_batched=(True, False))
    outs.append(parallel.to_host(f(variables, x)))
  chex.assert_trees_all_close(outs[0], outs[1], atol=1e-5)
  # Global normalization: every feature of the full batch has zero mean, unit variance.
  np.testing.assert_allclose(outs[1][0].mean(0), 0, atol=1e-5)


def test_per_example_keys_do_not_depend_on_device_count():
  key = jax.random.key(3)
  outs = []
  for devices in (jax.devices()[:1], jax.devices()):
    mesh = parallel.make_mesh(devices)
    f = parallel.data_parallel(
        lambda k, x: jax.vmap(lambda kk: jax.random.normal(kk, ()))(
            parallel.per_example_keys(k, x.shape[0])),
        mesh, batch_args=(1,), out_batched=True)
    outs.append(parallel.to_host(f(key, jnp.zeros(6))))
  np.testing.assert_array_equal(outs[0], outs[1])
