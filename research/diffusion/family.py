"""The diffusion family: DDPM (Ho et al. 2020), VDM (Kingma et al. 2021) and EDM (Karras et al.
2022) training in one place, sampled by any sampler of `samplers.py`.

`diffusion.process` picks the forward process and objective:
- 'ddpm': variance preserving, T discrete levels (`num_timesteps`, Ho et al.) or continuous time
  (`num_timesteps=0`), on a linear or cosine schedule; regresses eps, v or x0 (`target`) with
  an optional Min-SNR weighting.
- 'vdm': variance preserving, continuous time, trained on the likelihood bound itself (bits/dim);
  `schedule='learned'` learns the log-SNR with VDM's monotone network: endpoints by the bound,
  the interior by minimizing the variance of the diffusion loss.
- 'edm': variance exploding with EDM's preconditioning and log-normal noise levels.
Every model becomes a denoiser D(x, sigma) -> x0_hat (`parameterization.py`), so DDPM ancestral,
DDIM, Euler, Heun and DPM-Solver++ all sample every model. Images are mapped to [-1, 1].
The denoiser computes in `config.precision.compute` (networks.py); schedules, losses and
likelihood bounds are float32.
"""
from __future__ import annotations

from typing import Mapping

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from research import configs, optim, parallel, precision
from research.data import datasets
from research.diffusion import likelihood, losses, networks, samplers, schedules
from research.diffusion import parameterization as param
from research.family import Family
from research.train_state import TrainState

PROCESSES = ('ddpm', 'vdm', 'edm')
SCHEDULES = ('linear', 'cosine', 'learned')
GRIDS = ('auto', 'discrete', 'time_uniform', 'karras', 'logsnr_uniform', 'logsnr_levels')
# grid='auto': the grid each sampler's paper uses. DPM-Solver++ steps uniformly in log-SNR (Lu et
# al. 2022); on DDIM's uniform spacing of a discrete model its last step spans most of the
# log-SNR range and it does worse than DDIM. On a discrete model the log-SNR steps are snapped to
# the training levels: between them the network was never trained, and on the converged ring8
# model off-level queries cap DPM-Solver++ at ~76% high-quality samples at any step count, where
# on the levels it climbs from 83% (10 steps) to 90% (100), as DDIM on the levels (README).
# Heun and Euler take EDM's Karras grid. Ancestral DDPM and DDIM walk the training levels
# (DDIM's uniform spacing; uniform in t if continuous).
AUTO_GRIDS = {'dpmpp_2m': 'logsnr_uniform', 'heun': 'karras', 'euler': 'karras'}
AUTO_GRIDS_DISCRETE = {'dpmpp_2m': 'logsnr_levels'}   # overrides for discrete-time models


def _ints(text: str, field: str) -> tuple[int, ...]:
  return tuple(configs.parse_list(text, field, int))


