"""Encoders and decoders (flax.linen) for NHWC images in [0, 1].

Encoders map x -> (mean, log_var) of a diagonal Gaussian q(z|x). Decoders map z -> (loc,
log_scale): `loc` is per-pixel logits for a Bernoulli likelihood or the pre-sigmoid mean for a
Gaussian one; `log_scale` is a learned per-pixel log standard deviation (Gaussian only, else
None). Both decoders end in a free per-pixel bias `pixel_bias` of shape [H, W, C]; besides being
the usual output bias it records the image shape in the params, so sampling (which sees no
batch) can rebuild the model: `image_shape(params)`.

Precision: every network takes `dtype`, the compute dtype (a run's `config.precision.compute`,
research/precision.py). Parameters stay float32; inputs (x, z) are cast to `dtype` at the first
layer; the outputs that enter the ELBO -- (mean, log_var) and (loc, log_scale) -- are float32:
their layers accumulate in float32 (`precision.f32_output`) and the pixel bias and log-scale are
added in float32.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from research import precision

ACTIVATIONS: dict[str, Callable] = {
    'relu': nn.relu, 'tanh': jnp.tanh, 'elu': nn.elu, 'gelu': nn.gelu, 'silu': nn.silu,
    'softplus': nn.softplus, 'leaky_relu': nn.leaky_relu,
}
LIKELIHOODS = ('bernoulli', 'gaussian')


class _GaussianHead(nn.Module):
  """Features -> (mean, log_var) of q(z|x), float32."""
  latent_dim: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, h):
    out = lambda name: nn.Dense(self.latent_dim, name=name, **precision.f32_output(self.dtype))(
        h).astype(jnp.float32)
    return out('mean'), out('log_var')


class _PixelOutput(nn.Module):
  """Adds the per-pixel bias and, for a Gaussian likelihood, the per-pixel log-scale."""
  image_shape: tuple[int, int, int]
  likelihood: str

  @nn.compact
  def __call__(self, h):
    h = h.astype(jnp.float32)
    loc = h + self.param('pixel_bias', nn.initializers.zeros, self.image_shape)
    if self.likelihood == 'gaussian':
      return loc, self.param('log_scale', nn.initializers.zeros, self.image_shape)
    return loc, None


class MLPEncoder(nn.Module):
  hidden: Sequence[int]
  latent_dim: int
  activation: Callable = jnp.tanh
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = x.reshape(x.shape[0], -1).astype(self.dtype)
    for width in self.hidden:
      h = self.activation(nn.Dense(width, dtype=self.dtype)(h))
    return _GaussianHead(self.latent_dim, self.dtype)(h)


class MLPDecoder(nn.Module):
  hidden: Sequence[int]          # listed encoder-side; the decoder mirrors them
  image_shape: tuple[int, int, int]
  likelihood: str = 'bernoulli'
  activation: Callable = jnp.tanh
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, z):
    h = z.astype(self.dtype)
    for width in reversed(self.hidden):
      h = self.activation(nn.Dense(width, dtype=self.dtype)(h))
    h = nn.Dense(math.prod(self.image_shape), use_bias=False,
                 **precision.f32_output(self.dtype))(h)
    h = h.reshape((-1,) + self.image_shape)
    return _PixelOutput(self.image_shape, self.likelihood, name='output')(h)


class ConvEncoder(nn.Module):
  """Stride-2 convs (each halves H and W), then dense layers, then the Gaussian head."""
  channels: Sequence[int]
  hidden: Sequence[int]
  latent_dim: int
  activation: Callable = nn.relu
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = x.astype(self.dtype)
    for c in self.channels:
      h = self.activation(nn.Conv(c, (4, 4), strides=(2, 2), padding='SAME', dtype=self.dtype)(h))
    h = h.reshape(h.shape[0], -1)
    for width in self.hidden:
      h = self.activation(nn.Dense(width, dtype=self.dtype)(h))
    return _GaussianHead(self.latent_dim, self.dtype)(h)


def _upsample(h):
  """Depth-to-space (pixel shuffle): [B, H, W, 4C] -> [B, 2H, 2W, C]. A conv to 4C channels
  followed by this is a stride-2 transposed conv (sub-pixel convolution, Shi et al. 2016), and is about 5x faster
  than `nn.ConvTranspose` under XLA on CPU (measured here: 0.23 s vs 1.27 s, batch 128 at 14x14)."""
  b, height, width, c = h.shape
  h = h.reshape(b, height, width, 2, 2, c // 4)
  return h.transpose(0, 1, 3, 2, 4, 5).reshape(b, 2 * height, 2 * width, c // 4)


class ConvDecoder(nn.Module):
  """Mirror of ConvEncoder: dense layers, reshape to [H/2^n, W/2^n, channels[-1]], n stride-2
  upsampling convs, and a 3x3 conv to the image channels."""
  channels: Sequence[int]
  hidden: Sequence[int]
  image_shape: tuple[int, int, int]
  likelihood: str = 'bernoulli'
  activation: Callable = nn.relu
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, z):
    height, width, out_channels = self.image_shape
    f = 2 ** len(self.channels)
    if height % f or width % f:
      raise ValueError(f'conv decoder: image {height}x{width} must divide by 2^{len(self.channels)}'
                       f'={f} (one halving per model.conv_channels entry); use fewer channels')
    dt = self.dtype
    h = z.astype(dt)
    for w in reversed(self.hidden):
      h = self.activation(nn.Dense(w, dtype=dt)(h))
    h0 = (height // f, width // f, self.channels[-1])
    h = self.activation(nn.Dense(h0[0] * h0[1] * h0[2], dtype=dt)(h)).reshape((-1,) + h0)
    for c in reversed(self.channels):
      h = self.activation(_upsample(nn.Conv(4 * c, (3, 3), padding='SAME', dtype=dt)(h)))
    h = nn.Conv(out_channels, (3, 3), padding='SAME', use_bias=False,
                **precision.f32_output(dt, conv=True))(h)
    return _PixelOutput(self.image_shape, self.likelihood, name='output')(h)


class VAEModel(nn.Module):
  """Encoder + decoder. Use `apply(..., method='encode' | 'decode')`; `__call__` runs both (for
  init)."""
  encoder: nn.Module
  decoder: nn.Module

  def encode(self, x):
    return self.encoder(x)

  def decode(self, z):
    return self.decoder(z)

  def __call__(self, x):
    mean, _ = self.encode(x)
    return self.decode(mean)


def parse_ints(text: str) -> tuple[int, ...]:
  return tuple(int(t) for t in text.split(',') if t.strip())


def make_model(model_cfg, image_shape: Sequence[int], dtype=jnp.float32) -> VAEModel:
  """The VAE for `config.model` and images of shape [H, W, C], computing in `dtype`."""
  image_shape = tuple(int(s) for s in image_shape)
  act = ACTIVATIONS[model_cfg.activation]
  hidden = parse_ints(model_cfg.hidden)
  if model_cfg.arch == 'mlp':
    enc = MLPEncoder(hidden, model_cfg.latent_dim, act, dtype, name='encoder')
    dec = MLPDecoder(hidden, image_shape, model_cfg.likelihood, act, dtype, name='decoder')
  else:
    channels = parse_ints(model_cfg.conv_channels)
    enc = ConvEncoder(channels, hidden, model_cfg.latent_dim, act, dtype, name='encoder')
    dec = ConvDecoder(channels, hidden, image_shape, model_cfg.likelihood, act, dtype,
                      name='decoder')
  return VAEModel(enc, dec)


def image_shape(params) -> tuple[int, int, int]:
  """[H, W, C] of the images a VAE's params were built for (from the decoder's pixel bias)."""
  return tuple(params['decoder']['output']['pixel_bias'].shape)
