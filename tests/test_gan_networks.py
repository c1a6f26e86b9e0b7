"""GAN networks: shapes, conditioning, dropout, BatchNorm across a mapped axis, and spectral norm
checked against the SVD of each layer's effective linear map, read off by probing the layer."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.gan import networks


def _key(seed):
  # 'rbg' keys: threefry initialisers take XLA seconds per parameter shape to compile on CPU.
  return jax.random.key(seed, impl='rbg')


def _normal(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape).astype(np.float32))


def _init(model, *args, **kwargs):
  return jax.jit(lambda k: model.init(k, *args, train=False, **kwargs))(_key(0))


# --- spectral norm --------------------------------------------------------------------------


def _conv_patch_basis(kernel, channels, size=8, stride=2, out_pos=1):
  """Basis images for one receptive field of a 'SAME' conv: a one at each (row, col, channel) of
  the field of output pixel (out_pos, out_pos), which lies in the interior so padding does not
  enter. Reading that pixel gives the [kh*kw*Cin, Cout] matrix that SN normalises."""
  kh, kw = kernel
  out = -(-size // stride)
  pad_lo = max((out - 1) * stride + kh - size, 0) // 2
  r0 = out_pos * stride - pad_lo
  assert r0 >= 0 and r0 + kh <= size
  basis = np.zeros((kh * kw * channels, size, size, channels), np.float32)
  for n, (a, b, c) in enumerate(np.ndindex(kh, kw, channels)):
    basis[n, r0 + a, r0 + b, c] = 1.
  return jnp.asarray(basis), (slice(None), out_pos, out_pos)


def _top_sigma(m):
  return float(np.linalg.svd(np.asarray(m, np.float64), compute_uv=False)[0])


class _Layer(nn.Module):
  """A bias-free Dense or Conv with a large N(0, scale^2) kernel, optionally spectrally
  normalised by the wrapper the discriminators use (an nn.SpectralNorm)."""
  conv: bool
  spectral_norm: bool = False
  scale: float = 10.

  @nn.compact
  def __call__(self, x, update_stats=False):
    init = nn.initializers.normal(self.scale)
    if self.conv:
      layer = nn.Conv(6, (3, 3), padding='VALID', use_bias=False, kernel_init=init)
    else:
      layer = nn.Dense(7, use_bias=False, kernel_init=init)
    if self.spectral_norm:
      return networks._SpectralNorm(layer, name='sn')(x, update_stats=update_stats)
    return layer(x)


def _power_iterate(apply_fn, variables, x, steps):
  """`steps` training-mode calls, each one step of power iteration on the stored u."""
  def body(_, stats):
    return apply_fn({**variables, 'batch_stats': stats}, x, update_stats=True,
                    mutable=['batch_stats'])[1]['batch_stats']
  return {**variables, 'batch_stats': jax.lax.fori_loop(0, steps, body, variables['batch_stats'])}


@pytest.mark.parametrize('conv', [False, True])
def test_spectral_norm_layer_has_unit_sigma(conv):
  # Conv: a 3x3 VALID conv on a 3x3 input has one output pixel, so probing with the basis images
  # gives the [9*Cin, Cout] matrix that SN normalises.
  x = jnp.zeros((1, 3, 3, 4)) if conv else jnp.zeros((1, 5))
  n_in = x[0].size
  basis = jnp.eye(n_in).reshape((n_in,) + x.shape[1:])
  plain, model = _Layer(conv), _Layer(conv, spectral_norm=True)

  @jax.jit
  def run(key):
    pv, sv = plain.init(key, x), model.init(key, x)
    sv = _power_iterate(model.apply, sv, x, 50)
    return pv, sv, plain.apply(pv, basis), model.apply(sv, basis)

  pv, sv, plain_map, sn_map = run(_key(0))
  sigma_plain = _top_sigma(plain_map.reshape(n_in, -1))
  assert sigma_plain > 5.   # an N(0, 10^2) kernel
  sigma = _top_sigma(sn_map.reshape(n_in, -1))
  assert abs(sigma - 1.) < 0.02, (sigma, sigma_plain)
  # The wrapper keeps the raw init (flax's nn.SpectralNorm stores W / sigma), and its stored
  # estimate of sigma is the plain layer's top singular value.
  np.testing.assert_array_equal(jax.tree_util.tree_leaves(sv['params']),
                                jax.tree_util.tree_leaves(pv['params']))
  (stored,) = [v for k, v in sv['batch_stats']['sn'].items() if k.endswith('sigma')]
  np.testing.assert_allclose(stored, sigma_plain, rtol=0.02)


def _effective_maps(model, variables, x, labels):
  """The effective linear map of every Dense, Conv and Embed that `model` calls, as the model
  sees it (kernels already divided by SN's sigma), by probing each layer with basis inputs inside
  the real forward pass: {layer name: [in, out]}."""
  maps = {}

  def interceptor(next_fun, args, kwargs, context):
    mod = context.module
    if context.method_name != '__call__' or not isinstance(mod, (nn.Dense, nn.Conv, nn.Embed)):
      return next_fun(*args, **kwargs)
    # The probes ride along in the layer's one call (an intercepted call cannot run twice): basis
    # inputs, then a zero input whose output is the bias to subtract.
    (h,) = args
    if isinstance(mod, nn.Embed):
      probe, pixel = jnp.arange(mod.num_embeddings), (slice(None),)   # reads the table
    elif isinstance(mod, nn.Conv):
      probe, pixel = _conv_patch_basis(mod.kernel_size, h.shape[-1], size=h.shape[1])
    else:
      probe, pixel = jnp.eye(h.shape[-1]), (slice(None),)
    if not isinstance(mod, nn.Embed):
      probe = jnp.concatenate([probe, jnp.zeros_like(probe[:1])])
    out = next_fun(jnp.concatenate([h, probe.astype(h.dtype)]), **kwargs)
    m = out[len(h):][pixel]
    maps[mod.name] = m if isinstance(mod, nn.Embed) else m[:-1] - m[-1:]
    return out[:len(h)]

  with nn.intercept_methods(interceptor):
    model.apply(variables, x, labels, train=False)
  return maps


@pytest.mark.parametrize('which', ['maxout', 'dcgan'])
def test_spectral_norm_discriminators(which):
  labels = jnp.array([0, 1, 2, 3])
  if which == 'maxout':
    x, names = _normal((4, 6)), {'maxout_0', 'maxout_1', 'logit', 'label_embed'}
    model = networks.MaxoutDiscriminator(hidden=(16, 16), pieces=3, spectral_norm=True,
                                         num_classes=4)
  else:
    x, names = _normal((4, 16, 16, 2)), {'conv_0', 'conv_1', 'logit', 'label_embed'}
    model = networks.DCGANDiscriminator(channels=4, spectral_norm=True, num_classes=4)

  @jax.jit
  def run(key):
    init = model.init(key, x, labels, train=False)
    # Scale the params up so that sigma = 1 is SN's doing, not the N(0, 0.02) init's.
    variables = {**init, 'params': jax.tree.map(lambda p: 50. * p, init['params'])}
    # Training-mode calls (mutable 'batch_stats', update_stats=True), then an eval-mode one.
    trained = _power_iterate(lambda v, x, **k: model.apply(v, x, labels, **k), variables, x, 200)
    return init, trained, _effective_maps(model, trained, x, labels)

  init, trained, maps = run(_key(0))
  assert set(init['batch_stats']) == {f'{n}_sn' for n in names}
  # SN leaves the N(0, 0.02) init alone (flax's nn.SpectralNorm would store W / sigma).
  for w in jax.tree_util.tree_leaves(init['params']):
    assert w.ndim == 1 or 0.01 < np.std(w) < 0.04
  moved = jax.tree.map(lambda a, b: bool(np.any(a != b)), trained['batch_stats'],
                       init['batch_stats'])
  assert all(jax.tree_util.tree_leaves(moved)), moved
  assert set(maps) == names
  for name in names:
    (raw,) = [w for w in init['params'][name].values() if w.ndim > 1]   # kernel or table
    sigma_raw = _top_sigma(50. * np.asarray(raw).reshape(-1, raw.shape[-1]))
    sigma = _top_sigma(maps[name])
    assert abs(sigma - 1.) < 0.02 and sigma_raw > 2., (name, sigma, sigma_raw)


@pytest.mark.parametrize('in_shape', [(7, 7, 5), (4, 6, 3)])
def test_conv_transpose_4x4_matches_flax(in_shape):
  x = _normal((2,) + in_shape)
  ref = nn.ConvTranspose(4, (4, 4), strides=(2, 2), padding='SAME')
  ours = networks.ConvTranspose4x4(4)

  @jax.jit
  def run(key):
    v = ref.init(key, x)   # random bias too, so the bias is checked
    v = jax.tree.map(lambda p: jax.random.normal(jax.random.fold_in(key, p.ndim), p.shape), v)
    shapes = jax.tree.map(jnp.shape, ours.init(key, x))
    return shapes, jax.tree.map(jnp.shape, v), ref.apply(v, x), ours.apply(v, x)

  our_shapes, ref_shapes, want, got = run(_key(0))
  assert our_shapes == ref_shapes
  assert got.shape == (2, 2 * in_shape[0], 2 * in_shape[1], 4)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))


def test_mlp_generator_and_maxout_discriminator_shapes():
  g = networks.MLPGenerator(hidden=(32, 32))
  g_plain = networks.MLPGenerator(hidden=(32,), batch_norm=False, out_dim=3)
  d = networks.MaxoutDiscriminator(hidden=(16, 16), pieces=3)
  z, packed = _normal((8, 5)), _normal((8, 2 * 3), 1)   # PacGAN m = 3

  @jax.jit
  def run(key):
    gv, pv, dv = g.init(key, z), g_plain.init(key, z), d.init(key, packed)
    y, updates = g.apply(gv, z, mutable=['batch_stats'])
    # Eval mode uses the running averages and needs nothing mutable.
    return dv, y, updates, g.apply(gv, z, train=False), g_plain.apply(pv, z), d.apply(dv, packed)

  dv, y, updates, y_eval, y_plain, logits = run(_key(0))
  assert y.shape == y_eval.shape == (8, 2) and y_plain.shape == (8, 3)
  assert set(updates['batch_stats']) == {'bn_0', 'bn_1'}
  assert np.any(np.asarray(y != y_eval))     # batch vs running statistics
  assert logits.shape == (8,)
  assert dv['params']['maxout_0']['kernel'].shape == (6, 48)
  assert networks.count_params(dv['params']) == 6 * 48 + 48 + 16 * 48 + 48 + 16 + 1


@pytest.mark.parametrize('shape', [(28, 28, 1), (32, 32, 3)])
def test_dcgan_generator_shapes(shape):
  g = networks.DCGANGenerator(shape, channels=8, num_classes=10)
  z, labels = _normal((4, 16)), jnp.array([0, 3, 7, 9])
  apply = jax.jit(lambda v, z, y: g.apply(v, z, y, mutable=['batch_stats']))
  v = _init(g, z, labels)
  kernel = np.asarray(v['params']['project']['kernel'])   # DCGAN's N(0, 0.02)
  assert abs(kernel.std() - 0.02) < 0.002 and abs(kernel.mean()) < 0.002
  assert 'bias' not in v['params']['project'] and not np.any(v['params']['up_1']['bias'])
  x, updates = apply(v, z, labels)
  assert x.shape == (4,) + shape
  assert np.all(np.abs(x) <= 1.) and np.std(np.asarray(x)) > 0
  assert set(updates['batch_stats']) == {'bn_0', 'bn_1'}
  # The label changes the sample.
  x2, _ = apply(v, z, jnp.array([1, 3, 7, 9]))
  assert np.any(np.asarray(x2[0]) != np.asarray(x[0]))
  with pytest.raises(ValueError, match='labels'):
    g.apply(v, z, train=False)
  with pytest.raises(ValueError, match='divide by 4'):
    networks.DCGANGenerator((30, 30, 1)).init(_key(0), z, train=False)


def test_dcgan_discriminator_packed_projection_and_dropout():
  x, labels = _normal((4, 28, 28, 2)), jnp.array([0, 1, 2, 3])   # 1-channel images, m = 2
  d = networks.DCGANDiscriminator(channels=4, num_classes=4, dropout=0.5)
  v = _init(d, x, labels)
  assert v['params']['conv_0']['kernel'].shape == (4, 4, 2, 4)
  assert 'batch_stats' not in v
  # Projection: perturb the embedding (zero-mean init makes its term small) and change labels.
  v = {'params': {**v['params'], 'label_embed': {'embedding': _normal((4, 7 * 7 * 8), 1)}}}
  apply = jax.jit(lambda v, y, rng, train: d.apply(v, x, y, train=train, rngs={'dropout': rng}),
                  static_argnums=3)
  eval_logits = apply(v, labels, _key(1), False)
  assert eval_logits.shape == (4,)
  other = apply(v, (labels + 1) % 4, _key(1), False)
  assert np.all(np.abs(np.asarray(other - eval_logits)) > 1e-3)
  # Dropout: eval is deterministic; train differs with the 'dropout' rng.
  np.testing.assert_array_equal(apply(v, labels, _key(2), False), eval_logits)
  t1, t2 = apply(v, labels, _key(1), True), apply(v, labels, _key(2), True)
  assert np.any(np.asarray(t1 != t2)) and np.any(np.asarray(t1 != eval_logits))
  with pytest.raises(ValueError, match='labels'):
    d.apply(v, x, train=False)


def test_batch_norm_statistics_over_mapped_axis():
  """Splitting the batch over a vmapped axis named in `axis_name` reproduces the full batch."""
  z = _normal((8, 2))
  full = networks.MLPGenerator(hidden=(16, 16))
  mapped = networks.MLPGenerator(hidden=(16, 16), axis_name='b')

  @jax.jit
  def run(key):
    v = full.init(key, z, train=False)
    split = lambda model: jax.vmap(lambda z: model.apply(v, z, mutable=['batch_stats']),
                                   axis_name='b')(z.reshape(2, 4, 2))
    return full.apply(v, z, mutable=['batch_stats']), split(mapped), split(full)

  (want, want_stats), (got, got_stats), (local, _) = run(_key(0))
  np.testing.assert_allclose(got.reshape(8, 2), want, rtol=1e-5, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a[0], b, rtol=1e-5, atol=1e-6),
               got_stats, want_stats)
  # Without the axis name each half normalises with its own statistics.
  assert np.max(np.abs(np.asarray(local).reshape(8, 2) - np.asarray(want))) > 1e-3
