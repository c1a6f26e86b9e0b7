"""GAN losses and penalties against closed forms: NumPy evaluations of each loss, and linear and
quadratic critics whose input gradients are known."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.gan import losses
from research.gan import networks


def _key(seed):
  # 'rbg' keys: threefry random ops take XLA seconds per shape to compile on CPU.
  return jax.random.key(seed, impl='rbg')


# Jitted: one compile each, not one per primitive run eagerly.
_gp = jax.jit(losses.gradient_penalty, static_argnums=0)
_r1 = jax.jit(losses.r1_penalty, static_argnums=0)


def _np_softplus(x):
  return np.logaddexp(0., x)


def _logits(seed=0, n=7):
  rng = np.random.default_rng(seed)
  return rng.normal(0, 3, n).astype(np.float32), rng.normal(0, 3, n).astype(np.float32)


# --- losses ---------------------------------------------------------------------------------


def test_discriminator_losses_match_numpy():
  real, fake = _logits()
  r, f = real.astype(np.float64), fake.astype(np.float64)
  bce = _np_softplus(-r).mean() + _np_softplus(f).mean()
  # BCE written the long way: -log D(x) - log(1 - D(G(z))).
  sig = lambda x: 1 / (1 + np.exp(-x))
  np.testing.assert_allclose(bce, -np.log(sig(r)).mean() - np.log(1 - sig(f)).mean(), rtol=1e-9)
  want = {'ns': bce, 'minimax': bce, 'wgan': f.mean() - r.mean(),
          'hinge': np.maximum(0, 1 - r).mean() + np.maximum(0, 1 + f).mean()}
  for kind in losses.LOSSES:
    got = losses.discriminator_loss(kind, jnp.asarray(real), jnp.asarray(fake))
    assert got.shape == ()
    np.testing.assert_allclose(got, want[kind], rtol=1e-5, err_msg=kind)


def test_generator_losses_match_numpy():
  _, fake = _logits(1)
  f = fake.astype(np.float64)
  sig = 1 / (1 + np.exp(-f))
  want = {'ns': -np.log(sig).mean(), 'minimax': np.log(1 - sig).mean(), 'wgan': -f.mean(),
          'hinge': -f.mean()}
  for kind in losses.LOSSES:
    got = losses.generator_loss(kind, jnp.asarray(fake))
    assert got.shape == ()
    np.testing.assert_allclose(got, want[kind], rtol=1e-5, err_msg=kind)


def test_unknown_kind_and_bad_shapes_raise():
  x = jnp.zeros(4)
  with pytest.raises(ValueError, match=r"'lsgan'.*ns.*minimax.*wgan.*hinge"):
    losses.discriminator_loss('lsgan', x, x)
  with pytest.raises(ValueError, match=r"'lsgan'"):
    losses.generator_loss('lsgan', x)
  with pytest.raises(AssertionError):   # logits must be rank 1, not [B, 1]
    losses.discriminator_loss('ns', jnp.zeros((4, 1)), jnp.zeros((4, 1)))
  with pytest.raises(AssertionError):
    losses.generator_loss('hinge', jnp.zeros((4, 1)))


def test_minimax_gradient_vanishes_where_ns_does_not():
  b = 16
  fake = jnp.full((b,), -8.)       # D confidently rejects every fake
  g_minimax = jax.grad(lambda f: losses.generator_loss('minimax', f))(fake)
  g_ns = jax.grad(lambda f: losses.generator_loss('ns', f))(fake)
  assert np.all(np.abs(g_minimax) * b < 1e-3)               # sigmoid(-8) = 3.4e-4
  np.testing.assert_allclose(g_ns * b, -1., atol=1e-3)      # -sigmoid(8) ~ -1
  # Both push the fake logits up (G descends the loss), however weakly.
  assert np.all(g_minimax < 0) and np.all(g_ns < 0)


def test_accuracy():
  acc = losses.accuracy(jnp.array([1., -1., 2., 3.]), jnp.array([-1., -2., 0.5, -0.1]))
  np.testing.assert_allclose(acc['d_real_acc'], 0.75)
  np.testing.assert_allclose(acc['d_fake_acc'], 0.75)


# --- penalties ------------------------------------------------------------------------------


def _linear_critic(shape, scale, seed=0):
  """f(x) = w.x + b and ||w||."""
  rng = np.random.default_rng(seed)
  w = jnp.asarray(rng.normal(0, scale, int(np.prod(shape))).astype(np.float32))
  critic = lambda x: x.reshape(x.shape[0], -1) @ w + 0.3
  return critic, float(np.linalg.norm(np.asarray(w, np.float64)))


@pytest.mark.parametrize('shape', [(2,), (6, 6, 3)])
def test_gradient_penalty_of_linear_critic(shape):
  rng = np.random.default_rng(1)
  real = jnp.asarray(rng.normal(size=(8,) + shape).astype(np.float32))
  fake = jnp.asarray(rng.normal(size=(8,) + shape).astype(np.float32))
  key = _key(0)
  for scale in (0.1, 1.0):
    critic, w_norm = _linear_critic(shape, scale)
    np.testing.assert_allclose(_gp(critic, real, fake, key),
                               (w_norm - 1) ** 2, rtol=1e-4)
    np.testing.assert_allclose(_gp(critic, real, fake, key, 2.5),
                               (w_norm - 2.5) ** 2, rtol=1e-4)


def test_gradient_penalty_interpolates_per_example():
  """f(x) = ||x||^2 / 2 has gradient x, so at x_hat = eps * real (fake = 0) the gradient norm is
  eps * ||real||. With ||real_i|| = 1 and eps ~ U[0, 1] per example, E(eps - 1)^2 = E eps^2 = 1/3;
  an eps per element would give (sqrt(E eps^2) - 1)^2 = 0.18 for target 1."""
  b, d = 4096, 12
  real = jnp.ones((b, 2, d // 2)) / np.sqrt(d)
  critic = lambda x: 0.5 * jnp.sum(jnp.square(x), axis=(1, 2))
  for target in (1., 0.):
    gp = _gp(critic, real, jnp.zeros_like(real), _key(3), target)
    np.testing.assert_allclose(gp, 1 / 3, atol=0.02)
  # With real = fake, x_hat = real whatever eps: the mean over examples of (||x_i|| - 1)^2.
  x = jnp.asarray(np.random.default_rng(0).normal(size=(5, 2, 3)).astype(np.float32))
  want = np.mean((np.linalg.norm(np.asarray(x).reshape(5, -1), axis=1) - 1) ** 2)
  np.testing.assert_allclose(_gp(critic, x, x, _key(0)), want,
                             rtol=1e-5)


def test_r1_penalty():
  critic, w_norm = _linear_critic((4, 4, 2), 0.3)
  real = jnp.asarray(np.random.default_rng(2).normal(size=(6, 4, 4, 2)).astype(np.float32))
  np.testing.assert_allclose(_r1(critic, real), w_norm ** 2, rtol=1e-5)
  quadratic = lambda x: 0.5 * jnp.sum(jnp.square(x), axis=(1, 2, 3))
  want = np.mean(np.sum(np.asarray(real) ** 2, axis=(1, 2, 3)))
  np.testing.assert_allclose(_r1(quadratic, real), want, rtol=1e-5)


def test_penalties_differentiate_through_a_spectral_norm_discriminator():
  """WGAN-GP and R1 are trained through (double backprop) and must stay finite."""
  d = networks.DCGANDiscriminator(channels=4, spectral_norm=True)
  rng = np.random.default_rng(0)
  real, fake = jnp.asarray(rng.uniform(-1, 1, (2, 4, 8, 8, 2)).astype(np.float32))

  @jax.jit
  def run(key):
    variables = d.init(key, real, train=False)

    def penalties(params):
      critic = lambda x: d.apply({'params': params, 'batch_stats': variables['batch_stats']}, x,
                                 train=False)
      return (losses.gradient_penalty(critic, real, fake, jax.random.fold_in(key, 1))
              + losses.r1_penalty(critic, real))

    return jax.value_and_grad(penalties)(variables['params'])

  value, grads = run(_key(0))
  assert np.isfinite(value) and value > 0
  chex.assert_tree_all_finite(grads)
  for name in ('conv_0', 'conv_1', 'logit'):     # (the logit bias rightly gets no gradient)
    assert np.any(np.asarray(grads[name]['kernel']) != 0), name
