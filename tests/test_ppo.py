"""PPO's pieces against textbook formulas on hand-made arrays (research/rlhf/ppo.py): GAE equals
a plain Python loop with terminal masks, the clipped losses equal direct NumPy evaluations, the
adaptive KL controller follows Ziegler et al.'s update, and masked means are exact global token
means under data parallelism."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import parallel
from research.rlhf import ppo


def _rollouts(seed=0, b=4, t=7):
  rng = np.random.default_rng(seed)
  lengths = np.array([7, 3, 1, 5])[:b]
  mask = (np.arange(t)[None] < lengths[:, None]).astype(np.float32)
  return rng, mask


def _gae_loop(rewards, values, mask, gamma, lam):
  """Textbook GAE, one rollout at a time: the episode ends at its last real token."""
  b, t = rewards.shape
  adv = np.zeros((b, t))
  for i in range(b):
    n = int(mask[i].sum())
    last = 0.0
    for s in reversed(range(n)):
      next_value = values[i, s + 1] if s + 1 < n else 0.0
      delta = rewards[i, s] + gamma * next_value - values[i, s]
      last = delta + gamma * lam * (last if s + 1 < n else 0.0)
      adv[i, s] = last
  return adv, (adv + values) * mask


@pytest.mark.parametrize('gamma,lam', [(1.0, 0.95), (0.9, 0.5), (0.99, 1.0), (1.0, 0.0)])
def test_gae_equals_python_loop(gamma, lam):
  rng, mask = _rollouts()
  rewards = rng.normal(size=mask.shape) * mask
  values = rng.normal(size=mask.shape)   # garbage after the end must not leak in
  adv, ret = ppo.gae(jnp.asarray(rewards, jnp.float32), jnp.asarray(values, jnp.float32),
                     jnp.asarray(mask), gamma, lam)
  want_adv, want_ret = _gae_loop(rewards, values * mask, mask, gamma, lam)
  np.testing.assert_allclose(adv, want_adv, atol=1e-5)
  np.testing.assert_allclose(ret, want_ret, atol=1e-5)
  assert np.all(np.asarray(adv)[mask == 0] == 0)


def test_gae_lambda_one_is_discounted_return_minus_value():
  rng, mask = _rollouts(1)
  rewards = rng.normal(size=mask.shape) * mask
  values = rng.normal(size=mask.shape) * mask
  gamma = 0.9
  adv, ret = ppo.gae(jnp.asarray(rewards), jnp.asarray(values), jnp.asarray(mask), gamma, 1.0)
  mc = np.zeros_like(rewards)
  for i in range(rewards.shape[0]):
    g = 0.0
    for s in reversed(range(int(mask[i].sum()))):
      g = rewards[i, s] + gamma * g
      mc[i, s] = g
  np.testing.assert_allclose(ret, mc, atol=1e-5)
  np.testing.assert_allclose(adv, mc - values, atol=1e-5)


def test_kl_penalized_rewards():
  rng, mask = _rollouts(2)
  logp, ref = rng.normal(size=(2,) + mask.shape)
  score = rng.normal(size=mask.shape[0])
  rewards, kl = ppo.kl_penalized_rewards(jnp.asarray(score), jnp.asarray(logp), jnp.asarray(ref),
                                         jnp.asarray(mask), 0.3)
  want_kl = (logp - ref) * mask
  want = -0.3 * want_kl
  for i, n in enumerate(mask.sum(1).astype(int)):
    want[i, n - 1] += score[i]
  np.testing.assert_allclose(kl, want_kl, atol=1e-6)
  np.testing.assert_allclose(rewards, want, atol=1e-6)
  # The sum of the rewards is the score minus beta times the KL that is logged.
  np.testing.assert_allclose(np.sum(rewards, 1), score - 0.3 * np.sum(kl, 1), atol=1e-5)


def test_policy_loss_equals_numpy():
  rng, mask = _rollouts(3)
  old = rng.normal(size=mask.shape)
  new = old + rng.normal(scale=0.4, size=mask.shape)
  adv = rng.normal(size=mask.shape)
  eps = 0.2
  loss, stats = ppo.policy_loss(jnp.asarray(new), jnp.asarray(old), jnp.asarray(adv),
                                jnp.asarray(mask), eps)
  ratio = np.exp(new - old)
  per_token = np.maximum(-adv * ratio, -adv * np.clip(ratio, 1 - eps, 1 + eps))
  m = mask.astype(bool)
  np.testing.assert_allclose(loss, per_token[m].mean(), rtol=1e-5)
  clipped = (-adv * np.clip(ratio, 1 - eps, 1 + eps)) > (-adv * ratio)
  np.testing.assert_allclose(stats['clip_frac'], clipped[m].mean(), rtol=1e-6)
  np.testing.assert_allclose(stats['approx_kl'], ((ratio - 1) - np.log(ratio))[m].mean(),
                             rtol=1e-5)
  assert 0 < float(stats['clip_frac']) < 1


def test_policy_loss_gradient_vanishes_outside_the_trust_region():
  # A positive advantage with the ratio already above 1 + eps: the clipped branch is flat.
  old = jnp.zeros((1, 2))
  mask = jnp.ones((1, 2))
  adv = jnp.ones((1, 2))
  grad = jax.grad(lambda lp: ppo.policy_loss(lp, old, adv, mask, 0.2)[0])
  g = grad(jnp.array([[0.5, 0.0]]))   # ratio e^0.5 > 1.2 clipped; ratio 1 not
  assert g[0, 0] == 0 and g[0, 1] < 0


@pytest.mark.parametrize('clip', [0.0, 0.2])
def test_value_loss_equals_numpy(clip):
  rng, mask = _rollouts(4)
  old, ret = rng.normal(size=(2,) + mask.shape)
  new = old + rng.normal(scale=0.5, size=mask.shape)
  loss = ppo.value_loss(jnp.asarray(new), jnp.asarray(old), jnp.asarray(ret), jnp.asarray(mask),
                        clip)
  err = (new - ret) ** 2
  if clip:
    err = np.maximum(err, (old + np.clip(new - old, -clip, clip) - ret) ** 2)
  np.testing.assert_allclose(loss, 0.5 * err[mask.astype(bool)].mean(), rtol=1e-5)


def test_entropy_and_explained_variance():
  logits = jnp.log(jnp.array([[0.5, 0.25, 0.25], [1.0, 1e-30, 1e-30]]))
  np.testing.assert_allclose(ppo.entropy(logits), [1.5 * np.log(2), 0.0], atol=1e-5)
  rng, mask = _rollouts(5)
  ret = rng.normal(size=mask.shape)
  vals = ret + rng.normal(scale=0.5, size=mask.shape)
  m = mask.astype(bool)
  want = 1 - np.var((ret - vals)[m]) / np.var(ret[m])
  np.testing.assert_allclose(ppo.explained_variance(jnp.asarray(vals), jnp.asarray(ret),
                                                    jnp.asarray(mask)), want, rtol=1e-5)
  np.testing.assert_allclose(ppo.explained_variance(jnp.asarray(ret), jnp.asarray(ret),
                                                    jnp.asarray(mask)), 1.0, atol=1e-6)


def test_whiten():
  rng, mask = _rollouts(6)
  x = rng.normal(3.0, 2.0, size=mask.shape)
  w = np.asarray(ppo.whiten(jnp.asarray(x), jnp.asarray(mask)))
  m = mask.astype(bool)
  np.testing.assert_allclose(w[m], (x[m] - x[m].mean()) / x[m].std(), rtol=1e-4)
  assert np.all(w[~m] == 0)


def test_adaptive_kl_controller_follows_ziegler():
  """lm-human-preferences' AdaptiveKLController: e = clip(KL / target - 1, -0.2, 0.2),
  beta <- beta * (1 + e * n / horizon), step by step."""
  target, horizon, n = 6.0, 10000, 512
  beta, want = 0.15, 0.15
  for kl in [1.0, 6.0, 7.0, 30.0, 5.5, 0.0]:
    beta = float(ppo.adaptive_kl_coef(jnp.float32(beta), jnp.float32(kl), target, horizon, n))
    e = min(max(kl / target - 1, -0.2), 0.2)
    want *= 1 + e * n / horizon
    np.testing.assert_allclose(beta, want, rtol=1e-6)
  # Fixed beta when the controller is off.
  assert ppo.adaptive_kl_coef(0.15, 100.0, 0.0, horizon, n) == 0.15


def test_masked_means_are_global_token_means_over_devices():
  """Two devices with different token counts: pmean of the per-device values (and of their
  gradients) is the mean over all tokens, as on one device."""
  devices = jax.devices()[:2]
  if len(devices) < 2:
    pytest.skip('needs 2 devices')
  mesh = parallel.make_mesh(devices)
  rng, mask = _rollouts(7)
  x = jnp.asarray(rng.normal(size=mask.shape), jnp.float32)
  mask = jnp.asarray(mask)

  def per_device(x, mask):
    f = lambda x: ppo.masked_mean(x ** 2, mask, parallel.AXIS)
    value, grad = jax.value_and_grad(f)(x)
    var = ppo.masked_var(x, mask, parallel.AXIS)
    w = ppo.whiten(x, mask, parallel.AXIS)
    # The local gradient is num_devices x the global one (the loss is rescaled for pmean).
    return jax.lax.pmean(value, parallel.AXIS), grad, var, w
  run = parallel.data_parallel(per_device, mesh, batch_args=(0, 1),
                               out_batched=(False, True, False, True))
  value, grad, var, w = run(x, mask)
  f = lambda x: ppo.masked_mean(x ** 2, mask)
  np.testing.assert_allclose(value, f(x), rtol=1e-6)
  np.testing.assert_allclose(grad / 2, jax.grad(f)(x), rtol=1e-5)
  np.testing.assert_allclose(var, ppo.masked_var(x, mask), rtol=1e-5)
  np.testing.assert_allclose(w, ppo.whiten(x, mask), rtol=1e-4, atol=1e-6)
