"""Generators and discriminators (flax.linen) for GANs on 2-D toy data and NHWC images.

- `MLPGenerator` / `MaxoutDiscriminator`: the 2-D mixture networks of PacGAN (Lin et al. 2018,
  arXiv:1712.04086, appendix): G has 4 ReLU layers of 400 units with batch norm, D 3 maxout
  layers (Goodfellow et al. 2013) of 200 units and 5 pieces.
- `DCGANGenerator` / `DCGANDiscriminator`: small DCGAN (Radford et al. 2016, arXiv:1511.06434)
  networks for images in [-1, 1].

Kernels are initialised N(0, 0.02) and biases zero, as in DCGAN and PacGAN.

Discriminators return logits [B] and take any input width or channel count, since PacGAN packing
concatenates m examples along the last axis. They have no batch norm, which would couple the
examples and break WGAN-GP's per-example gradient penalty. Options, all off by default:
- `spectral_norm`: every layer, logit and label embedding included, wrapped in `nn.SpectralNorm`
  (Miyato et al. 2018, arXiv:1802.05957; see `_SpectralNorm`). Its power-iteration state lives in
  'batch_stats': apply with `update_stats=True, mutable=['batch_stats']` in D's training step,
  `update_stats=False` elsewhere (penalties, G's step, eval). A conv is normalised as its
  [kh*kw*Cin, Cout] kernel matrix, as in the paper; the conv operator's own norm can exceed 1 by
  a factor of at most sqrt(kh*kw).
- `dropout` after each hidden activation (needs rng 'dropout' when `train` and dropout > 0).
- `num_classes > 0`: a projection discriminator (Miyato & Koyama 2018, arXiv:1802.05637),
  logit(x, y) = w.phi(x) + b + <embed(y), phi(x)>.
Class-conditional generators concatenate a learned label embedding (as wide as z) to z.
Conditional networks require `labels`, integers in [0, num_classes); unconditional ones ignore
them.

Precision: every network takes `dtype`, the compute dtype (a run's `config.precision.compute`,
research/precision.py). Parameters (spectral norm's vectors and batch norm's statistics included)
stay float32; inputs are cast to `dtype` at the first layer; batch norm computes its statistics
in float32 and returns `dtype`; spectral norm's power iteration runs on the float32 weights. The
outputs are float32: a generator's samples (its last layer accumulates in float32, tanh in
float32) and a discriminator's logits (float32 accumulation; the projection term in float32).
"""
from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research import precision

_kernel_init = nn.initializers.normal(0.02)
_BN_MOMENTUM = 0.95


def _require_labels(labels, num_classes: int, what: str):
  if num_classes > 0 and labels is None:
    raise ValueError(f'{what}: num_classes={num_classes} needs labels')


def _batch_norm(train: bool, axis_name: str | None, name: str,
                dtype=jnp.float32) -> nn.BatchNorm:
  # Statistics in float32 whatever `dtype` (flax's force_float32_reductions), output in `dtype`.
  return nn.BatchNorm(use_running_average=not train, momentum=_BN_MOMENTUM, axis_name=axis_name,
                      dtype=dtype, name=name)


class _SpectralNorm(nn.SpectralNorm):
  """nn.SpectralNorm that leaves the wrapped layer's params as initialised.

  flax's version writes the normalised W / sigma back into 'params' at init, so SN layers would
  start at spectral norm ~1 rather than N(0, 0.02). The function is the same (SN is
  scale-invariant) but Adam's steps relative to the weights are not, and SN-GAN's reference
  implementations keep the raw initialisation. So create the params with a plain call at init,
  then map them without write-back; apply behaves exactly as flax's.
  """

  @nn.compact
  def __call__(self, *args, update_stats: bool, **kwargs):
    if self.is_initializing():
      self.layer_instance(*args, **kwargs)
    normalize = lambda vs: jax.tree_util.tree_map_with_path(
        functools.partial(self._spectral_normalize, update_stats=update_stats), vs)
    return nn.map_variables(lambda layer: layer(*args, **kwargs), trans_in_fn=normalize,
                            init=False, mutable=False)(self.layer_instance)


def _layer(layer: nn.Module, x, spectral_norm: bool, update_stats: bool):
  """Applies a discriminator layer, spectrally normalised when `spectral_norm` is set. The layer
  keeps its params path either way; its power-iteration state is 'batch_stats'/<name>_sn."""
  if spectral_norm:
    return _SpectralNorm(layer, name=f'{layer.name}_sn')(x, update_stats=update_stats)
  return layer(x)


