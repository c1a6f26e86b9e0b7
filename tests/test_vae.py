"""The VAE family: likelihoods and KL, the ELBO and IWAE bounds, networks, and the step functions
run the way the harness runs them (per device, under `parallel.data_parallel`)."""
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
from sklearn.datasets import load_digits

from research import configs, parallel
from research.vae import distributions as dist
from research.vae import networks, vae
from research.vae.family import VAE
from tests import helpers


def _digits(n=256, seed=0):
  """Real 8x8 digits, dynamically binarized once: float32 {0, 1} [n, 8, 8, 1]."""
  x = load_digits().images[:n, :, :, None] / 16.0
  return (np.random.default_rng(seed).random(x.shape) < x).astype(np.float32)


def _config(**model):
  c = helpers.load_config('vae_digits')
  for k, v in model.items():
    c.model[k] = v
  return c


def _one_device(fn, **kw):
  return parallel.data_parallel(fn, parallel.make_mesh(jax.devices()[:1]), **kw)


# --- distributions --------------------------------------------------------------------------


def test_likelihoods_match_scipy():
  rng = np.random.default_rng(0)
  logits = rng.normal(0, 3, (4, 5, 5, 1)).astype(np.float32)
  x = (rng.random(logits.shape) < 0.5).astype(np.float32)
  want = stats.bernoulli.logpmf(x, 1 / (1 + np.exp(-logits.astype(np.float64))))
  np.testing.assert_allclose(dist.bernoulli_log_prob(logits, x), want.sum((1, 2, 3)), rtol=1e-5)

  mean, log_scale = rng.normal(size=(2, 4, 5, 5, 1)).astype(np.float32)
  y = rng.random(mean.shape).astype(np.float32)
  want = stats.norm.logpdf(y, mean, np.exp(log_scale)).sum((1, 2, 3))
  np.testing.assert_allclose(dist.gaussian_log_prob(y, mean, log_scale), want, rtol=1e-5)

  z, mu, log_var = rng.normal(size=(3, 6, 4)).astype(np.float32)
  want = stats.norm.logpdf(z, mu, np.exp(0.5 * log_var)).sum(1)
  np.testing.assert_allclose(dist.diag_gaussian_log_prob(z, mu, log_var), want, rtol=1e-5)
  np.testing.assert_allclose(dist.std_normal_log_prob(z), stats.norm.logpdf(z).sum(1), rtol=1e-5)


def test_kl_matches_monte_carlo():
  mean = jnp.array([[0.0, 0.0], [1.0, -2.0], [0.5, 0.3]])
  log_var = jnp.array([[0.0, 0.0], [-1.0, 0.5], [1.2, -2.0]])
  n = 200_000
  z = mean + jnp.exp(0.5 * log_var) * jax.random.normal(jax.random.key(0), (n,) + mean.shape)
  log_ratio = jax.vmap(lambda zi: dist.diag_gaussian_log_prob(zi, mean, log_var)
                       - dist.std_normal_log_prob(zi))(z)                     # [n, 3]
  mc, se = np.mean(log_ratio, 0), np.std(log_ratio, 0) / math.sqrt(n)
  analytic = dist.kl_diag_gaussian_std_normal(mean, log_var)
  np.testing.assert_allclose(analytic[0], 0.0, atol=1e-7)
  assert np.all(np.abs(mc - analytic) < 5 * se + 1e-6), (mc, analytic, se)


# --- ELBO and IWAE ---------------------------------------------------------------------------


def _fixed_model_fns(x):
  """(encode, log_lik) of a freshly initialised digits MLP: a fixed, imperfect q(z|x) whose
  IWAE gap is large enough to see."""
  c = _config()
  fam = VAE(c)
  params = networks.make_model(c.model, x.shape[1:]).init(jax.random.key(1), x[:1])['params']
  encode, log_lik, _ = fam._fns(params)
  return encode, log_lik


def _keys(key, n):
  return jax.random.split(key, n)


