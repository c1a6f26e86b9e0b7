"""Tests for research/diffusion/networks.py: the DDPM U-Net and the toy MLP denoiser."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.diffusion import networks

# Small (two levels, 28 -> 14, attention at 14) to compile fast; the three-level Fashion-MNIST
# and CIFAR-10 shapes are checked with jax.eval_shape, which compiles nothing.
SMALL = dict(channels=8, channel_mults=(1, 2), num_res_blocks=1, attn_resolutions=(14,),
             norm_groups=4, num_heads=2)


def _key(seed):
  # 'rbg' keys: threefry initialisers take XLA seconds per parameter shape to compile on CPU.
  return jax.random.key(seed, impl='rbg')


def _inputs(shape, seed=0):
  rng = np.random.default_rng(seed)
  return (jnp.asarray(rng.normal(size=shape), jnp.float32),
          jnp.asarray(rng.normal(size=shape[:1]), jnp.float32))


def _init(model, *args):
  return jax.jit(lambda key: model.init(key, *args, train=False))(_key(0))


def _perturb(params, scale=0.05, seed=1):
  """Random non-zero params, so zero-initialised layers stop hiding the rest of the network."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda v: v + scale * jnp.asarray(rng.normal(size=v.shape), v.dtype), params)


def _jit_apply(model):
  return jax.jit(lambda p, x, c, labels, rng, train: model.apply(
      p, x, c, labels, train=train, rngs={'dropout': rng}), static_argnums=5)


@pytest.fixture(scope='module')
def cond():
  """A class-conditional U-Net on 28x28x1 (Fashion-MNIST-like), its init and perturbed params."""
  x, c = _inputs((4, 28, 28, 1))
  labels = jnp.array([0, 3, 7, 9])
  model = networks.UNet(**SMALL, num_classes=10, dropout=0.5)
  params = _init(model, x, c, labels)
  return dict(model=model, x=x, c=c, labels=labels, params=params, perturbed=_perturb(params),
              apply=_jit_apply(model))


def test_unet_28x28_shape_and_zero_output_at_init(cond):
  y = cond['apply'](cond['params'], cond['x'], cond['c'], cond['labels'], _key(1), False)
  assert y.shape == (4, 28, 28, 1) and y.dtype == jnp.float32
  assert not np.any(np.asarray(y))          # zero-initialised final conv (DDPM)
  names = set(cond['params']['params'])
  assert {'conv_in', 'conv_out', 'down1_attn0', 'mid_attn', 'up1_attn1', 'down0_downsample',
          'up1_upsample', 'label_embed'} <= names
  assert cond['params']['params']['label_embed']['embedding'].shape == (11, 4 * SMALL['channels'])


@pytest.mark.parametrize('shape, attn, out_channels, attn_block', [
    ((2, 28, 28, 1), (7,), None, 'down2_attn0'),      # Fashion-MNIST: 28 -> 14 -> 7, no padding
    ((2, 32, 32, 3), (16,), 6, 'down1_attn0'),        # CIFAR-10: 32 -> 16 -> 8
])
def test_unet_three_level_shapes(shape, attn, out_channels, attn_block):
  x, c = _inputs(shape)
  model = networks.UNet(**dict(SMALL, channel_mults=(1, 2, 2), attn_resolutions=attn),
                        out_channels=out_channels)
  params = jax.eval_shape(lambda: model.init(_key(0), x, c, train=False))['params']
  assert {attn_block, 'mid_attn', 'down1_downsample', 'up2_upsample'} <= set(params)
  assert 'label_embed' not in params and 'down2_downsample' not in params
  assert params['conv_in']['kernel'].shape == (3, 3, shape[3], SMALL['channels'])
  assert params['mid_res0']['conv1']['kernel'].shape == (3, 3, 16, 16)
  y = jax.eval_shape(lambda p: model.apply({'params': p}, x, c, train=False), params)
  assert y.shape == shape[:3] + (out_channels or shape[3],) and y.dtype == jnp.float32


def test_labels_noise_level_and_null_class_change_output(cond):
  apply = lambda labels, c=cond['c']: cond['apply'](cond['perturbed'], cond['x'], c, labels,
                                                    _key(1), False)
  y = apply(cond['labels'])
  assert np.max(np.abs(y - apply((cond['labels'] + 1) % 10))) > 1e-4
  assert np.max(np.abs(y - apply(jnp.full((4,), 10)))) > 1e-4     # null class (CFG)
  assert np.max(np.abs(y - apply(cond['labels'], cond['c'] + 0.1))) > 1e-4


def test_dropout_only_in_train_mode(cond):
  args = cond['perturbed'], cond['x'], cond['c'], cond['labels']
  y_eval = cond['apply'](*args, _key(1), False)
  np.testing.assert_array_equal(cond['apply'](*args, _key(2), False), y_eval)
  y1, y2 = cond['apply'](*args, _key(1), True), cond['apply'](*args, _key(2), True)
  assert np.max(np.abs(y1 - y_eval)) > 1e-4
  assert np.max(np.abs(y1 - y2)) > 1e-4