def _projection_logit(h, labels, num_classes: int, spectral_norm: bool, update_stats: bool,
                      dtype=jnp.float32):
  """Features [B, F] -> float32 logits [B]: a linear logit (float32 accumulation) plus, with
  classes, <embed(y), features> in float32."""
  logit = nn.Dense(1, kernel_init=_kernel_init, name='logit', **precision.f32_output(dtype))
  out = _layer(logit, h, spectral_norm, update_stats)[:, 0].astype(jnp.float32)
  if num_classes > 0:
    # nn.SpectralNorm normalises the [num_classes, F] table like any matrix (the SN embedding of
    # Miyato & Koyama's code).
    embed = nn.Embed(num_classes, h.shape[-1], embedding_init=_kernel_init, name='label_embed')
    out = out + jnp.sum(_layer(embed, labels, spectral_norm, update_stats)
                        * h.astype(jnp.float32), axis=-1)
  return out


# For output phase a (row 2i + a), which 4x4 tap t (axis 1) each 3x3 offset d (input row
# i - 1 + d, axis 0) uses: phase 0 reads x[i-1] k[0] + x[i] k[2], phase 1 x[i] k[1] + x[i+1] k[3].
_PHASE_TAPS = np.zeros((2, 3, 4), np.float32)
_PHASE_TAPS[0, 0, 0] = _PHASE_TAPS[0, 1, 2] = _PHASE_TAPS[1, 1, 1] = _PHASE_TAPS[1, 2, 3] = 1.


class ConvTranspose4x4(nn.Module):
  """nn.ConvTranspose(features, (4, 4), strides=(2, 2), padding='SAME'), same params and outputs,
  computed as a sub-pixel convolution (Shi et al. 2016): the 4x4 kernel scattered into a 3x3 conv
  to 4 * features channels (one group per output phase), then depth-to-space. About 3x faster
  under XLA on CPU (fwd+bwd, batch 64, 7x7x128 -> 14x14x64: 140 ms vs 470 ms).

  Computes in `dtype` (float32 params, kernel scattered in float32 then cast); `f32_output`
  accumulates in float32 and returns float32 (a network's last layer)."""
  features: int
  use_bias: bool = True
  dtype: jnp.dtype = jnp.float32
  f32_output: bool = False

  @nn.compact
  def __call__(self, x):
    cin, dt = x.shape[-1], self.dtype
    kernel = self.param('kernel', _kernel_init, (4, 4, cin, self.features))
    k3 = jnp.einsum('ayt,bxs,tsio->yxiabo', _PHASE_TAPS, _PHASE_TAPS, kernel)
    wide = self.f32_output and jnp.dtype(dt) != jnp.float32
    k3 = k3.reshape(3, 3, cin, 4 * self.features).astype(dt)
    h = jax.lax.conv_general_dilated(x.astype(dt), k3, (1, 1), 'SAME',
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                     preferred_element_type=jnp.float32 if wide else None)
    b, height, width, _ = h.shape
    h = h.reshape(b, height, width, 2, 2, self.features).transpose(0, 1, 3, 2, 4, 5)
    h = h.reshape(b, 2 * height, 2 * width, self.features)
    if self.use_bias:
      bias = self.param('bias', nn.initializers.zeros, (self.features,))
      h = h + (bias if wide else bias.astype(h.dtype))
    return h


class MLPGenerator(nn.Module):
  """PacGAN 2-D generator: 4 hidden layers of 400 units, Dense(no bias) -> BatchNorm -> ReLU,
  linear output. Train mode uses (and updates) batch statistics: mutable=['batch_stats']."""
  hidden: Sequence[int] = (400, 400, 400, 400)
  out_dim: int = 2
  batch_norm: bool = True
  axis_name: str | None = None   # BatchNorm statistics are averaged over this mapped axis
  dtype: jnp.dtype = jnp.float32  # compute dtype (params and output float32)

  @nn.compact
  def __call__(self, z, train: bool = True) -> jax.Array:
    h = z.astype(self.dtype)
    for i, width in enumerate(self.hidden):
      # BatchNorm's shift makes a bias redundant.
      h = nn.Dense(width, use_bias=not self.batch_norm, kernel_init=_kernel_init,
                   dtype=self.dtype, name=f'dense_{i}')(h)
      if self.batch_norm:
        h = _batch_norm(train, self.axis_name, f'bn_{i}', self.dtype)(h)
      h = nn.relu(h)
    out = nn.Dense(self.out_dim, kernel_init=_kernel_init, name='out',
                   **precision.f32_output(self.dtype))(h)
    return out.astype(jnp.float32)