def test_iwae_bounds_order_and_grow_with_k():
  x = jnp.asarray(_digits(256))
  encode, log_lik = _fixed_model_fns(x)
  draws = 8

  @jax.jit
  def bounds(key):
    k0, k1, k2, k3 = jax.random.split(key, 4)
    n = x.shape[0]
    elbo = -vae.elbo(encode, log_lik, x, _keys(k0, n))['neg_elbo']
    iwae = [vae.iwae_log_likelihood(encode, log_lik, x, _keys(kk, n), k, chunk=50)
            for kk, k in ((k1, 1), (k2, 10), (k3, 100))]
    return jnp.stack([elbo] + iwae)                                 # [4, n]

  per_example = np.mean([bounds(jax.random.key(i)) for i in range(draws)], axis=0)
  elbo, iwae1, iwae10, iwae100 = per_example
  # IWAE(1) is an unbiased estimate of the ELBO: paired difference within MC error.
  d = iwae1 - elbo
  assert abs(d.mean()) < 4 * d.std() / math.sqrt(d.size), (d.mean(), d.std())
  # Larger k gives a tighter (larger) bound, by more than the MC error.
  for lo, hi in ((iwae1, iwae10), (iwae10, iwae100), (elbo, iwae100)):
    gain = hi - lo
    assert gain.mean() > 3 * gain.std() / math.sqrt(gain.size), (gain.mean(), gain.std())


def test_chunked_iwae_equals_unchunked():
  x = jnp.asarray(_digits(16))
  encode, log_lik = _fixed_model_fns(x)
  keys = _keys(jax.random.key(3), 16)
  full = vae.iwae_log_likelihood(encode, log_lik, x, keys, k=37, chunk=37)
  chunked = vae.iwae_log_likelihood(encode, log_lik, x, keys, k=37, chunk=5)  # 8 chunks, last
  np.testing.assert_allclose(chunked, full, rtol=1e-5)                      # one partial


# --- networks ----------------------------------------------------------------------------------


@pytest.mark.parametrize('arch,shape,likelihood', [
    ('mlp', (28, 28, 1), 'bernoulli'), ('mlp', (8, 8, 3), 'gaussian'),
    ('conv', (28, 28, 1), 'bernoulli'), ('conv', (8, 8, 3), 'gaussian')])
def test_network_shapes(arch, shape, likelihood):
  c = _config(arch=arch, likelihood=likelihood, hidden='32', conv_channels='8,16')
  model = networks.make_model(c.model, shape)
  x = jnp.zeros((3,) + shape)
  # Shapes only (eval_shape traces without compiling: keeps the test fast).
  params = jax.eval_shape(model.init, jax.random.key(0), x)['params']
  assert networks.image_shape(params) == shape
  mean, log_var = jax.eval_shape(
      lambda p, x: model.apply({'params': p}, x, method='encode'), params, x)
  chex.assert_shape([mean, log_var], (3, c.model.latent_dim))
  loc, log_scale = jax.eval_shape(
      lambda p, z: model.apply({'params': p}, z, method='decode'), params, mean)
  chex.assert_shape(loc, (3,) + shape)
  if likelihood == 'gaussian':
    chex.assert_shape(log_scale, shape)
  else:
    assert log_scale is None


def test_validate_config_rejects_bad_fields():
  VAE.validate_config(_config())
  for section, field, value in (('model', 'arch', 'rnn'), ('model', 'hidden', '200,x'),
                                ('model', 'latent_dim', 0), ('eval', 'iwae_num_examples', 0),
                                ('objective', 'beta', -1.0)):
    c = _config()
    c[section][field] = value
    with pytest.raises(configs.ConfigError, match=f'config.{section}.{field}='):
      VAE.validate_config(c)


# --- step functions, as the harness runs them -----------------------------------------------------


