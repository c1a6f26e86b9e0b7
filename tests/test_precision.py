"""Mixed precision (`config.precision`, research/precision.py) in every family: bf16 compute over
float32 master weights, float32 network outputs into the losses, bf16 first moments, and the
config error for an optimizer without one."""
import re

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from research import configs, optim, parallel, trainer
from research.data import pipeline
from tests import helpers

BF16 = jnp.dtype(jnp.bfloat16)
F32 = jnp.dtype(jnp.float32)


def _small(c, batch_size):
  c.train.update(batch_size=batch_size, num_steps=4, log_every=2, eval_every=4, sample_every=4,
                 checkpoint_every=4)
  c.optimizer.schedule.name = 'constant'     # lr > 0 from the first step
  c.optimizer.schedule.warmup_steps = 0
  return c


def _lm():
  c = helpers.load_config('lm_shakespeare_char')
  c.data.seq_len = 32
  c.model.update(num_layers=2, num_heads=2, d_model=32, dropout=0.0)
  c.sample.max_new_tokens = 12
  return _small(c, 8)


def _diffusion_unet():
  c = helpers.load_config('diffusion_digits')
  c.model.channels, c.model.channel_mults = 8, '1'   # one level (XLA's CPU compile is slow)
  return _small(c, 16)


def _diffusion_mlp():
  c = helpers.load_config('diffusion_toy2d')
  c.model.hidden, c.model.depth = 32, 2
  return _small(c, 16)


def _vae():
  c = helpers.load_config('vae_digits')
  c.model.arch, c.model.hidden, c.model.conv_channels = 'conv', '32', '8'
  return _small(c, 16)


def _gan():
  """SN-GAN on images: spectral norm in D, batch norm in G, the custom transposed convs."""
  c = helpers.load_config('sngan_hinge_fashion_mnist')
  c.model.g_channels = c.model.d_channels = 8
  c.model.latent_dim = 16
  return _small(c, 8 * c.gan.n_critic)


def _gan_mlp():
  """PacGAN's 2-D networks: batch norm in the MLP generator, maxout discriminator."""
  c = helpers.load_config('gan_ring8')
  c.model.g_hidden, c.model.d_hidden = '32,32', '16,16'
  return _small(c, 8 * c.gan.n_critic)


def _classifier():
  c = helpers.load_config('features_digits')
  return _small(c, 16)


FAMILIES = {'lm': _lm, 'diffusion_unet': _diffusion_unet, 'diffusion_mlp': _diffusion_mlp,
            'vae': _vae, 'gan': _gan, 'gan_mlp': _gan_mlp, 'classifier': _classifier}
# Loss metrics compared between the float32 and the bfloat16 step (same init, batch, key).
LOSSES = {'gan': ('d_loss', 'g_loss', 'd_grad_norm', 'g_grad_norm'),
          'gan_mlp': ('d_loss', 'g_loss', 'd_grad_norm', 'g_grad_norm')}


def _matmul_operand_dtypes(jaxpr) -> list[tuple[str, ...]]:
  """Operand dtypes of every dot_general / conv in a (closed) jaxpr, sub-jaxprs included."""
  out = []

  def visit(j):
    j = getattr(j, 'jaxpr', j)
    for eqn in j.eqns:
      if eqn.primitive.name in ('dot_general', 'conv_general_dilated'):
        out.append(tuple(jnp.dtype(v.aval.dtype).name for v in eqn.invars)
                   + tuple(str(v.aval.shape) for v in eqn.invars))
      for p in eqn.params.values():
        for sub in (p if isinstance(p, (tuple, list)) else (p,)):
          if hasattr(sub, 'eqns') or hasattr(getattr(sub, 'jaxpr', None), 'eqns'):
            visit(sub)
  visit(jaxpr)
  return out