class Diffusion(Family):

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    d = config.diffusion
    self._discrete = d.process == 'ddpm' and d.num_timesteps > 0
    if self._discrete:
      betas = (schedules.cosine_betas(d.num_timesteps) if d.schedule == 'cosine' else
               schedules.linear_betas(d.num_timesteps, d.beta_start, d.beta_end))
      self._levels = jnp.asarray(schedules.discrete_logsnr(betas))   # [T], decreasing
    info = datasets.info(config.data)
    self._num_classes = info.num_classes if config.model.class_conditional else 0
    self._images = datasets.spec(config.data.name).key == 'image'   # else 2-D points

  # --- config -------------------------------------------------------------------------------
  @classmethod
  def config_defaults(cls) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict()
    c.model.arch = 'unet'               # unet (images) | mlp (2-D toy data)
    c.model.channels = 32               # unet base width
    c.model.channel_mults = '1,2,2'     # unet: width multiplier per resolution
    c.model.num_res_blocks = 2          # unet: residual blocks per resolution
    c.model.attn_resolutions = '7'      # unet: self-attention at these feature-map sizes
    c.model.num_heads = 1
    c.model.conv_impl = 'auto'          # auto (= xla, the fastest here on CPU too) | xla |
                                        # im2col | hybrid (see networks.py)
    c.model.hidden = 256                # mlp width
    c.model.depth = 3                   # mlp residual blocks
    c.model.dropout = 0.1
    c.model.class_conditional = False   # condition on data labels, for classifier-free guidance
    c.model.class_dropout = 0.1         # labels replaced by the null class with this probability

    c.diffusion = ml_collections.ConfigDict()
    c.diffusion.process = 'ddpm'        # ddpm | vdm | edm
    c.diffusion.schedule = 'linear'     # linear | cosine | learned (vdm only)
    c.diffusion.num_timesteps = 1000    # ddpm: discrete levels T; 0 = continuous time
    c.diffusion.beta_start = 1e-4       # linear schedule (Ho et al.), also its continuous limit
    c.diffusion.beta_end = 0.02
    c.diffusion.target = 'eps'          # ddpm/vdm network output: eps | v | x0
    c.diffusion.weighting = 'none'      # ddpm: none (L_simple) | min_snr
    c.diffusion.min_snr_gamma = 5.0
    c.diffusion.gamma_min = -13.3       # vdm learned schedule: initial -logsnr at t = 0, 1
    c.diffusion.gamma_max = 5.0
    c.diffusion.sigma_data = 0.5        # edm
    c.diffusion.p_mean = -1.2           # edm: ln(sigma) ~ N(p_mean, p_std^2) in training
    c.diffusion.p_std = 1.2
    c.diffusion.sigma_min = 0.002       # edm sampling range
    c.diffusion.sigma_max = 80.0

    c.sampler = ml_collections.ConfigDict()
    c.sampler.name = 'ddpm'             # ddpm | ddim | euler | heun | dpmpp_2m
    c.sampler.steps = 0                 # 0: T for a discrete model, else 18
    c.sampler.grid = 'auto'             # auto (each sampler's own, AUTO_GRIDS) | discrete |
                                        # time_uniform | karras | logsnr_uniform |
                                        # logsnr_levels (log-SNR-uniform, snapped to the
                                        # training levels of a discrete model)
    c.sampler.eta = 0.0                 # ddim stochasticity (1 = ancestral)
    c.sampler.churn = 0.0               # heun: EDM's S_churn
    c.sampler.guidance = 0.0            # classifier-free guidance; 0 = the conditional model
    c.sampler.rho = 7.0                 # karras grid
    c.sampler.clip_denoised = True      # images: clip each x0 estimate to the data range [-1, 1]

    c.eval = ml_collections.ConfigDict()
    c.eval.bpd_timesteps = 1            # timesteps per example for bits/dim; 0 = skip
    return c

  @classmethod
  def validate_config(cls, config: ml_collections.ConfigDict) -> None:
    m, d, s = config.model, config.diffusion, config.sampler
    configs.one_of(m.arch, ('unet', 'mlp'), 'model.arch')
    configs.one_of(m.conv_impl, networks.CONV_IMPLS, 'model.conv_impl')
    toy = datasets.spec(config.data.name).key == 'x'   # 2-D points
    configs.require(toy == (m.arch == 'mlp'), 'model.arch', m.arch,
                    'use mlp for 2-D toy data and unet for images')
    if m.arch == 'unet':
      mults = _ints(m.channel_mults, 'model.channel_mults')
      configs.require(mults and all(x > 0 for x in mults), 'model.channel_mults',
                      m.channel_mults, 'needs one or more multipliers > 0, e.g. "1,2,2"')
      _ints(m.attn_resolutions, 'model.attn_resolutions')
      size = datasets.info(config.data).image_shape[0]
      configs.require(size % 2 ** (len(mults) - 1) == 0, 'model.channel_mults', m.channel_mults,
                      f'{len(mults) - 1} downsamplings need an image size divisible by '
                      f'{2 ** (len(mults) - 1)}; the data is {size}x{size}')
    configs.require(m.channels > 0 and m.hidden > 0 and m.depth > 0 and m.num_res_blocks > 0,
                    'model', 'channels/hidden/depth/num_res_blocks', 'must be > 0')
    configs.require(0 <= m.dropout < 1, 'model.dropout', m.dropout, 'must be in [0, 1)')
    configs.require(0 <= m.class_dropout < 1, 'model.class_dropout', m.class_dropout,
                    'must be in [0, 1)')
    configs.one_of(d.process, PROCESSES, 'diffusion.process')
    configs.require(not (toy and d.process == 'vdm'), 'diffusion.process', d.process,
                    "vdm's bound has a decoder for 8-bit images; use ddpm or edm on toy data")
    configs.one_of(d.schedule, SCHEDULES, 'diffusion.schedule')
    configs.require(d.schedule != 'learned' or d.process == 'vdm', 'diffusion.schedule',
                    d.schedule, "a learned schedule needs diffusion.process='vdm'")
    configs.require(d.num_timesteps >= 0, 'diffusion.num_timesteps', d.num_timesteps,
                    'must be >= 0 (0 = continuous time)')
    configs.one_of(d.target, param.TARGETS, 'diffusion.target')
    configs.one_of(d.weighting, losses.WEIGHTINGS, 'diffusion.weighting')
    configs.require(0 < d.beta_start < d.beta_end < 1, 'diffusion.beta_start', d.beta_start,
                    'need 0 < beta_start < beta_end < 1')
    configs.require(d.gamma_min < d.gamma_max, 'diffusion.gamma_min', d.gamma_min,
                    'must be < diffusion.gamma_max')
    configs.require(0 < d.sigma_min < d.sigma_max, 'diffusion.sigma_min', d.sigma_min,
                    'need 0 < sigma_min < sigma_max')
    configs.one_of(s.name, tuple(samplers.SAMPLERS), 'sampler.name')
    configs.one_of(s.grid, GRIDS, 'sampler.grid')
    discrete = d.process == 'ddpm' and d.num_timesteps > 0
    configs.require(s.grid not in ('discrete', 'logsnr_levels') or discrete, 'sampler.grid',
                    s.grid, 'a grid of training levels needs a discrete-time ddpm '
                    '(diffusion.num_timesteps > 0)')
    configs.require(s.grid != 'time_uniform' or d.process != 'edm', 'sampler.grid', s.grid,
                    'edm has no time variable; use karras or logsnr_uniform')
    configs.require(s.steps >= 0, 'sampler.steps', s.steps, 'must be >= 0 (0 = default)')
    on_levels = s.grid == 'discrete' or (s.grid == 'auto' and s.name not in AUTO_GRIDS)
    configs.require(not (discrete and on_levels) or s.steps <= d.num_timesteps, 'sampler.steps',
                    s.steps,
                    f'a discrete grid has at most diffusion.num_timesteps={d.num_timesteps} steps')
    configs.require(s.eta >= 0 and s.churn >= 0, 'sampler.eta', s.eta, 'eta, churn must be >= 0')
    configs.require(s.guidance == 0 or config.model.class_conditional, 'sampler.guidance',
                    s.guidance, 'guidance needs model.class_conditional=True')

  # --- model pieces -------------------------------------------------------------------------
  def _net(self) -> networks.nn.Module:
    """The denoiser, computing in `config.precision.compute` (float32 params and output)."""
    m = self.config.model
    dtype = precision.compute_dtype(self.config)
    if m.arch == 'mlp':
      return networks.MLPDenoiser(hidden=m.hidden, depth=m.depth, num_classes=self._num_classes,
                                  dropout=m.dropout, dtype=dtype)
    return networks.UNet(channels=m.channels, channel_mults=_ints(m.channel_mults, ''),
                         num_res_blocks=m.num_res_blocks,
                         attn_resolutions=_ints(m.attn_resolutions, ''), dropout=m.dropout,
                         num_classes=self._num_classes, num_heads=m.num_heads,
                         conv_impl=m.conv_impl, dtype=dtype)

  def _schedule_module(self):
    d = self.config.diffusion
    return schedules.LearnedLogSNR(gamma_min=d.gamma_min, gamma_max=d.gamma_max)

  def _apply(self, params, labels, train: bool, key=None):
    """apply_net(x_in, c_noise) for the network at `params`."""
    net = self._net()
    rngs = {'dropout': key} if train and key is not None else None

    def apply_net(x, c):
      c = jnp.broadcast_to(c, x.shape[:1])
      return net.apply({'params': params['net']}, x, c, labels, train=train, rngs=rngs)

    return apply_net

  def logsnr_fn(self, params):
    """t [B] in [0, 1] -> (logsnr, d logsnr / dt) of a continuous-time process."""
    d = self.config.diffusion
    if d.schedule == 'learned':
      module = self._schedule_module()
      fn = lambda t: module.apply({'params': params['schedule']}, t)
    elif d.schedule == 'cosine':
      fn = schedules.cosine_logsnr
    else:
      fn = lambda t: schedules.linear_logsnr(t, d.beta_start, d.beta_end,
                                             d.num_timesteps or 1000)
    return lambda t: schedules.logsnr_and_derivative(fn, t)

  def denoiser(self, params, labels=None):
    """D(x, sigma) -> x0_hat, the plain function every sampler takes."""
    apply_net = self._apply(params, labels, train=False)
    d = self.config.diffusion
    if d.process == 'edm':
      return param.edm_denoiser(apply_net, d.sigma_data)
    return param.vp_denoiser(apply_net, d.target)

  def _x0_fn(self, apply_net):
    target = self.config.diffusion.target
    return lambda z, logsnr: param.vp_x0(target, apply_net(z, param.c_noise(
        jnp.exp(-0.5 * logsnr))), z, logsnr)

  def _data(self, batch) -> jax.Array:
    return batch['image'] * 2.0 - 1.0 if self._images else batch['x']

  def _labels(self, batch, drop_u=None):
    """Class labels, each replaced by the null class where drop_u < class_dropout (training)."""
    if not self._num_classes:
      return None
    labels = batch['label'].astype(jnp.int32)
    if drop_u is not None and self.config.model.class_dropout > 0:
      labels = jnp.where(drop_u < self.config.model.class_dropout, self._num_classes, labels)
    return labels

  # --- objectives ---------------------------------------------------------------------------
  def _loss(self, params, batch, key, train: bool) -> dict:
    """Per-example training objective [B] and its parts. Per-device: every example's noise
    comes from its position in the global batch, so the step does not depend on the device
    count (dropout masks aside)."""
    d = self.config.diffusion
    x0 = self._data(batch)
    b = x0.shape[0]

    def draw(k):
      k_lab, k_t, k_eps, k_dec = jax.random.split(k, 4)
      return (jax.random.uniform(k_lab), jax.random.uniform(k_t), jax.random.normal(k_t),
              jax.random.normal(k_eps, x0.shape[1:]), jax.random.normal(k_dec, x0.shape[1:]))

    u_lab, u_t, n_t, eps, eps_dec = jax.vmap(draw)(parallel.per_example_keys(key, b))
    labels = self._labels(batch, u_lab if train else None)
    apply_net = self._apply(params, labels, train, parallel.device_key(
        jax.random.fold_in(key, 1)))
    if d.process == 'edm':
      sigma = jnp.exp(d.p_mean + d.p_std * n_t)        # EDM's log-normal noise levels
      return {'loss': losses.edm_loss(apply_net, x0, eps, sigma, d.sigma_data)}
    if d.process == 'ddpm':
      if self._discrete:
        logsnr = self._levels[jnp.minimum((u_t * d.num_timesteps).astype(jnp.int32),
                                          d.num_timesteps - 1)]
      else:
        logsnr, _ = self.logsnr_fn(params)(u_t)
      return {'loss': losses.vp_loss(apply_net, x0, eps, logsnr, d.target, d.weighting,
                                     d.min_snr_gamma)}
    # vdm: the continuous-time bound in bits/dim. Times are VDM's low-discrepancy draws over
    # the global batch: one shared offset, shifted by each example's global position.
    n_global = b * jax.lax.psum(1, parallel.AXIS)
    position = jax.lax.axis_index(parallel.AXIS) * b + jnp.arange(b)
    t = jnp.mod(jax.random.uniform(jax.random.fold_in(key, 2)) + position / n_global, 1.0)
    logsnr, dlogsnr = self.logsnr_fn(params)(t)
    if d.schedule == 'learned':
      def diffusion_of(net_params, gamma):
        fn = self._x0_fn(self._apply(dict(params, net=net_params), labels, train,
                                     parallel.device_key(jax.random.fold_in(key, 1))))
        return likelihood.continuous_diffusion_loss(fn, x0, eps, *gamma)
      diffusion = schedules.variance_reduced_loss(diffusion_of, params['net'],
                                                  (logsnr, dlogsnr))
    else:
      diffusion = likelihood.continuous_diffusion_loss(self._x0_fn(apply_net), x0, eps, logsnr,
                                                       dlogsnr)
    ends = self.logsnr_fn(params)(jnp.array([0.0, 1.0]))[0]
    prior, recon = likelihood.endpoint_terms(x0, ends[0], ends[1], eps_dec)
    dims = int(np.prod(x0.shape[1:]))
    return {'loss': likelihood.bits_per_dim(prior + diffusion + recon, dims),
            'bpd_diffusion': likelihood.bits_per_dim(diffusion, dims),
            'bpd_prior': likelihood.bits_per_dim(prior, dims),
            'bpd_recon': likelihood.bits_per_dim(recon, dims)}

  def bits_per_dim(self, params, batch, key) -> dict:
    """The likelihood bound on the batch's 8-bit images in bits/dim, per example [B]."""
    x0 = self._data(batch)
    apply_net = self._apply(params, self._labels(batch), train=False)
    x0_fn = self._x0_fn(apply_net)
    n = self.config.eval.bpd_timesteps
    if self._discrete:
      out = likelihood.discrete_time_nll(x0_fn, x0, self._levels, key, n)
    else:
      out = likelihood.continuous_time_nll(x0_fn, x0, self.logsnr_fn(params), key, n)
    dims = int(np.prod(x0.shape[1:]))
    return {'bpd' if k == 'nll' else f'bpd_{k}': likelihood.bits_per_dim(v, dims)
            for k, v in out.items()}

  # --- pure functions (per device) ----------------------------------------------------------
  def init_state(self, key: jax.Array, batch: Mapping[str, jax.Array]) -> TrainState:
    x = self._data(batch)[:1]
    k_net, k_sched = jax.random.split(key)
    labels = jnp.zeros((1,), jnp.int32) if self._num_classes else None
    params = {'net': self._net().init(k_net, x, jnp.zeros((1,)), labels, train=False)['params']}
    if self.config.diffusion.schedule == 'learned':
      params['schedule'] = self._schedule_module().init(k_sched, jnp.zeros((1,)))['params']
    tx, _ = optim.make(self.config.optimizer, self.config.train.num_steps,
                       moments_dtype=self.config.precision.moments)
    return TrainState.create(params, tx, {}, ema_decay=self.config.optimizer.ema_decay,
                             ema_warmup=self.config.optimizer.ema_warmup)

  def sharding_rules(self):
    # The U-Net's residual blocks split like a Megatron MLP (first conv on output channels,
    # second on input channels), attention like a transformer's.
    return ((r'res\d+/conv1/kernel$', (None, None, None, 'model')),
            (r'res\d+/(conv1|emb_proj)/bias$', ('model',)),
            (r'res\d+/emb_proj/kernel$', (None, 'model')),
            (r'res\d+/conv2/kernel$', (None, None, 'model', None)),
            (r'attn\d*/qkv/kernel$', (None, 'model')), (r'attn\d*/qkv/bias$', ('model',)),
            (r'attn\d*/proj/kernel$', ('model', None)))

  def objective(self, state: TrainState):
    def loss_fn(params, model_state, batch, key):
      terms = self._loss(params, batch, key, train=True)
      chex.assert_rank(terms['loss'], 1)
      return jnp.mean(terms['loss']), ({k: jnp.mean(v) for k, v in terms.items()}, model_state)
    return loss_fn

  def eval_step(self, state: TrainState, batch, key):
    params = state.eval_params
    k_loss, k_bpd = jax.random.split(key)
    out = self._loss(params, batch, k_loss, train=False)
    if (self._images and self.config.diffusion.process != 'edm'
        and self.config.eval.bpd_timesteps > 0):
      out.update(self.bits_per_dim(params, batch, parallel.device_key(k_bpd)))
    return out

  # --- sampling -----------------------------------------------------------------------------
  def sigma_range(self, params) -> tuple[jax.Array, jax.Array]:
    d = self.config.diffusion
    if d.process == 'edm':
      return d.sigma_min, d.sigma_max
    if self._discrete:
      levels = self._levels
    else:
      levels = self.logsnr_fn(params)(jnp.array([0.0, 1.0]))[0]
    return jnp.exp(-0.5 * levels[0]), jnp.exp(-0.5 * levels[-1])

  def grid(self, sampler_cfg=None) -> str:
    """The sampler's grid, with 'auto' resolved (AUTO_GRIDS, else the training levels)."""
    s = sampler_cfg or self.config.sampler
    if s.grid != 'auto':
      return s.grid
    if self.config.diffusion.process == 'edm':   # no time variable, no training levels
      return AUTO_GRIDS.get(s.name, 'karras')
    if self._discrete:
      return AUTO_GRIDS_DISCRETE.get(s.name) or AUTO_GRIDS.get(s.name, 'discrete')
    return AUTO_GRIDS.get(s.name, 'time_uniform')

  def sampler_steps(self, sampler_cfg=None) -> int:
    """The sampler's step count, with 0 resolved (T for a discrete model, else 18)."""
    s = sampler_cfg or self.config.sampler
    return s.steps or (self.config.diffusion.num_timesteps if self._discrete else 18)

  def sample_settings(self) -> dict:
    s = self.config.sampler
    steps, grid = self.sampler_steps(), self.grid()
    tag = f'{s.name}{steps}-{grid}'
    tag += f'-eta{s.eta:g}' if s.name == 'ddim' and s.eta else ''
    tag += f'-churn{s.churn:g}' if s.name == 'heun' and s.churn else ''
    tag += f'-rho{s.rho:g}' if grid == 'karras' and s.rho != 7 else ''
    tag += f'-w{s.guidance:g}' if self._num_classes else ''
    tag += '-noclip' if self._images and not s.clip_denoised else ''
    return {'tag': tag, 'sampler': dict(s.to_dict(), steps=steps, grid=grid),
            'config': {'sampler': s.to_dict()}}

  def sigmas(self, params, sampler_cfg=None) -> jax.Array:
    """The sampler's decreasing noise-level grid, [steps + 1] ending at 0."""
    s = sampler_cfg or self.config.sampler
    steps, grid = self.sampler_steps(s), self.grid(s)
    if grid == 'discrete':
      return schedules.discrete_sigmas(self._levels, steps)
    if grid == 'logsnr_levels':
      return schedules.logsnr_level_sigmas(self._levels, steps)
    if grid == 'time_uniform':
      return schedules.continuous_sigmas(lambda t: self.logsnr_fn(params)(t)[0], steps)
    lo, hi = self.sigma_range(params)
    if grid == 'karras':
      return schedules.karras_sigmas(steps, lo, hi, s.rho)
    return schedules.logsnr_uniform_sigmas(steps, lo, hi)

  def sample_with(self, params, key: jax.Array, num: int, sampler_cfg=None):
    """`num` samples with the given sampler settings (default: config.sampler)."""
    s = sampler_cfg or self.config.sampler
    k_prior, k_sample = jax.random.split(key)
    shape = (num,) + (tuple(datasets.info(self.config.data).image_shape) if self._images
                      else (2,))
    labels = None
    if self._num_classes:
      labels = jnp.arange(num, dtype=jnp.int32) % self._num_classes
      denoiser = samplers.guided(self.denoiser(params, labels),
                                 self.denoiser(params, jnp.full_like(labels, self._num_classes)),
                                 s.guidance)
    else:
      denoiser = self.denoiser(params)
    if self._images and s.clip_denoised:
      # Ho et al.'s sampler (and diffusers' default) clips each x0 estimate: a deterministic
      # sampler otherwise carries an imperfect network's out-of-range estimates to the end.
      denoiser = samplers.clipped(denoiser, -1.0, 1.0)
    sigmas = self.sigmas(params, s)
    x = samplers.prior_sample(k_prior, shape, sigmas[0],
                              variance_preserving=self.config.diffusion.process != 'edm')
    options = {'ddim': {'eta': s.eta}, 'heun': {'churn': s.churn}}.get(s.name, {})
    x0 = samplers.run(s.name, denoiser, x, sigmas, k_sample, **options)
    out = {'images': jnp.clip((x0 + 1.0) / 2.0, 0.0, 1.0)} if self._images else {'points': x0}
    if labels is not None:
      out['labels'] = labels
    return out

  def sample(self, state: TrainState, key: jax.Array, num: int):
    return self.sample_with(state.eval_params, key, num)

  def visualize(self, state: TrainState, batch, key: jax.Array):
    """Rows: 8 data images noised at 6 levels, then their one-step denoised estimates."""
    if not self._images:
      return {}
    params = state.eval_params
    x0 = self._data(batch)[:8]
    labels = batch['label'][:8].astype(jnp.int32) if self._num_classes else None
    lo, hi = self.sigma_range(params)
    levels = jnp.exp(jnp.linspace(jnp.log(jnp.maximum(lo, 0.02)), jnp.log(jnp.minimum(hi, 20.)),
                                  6))
    eps = jax.random.normal(key, x0.shape)
    noisy = jnp.stack([x0 + s * eps for s in levels], 1)                       # [8, 6, ...]
    den = jnp.stack([self.denoiser(params, labels)(x0 + s * eps, s) for s in levels], 1)
    grid = jnp.concatenate([noisy / jnp.sqrt(1 + levels[None, :, None, None, None] ** 2),
                            den], 1)
    return {'denoising': jnp.clip((grid.reshape((-1,) + x0.shape[1:]) + 1) / 2, 0, 1)}
