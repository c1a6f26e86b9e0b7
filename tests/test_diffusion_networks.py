"""Tests for research/diffusion/networks.py: the DDPM U-Net and the toy MLP denoiser."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.diffusion import networks

# Small enough to compile in seconds; still three levels (28 -> 14 -> 7), attention at 7.
SMALL = dict(channels=16, channel_mults=(1, 2, 2), num_res_blocks=1, attn_resolutions=(7,),
             norm_groups=8, num_heads=2)


def _inputs(shape, seed=0):
  kx, kc = jax.random.split(jax.random.key(seed))
  return jax.random.normal(kx, shape), jax.random.normal(kc, shape[:1])


def _perturb(params, scale=0.05, seed=1):
  """Random non-zero params, so zero-initialised layers stop hiding the rest of the network."""
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(treedef, [v + scale * jax.random.normal(k, v.shape)
                                      for v, k in zip(leaves, keys)])


@pytest.mark.parametrize('shape, kwargs', [
    ((2, 28, 28, 1), dict(SMALL)),
    ((2, 32, 32, 3), dict(SMALL, attn_resolutions=(16,), out_channels=6)),
])
def test_unet_shape_and_zero_output_at_init(shape, kwargs):
  x, c = _inputs(shape)
  model = networks.UNet(**kwargs)
  params = model.init(jax.random.key(0), x, c, train=False)
  y = model.apply(params, x, c, train=False)
  assert y.shape == shape[:3] + (kwargs.get('out_channels') or shape[3],)
  assert y.dtype == jnp.float32
  assert not np.any(np.asarray(y))          # zero-initialised final conv (DDPM)
  names = set(params['params'])
  assert {'conv_in', 'conv_out', 'mid_attn', 'down0_downsample', 'up1_upsample'} <= names
  attn = 'down2_attn0' if shape[1] == 28 else 'down1_attn0'    # at 7x7 resp. 16x16
  assert attn in names


def test_conv_impls_agree_on_outputs_and_gradients():
  x, c = _inputs((2, 28, 28, 1))
  model = networks.UNet(**SMALL, conv_impl='xla')
  params = _perturb(model.init(jax.random.key(0), x, c, train=False))

  def run(impl):
    m = model.clone(conv_impl=impl)
    return jax.jit(jax.value_and_grad(
        lambda p: jnp.mean(m.apply(p, x, c, train=False) ** 2), has_aux=False))(params), m

  (loss_ref, grads_ref), m_ref = run('xla')
  y_ref = m_ref.apply(params, x, c, train=False)
  for impl in ('im2col', 'hybrid', 'auto'):
    (loss, grads), m = run(impl)
    np.testing.assert_allclose(m.apply(params, x, c, train=False), y_ref, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(loss, loss_ref, rtol=1e-4)
    for g, g_ref in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref)):
      np.testing.assert_allclose(g, g_ref, atol=1e-4 * float(np.max(np.abs(g_ref))) + 1e-8)


@pytest.mark.parametrize('stride', [1, 2])
@pytest.mark.parametrize('impl', ['im2col', 'hybrid'])
def test_conv3x3_matches_flax_conv(stride, impl):
  """Same [3, 3, Cin, Cout] params as nn.Conv: checkpoints move between implementations."""
  x = jax.random.normal(jax.random.key(0), (2, 14, 14, 5))
  conv = nn.Conv(7, (3, 3), strides=(stride, stride), padding='SAME')
  params = _perturb(conv.init(jax.random.key(1), x))
  ours = networks.Conv3x3(7, stride=stride, impl=impl)
  assert jax.tree.map(jnp.shape, ours.init(jax.random.key(1), x)) == jax.tree.map(jnp.shape,
                                                                                   params)
  np.testing.assert_allclose(ours.apply(params, x), conv.apply(params, x), atol=1e-4, rtol=1e-4)


def test_conditional_labels_and_null_class():
  x, c = _inputs((4, 28, 28, 1))
  model = networks.UNet(**SMALL, num_classes=10)
  labels = jnp.array([0, 3, 7, 9])
  params = model.init(jax.random.key(0), x, c, labels, train=False)
  assert params['params']['label_embed']['embedding'].shape == (11, 4 * SMALL['channels'])
  params = _perturb(params)
  apply = jax.jit(lambda p, lab: model.apply(p, x, c, lab, train=False))
  y = apply(params, labels)
  y_other = apply(params, (labels + 1) % 10)
  y_null = apply(params, jnp.full((4,), 10))
  assert np.max(np.abs(y - y_other)) > 1e-4
  assert np.max(np.abs(y - y_null)) > 1e-4
  # labels=None means the null class (row num_classes), as used for classifier-free guidance.
  np.testing.assert_allclose(model.apply(params, x, c, None, train=False), y_null, atol=1e-5)


def test_noise_level_changes_output():
  x, c = _inputs((2, 28, 28, 1))
  model = networks.UNet(**SMALL)
  params = _perturb(model.init(jax.random.key(0), x, c, train=False))
  apply = jax.jit(lambda p, c: model.apply(p, x, c, train=False))
  assert np.max(np.abs(apply(params, c) - apply(params, c + 0.1))) > 1e-4


def test_unconditional_model_rejects_labels():
  x, c = _inputs((2, 28, 28, 1))
  with pytest.raises(ValueError, match='unconditional'):
    networks.UNet(**SMALL).init(jax.random.key(0), x, c, jnp.zeros(2, jnp.int32), train=False)
  with pytest.raises(ValueError, match='unconditional'):
    networks.MLPDenoiser(hidden=16).init(jax.random.key(0), x[:, 0, :2, 0], c,
                                         jnp.zeros(2, jnp.int32), train=False)


def test_dropout_only_in_train_mode():
  x, c = _inputs((2, 28, 28, 1))
  model = networks.UNet(**SMALL, dropout=0.5)
  params = _perturb(model.init(jax.random.key(0), x, c, train=False))
  apply = jax.jit(lambda p, rng, train: model.apply(p, x, c, train=train, rngs={'dropout': rng}),
                  static_argnums=2)
  # train=False needs no 'dropout' rng and ignores one that is given.
  y_eval = model.apply(params, x, c, train=False)
  np.testing.assert_array_equal(apply(params, jax.random.key(1), False), y_eval)
  np.testing.assert_array_equal(apply(params, jax.random.key(2), False), y_eval)
  y1, y2 = apply(params, jax.random.key(1), True), apply(params, jax.random.key(2), True)
  assert np.max(np.abs(y1 - y_eval)) > 1e-4
  assert np.max(np.abs(y1 - y2)) > 1e-4
  with pytest.raises(Exception, match='dropout'):
    model.apply(params, x, c, train=True)


@pytest.mark.parametrize('shape, kwargs, match', [
    ((2, 30, 30, 1), {}, 'must divide by'),              # 30 -> 15 -> 7.5
    ((2, 28, 28, 1), dict(channel_mults=(1, 2, 2, 2)), 'must divide by'),   # 28 -> ... -> 3.5
    ((2, 28, 28, 1), dict(norm_groups=5), 'norm_groups'),
    ((2, 28, 28, 1), dict(num_heads=3), 'num_heads'),
    ((2, 28, 28, 1), dict(conv_impl='cudnn'), 'conv_impl'),
    ((2, 28, 28), {}, r'\[B, H, W, C\]'),
])
def test_unet_bad_configs_raise_value_error(shape, kwargs, match):
  x = jnp.zeros(shape)
  with pytest.raises(ValueError, match=match):
    networks.UNet(**dict(SMALL, **kwargs)).init(jax.random.key(0), x, jnp.zeros(2), train=False)


def test_mlp_denoiser():
  x, c = _inputs((8, 2))
  model = networks.MLPDenoiser(hidden=32, depth=2, num_classes=3, dropout=0.5)
  labels = jnp.array([0, 1, 2, 3, 0, 1, 2, 3])
  params = model.init(jax.random.key(0), x, c, labels, train=False)
  y = model.apply(params, x, c, labels, train=False)
  assert y.shape == x.shape and not np.any(np.asarray(y))          # zero-initialised output
  params = _perturb(params)
  y = model.apply(params, x, c, labels, train=False)
  assert np.max(np.abs(y - model.apply(params, x, c, (labels + 1) % 4, train=False))) > 1e-4
  np.testing.assert_allclose(model.apply(params, x, c, None, train=False),
                             model.apply(params, x, c, jnp.full((8,), 3), train=False), atol=1e-6)
  y_train = model.apply(params, x, c, labels, train=True, rngs={'dropout': jax.random.key(1)})
  assert np.max(np.abs(y_train - y)) > 1e-4
  uncond = networks.MLPDenoiser(hidden=32, depth=2)
  p = uncond.init(jax.random.key(0), jnp.zeros((3, 5)), jnp.zeros(3), train=False)
  assert uncond.apply(p, jnp.zeros((3, 5)), jnp.zeros(3), train=True).shape == (3, 5)


def test_sinusoidal_embedding():
  t = jnp.array([0., 1.5, -2.])
  emb = networks.sinusoidal_embedding(t, 8)
  assert emb.shape == (3, 8)
  np.testing.assert_allclose(emb[0], [1, 1, 1, 1, 0, 0, 0, 0], atol=1e-7)   # [cos, sin] at t=0
  np.testing.assert_allclose(emb[1, 0], np.cos(1.5), rtol=1e-6)            # frequency 1 first
  np.testing.assert_allclose(np.square(emb[:, :4]) + np.square(emb[:, 4:]), 1., rtol=1e-5)
  odd = networks.sinusoidal_embedding(t, 7, max_period=100.)
  assert odd.shape == (3, 7) and not np.any(np.asarray(odd[:, -1]))