class MaxoutDiscriminator(nn.Module):
  """PacGAN 2-D discriminator: 3 maxout layers (200 units, 5 pieces) and a linear logit.
  Inputs [B, ...] are flattened to [B, D]."""
  hidden: Sequence[int] = (200, 200, 200)
  pieces: int = 5
  spectral_norm: bool = False
  dropout: float = 0.0
  num_classes: int = 0   # > 0: projection discriminator (Miyato & Koyama 2018)
  dtype: jnp.dtype = jnp.float32  # compute dtype (params and logits float32)

  @nn.compact
  def __call__(self, x, labels=None, *, train: bool = True,
               update_stats: bool = False) -> jax.Array:
    _require_labels(labels, self.num_classes, 'MaxoutDiscriminator')
    h = x.reshape(x.shape[0], -1).astype(self.dtype)
    for i, units in enumerate(self.hidden):
      dense = nn.Dense(units * self.pieces, kernel_init=_kernel_init, dtype=self.dtype,
                       name=f'maxout_{i}')
      h = _layer(dense, h, self.spectral_norm, update_stats)
      # Piece-major columns ([B, pieces, units]): the max reads contiguous slices. On XLA:CPU
      # this D's forward and backward ran 1.5x faster than with [B, units, pieces].
      h = jnp.max(h.reshape(h.shape[0], self.pieces, units), axis=1)
      if self.dropout > 0:
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
    return _projection_logit(h, labels, self.num_classes, self.spectral_norm, update_stats,
                             self.dtype)


class DCGANGenerator(nn.Module):
  """DCGAN generator for H x W x C images, H and W divisible by 4: Dense -> (H/4, W/4,
  2*channels) -> BN ReLU -> ConvTranspose stride 2 (channels) -> BN ReLU -> ConvTranspose stride 2
  -> C, tanh; 4x4 kernels (`ConvTranspose4x4`). Train mode uses (and updates) batch statistics:
  mutable=['batch_stats']."""
  out_shape: tuple[int, int, int]
  channels: int = 64
  num_classes: int = 0    # > 0: class-conditional (a learned label embedding concatenated to z)
  axis_name: str | None = None
  dtype: jnp.dtype = jnp.float32  # compute dtype (params and samples float32)

  @nn.compact
  def __call__(self, z, labels=None, train: bool = True) -> jax.Array:
    height, width, out_channels = self.out_shape
    if height % 4 or width % 4:
      raise ValueError(f'DCGANGenerator: image {height}x{width} must divide by 4 (two stride-2 '
                       'upsamplings)')
    _require_labels(labels, self.num_classes, 'DCGANGenerator')
    dt = self.dtype
    h = z.reshape(z.shape[0], -1).astype(dt)
    if self.num_classes > 0:
      e = nn.Embed(self.num_classes, h.shape[-1], embedding_init=_kernel_init, dtype=dt,
                   name='label_embed')(labels)
      h = jnp.concatenate([h, e], axis=-1)
    shape0 = (height // 4, width // 4, 2 * self.channels)
    h = nn.Dense(shape0[0] * shape0[1] * shape0[2], use_bias=False, kernel_init=_kernel_init,
                 dtype=dt, name='project')(h).reshape((-1,) + shape0)
    h = nn.relu(_batch_norm(train, self.axis_name, 'bn_0', dt)(h))
    h = ConvTranspose4x4(self.channels, use_bias=False, dtype=dt, name='up_0')(h)
    h = nn.relu(_batch_norm(train, self.axis_name, 'bn_1', dt)(h))
    h = ConvTranspose4x4(out_channels, dtype=dt, f32_output=True, name='up_1')(h)
    return jnp.tanh(h.astype(jnp.float32))


class DCGANDiscriminator(nn.Module):
  """Conv stride-2 stack with leaky ReLU 0.2 (channels, 2*channels), then a linear logit on the
  flattened features."""
  channels: int = 64
  spectral_norm: bool = False
  dropout: float = 0.0
  num_classes: int = 0    # > 0: projection discriminator: logit += <embed(y), features>
  dtype: jnp.dtype = jnp.float32  # compute dtype (params and logits float32)

  @nn.compact
  def __call__(self, x, labels=None, *, train: bool = True,
               update_stats: bool = False) -> jax.Array:
    _require_labels(labels, self.num_classes, 'DCGANDiscriminator')
    h = x.astype(self.dtype)
    for i, c in enumerate((self.channels, 2 * self.channels)):
      conv = nn.Conv(c, (4, 4), strides=(2, 2), padding='SAME', kernel_init=_kernel_init,
                     dtype=self.dtype, name=f'conv_{i}')
      h = nn.leaky_relu(_layer(conv, h, self.spectral_norm, update_stats), 0.2)
      if self.dropout > 0:
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = h.reshape(h.shape[0], -1)
    return _projection_logit(h, labels, self.num_classes, self.spectral_norm, update_stats,
                             self.dtype)


def count_params(tree) -> int:
  """Number of scalars in a pytree of arrays (e.g. variables['params'])."""
  return sum(int(x.size) for x in jax.tree_util.tree_leaves(tree))