def _leaves_with_paths(tree):
  return [(optim.param_path(kp), x) for kp, x in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _state_leaves(state, field):
  """(path, leaf) of `field` ('params', 'opt_state', 'ema_params') of a TrainState or of both
  players of a GAN state."""
  trees = [getattr(s, field) for s in ((state.g, state.d) if hasattr(state, 'g') else (state,))]
  return [(p, x) for t in trees if t is not None for p, x in _leaves_with_paths(t)]


@pytest.mark.parametrize('name', sorted(FAMILIES))
def test_bf16_compute_keeps_f32_params_and_tracks_the_f32_step(name):
  """One step from the same float32 init, batch and key: float32 vs bf16 compute."""
  mesh = parallel.make_mesh(jax.devices()[:1])
  exps = {}
  for compute in ('float32', 'bfloat16'):
    c = FAMILIES[name]()
    c.precision.compute = compute
    configs.validate(c, 1)
    exps[compute] = trainer.build(c, mesh)
  batch = parallel.host_batch_to_global(
      next(pipeline.train_iterator(c.data, c.train.batch_size, c.seed)), mesh)
  state = exps['float32'].init(jax.random.key(0), batch)   # init does not depend on compute
  out = {}
  for compute, exp in exps.items():
    new, metrics = exp.train_step(jax.tree.map(jnp.copy, state), batch, jax.random.key(1))
    out[compute] = parallel.to_host((new, metrics))
  (_, m32), (state16, m16) = out['float32'], out['bfloat16']

  # float32 master weights (and EMA, optimizer state) after the bf16 step.
  for field in ('params', 'ema_params', 'opt_state'):
    for path, x in _state_leaves(state16, field):
      assert x.dtype != BF16, (field, path)
  assert all(x.dtype == F32 for _, x in _state_leaves(state16, 'params'))
  # Losses and gradient norms finite and close to the float32 step's.
  keys = LOSSES.get(name, ('loss', 'grad_norm'))
  for key in keys:
    assert np.isfinite(m16[key]), (key, m16[key])
    np.testing.assert_allclose(m16[key], m32[key], rtol=0.05, atol=0.01, err_msg=key)

  # The compiled step really multiplies in bf16 (per layer: test_bf16_activations_...). Weight-
  # only products (spectral norm's power iteration, the GAN's kernel scatter) and the backward
  # pass of float32 output layers stay float32.
  dtypes = _matmul_operand_dtypes(
      jax.make_jaxpr(exps['bfloat16'].train_step)(state, batch, jax.random.key(2)))
  assert sum('bfloat16' in d for d in dtypes) >= 4, dtypes

  # bf16 moments: Adam's mu in bf16, nu in float32 (the state's shapes only: nothing compiles).
  c = FAMILIES[name]()
  c.precision.update(compute='bfloat16', moments='bfloat16')
  fam = configs.family_class(c.family)(c)
  shapes = jax.eval_shape(fam.init_state, jax.random.key(0),
                          next(pipeline.train_iterator(c.data, c.train.batch_size, c.seed)))
  opt = _state_leaves(shapes, 'opt_state')
  mus = [x for p, x in opt if '/mu/' in f'/{p}/']
  nus = [x for p, x in opt if '/nu/' in f'/{p}/']
  assert mus and all(x.dtype == BF16 for x in mus)
  assert nus and all(x.dtype == F32 for x in nus)
  assert all(x.dtype == F32 for _, x in _state_leaves(shapes, 'params'))


# Modules whose outputs are float32 under bf16 compute: the layers that feed a loss (and the
# networks themselves, whose outputs those are). Every other module's output must be bf16.
F32_MODULES = {
    'lm': r'^(__call__|block_\d+/attn/Dropout_0/__call__)$',   # attention probs: float32
    'diffusion_unet': r'^(conv_out/)?__call__$',
    'diffusion_mlp': r'^(dense_out/)?__call__$',
    'vae': r'^(__call__|encode|decode|(encoder|decoder)/__call__|encoder/_GaussianHead_0/.*|'
           r'decoder/(Conv_1|output)/__call__)$',  # Conv_1: the last conv
    'gan': r'^(__call__|up_1/__call__|logit(_sn)?/.*)$',
    'gan_mlp': r'^(__call__|out/__call__|logit(_sn)?/.*)$',
    'classifier': r'^(__call__|Dense_1/__call__)$',
}


def _bf16_forward(name):
  """[(network outputs, captured intermediates)] of each network of a family built with bf16
  compute, from shapes only (jax.eval_shape: nothing compiles)."""
  c = FAMILIES[name]()
  c.precision.compute = 'bfloat16'
  fam = configs.family_class(c.family)(c)
  batch = jax.tree.map(jnp.asarray,
                       next(pipeline.train_iterator(c.data, c.train.batch_size, c.seed)))
  key = jax.random.key(0)
  cap = dict(capture_intermediates=True, mutable=['intermediates'])
  if name == 'lm':
    tokens = batch['tokens'][:, :-1]
    params = jax.eval_shape(fam.net.init, key, tokens[:1])['params']
    runs = [(lambda p: fam._apply(p, tokens, **cap), params)]
  elif name.startswith('diffusion'):
    x, net = fam._data(batch), fam._net()
    c_noise = jnp.ones(x.shape[:1])
    params = jax.eval_shape(lambda: net.init(key, x, c_noise, train=False))
    runs = [(lambda p: net.apply(p, x, c_noise, train=False, **cap), params)]
  elif name == 'vae':
    from research.vae import networks
    model = networks.make_model(c.model, batch['image'].shape[1:], jnp.bfloat16)
    params = jax.eval_shape(model.init, key, batch['image'][:1])
    z = jnp.zeros((4, c.model.latent_dim))
    runs = [(lambda p: model.apply(p, batch['image'], method='encode', **cap), params),
            (lambda p: model.apply(p, z, method='decode', **cap), params)]
  elif name.startswith('gan'):
    x, g, d = fam._data(batch), fam._generator(), fam._discriminator()
    z = jnp.zeros((4, c.model.latent_dim))
    g_args = (z,) if c.model.arch == 'mlp' else (z, None)
    gv = jax.eval_shape(lambda: g.init(key, *g_args, train=True))
    dv = jax.eval_shape(lambda: d.init({'params': key, 'dropout': key}, x, None, train=False))
    runs = [(lambda v: g.apply(v, *g_args, train=True, mutable=['batch_stats', 'intermediates'],
                               capture_intermediates=True), gv),
            (lambda v: d.apply(v, x, None, train=False, **cap), dv)]
  else:
    model = fam.model()
    params = jax.eval_shape(model.init, key, batch['image'][:1])
    runs = [(lambda p: model.apply(p, batch['image'], **cap), params)]
  return [jax.eval_shape(fn, arg) for fn, arg in runs]


@pytest.mark.parametrize('name', sorted(FAMILIES))
def test_bf16_activations_and_float32_outputs(name):
  """Under bf16 compute every layer's output is bf16 except the layers feeding a loss, and the
  networks' outputs (logits, predictions, posterior parameters, samples) are float32."""
  allowed = re.compile(F32_MODULES[name])
  for outputs, variables in _bf16_forward(name):
    assert all(x.dtype == F32 for x in jax.tree.leaves(outputs)), (name, outputs)
    found = [(re.sub(r'(/\d+)+$', '', p), x.dtype)   # module/method, less the tuple indices
             for p, x in _leaves_with_paths(variables['intermediates'])
             if jnp.issubdtype(x.dtype, jnp.floating)]
    bf16 = [p for p, dt in found if dt == BF16]
    wrong = [(p, dt) for p, dt in found if dt != BF16 and not allowed.search(p)]
    assert len(bf16) >= 2, found
    assert not wrong, wrong


def _opt_cfg(**kw):
  c = configs.common_defaults().optimizer
  c.update(kw)
  return c


@pytest.mark.parametrize('name', ['adam', 'adamw', 'lamb', 'momentum'])
def test_bf16_moments(name):
  params = {'w': jnp.ones((3, 2)), 'b': jnp.zeros((2,))}
  tx, _ = optim.make(_opt_cfg(name=name, weight_decay=0.01), 10, moments_dtype='bfloat16')
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, state = tx.update(grads, state, params)
  first = [x for p, x in _leaves_with_paths(state) if {'mu', 'trace'} & set(p.split('/'))]
  assert first and all(x.dtype == BF16 for x in first)
  assert all(x.dtype == F32 for p, x in _leaves_with_paths(state) if 'nu' in p.split('/'))
  assert all(u.dtype == F32 for u in jax.tree.leaves(updates))
  # The first update matches the float32 optimizer's (mu is rounded only when stored).
  tx32, _ = optim.make(_opt_cfg(name=name, weight_decay=0.01), 10)
  updates32, _ = tx32.update(grads, tx32.init(params), params)
  chex.assert_trees_all_close(updates, updates32, rtol=1e-6)


@pytest.mark.parametrize('name', ['sgd', 'adagrad', 'rmsprop'])
def test_bf16_moments_without_a_first_moment_is_a_config_error(name):
  with pytest.raises(configs.ConfigError, match=r'precision\.moments.*float32') as e:
    optim.make(_opt_cfg(name=name), 10, moments_dtype='bfloat16')
  assert '\n' not in str(e.value)
  with pytest.raises(configs.ConfigError, match=r'precision\.moments'):
    optim.validate(_opt_cfg(name=name), 10, moments_dtype='bfloat16')
  optim.make(_opt_cfg(name=name), 10, moments_dtype='float32')  # fine in float32
  # Through a family: building the state fails with the same one-line error.
  c = _classifier()
  c.optimizer.name = name
  c.precision.moments = 'bfloat16'
  batch = next(pipeline.train_iterator(c.data, c.train.batch_size, c.seed))
  fam = configs.family_class(c.family)(c)
  with pytest.raises(configs.ConfigError, match=r'precision\.moments'):
    fam.init_state(jax.random.key(0), batch)


def test_lm_reads_precision_not_model_dtype():
  c = _lm()
  assert 'dtype' not in c.model
  c.precision.compute = 'bfloat16'
  fam = configs.family_class('lm')(c)
  assert fam.model_cfg.compute_dtype == jnp.bfloat16
  # A config saved before the precision section (model.dtype) still builds its model.
  from research.lm import family as lm_family
  old = ml_collections.ConfigDict(c.to_dict())
  del old['precision']
  old.model.dtype = 'bfloat16'
  assert lm_family.model_config(old, 40).dtype == 'bfloat16'
  # The field moved: setting it now is a config error.
  c = _lm()
  c.model.dtype = 'bfloat16'
  with pytest.raises(configs.ConfigError, match=r'model\.dtype: unknown field'):
    configs.validate(c, 1)
