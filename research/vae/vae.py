"""The paper pieces: the reparameterized ELBO (Kingma & Welling 2014) and the importance-weighted
bound IWAE(k) (Burda et al. 2016), both per example, in nats.

The functions see the model only through two callables, so they are independent of the network:
  encode(x)        -> (mean, log_var) of q(z|x), each [B, D]
  log_lik(z, x)    -> log p(x|z), [B]  (decode z [B, D] and score x [B, ...])
Noise comes from one PRNG key per example (`keys`, [B]), so results do not depend on how a batch
is split over devices or, for IWAE, into chunks.
"""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

from research.vae import distributions as dist

Encode = Callable[[jax.Array], tuple[jax.Array, jax.Array]]
LogLik = Callable[[jax.Array, jax.Array], jax.Array]


def reconstruction_log_prob(likelihood: str, decoded, x: jax.Array) -> jax.Array:
  """log p(x|z) from a decoder output (loc, log_scale); see networks.py."""
  loc, log_scale = decoded
  if likelihood == 'bernoulli':
    return dist.bernoulli_log_prob(loc, x)
  return dist.gaussian_log_prob(x, jax.nn.sigmoid(loc), log_scale)


def decoder_mean(decoded) -> jax.Array:
  """E[x|z] in [0, 1]: Bernoulli probabilities, or the (sigmoid) Gaussian mean."""
  return jax.nn.sigmoid(decoded[0])


def reparameterize(mean: jax.Array, log_var: jax.Array, eps: jax.Array) -> jax.Array:
  return mean + jnp.exp(0.5 * log_var) * eps


def elbo(encode: Encode, log_lik: LogLik, x: jax.Array, keys: jax.Array,
         beta: float | jax.Array = 1.0) -> dict[str, jax.Array]:
  """One-sample reparameterized ELBO with the analytic KL. Returns per-example [B] arrays:
  recon = -log p(x|z), kl = KL(q(z|x) || p(z)), neg_elbo = recon + kl (the bound on -log p(x)),
  loss = recon + beta * kl (what training minimizes; = neg_elbo at beta = 1)."""
  mean, log_var = encode(x)
  eps = jax.vmap(lambda k: jax.random.normal(k, mean.shape[1:], mean.dtype))(keys)
  recon = -log_lik(reparameterize(mean, log_var, eps), x)
  kl = dist.kl_diag_gaussian_std_normal(mean, log_var)
  return {'recon': recon, 'kl': kl, 'neg_elbo': recon + kl, 'loss': recon + beta * kl}


def iwae_log_likelihood(encode: Encode, log_lik: LogLik, x: jax.Array, keys: jax.Array,
                        k: int, chunk: int = 100) -> jax.Array:
  """IWAE(k) = log (1/k) sum_j p(x, z_j) / q(z_j|x), z_j ~ q(z|x): a lower bound on log p(x)
  that tightens as k grows. Per example, [B].

  The k samples are drawn `chunk` at a time in a `lax.scan` that keeps a running logsumexp, so
  memory is O(B * chunk), not O(B * k). Sample j of an example uses fold_in(its key, j), so the
  result is the same for every chunk size; a last partial chunk is masked with -inf weights.
  """
  if k < 1 or chunk < 1:
    raise ValueError(f'iwae: k={k} and chunk={chunk} must be >= 1')
  chunk = min(chunk, k)
  mean, log_var = encode(x)

  def noise(key, ids):  # [chunk, D] for one example
    return jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), mean.shape[1:],
                                                mean.dtype))(ids)

  def log_weight(z):  # [B, D] -> [B]
    return (log_lik(z, x) + dist.std_normal_log_prob(z)
            - dist.diag_gaussian_log_prob(z, mean, log_var))

  def body(running_lse, c):
    ids = c * chunk + jnp.arange(chunk)
    eps = jnp.swapaxes(jax.vmap(noise, in_axes=(0, None))(keys, ids), 0, 1)   # [chunk, B, D]
    log_w = jax.vmap(log_weight)(reparameterize(mean, log_var, eps))           # [chunk, B]
    log_w = jnp.where((ids < k)[:, None], log_w, -jnp.inf)
    return jnp.logaddexp(running_lse, jax.nn.logsumexp(log_w, axis=0)), None

  init = jnp.full(x.shape[:1], -jnp.inf, mean.dtype)
  lse, _ = lax.scan(body, init, jnp.arange(math.ceil(k / chunk)))
  return lse - math.log(k)
