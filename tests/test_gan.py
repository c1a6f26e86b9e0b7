"""The GAN family in the harness: packing, the data-parallel D/G step, config errors, a
diverging run, and short end-to-end runs (toy mode coverage, image GANs)."""
import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import configs, parallel, trainer
from research.data import pipeline
from research.gan import family as gan_family
from tests import helpers


def tiny_toy(pack=1, **gan):
  """gan_ring8 cut down: narrow networks, a few steps."""
  c = helpers.load_config('gan_ring8')
  c.model.g_hidden, c.model.d_hidden = '32,32', '16,16'
  c.gan.pack = pack
  for k, v in gan.items():
    c.gan[k] = v
  c.train.batch_size = 8 * pack * c.gan.n_critic
  c.train.num_steps = 6
  c.train.log_every = 3
  c.train.eval_every = c.train.sample_every = c.train.checkpoint_every = 6
  c.eval.batch_size = 200 * pack
  c.data.num_eval_examples = 400
  c.eval.num_samples = 16
  return c


def tiny_images(name='sngan_hinge_fashion_mnist', **model):
  c = helpers.load_config(name)
  c.model.g_channels = c.model.d_channels = 8
  c.model.latent_dim = 16
  for k, v in model.items():
    c.model[k] = v
  c.train.batch_size = 8 * c.gan.n_critic
  c.train.num_steps = 4
  c.train.log_every = 2
  c.train.eval_every = c.train.sample_every = c.train.checkpoint_every = 4
  c.eval.batch_size = 100
  c.data.num_eval_examples = 200
  c.eval.num_samples = 8
  c.optimizer.ema_decay = 0.9
  return c


def test_pack_groups_consecutive_samples_on_the_last_axis():
  x = jnp.arange(6 * 2).reshape(6, 2)
  np.testing.assert_array_equal(gan_family.pack(x, 3), [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11]])
  img = jnp.arange(4 * 2 * 2 * 1).reshape(4, 2, 2, 1)
  packed = gan_family.pack(img, 2)
  assert packed.shape == (2, 2, 2, 2)
  np.testing.assert_array_equal(packed[1, ..., 0], img[2, ..., 0])
  np.testing.assert_array_equal(packed[1, ..., 1], img[3, ..., 0])
  assert gan_family.pack(x, 1) is x


def _one_step(config, devices, batch):
  mesh = parallel.make_mesh(devices)
  exp = trainer.build(config, mesh)
  state = exp.init(jax.random.key(0), parallel.host_batch_to_global(batch, mesh))
  state, metrics = exp.train_step(state, parallel.host_batch_to_global(batch, mesh),
                                  jax.random.key(1))
  return parallel.to_host((state.g.params, state.d.params, state.g.model_state,
                           state.d.model_state, metrics))


@pytest.mark.parametrize('kind,pack,extra', [
    ('toy', 2, {'n_critic': 2, 'update_rule': 'alternating'}),  # packing, 2 D steps, G batch norm
    ('toy', 1, {'loss': 'wgan', 'gp_weight': 10.0, 'n_critic': 2,
                'update_rule': 'alternating'}),       # WGAN-GP
    ('toy', 2, {'update_rule': 'simultaneous'}),      # PacGAN's simultaneous updates (its code)
    ('images', 1, {}),                                # SN + hinge + class-conditional
])
def test_two_device_step_equals_one_device_step(kind, pack, extra):
  """One train step (n_critic D updates, one G update, batch norm over the global batch,
  spectral-norm power iterations) is the same on 1 and 2 devices."""
  assert jax.device_count() == 2
  if kind == 'toy':
    config = tiny_toy(pack, **extra)
  else:
    config = tiny_images('sngan_hinge_fashion_mnist', class_conditional=not extra)
    for k, v in extra.items():
      config.gan[k] = v
    config.model.spectral_norm = not extra
    config.train.batch_size = 8 * config.gan.n_critic
  config.optimizer.name = 'sgd'   # Adam's first step ~ lr * sign(grad) would hide the sum
  config.optimizer.lr = 0.05
  configs.validate(config, 2)
  batch = next(pipeline.train_iterator(config.data, config.train.batch_size, config.seed))
  one, two = (_one_step(config, d, batch) for d in (jax.devices()[:1], jax.devices()))
  chex.assert_trees_all_close(one, two, atol=2e-5, rtol=2e-5)
  metrics = one[-1]
  for name in ('d_loss', 'g_loss', 'd_real_acc', 'd_fake_acc', 'd_grad_norm', 'g_grad_norm'):
    assert np.isfinite(metrics[name]), name
  assert ('gradient_penalty' in metrics) == bool(extra.get('gp_weight'))


