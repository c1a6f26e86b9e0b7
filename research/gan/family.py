"""The GAN family: a generator and a discriminator in a minimax game (Goodfellow et al. 2014).

One per-device train step does `gan.n_critic` discriminator updates (a `lax.scan`, each on its
own slice of the real batch and fresh fakes), then one generator update against the updated
discriminator (`gan.update_rule='alternating'`, the DCGAN/WGAN practice). With
`gan.update_rule='simultaneous'` both players' gradients come from one forward pass at the
current parameters and both are applied at once: the rule of the ALI code that PacGAN's 2-D
experiments ran on. Two Optax optimizers (`gan.d_lr` != `optimizer.lr` gives the two time-scale
rule of Heusel et al. 2017) and an optional EMA of the generator.

- `gan.loss`: 'ns' (non-saturating BCE), 'minimax' (the saturating original, to show the
  vanishing generator gradient), 'wgan' (+ `gan.gp_weight` for WGAN-GP) or 'hinge'; optional R1
  penalty on real data (`gan.r1_gamma`).
- `gan.pack`: PacGAN (Lin et al. 2018) -- the discriminator judges `pack` samples at once,
  concatenated on the last axis, which penalizes a generator that lacks diversity.
- Logged every step: both losses, discriminator accuracy on real and fake, the gradient norm of
  each network (the vanishing-gradient signal) and the mean logits; on 2-D toy data every eval
  also reports PacGAN's mode coverage (modes captured, high-quality fraction, reverse KL).

Images are mapped to [-1, 1]; samples come back in [0, 1]. The generator's batch norm uses the
statistics of the batch it draws (training: over all devices), also when sampling, as DCGAN and
PacGAN did; no running averages are kept.
"""
from __future__ import annotations

from typing import Mapping

import chex
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax import lax

from research import configs, optim, parallel, precision
from research.data import datasets, toy
from research.evaluation import stats, toy_mixtures
from research.family import Family
from research.gan import losses, networks
from research.train_state import TrainState, apply_gradients

ARCHS = ('dcgan', 'mlp')
UPDATES = ('alternating', 'simultaneous')


@flax.struct.dataclass
class GANState:
  """Both players. Each is a `TrainState` (its own optimizer; EMA on the generator only);
  `model_state` holds each network's 'batch_stats' (generator batch norm, spectral-norm vectors)."""
  step: jax.Array
  g: TrainState
  d: TrainState

  @property
  def params(self):
    return {'generator': self.g.params, 'discriminator': self.d.params}


