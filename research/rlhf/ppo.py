"""PPO for language models (Schulman et al. 2017, arXiv:1707.06347) with a KL leash to a frozen
reference policy, as in Ziegler et al. 2019 (arXiv:1909.08593) and Stiennon et al. 2020.

The pieces are pure functions on [B, T] arrays over the T response tokens of B rollouts, each
with a `mask` (1 on the tokens a rollout produced, up to and including its EOS; 0 after). They
are tested against textbook formulas (tests/test_ppo.py); the family that assembles them into
one jitted, data-parallel iteration is research/rlhf/ppo_family.py.

- Reward (`kl_penalized_rewards`): r_t = -beta * kl_t on every token, plus the reward model's
  score on the last one, where kl_t = log pi(y_t | x, y_<t) - log pi_ref(y_t | x, y_<t) is the
  sampled (k1) estimator of the per-token KL under the sampling distribution. The KL that is
  logged is `kl.sum(-1)`: the very array that entered the rewards, so logged and optimised KL
  cannot disagree (trl reports them differing when generation settings differ from scoring).
- Advantages (`gae`): generalised advantage estimation (Schulman et al. 2016, arXiv:1506.02438)
  by a reverse `lax.scan`; an episode ends after its last masked-in token (bootstrap value 0).
- Losses: the clipped surrogate (`policy_loss`), the clipped value loss (`value_loss`), both
  masked means over tokens; `entropy` of the sampling distribution for the bonus.
- KL controller (`adaptive_kl_coef`): Ziegler et al.'s proportional controller,
  beta <- beta * (1 + clip(KL / target - 1, -0.2, 0.2) * n / horizon) for a batch of n rollouts.

Token means inside a data-parallel step: `masked_mean(x, mask, axis_name)` divides the device's
sum by the *global* token count and rescales by the device count, so that `lax.pmean` of its
gradients is the gradient of the exact global token mean, whatever the devices' token counts.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def masked_mean(x, mask, axis_name: str | None = None):
  """Mean of `x` over the entries where `mask` is 1. With `axis_name` (inside a per-device
  function) the mean is over every device's entries: each device returns
  (its sum) * num_devices / (global count), whose pmean is the global mean."""
  total = jnp.sum(x * mask)
  count = jnp.sum(mask)
  if axis_name is None:
    return total / jnp.maximum(count, 1.0)
  n = lax.psum(1, axis_name)
  return total * n / jnp.maximum(lax.psum(count, axis_name), 1.0)


def masked_var(x, mask, axis_name: str | None = None):
  """Population variance over the masked-in entries (of every device with `axis_name`)."""
  mean = _global_mean(x, mask, axis_name)
  return _global_mean(jnp.square(x - mean), mask, axis_name)


def _global_mean(x, mask, axis_name):
  total, count = jnp.sum(x * mask), jnp.sum(mask)
  if axis_name is not None:
    total, count = lax.psum(total, axis_name), lax.psum(count, axis_name)
  return total / jnp.maximum(count, 1.0)


def whiten(x, mask, axis_name: str | None = None, eps: float = 1e-8):
  """(x - mean) / std over the masked-in entries of the (global) batch; 0 where mask is 0."""
  mean = _global_mean(x, mask, axis_name)
  var = _global_mean(jnp.square(x - mean), mask, axis_name)
  return (x - mean) * lax.rsqrt(var + eps) * mask


def kl_penalized_rewards(score, logprobs, ref_logprobs, mask, kl_coef):
  """Per-token rewards [B, T] and per-token KL estimates [B, T].

  kl_t = (logprobs - ref_logprobs) * mask; rewards = -kl_coef * kl, plus `score` [B] on each
  row's last masked-in token (a row with no token gets no score)."""
  mask = mask.astype(jnp.float32)
  kl = (logprobs - ref_logprobs) * mask
  t = mask.shape[1]
  length = jnp.sum(mask, axis=1).astype(jnp.int32)
  last = jax.nn.one_hot(length - 1, t, dtype=jnp.float32) * (length > 0)[:, None]
  return -kl_coef * kl + score[:, None] * last, kl