@pytest.mark.parametrize('update', ['alternating', 'simultaneous'])
def test_simultaneous_updates_take_the_generator_gradient_at_the_old_discriminator(update):
  """With gan.update_rule='simultaneous' the generator's step is the same whatever the
  discriminator's learning rate (its gradient is taken before D moves); alternating updates
  answer the D step just taken, so there the generator's step depends on it."""
  g_params = []
  for d_lr in (1e-9, 1.0):
    config = tiny_toy(update_rule=update, d_lr=d_lr)
    config.optimizer.name = 'sgd'
    config.optimizer.lr = 0.05
    mesh = parallel.make_mesh(jax.devices()[:1])
    exp = trainer.build(config, mesh)
    batch = parallel.host_batch_to_global(
        next(pipeline.train_iterator(config.data, config.train.batch_size, config.seed)), mesh)
    state = exp.init(jax.random.key(0), batch)
    before = parallel.to_host(state.g.params)
    state, _ = exp.train_step(state, batch, jax.random.key(1))
    g_params.append(parallel.to_host(state.g.params))
  step = max(float(np.max(np.abs(a - b))) for a, b in
             zip(jax.tree.leaves(g_params[0]), jax.tree.leaves(before)))
  diff = max(float(np.max(np.abs(a - b))) for a, b in
             zip(jax.tree.leaves(g_params[0]), jax.tree.leaves(g_params[1])))
  if update == 'simultaneous':
    assert diff == 0.0, (diff, step)
  else:
    assert diff > 0.01 * step, (diff, step)


def test_the_saturating_loss_starves_the_generator():
  """Against a discriminator that confidently rejects the fakes, the minimax generator's
  gradient vanishes while the non-saturating one's does not (logged as g_grad_norm)."""
  norms = {}
  for loss in ('minimax', 'ns'):
    config = tiny_toy(loss=loss)
    mesh = parallel.make_mesh(jax.devices()[:1])
    exp = trainer.build(config, mesh)
    batch = next(pipeline.train_iterator(config.data, config.train.batch_size, config.seed))
    state = exp.init(jax.random.key(0), parallel.host_batch_to_global(batch, mesh))
    # A confident discriminator: push its logit bias far negative (fakes and reals rejected).
    d_params = jax.tree.map(lambda x: x, state.d.params)
    d_params['logit']['bias'] = d_params['logit']['bias'] - 12.0
    state = state.replace(d=state.d.replace(params=d_params))
    _, metrics = exp.train_step(state, parallel.host_batch_to_global(batch, mesh),
                                jax.random.key(1))
    norms[loss] = float(parallel.to_host(metrics)['g_grad_norm'])
  assert norms['minimax'] < 1e-3 * norms['ns'], norms