def pack(x: jax.Array, m: int) -> jax.Array:
  """[B, ..., C] -> [B/m, ..., m*C]: groups of m consecutive samples side by side on the last
  axis (PacGAN's packing; consecutive groups keep packing independent of the device count)."""
  if m == 1:
    return x
  b = x.shape[0]
  chex.assert_is_divisible(b, m)
  x = x.reshape((b // m, m) + x.shape[1:])
  x = jnp.moveaxis(x, 1, -2)                                   # [B/m, ..., m, C]
  return x.reshape(x.shape[:-2] + (m * x.shape[-1],))


def _ints(text: str) -> tuple[int, ...]:
  return tuple(configs.parse_list(text, '', int))


class GAN(Family):

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    self._info = datasets.info(config.data)
    self._images = datasets.spec(config.data.name).key == 'image'   # else 2-D points
    self._num_classes = self._info.num_classes if config.model.class_conditional else 0
    self._jit_draw = jax.jit(self._draw, static_argnums=2)

  # --- config -------------------------------------------------------------------------------
  @classmethod
  def config_defaults(cls) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict()
    c.model.arch = 'dcgan'            # dcgan (images) | mlp (2-D toy data: PacGAN's networks)
    c.model.latent_dim = 128          # z ~ N(0, I)
    c.model.g_channels = 64           # dcgan: generator width
    c.model.d_channels = 64           # dcgan: discriminator width
    c.model.g_hidden = '400,400,400,400'  # mlp: generator widths
    c.model.d_hidden = '200,200,200'  # mlp: maxout discriminator widths
    c.model.maxout_pieces = 5
    c.model.g_batch_norm = True       # mlp: batch norm in the generator (dcgan always has it)
    c.model.spectral_norm = False     # spectral norm on every discriminator layer (SN-GAN)
    c.model.d_dropout = 0.0           # dropout in the discriminator
    c.model.class_conditional = False  # dcgan: label-conditioned G, projection D

    c.gan = ml_collections.ConfigDict()
    c.gan.loss = 'ns'                 # ns | minimax | wgan | hinge (research/gan/losses.py)
    c.gan.n_critic = 1                # discriminator updates per generator update
    c.gan.update_rule = 'alternating'  # alternating (D, then G against the new D) | simultaneous
                                       # (both gradients from one forward pass; n_critic 1)
    c.gan.pack = 1                    # PacGAN: samples per discriminator input
    c.gan.gp_weight = 0.0             # WGAN-GP lambda (10 in Gulrajani et al.); 0 = off
    c.gan.r1_gamma = 0.0              # R1 penalty gamma (Mescheder et al. 2018); 0 = off
    c.gan.d_lr = 0.0                  # discriminator peak lr; 0 = optimizer.lr. The rest of
                                      # config.optimizer (name, betas, schedule) is shared.
    return c

  @classmethod
  def validate_config(cls, config: ml_collections.ConfigDict) -> None:
    m, g = config.model, config.gan
    configs.one_of(m.arch, ARCHS, 'model.arch')
    toy = datasets.spec(config.data.name).key == 'x'   # 2-D points
    configs.require(toy == (m.arch == 'mlp'), 'model.arch', m.arch,
                    'use mlp for 2-D toy data and dcgan for images')
    configs.require(m.latent_dim > 0, 'model.latent_dim', m.latent_dim, 'must be > 0')
    for name in ('g_hidden', 'd_hidden'):
      widths = configs.parse_list(m[name], f'model.{name}', int)
      configs.require(widths and all(w > 0 for w in widths), f'model.{name}', m[name],
                      'needs one or more widths > 0, e.g. "200,200"')
    configs.require(m.g_channels > 0 and m.d_channels > 0 and m.maxout_pieces > 0,
                    'model', 'g_channels/d_channels/maxout_pieces', 'must be > 0')
    configs.require(0 <= m.d_dropout < 1, 'model.d_dropout', m.d_dropout, 'must be in [0, 1)')
    if not toy:
      h, w = datasets.info(config.data).image_shape[:2]
      configs.require(h % 4 == 0 and w % 4 == 0, 'data.name', config.data.name,
                      f'dcgan needs image sides divisible by 4; the data is {h}x{w}')
    configs.require(not (toy and m.class_conditional), 'model.class_conditional',
                    m.class_conditional, 'class conditioning is for images (arch dcgan)')
    configs.one_of(g.loss, losses.LOSSES, 'gan.loss')
    configs.require(g.n_critic >= 1, 'gan.n_critic', g.n_critic, 'must be >= 1')
    configs.one_of(g.update_rule, UPDATES, 'gan.update_rule')
    configs.require(g.update_rule == 'alternating' or g.n_critic == 1, 'gan.n_critic',
                    g.n_critic, "gan.update_rule='simultaneous' makes one update of each player: "
                    'use n_critic=1')
    configs.require(g.pack >= 1, 'gan.pack', g.pack, 'must be >= 1 (1 = no packing)')
    configs.require(not (g.pack > 1 and m.class_conditional), 'gan.pack', g.pack,
                    'packing mixes labels in one input; use pack=1 with class_conditional')
    configs.require(g.gp_weight >= 0 and g.r1_gamma >= 0 and g.d_lr >= 0, 'gan.gp_weight',
                    g.gp_weight, 'gp_weight, r1_gamma and d_lr must be >= 0')
    per_d_step = g.n_critic * g.pack
    configs.require(config.train.batch_size % per_d_step == 0, 'train.batch_size',
                    config.train.batch_size,
                    f'each device batch is split into gan.n_critic={g.n_critic} '
                    f'discriminator steps of packs of gan.pack={g.pack}: use a multiple of '
                    f'{per_d_step} x the device count')
    configs.require(not config.init_from.workdir, 'init_from.workdir', config.init_from.workdir,
                    'transfer from a checkpoint is not implemented for GANs; leave it empty')
    configs.require(config.eval.batch_size % g.pack == 0, 'eval.batch_size',
                    config.eval.batch_size, f'must be a multiple of gan.pack={g.pack} x devices')

  # --- networks -----------------------------------------------------------------------------
  # Both networks compute in config.precision.compute (float32 params, samples and logits).
  def _generator(self, axis_name=None):
    m = self.config.model
    dtype = precision.compute_dtype(self.config)
    if m.arch == 'mlp':
      return networks.MLPGenerator(hidden=_ints(m.g_hidden), out_dim=2,
                                   batch_norm=m.g_batch_norm, axis_name=axis_name, dtype=dtype)
    return networks.DCGANGenerator(out_shape=tuple(self._info.image_shape),
                                   channels=m.g_channels, num_classes=self._num_classes,
                                   axis_name=axis_name, dtype=dtype)

  def _discriminator(self):
    m = self.config.model
    dtype = precision.compute_dtype(self.config)
    if m.arch == 'mlp':
      return networks.MaxoutDiscriminator(hidden=_ints(m.d_hidden), pieces=m.maxout_pieces,
                                          spectral_norm=m.spectral_norm, dropout=m.d_dropout,
                                          dtype=dtype)
    return networks.DCGANDiscriminator(channels=m.d_channels, spectral_norm=m.spectral_norm,
                                       dropout=m.d_dropout, num_classes=self._num_classes,
                                       dtype=dtype)

  def _generate(self, params, g_state, z, labels, axis_name=None):
    """(fakes, new generator batch_stats). Batch norm always uses batch statistics."""
    net = self._generator(axis_name)
    args = (z,) if self.config.model.arch == 'mlp' else (z, labels)
    x, updates = net.apply({'params': params, **g_state}, *args, train=True,
                           mutable=['batch_stats'])
    return x, updates

  def _critic(self, params, d_state, labels, key, update_stats: bool):
    """x (packed) -> (logits [B], new discriminator state)."""
    net = self._discriminator()

    def critic(x):
      out, updates = net.apply({'params': params, **d_state}, x, labels, train=True,
                               update_stats=update_stats, rngs={'dropout': key},
                               mutable=['batch_stats'])
      return out, (updates if update_stats else d_state)

    return critic

  def _data(self, batch) -> jax.Array:
    return batch['image'] * 2.0 - 1.0 if self._images else batch['x']

  def _labels(self, batch):
    return batch['label'].astype(jnp.int32) if self._num_classes else None

  def _latents(self, key, n: int) -> jax.Array:
    """Per-example z keyed by position in the global batch (device-count independent); call
    inside a per-device function."""
    keys = parallel.per_example_keys(key, n)
    return jax.vmap(lambda k: jax.random.normal(k, (self.config.model.latent_dim,)))(keys)

  def _fake_labels(self, key, n: int):
    if not self._num_classes:
      return None
    keys = parallel.per_example_keys(key, n)
    return jax.vmap(lambda k: jax.random.randint(k, (), 0, self._num_classes))(keys)

  # --- pure functions (per device) ----------------------------------------------------------
  def init_state(self, key: jax.Array, batch: Mapping[str, jax.Array]) -> GANState:
    g_cfg = self.config.gan
    k_g, k_d = jax.random.split(key)
    x = self._data(batch)
    n = 2 * g_cfg.pack   # batch norm in train mode needs more than one example
    z = jnp.zeros((n, self.config.model.latent_dim))
    labels = jnp.zeros((n,), jnp.int32) if self._num_classes else None
    g_args = (z,) if self.config.model.arch == 'mlp' else (z, labels)
    g_vars = self._generator().init(k_g, *g_args, train=True)
    x_packed = pack(jnp.repeat(x[:1], n, axis=0), g_cfg.pack)
    d_labels = labels[:x_packed.shape[0]] if labels is not None else None
    d_vars = self._discriminator().init({'params': k_d, 'dropout': k_d}, x_packed, d_labels,
                                        train=False)
    steps = self.config.train.num_steps
    moments = self.config.precision.moments
    g_tx, _ = optim.make(self.config.optimizer, steps, moments_dtype=moments)
    d_opt = self.config.optimizer.copy_and_resolve_references()
    d_opt.lr = g_cfg.d_lr or d_opt.lr
    d_tx, _ = optim.make(d_opt, steps * g_cfg.n_critic,   # D's own step count
                         moments_dtype=moments)
    split = lambda v: ({k: w for k, w in v.items() if k != 'params'})
    g = TrainState.create(g_vars['params'], g_tx, split(g_vars),
                          ema_decay=self.config.optimizer.ema_decay,
                          ema_warmup=self.config.optimizer.ema_warmup)
    d = TrainState.create(d_vars['params'], d_tx, split(d_vars))
    return GANState(step=jnp.zeros((), jnp.int32), g=g, d=d)

  def _d_loss(self, d_params, d_state, real, real_labels, fake, fake_labels, key):
    g_cfg = self.config.gan
    k_drop, k_gp = jax.random.split(key)
    both = jnp.concatenate([pack(real, g_cfg.pack), pack(fake, g_cfg.pack)])
    labels = (None if real_labels is None else jnp.concatenate([real_labels, fake_labels]))
    logits, new_state = self._critic(d_params, d_state, labels, k_drop, True)(both)
    n = both.shape[0] // 2
    real_logits, fake_logits = logits[:n], logits[n:]
    loss = losses.discriminator_loss(g_cfg.loss, real_logits, fake_logits)
    metrics = {'d_loss_adv': loss, 'd_real_logit': jnp.mean(real_logits),
               'd_fake_logit': jnp.mean(fake_logits),
               **losses.accuracy(real_logits, fake_logits)}
    # Penalties on the critic with the real labels (packing is off when there are labels).
    critic = self._critic(d_params, new_state, real_labels, k_drop, False)
    if g_cfg.gp_weight:
      real_p = pack(real, g_cfg.pack)
      gp = losses.gradient_penalty(lambda x: critic(x)[0], real_p, pack(fake, g_cfg.pack),
                                   parallel.per_example_keys(k_gp, real_p.shape[0]))
      loss += g_cfg.gp_weight * gp
      metrics['gradient_penalty'] = gp
    if g_cfg.r1_gamma:
      r1 = losses.r1_penalty(lambda x: critic(x)[0], pack(real, g_cfg.pack))
      loss += 0.5 * g_cfg.r1_gamma * r1
      metrics['r1_penalty'] = r1
    return loss, (dict(metrics, d_loss=loss), new_state, fake_logits)

  def _g_loss(self, g_params, g_state, d_params, d_state, z, labels, key):
    fake, g_updates = self._generate(g_params, g_state, z, labels, parallel.AXIS)
    logits, _ = self._critic(d_params, d_state, labels, key, False)(
        pack(fake, self.config.gan.pack))
    loss = losses.generator_loss(self.config.gan.loss, logits)
    return loss, ({'g_loss': loss}, g_updates)

  def train_step(self, state: GANState, batch, key):
    g_cfg = self.config.gan
    real = self._data(batch)
    labels = self._labels(batch)
    if g_cfg.update_rule == 'simultaneous':
      return self._simultaneous_step(state, real, labels, key)
    n = real.shape[0] // g_cfg.n_critic           # real examples per discriminator step
    k_d, k_g = jax.random.split(key)

    def chunks(x):
      # Strided: chunk i holds examples i, i + n_critic, ... so each discriminator step sees
      # the same real examples whatever the device count.
      if x is None:
        return None
      return x.reshape((n, g_cfg.n_critic) + x.shape[1:]).swapaxes(0, 1)

    def d_update(d, xs):
      i, real_i, labels_i = xs
      k = jax.random.fold_in(k_d, i)
      k_z, k_y, k_loss = jax.random.split(k, 3)
      fake_labels = self._fake_labels(k_y, n)
      # Fakes come from the current generator with its gradient stopped: only D learns here.
      fake, _ = self._generate(state.g.params, state.g.model_state,
                               self._latents(k_z, n), fake_labels, parallel.AXIS)
      fake = lax.stop_gradient(fake)
      grad_fn = jax.value_and_grad(self._d_loss, has_aux=True)
      (_, (metrics, d_state, _)), grads = grad_fn(d.params, d.model_state, real_i, labels_i,
                                                  fake, fake_labels, k_loss)
      grads = lax.pmean(grads, parallel.AXIS)
      metrics['d_grad_norm'] = optax.global_norm(grads)
      return apply_gradients(d, grads, d_state), metrics

    xs = (jnp.arange(g_cfg.n_critic), chunks(real), chunks(labels))
    d, d_metrics = lax.scan(d_update, state.d, xs)
    d_metrics = jax.tree.map(lambda v: v[-1], d_metrics)   # the last critic step's view

    k_z, k_y, k_loss = jax.random.split(k_g, 3)
    fake_labels = self._fake_labels(k_y, n)
    grad_fn = jax.value_and_grad(self._g_loss, has_aux=True)
    (_, (g_metrics, g_updates)), g_grads = grad_fn(
        state.g.params, state.g.model_state, d.params, d.model_state,
        self._latents(k_z, n), fake_labels, k_loss)
    g_grads = lax.pmean(g_grads, parallel.AXIS)
    g_metrics['g_grad_norm'] = optax.global_norm(g_grads)
    g = apply_gradients(state.g, g_grads, g_updates)
    metrics = lax.pmean(dict(d_metrics, **g_metrics), parallel.AXIS)
    return GANState(step=state.step + 1, g=g, d=d), metrics

  def _simultaneous_step(self, state: GANState, real, labels, key):
    """Both players' losses from one generator and one discriminator forward pass at the
    current parameters; each player's gradient is pulled back from its own loss."""
    n = real.shape[0]
    k_z, k_y, k_loss = jax.random.split(key, 3)
    fake_labels = self._fake_labels(k_y, n)
    z = self._latents(k_z, n)

    def both(d_params, g_params):
      fake, g_updates = self._generate(g_params, state.g.model_state, z, fake_labels,
                                       parallel.AXIS)
      d_loss, (metrics, d_state, fake_logits) = self._d_loss(
          d_params, state.d.model_state, real, labels, fake, fake_labels, k_loss)
      g_loss = losses.generator_loss(self.config.gan.loss, fake_logits)
      return (d_loss, g_loss), (dict(metrics, g_loss=g_loss), d_state, g_updates)

    (d_loss, g_loss), pull, (metrics, d_state, g_updates) = jax.vjp(
        both, state.d.params, state.g.params, has_aux=True)
    one, zero = jnp.ones_like(d_loss), jnp.zeros_like(g_loss)
    d_grads = lax.pmean(pull((one, zero))[0], parallel.AXIS)   # XLA drops the unused halves
    g_grads = lax.pmean(pull((zero, one))[1], parallel.AXIS)
    metrics['d_grad_norm'] = optax.global_norm(d_grads)
    metrics['g_grad_norm'] = optax.global_norm(g_grads)
    d = apply_gradients(state.d, d_grads, d_state)
    g = apply_gradients(state.g, g_grads, g_updates)
    return GANState(step=state.step + 1, g=g, d=d), lax.pmean(metrics, parallel.AXIS)

  def eval_step(self, state: GANState, batch, key):
    """Per example: the discriminator's view of held-out real data and of as many fakes (a
    discriminator that is sure of train data but not of test data is overfitting). With
    packing, each value is its pack's, repeated for the pack's members."""
    m = self.config.gan.pack
    real = self._data(batch)
    labels = self._labels(batch)
    b = real.shape[0]
    z = self._latents(key, b)
    fake, _ = self._generate(self.eval_params_of(state), state.g.model_state, z, labels)
    net = self._discriminator()
    logits = net.apply({'params': state.d.params, **state.d.model_state},
                       jnp.concatenate([pack(real, m), pack(fake, m)]),
                       None if labels is None else jnp.concatenate([labels, labels]),
                       train=False)
    real_logits, fake_logits = jnp.split(jnp.repeat(logits, m), 2)
    return {'d_real_logit': real_logits, 'd_fake_logit': fake_logits,
            'd_real_acc': (real_logits > 0).astype(jnp.float32),
            'd_fake_acc': (fake_logits < 0).astype(jnp.float32)}

  def eval_params_of(self, state: GANState):
    return state.g.eval_params

  def _draw(self, params, key, num: int, g_state, first: int | jax.Array = 0):
    """`num` samples; labels cycle through the classes from global sample index `first`."""
    labels = None
    if self._num_classes:
      labels = (first + jnp.arange(num, dtype=jnp.int32)) % self._num_classes
    z = jax.random.normal(key, (num, self.config.model.latent_dim))  # key: per device already
    x, _ = self._generate(params, g_state, z, labels)
    out = ({'images': jnp.clip((x + 1.0) / 2.0, 0.0, 1.0)} if self._images else {'points': x})
    if labels is not None:
      out['labels'] = labels
    return out

  def sample(self, state: GANState, key: jax.Array, num: int):
    return self._draw(self.eval_params_of(state), key, num, state.g.model_state,
                      lax.axis_index(parallel.AXIS) * num)

  # --- host-side hooks ----------------------------------------------------------------------
  def host_eval(self, state: GANState, eval_batches, key: jax.Array) -> dict:
    """2-D mixtures: PacGAN's mode statistics on 2,500 generated points, mean and standard
    error (`<name>_se`) over `eval.draws` independent draws (the first uses `key` itself)."""
    name = self.config.data.name
    if self._images or toy.modes(name) is None:
      return {}
    params, g_state = parallel.to_host((self.eval_params_of(state), state.g.model_state))
    key = jax.random.wrap_key_data(parallel.to_host(jax.random.key_data(key)))
    per_draw = []
    for d in range(self.config.eval.draws):
      points = np.asarray(self._jit_draw(params, jax.random.fold_in(key, d) if d else key,
                                         toy_mixtures.PACGAN_NUM_SAMPLES, g_state)['points'])
      cov = toy_mixtures.mode_coverage(points, toy.modes(name), toy.mode_std(name))
      per_draw.append({'modes_captured': float(cov['modes_captured']),
                       'high_quality_fraction': cov['high_quality_fraction'],
                       'reverse_kl': cov['reverse_kl']})
    out = stats.over_draws(per_draw)
    return {k: v for k, v in out.items() if k != 'num_draws' and not (
        self.config.eval.draws == 1 and k.endswith('_se'))}