def gae(rewards, values, mask, gamma: float = 1.0, lam: float = 0.95):
  """Generalised advantage estimates and returns, both [B, T] (0 where mask is 0).

  delta_t = r_t + gamma * V_{t+1} * m_{t+1} - V_t,  A_t = delta_t + gamma * lam * m_{t+1} * A_{t+1},
  with V_T = A_T = 0: the episode ends after the last masked-in token. Returns = A + V (the
  value target)."""
  mask = mask.astype(jnp.float32)
  rewards, values = rewards * mask, values * mask
  next_values = jnp.concatenate([values[:, 1:], jnp.zeros_like(values[:, :1])], 1)
  next_mask = jnp.concatenate([mask[:, 1:], jnp.zeros_like(mask[:, :1])], 1)
  deltas = rewards + gamma * next_values * next_mask - values

  def step(next_adv, xs):
    delta, m_next = xs
    adv = delta + gamma * lam * m_next * next_adv
    return adv, adv

  _, adv = lax.scan(step, jnp.zeros(rewards.shape[0], rewards.dtype),
                    (deltas.T, next_mask.T), reverse=True)
  adv = adv.T * mask
  return adv, (adv + values) * mask


def policy_loss(logprobs, old_logprobs, advantages, mask, clip_eps: float,
                axis_name: str | None = None):
  """The clipped surrogate: mean over tokens of max(-A r, -A clip(r, 1 - eps, 1 + eps)) with
  r = exp(logprobs - old_logprobs). Also returns the fraction of tokens whose ratio was clipped
  (the clipped branch was the larger) and the approximate KL(old || new), mean of
  (r - 1) - log r (Schulman's k3 estimator, >= 0)."""
  log_ratio = logprobs - old_logprobs
  ratio = jnp.exp(log_ratio)
  unclipped = -advantages * ratio
  clipped = -advantages * jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
  loss = masked_mean(jnp.maximum(unclipped, clipped), mask, axis_name)
  stats = {'clip_frac': masked_mean((clipped > unclipped).astype(jnp.float32), mask, axis_name),
           'approx_kl': masked_mean((ratio - 1.0) - log_ratio, mask, axis_name)}
  return loss, stats


def value_loss(values, old_values, returns, mask, clip: float, axis_name: str | None = None):
  """0.5 * mean over tokens of max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2); clip 0
  means the plain squared error."""
  err = jnp.square(values - returns)
  if clip > 0:
    v_clipped = old_values + jnp.clip(values - old_values, -clip, clip)
    err = jnp.maximum(err, jnp.square(v_clipped - returns))
  return 0.5 * masked_mean(err, mask, axis_name)


def entropy(logits):
  """Entropy [..] of the categorical distributions softmax(logits [.., V])."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def adaptive_kl_coef(kl_coef, kl, target: float, horizon: float, n: int | float):
  """Ziegler et al.'s proportional controller: the next beta after a batch of `n` rollouts whose
  mean KL (nats per rollout) was `kl`. A non-positive target or horizon keeps beta fixed."""
  if target <= 0 or horizon <= 0:
    return kl_coef
  error = jnp.clip(kl / target - 1.0, -0.2, 0.2)
  return kl_coef * (1.0 + error * n / horizon)


def explained_variance(values, returns, mask):
  """1 - Var[R - V] / Var[R] over the masked-in tokens (1: perfect value function; <= 0: no
  better than a constant). NaN-free: 0 when the returns have no variance."""
  var_r = masked_var(returns, mask)
  var_err = masked_var(returns - values, mask)
  return jnp.where(var_r > 0, 1.0 - var_err / jnp.where(var_r > 0, var_r, 1.0), 0.0)