def test_config_errors_name_the_field():
  bad = [
      (lambda c: setattr(c.model, 'arch', 'dcgan'), 'model.arch'),
      (lambda c: setattr(c.gan, 'loss', 'lsgan'), 'gan.loss'),
      (lambda c: setattr(c.gan, 'n_critic', 0), 'gan.n_critic'),
      (lambda c: setattr(c.gan, 'update_rule', 'simultaneous'), 'gan.n_critic'),   # n_critic 2
      (lambda c: setattr(c.gan, 'update_rule', 'together'), 'gan.update_rule'),
      (lambda c: setattr(c.train, 'batch_size', 30), 'train.batch_size'),   # 30 % (2 * 4)
      (lambda c: setattr(c.model, 'class_conditional', True), 'model.class_conditional'),
      (lambda c: setattr(c.model, 'd_hidden', '200,x'), 'model.d_hidden'),
  ]
  for mutate, field in bad:
    c = tiny_toy(pack=2, update_rule='alternating')
    c.gan.n_critic = 2
    c.train.batch_size = 32
    mutate(c)
    with pytest.raises(configs.ConfigError, match=field.replace('.', r'\.')):
      configs.validate(c, 1)
  c = tiny_images()
  c.model.class_conditional = True
  c.gan.pack = 2
  with pytest.raises(configs.ConfigError, match=r'gan\.pack'):
    configs.validate(c, 1)


def test_toy_run_reports_mode_coverage(tmp_path):
  final = trainer.train(tiny_toy(pack=2), str(tmp_path))
  ev = final['eval']
  assert 0 <= ev['modes_captured'] <= 8
  assert 0 <= ev['high_quality_fraction'] <= 1
  assert np.isfinite(ev['modes_captured_se']) and ev['high_quality_fraction_se'] >= 0  # 3 draws
  assert ev['num_examples'] == 400
  for name in ('d_real_acc', 'd_fake_acc', 'd_real_logit', 'd_fake_logit'):
    assert np.isfinite(ev[name]), name
  with np.load(tmp_path / 'samples' / 'samples_0000006.npz') as z:
    assert z['points'].shape == (16, 2) and np.all(np.isfinite(z['points']))


def test_image_gan_run_samples_images(tmp_path):
  """Class-conditional SN-GAN with the hinge loss, end to end: samples are labelled images in
  [0, 1], and the EMA generator is what samples."""
  config = tiny_images(class_conditional=True)
  final = trainer.train(config, str(tmp_path))
  assert final['step'] == 4 and np.isfinite(final['train']['g_loss'])
  with np.load(tmp_path / 'samples' / 'samples_0000004.npz') as z:
    images, labels = z['images'], z['labels']
  assert images.shape == (8, 28, 28, 1) and images.min() >= 0 and images.max() <= 1
  np.testing.assert_array_equal(labels, np.arange(8) % 10)
  _, state, _, _ = trainer.restore(config, str(tmp_path))
  g = parallel.to_host(state.g)
  assert not all(np.allclose(a, b) for a, b in
                 zip(jax.tree.leaves(g.params), jax.tree.leaves(g.ema_params)))


def test_a_diverging_run_stops_without_a_bad_checkpoint(tmp_path):
  """Learning rate 10 on the toy GAN: the losses blow up (finite at first, ~1e10 within a few
  hundred steps), the run stops with a message naming the step and the limit, and every
  checkpoint left on disk is finite and from before the blow-up. (Alternating updates: with
  simultaneous ones the blow-up comes within the first few steps, before anything is logged.)"""
  config = tiny_toy(update_rule='alternating')
  config.optimizer.lr = 10.0
  config.train.num_steps = 400
  config.train.log_every = 5
  config.train.checkpoint_every = 1      # the pending (unlogged) metrics are checked at saves
  config.train.eval_every = config.train.sample_every = 1000
  with pytest.raises(trainer.NonFiniteError, match=r'(diverged|non-finite) training at step'):
    trainer.train(config, str(tmp_path))
  steps = sorted(int(d) for d in os.listdir(tmp_path / 'checkpoints') if d.isdigit())
  with open(tmp_path / 'metrics.jsonl') as f:
    logged = [json.loads(line) for line in f]
  last_logged = max(r['step'] for r in logged)
  assert steps and last_logged < 400 and all(s < last_logged for s in steps)
  for step in steps:
    _, state, _, _ = trainer.restore(config, str(tmp_path), step)
    for leaf in jax.tree.leaves(parallel.to_host(state)):
      assert np.all(np.isfinite(leaf)), step
