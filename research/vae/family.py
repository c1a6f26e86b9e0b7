"""The VAE family: a Gaussian-latent VAE trained on the (beta-weighted) ELBO and evaluated by the
ELBO and the importance-weighted bound IWAE(k) (Burda et al. 2016) on log p(x).

Metrics are nats per example: neg_elbo = recon + kl >= iwae_nll >= -log p(x) (in expectation).
The networks compute in `config.precision.compute` (networks.py); the bounds are float32.
"""
from __future__ import annotations

from typing import Mapping

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from research import configs, optim, parallel, precision
from research.family import Family
from research.train_state import TrainState
from research.vae import networks, vae

_NUM_RECONSTRUCTIONS = 16   # originals shown in the 'reconstructions' grid (each with its recon)
_NUM_INTERP_PAIRS = 8       # rows of the 'interpolations' grid
_INTERP_STEPS = 8           # images per row, both endpoints included


class VAE(Family):

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    # Compiled once per family (host_eval runs at every eval); k is static (the scan length).
    self._jit_iwae_nll = jax.jit(self._iwae_nll, static_argnums=3)

  # --- config -------------------------------------------------------------------------------
  @classmethod
  def config_defaults(cls) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict()
    c.model.arch = 'mlp'            # mlp | conv
    c.model.hidden = '200,200'      # dense widths, encoder side (decoder mirrors); for conv,
                                    # the dense layers between the conv stack and the latent
    c.model.conv_channels = '32,64' # conv only: one stride-2 conv per entry (H, W halve each)
    c.model.latent_dim = 50
    c.model.activation = 'tanh'     # relu | tanh | elu | gelu | silu | softplus | leaky_relu
    c.model.likelihood = 'bernoulli'  # bernoulli (binary data) | gaussian (learned pixel scale)

    c.objective = ml_collections.ConfigDict()
    c.objective.beta = 1.0            # weight of the KL term (beta-VAE); eval always uses 1
    c.objective.kl_warmup_steps = 0   # beta ramps linearly from 0 over these steps; 0 = off

    c.eval = ml_collections.ConfigDict()
    c.eval.iwae_k = 0                 # importance samples for iwae_nll; 0 = skip IWAE
    c.eval.iwae_chunk = 100           # samples per chunk (memory ~ eval batch * chunk)
    c.eval.iwae_num_examples = -1     # -1: iwae_nll on every eval example (in eval_step);
                                      # N > 0: only the first N (in host_eval)
    return c

  @classmethod
  def validate_config(cls, config: ml_collections.ConfigDict) -> None:
    m, o, e = config.model, config.objective, config.eval
    configs.one_of(m.arch, ('mlp', 'conv'), 'model.arch')
    hidden = configs.parse_list(m.hidden, 'model.hidden', int)
    configs.require(all(h > 0 for h in hidden), 'model.hidden', m.hidden,
                    'widths must be > 0, e.g. "200,200" ("" = no hidden layer)')
    if m.arch == 'conv':
      channels = configs.parse_list(m.conv_channels, 'model.conv_channels', int)
      configs.require(channels and all(c > 0 for c in channels), 'model.conv_channels',
                      m.conv_channels, 'conv needs one or more channel counts > 0, e.g. "32,64"')
    configs.require(m.latent_dim > 0, 'model.latent_dim', m.latent_dim, 'must be > 0')
    configs.one_of(m.activation, networks.ACTIVATIONS, 'model.activation')
    configs.one_of(m.likelihood, networks.LIKELIHOODS, 'model.likelihood')
    configs.require(o.beta >= 0, 'objective.beta', o.beta, 'must be >= 0')
    configs.require(o.kl_warmup_steps >= 0, 'objective.kl_warmup_steps', o.kl_warmup_steps,
                    'must be >= 0 (0 = no warmup)')
    configs.require(e.iwae_k >= 0, 'eval.iwae_k', e.iwae_k, 'must be >= 0 (0 = skip IWAE)')
    configs.require(e.iwae_chunk > 0, 'eval.iwae_chunk', e.iwae_chunk, 'must be > 0')
    configs.require(e.iwae_num_examples == -1 or e.iwae_num_examples > 0,
                    'eval.iwae_num_examples', e.iwae_num_examples,
                    'must be -1 (whole eval split) or > 0')

  # --- helpers ------------------------------------------------------------------------------
  def _fns(self, params):
    """(encode, log_lik) closures over `params` for the functions in vae.py."""
    model = networks.make_model(self.config.model, networks.image_shape(params),
                                precision.compute_dtype(self.config))
    likelihood = self.config.model.likelihood

    def encode(x):
      return model.apply({'params': params}, x, method='encode')

    def log_lik(z, x):
      return vae.reconstruction_log_prob(
          likelihood, model.apply({'params': params}, z, method='decode'), x)

    def decode_mean(z):
      return vae.decoder_mean(model.apply({'params': params}, z, method='decode'))

    return encode, log_lik, decode_mean

  def _beta(self, step: jax.Array) -> jax.Array:
    o = self.config.objective
    if not o.kl_warmup_steps:
      return jnp.asarray(o.beta, jnp.float32)
    return o.beta * jnp.minimum(1.0, step.astype(jnp.float32) / o.kl_warmup_steps)

  def _iwae_nll(self, params, x: jax.Array, keys: jax.Array, k: int) -> jax.Array:
    encode, log_lik, _ = self._fns(params)
    return -vae.iwae_log_likelihood(encode, log_lik, x, keys, k, self.config.eval.iwae_chunk)

  # --- pure functions (per device) ----------------------------------------------------------
  def init_state(self, key: jax.Array, batch: Mapping[str, jax.Array]) -> TrainState:
    x = batch['image']
    chex.assert_rank(x, 4)
    model = networks.make_model(self.config.model, x.shape[1:],
                                precision.compute_dtype(self.config))
    params = model.init(key, x[:1])['params']
    tx, _ = optim.make(self.config.optimizer, self.config.train.num_steps,
                       moments_dtype=self.config.precision.moments)
    return TrainState.create(params, tx, {}, ema_decay=self.config.optimizer.ema_decay,
                             ema_warmup=self.config.optimizer.ema_warmup)

  def objective(self, state: TrainState):
    beta = self._beta(state.step)

    def loss_fn(params, model_state, batch, key):
      x = batch['image']
      encode, log_lik, _ = self._fns(params)
      terms = vae.elbo(encode, log_lik, x, parallel.per_example_keys(key, x.shape[0]), beta)
      chex.assert_shape(terms['loss'], (x.shape[0],))
      metrics = {name: jnp.mean(terms[name]) for name in ('neg_elbo', 'recon', 'kl')}
      return jnp.mean(terms['loss']), (dict(metrics, beta=beta), model_state)
    return loss_fn

  def eval_step(self, state: TrainState, batch, key):
    params = state.eval_params
    x = batch['image']
    keys = parallel.per_example_keys(key, x.shape[0])
    encode, log_lik, _ = self._fns(params)
    terms = vae.elbo(encode, log_lik, x, keys)
    out = {name: terms[name] for name in ('neg_elbo', 'recon', 'kl')}
    e = self.config.eval
    if e.iwae_k > 0 and e.iwae_num_examples < 0:
      out['iwae_nll'] = self._iwae_nll(params, x, keys, e.iwae_k)
    return out

  def iwae_nll(self, state: TrainState, batch, key: jax.Array, k: int) -> jax.Array:
    """-IWAE(k) per example, [B]; example i's noise comes from fold_in(key, i). Needs no mesh
    axis, so it also runs under plain `jax.jit`."""
    x = batch['image']
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(x.shape[0]))
    return self._jit_iwae_nll(state.eval_params, x, keys, k)

  def sample(self, state: TrainState, key: jax.Array, num: int):
    params = state.eval_params
    _, _, decode_mean = self._fns(params)
    # `key` is per device already (the harness folds in the device index).
    z = jax.random.normal(key, (num, self.config.model.latent_dim))
    return {'images': decode_mean(z), 'latents': z}

  def visualize(self, state: TrainState, batch, key: jax.Array):
    """Deterministic (posterior-mean) reconstructions and latent interpolations."""
    encode, _, decode_mean = self._fns(state.eval_params)
    x = batch['image']
    out = {}
    n = min(x.shape[0], _NUM_RECONSTRUCTIONS)
    recon = decode_mean(encode(x[:n])[0])
    out['reconstructions'] = jnp.stack([x[:n], recon], axis=1).reshape((2 * n,) + x.shape[1:])
    pairs = min(x.shape[0] // 2, _NUM_INTERP_PAIRS)
    if pairs:
      z = encode(x[:2 * pairs])[0]
      start, end = z[0::2, None], z[1::2, None]                     # [pairs, 1, D]
      t = jnp.linspace(0.0, 1.0, _INTERP_STEPS)[None, :, None]        # [1, steps, 1]
      path = ((1.0 - t) * start + t * end).reshape(pairs * _INTERP_STEPS, -1)
      out['interpolations'] = decode_mean(path)
    return out

  def eval_params_of(self, state: TrainState):
    # The parameter tree eval and sampling use (the harness counts parameters on it);
    # eval_step/sample/visualize read `state.eval_params` themselves.
    return state.eval_params

  # --- host-side hooks ----------------------------------------------------------------------
  def host_eval(self, state: TrainState, eval_batches, key: jax.Array) -> dict:
    """iwae_nll on the first eval.iwae_num_examples examples (when that is > 0): IWAE at large k
    costs k decoder passes per example, so it is often run on a prefix of the eval split.
    `eval_batches`: this host's iterable of batches (dicts with 'image' and optionally 'mask');
    with several hosts each takes an equal share of the prefix from its own shard."""
    e = self.config.eval
    if e.iwae_k <= 0 or e.iwae_num_examples < 0:
      return {}
    limit = -(-e.iwae_num_examples // jax.process_count())  # this host's share
    # Host copies of params and key: plain jit on this host's default device, no mesh needed.
    params = parallel.to_host(state.eval_params)
    key = jax.random.wrap_key_data(parallel.to_host(jax.random.key_data(key)))
    if jax.process_count() > 1:
      key = jax.random.fold_in(key, jax.process_index())
    total, count = 0.0, 0
    for batch in eval_batches:
      x = np.asarray(batch['image'])
      mask = np.asarray(batch.get('mask', np.ones(len(x), bool))).astype(bool)
      ids = np.maximum(count + np.cumsum(mask) - 1, 0)        # running index of real examples
      keep = mask & (ids < limit)
      keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.asarray(ids))
      nll = np.asarray(self._jit_iwae_nll(params, x, keys, e.iwae_k))
      total += float(nll[keep].sum())
      count += int(keep.sum())
      if count >= limit:
        break
    if jax.process_count() > 1:
      sums = multihost_utils.process_allgather(np.array([total, count], np.float64))
      total, count = float(sums[:, 0].sum()), int(sums[:, 1].sum())
    return {'iwae_nll': total / max(count, 1), 'iwae_num_examples': float(count)}