def test_train_steps_lower_the_loss_and_eval_is_per_example():
  c = _config()
  c.optimizer.lr = 3e-3
  c.eval.iwae_k, c.eval.iwae_chunk = 20, 8
  fam = VAE(c)
  x = _digits(512)
  batch = {'image': jnp.asarray(x[:64]), 'label': jnp.zeros(64, jnp.int32)}
  state = _one_device(fam.init_state, batch_args=(1,))(jax.random.key(0), batch)
  step = _one_device(fam.train_step, batch_args=(1,), out_batched=(False, False))
  eval_step = _one_device(fam.eval_step, batch_args=(1,), out_batched=True)
  eval_batch = {'image': jnp.asarray(x[:100]), 'label': jnp.zeros(100, jnp.int32),
                'mask': jnp.ones(100, bool)}
  before = eval_step(state, eval_batch, jax.random.key(9))
  for i in range(60):
    j = (i * 64) % 448
    state, metrics = step(state, {'image': jnp.asarray(x[j:j + 64]),
                                  'label': jnp.zeros(64, jnp.int32)}, jax.random.key(i))
  after = eval_step(state, eval_batch, jax.random.key(9))
  assert set(after) == {'neg_elbo', 'recon', 'kl', 'iwae_nll'}
  chex.assert_shape(list(after.values()), (100,))
  assert float(after['neg_elbo'].mean()) < float(before['neg_elbo'].mean()) - 5.0
  assert float(after['iwae_nll'].mean()) <= float(after['neg_elbo'].mean()) + 0.5
  np.testing.assert_allclose(after['neg_elbo'], after['recon'] + after['kl'], rtol=1e-5)
  assert int(state.step) == 60 and np.isfinite(float(metrics['loss']))

  # Samples and visualizations: [N, H, W, C] in [0, 1].
  samples = _one_device(lambda s, k: fam.sample(s, k, 5), batch_args=(), out_batched=True)(
      state, jax.random.key(0))
  grids = _one_device(fam.visualize, batch_args=(1,), out_batched=True)(
      state, eval_batch, jax.random.key(0))
  chex.assert_shape(samples['images'], (5, 8, 8, 1))
  chex.assert_shape(grids['reconstructions'], (32, 8, 8, 1))
  chex.assert_shape(grids['interpolations'], (64, 8, 8, 1))
  for im in (samples['images'], grids['reconstructions'], grids['interpolations']):
    assert 0.0 <= float(im.min()) and float(im.max()) <= 1.0


def test_two_devices_match_one_device():
  """Per-example noise keyed by global position: the same global batch gives the same step."""
  assert len(jax.devices()) >= 2, 'tests/conftest.py sets 2 CPU devices'
  c = _config()
  c.objective.kl_warmup_steps = 10
  fam = VAE(c)
  batch = {'image': jnp.asarray(_digits(32)), 'label': jnp.zeros(32, jnp.int32)}
  state0 = jax.device_get(_one_device(fam.init_state)(jax.random.key(0), batch))  # host copy
  results = []
  for devices in (jax.devices()[:1], jax.devices()[:2]):
    mesh = parallel.make_mesh(devices)
    # Replicated on the mesh, as the harness holds the state: the second step then reuses the
    # first one's executable (host arrays in, mesh arrays out would compile the step twice).
    state = jax.device_put(state0, parallel.replicated(mesh))
    step = parallel.data_parallel(fam.train_step, mesh, out_batched=(False, False))
    for i in range(2):
      state, metrics = step(state, batch, jax.random.key(i))
    results.append((parallel.to_host(state.params), parallel.to_host(metrics)))
  (p1, m1), (p2, m2) = results
  chex.assert_trees_all_close(p1, p2, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(m1['neg_elbo'], m2['neg_elbo'], rtol=1e-5)
  np.testing.assert_allclose(m1['beta'], 0.1, rtol=1e-6)  # step 1 of a 10-step warmup


def test_host_eval_iwae_on_a_prefix():
  c = _config()
  c.eval.iwae_k, c.eval.iwae_num_examples = 10, 150
  fam = VAE(c)
  x = _digits(200)
  state = _one_device(fam.init_state, batch_args=(1,))(
      jax.random.key(0), {'image': jnp.asarray(x[:8])})
  batches = [{'image': x[i:i + 100], 'mask': np.ones(100, bool)} for i in (0, 100)]
  batches[1]['mask'][80:] = False                                       # padding
  out = fam.host_eval(state, batches, jax.random.key(0))
  assert out['iwae_num_examples'] == 150 and np.isfinite(out['iwae_nll'])
  # eval_step skips IWAE when it is limited to a prefix.
  ev = _one_device(fam.eval_step, batch_args=(1,), out_batched=True)(
      state, {'image': jnp.asarray(x[:10])}, jax.random.key(0))
  assert 'iwae_nll' not in ev
  # Example i uses fold_in(key, i) in both paths, so the prefix mean is the per-example mean.
  host_state = jax.device_get(state)  # host arrays, as host_eval uses: reuses its compilation
  nll = fam.iwae_nll(host_state, {'image': x[:100]}, jax.random.key(0), 10)
  chex.assert_shape(nll, (100,))
  c.eval.iwae_num_examples = 100       # fam.config is c
  out100 = fam.host_eval(state, batches, jax.random.key(0))
  np.testing.assert_allclose(out100['iwae_nll'], float(nll.mean()), rtol=1e-5)


def test_experiment_configs_validate():
  for name in ('vae_digits', 'vae_mnist', 'vae_fashion_mnist'):
    c = helpers.load_config(name)
    configs.check_schema(c, configs.defaults('vae'))
    VAE.validate_config(c)