def test_conv_impls_agree(cond):
  """'xla' (= 'auto', the fixture's), 'im2col' and 'hybrid' share params and agree."""
  assert networks.resolve_conv_impl('auto') == 'xla'
  args = cond['perturbed'], cond['x'], cond['c'], cond['labels'], _key(1), False
  y = cond['apply'](*args)
  for impl in ('im2col', 'hybrid'):
    np.testing.assert_allclose(_jit_apply(cond['model'].clone(conv_impl=impl))(*args), y,
                               atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize('stride', [1, 2])
def test_conv3x3_matches_flax_conv_values_and_gradients(stride):
  """Same [3, 3, Cin, Cout] params as nn.Conv, so checkpoints move between implementations;
  'hybrid' has a hand-written kernel gradient."""
  x, _ = _inputs((2, 14, 14, 5))
  conv = nn.Conv(7, (3, 3), strides=(stride, stride), padding='SAME')
  params = _perturb(conv.init(_key(1), x))
  loss = lambda m: jax.jit(jax.value_and_grad(
      lambda p, x: jnp.sum(jnp.sin(m.apply(p, x))), argnums=(0, 1)))(params, x)
  (ref, ref_grads) = loss(conv)
  for impl in ('xla', 'im2col', 'hybrid'):
    ours = networks.Conv3x3(7, stride=stride, impl=impl)
    assert (jax.tree.map(jnp.shape, jax.eval_shape(ours.init, _key(1), x))
            == jax.tree.map(jnp.shape, params))
    val, grads = loss(ours)
    np.testing.assert_allclose(val, ref, rtol=1e-4)
    for g, g_ref in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
      np.testing.assert_allclose(g, g_ref, atol=1e-4, rtol=1e-4)


def test_forward_mode_autodiff_needs_a_non_hybrid_conv():
  """'hybrid' has a custom VJP (reverse mode only); 'xla' and 'im2col' also support jax.jvp."""
  x, _ = _inputs((1, 6, 6, 2))
  for impl in ('xla', 'im2col'):
    conv = networks.Conv3x3(3, impl=impl)
    params = conv.init(_key(0), x)
    jax.jvp(lambda x: conv.apply(params, x), (x,), (x,))
  conv = networks.Conv3x3(3, impl='hybrid')
  with pytest.raises(TypeError, match='custom_vjp'):
    jax.jvp(lambda x: conv.apply(params, x), (x,), (x,))


def test_group_norm_matches_flax():
  x, _ = _inputs((3, 7, 7, 16))
  x = 3. + 2. * x                                           # non-zero mean: one-pass statistics
  ref = nn.GroupNorm(4, epsilon=1e-6)
  params = _perturb(ref.init(_key(0), x), scale=0.3)
  np.testing.assert_allclose(networks.GroupNorm(4).apply(params, x), ref.apply(params, x),
                             atol=1e-5)


def test_unconditional_model_rejects_labels():
  x, c = _inputs((2, 28, 28, 1))
  with pytest.raises(ValueError, match='unconditional'):
    networks.UNet(**SMALL).init(_key(0), x, c, jnp.zeros(2, jnp.int32), train=False)
  with pytest.raises(ValueError, match='unconditional'):
    networks.MLPDenoiser(hidden=16).init(_key(0), x[:, 0, :2, 0], c, jnp.zeros(2, jnp.int32),
                                         train=False)


@pytest.mark.parametrize('shape, kwargs, match', [
    ((2, 30, 30, 1), dict(channel_mults=(1, 2, 2)), 'must divide by'),   # 30 -> 15 -> 7.5
    ((2, 28, 28, 1), dict(channel_mults=(1, 2, 2, 2)), 'must divide by'),   # 28 -> ... -> 3.5
    ((2, 28, 28, 1), dict(norm_groups=5), 'norm_groups'),
    ((2, 28, 28, 1), dict(num_heads=3), 'num_heads'),
    ((2, 28, 28, 1), dict(conv_impl='cudnn'), 'conv_impl'),
    ((2, 28, 28), {}, r'\[B, H, W, C\]'),
])
def test_unet_bad_configs_raise_value_error(shape, kwargs, match):
  x = jnp.zeros(shape)
  with pytest.raises(ValueError, match=match):
    model = networks.UNet(**dict(SMALL, **kwargs))
    jax.eval_shape(lambda: model.init(_key(0), x, jnp.zeros(2), train=False))


def test_mlp_denoiser():
  x, c = _inputs((8, 2))
  model = networks.MLPDenoiser(hidden=32, depth=2, num_classes=3, dropout=0.5)
  labels = jnp.array([0, 1, 2, 3, 0, 1, 2, 3])                  # 3: the null class
  params = _init(model, x, c, labels)
  apply = _jit_apply(model)
  y = apply(params, x, c, labels, _key(1), False)
  assert y.shape == x.shape and not np.any(np.asarray(y))          # zero-initialised output
  params = _perturb(params)
  y = apply(params, x, c, labels, _key(1), False)
  assert np.max(np.abs(y - apply(params, x, c, (labels + 1) % 4, _key(1), False))) > 1e-4
  assert np.max(np.abs(y - apply(params, x, c + 0.1, labels, _key(1), False))) > 1e-4
  # labels=None means the null class (shared code with the U-Net).
  np.testing.assert_allclose(apply(params, x, c, None, _key(1), False),
                             apply(params, x, c, jnp.full((8,), 3), _key(1), False), atol=1e-6)
  assert np.max(np.abs(apply(params, x, c, labels, _key(1), True) - y)) > 1e-4     # dropout
  uncond = networks.MLPDenoiser(hidden=32, depth=2)
  p = _init(uncond, jnp.zeros((3, 5)), jnp.zeros(3))
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
