"""Denoiser networks (flax.linen) for diffusion models: a small DDPM U-Net and a toy MLP.

`UNet` follows Ho et al. 2020 (DDPM, arXiv:2006.11239, appendix B) at small scale, with the
Nichol & Dhariwal 2021 (arXiv:2102.09672) multi-head attention and label embedding: a sinusoidal
embedding of the noise level -> MLP, added into every residual block; self-attention at chosen
resolutions and in the middle; stride-2 conv down, nearest + conv up; skips concatenated on the way
up; zero-initialised residual-branch outputs, attention projections and final conv.

Both networks take `c_noise` (a float per example; the diffusion family passes ln(sigma)/4, as in
EDM, Karras et al. 2022) scaled by `embed_scale` before the sinusoidal embedding, and optional
integer `labels`, where label `num_classes` is the null class used for classifier-free guidance
(Ho & Salimans 2022).

Precision: both networks take `dtype`, the compute dtype (a run's `config.precision.compute`,
research/precision.py). Parameters are float32 whatever it is; the layers cast them and the input
to `dtype`, so convs, dense layers and attention run in it. GroupNorm statistics, attention
softmax and the noise embedding's sinusoids are float32, and the output is float32: the U-Net's
last conv runs in float32, the MLP's last dense layer accumulates in float32.

CPU speed: `conv_impl` picks how a 3x3 conv and its gradients are computed. 'auto' is plain
lax.conv ('xla') on every backend: with jaxlib 0.10.2's CPU convolutions (YNNPACK) it is the
fastest form here too. 'hybrid' (lax.conv forward and input gradient, kernel gradient as 9
matmuls, one per tap, in a custom VJP) timed 1.9x faster on this CPU in an earlier session and
slower since (the `UNet` docstring has both); it stays selectable. 'im2col' is one matmul over 9
shifted copies. All share nn.Conv's [3, 3, Cin, Cout]
kernels, so checkpoints are interchangeable. 'hybrid' supports reverse-mode autodiff only
(jax.grad / jax.vjp); for forward mode (jax.jvp, jacfwd) pick 'xla' or 'im2col'. Timings are in
the `UNet` docstring.
"""
from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from research import precision

CONV_IMPLS = ('auto', 'xla', 'im2col', 'hybrid')

# DDPM's default_init: variance_scaling(1, 'fan_avg', 'uniform') for every conv and dense layer.
_default_init = nn.initializers.variance_scaling(1., 'fan_avg', 'uniform')
_zeros = nn.initializers.zeros


def sinusoidal_embedding(t, dim: int, max_period: float = 10000.):
  """Transformer-style embedding of a scalar per example (Vaswani et al. 2017, used for the
  timestep in DDPM): [B] -> [B, dim], as [cos(t f_k), sin(t f_k)] with f_k = max_period^(-k/half),
  k < half = dim // 2 (an odd dim gets a zero last column)."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None]
  emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


def _label_embedding(labels, batch: int, num_classes: int, features: int, dtype=jnp.float32):
  """[B] labels -> [B, features]; None means the null class (row num_classes, for CFG)."""
  if labels is None:
    labels = jnp.full((batch,), num_classes, jnp.int32)
  return nn.Embed(num_classes + 1, features, dtype=dtype, name='label_embed')(labels)


class GroupNorm(nn.Module):
  """Group normalisation (Wu & He 2018) over [B, ..., C] in float32, with nn.GroupNorm's params.

  Folded into a per-(example, channel) affine map x * a + b from one pass of statistics (E[x],
  E[x^2]), so XLA fuses it (and the SiLU after it) into one elementwise pass and autodiff keeps
  only x: 25% less temp memory than normalising the grouped tensor (697 -> 524 MB for the U-Net
  fwd+bwd at batch 64, 28x28), and a little faster on CPU. The result has x's dtype (bf16 in,
  float32 statistics and affine map, bf16 out).
  """
  num_groups: int = 8
  epsilon: float = 1e-6

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    if c % self.num_groups:
      raise ValueError(f'GroupNorm: {c} channels do not divide into {self.num_groups} groups')
    size = c // self.num_groups
    in_dtype = x.dtype
    x = x.astype(jnp.float32)
    g = x.reshape(x.shape[:-1] + (self.num_groups, size))
    axes = tuple(range(1, x.ndim - 1)) + (x.ndim,)
    mean = jnp.mean(g, axes)                                                   # [B, groups]
    var = jnp.maximum(jnp.mean(jnp.square(g), axes) - jnp.square(mean), 0.)
    scale = self.param('scale', nn.initializers.ones, (c,), jnp.float32)
    bias = self.param('bias', _zeros, (c,), jnp.float32)
    a = jnp.repeat(jax.lax.rsqrt(var + self.epsilon), size, axis=-1) * scale  # [B, C]
    b = bias - jnp.repeat(mean, size, axis=-1) * a
    shape = x.shape[:1] + (1,) * (x.ndim - 2) + (c,)
    return (x * a.reshape(shape) + b.reshape(shape)).astype(in_dtype)


_DIMS = ('NHWC', 'HWIO', 'NHWC')


def _conv_xla(x, kernel, stride: int, pads):
  return jax.lax.conv_general_dilated(x, kernel, (stride, stride), pads, dimension_numbers=_DIMS)


def _tap_slice(xp, i: int, j: int, out_hw: tuple[int, int], stride: int):
  """Kernel tap (i, j) of the padded input: the [B, Ho, Wo, C] slice it multiplies."""
  (ho, wo), s = out_hw, stride
  return xp[:, i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s, :]


def _pad_for_taps(x, stride: int, pads):
  out_hw = tuple(-(-n // stride) for n in x.shape[1:3])
  return jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0))), out_hw


def _conv_im2col(x, kernel, stride: int, pads):
  xp, out_hw = _pad_for_taps(x, stride, pads)
  cols = jnp.concatenate([_tap_slice(xp, i, j, out_hw, stride)
                          for i in range(3) for j in range(3)], axis=-1)
  return jnp.dot(cols, kernel.reshape(-1, kernel.shape[-1]))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_hybrid(x, kernel, stride: int, pads):
  return _conv_xla(x, kernel, stride, pads)


def _conv_hybrid_fwd(x, kernel, stride, pads):
  return _conv_xla(x, kernel, stride, pads), (x, kernel)


def _conv_hybrid_bwd(stride, pads, res, g):
  x, kernel = res
  dx = jax.vjp(lambda x: _conv_xla(x, kernel, stride, pads), x)[1](g)[0]
  # The kernel gradient as 9 [Cin, N] x [N, Cout] matmuls (N = B*Ho*Wo), one per tap: XLA's CPU
  # kernel-gradient convolution is the slow part of a conv's backward pass. A scan, since XLA
  # would otherwise make all 9 slices first: 9 copies of x live at once, over 2x the U-Net's temp
  # memory (and more page faults on CPU).
  xp, (ho, wo) = _pad_for_taps(x, stride, pads)
  g2 = g.reshape(-1, g.shape[-1])
  s, cin = stride, x.shape[-1]

  def tap(_, ij):
    xs = jax.lax.dynamic_slice(xp, (0, ij[0], ij[1], 0),
                               (xp.shape[0], s * (ho - 1) + 1, s * (wo - 1) + 1, cin))
    xs = xs[:, ::s, ::s].reshape(-1, cin)
    # Summed over N = B*Ho*Wo: accumulated in float32 even for bf16 operands.
    return None, jax.lax.dot_general(xs, g2, (((0,), (0,)), ((), ())),
                                     preferred_element_type=jnp.float32)

  taps = jnp.array([(i, j) for i in range(3) for j in range(3)], jnp.int32)
  dk = jax.lax.scan(tap, None, taps)[1].reshape(kernel.shape)
  return dx, dk.astype(kernel.dtype)


_conv_hybrid.defvjp(_conv_hybrid_fwd, _conv_hybrid_bwd)
_CONVS = {'xla': _conv_xla, 'im2col': _conv_im2col, 'hybrid': _conv_hybrid}


def resolve_conv_impl(impl: str) -> str:
  """'auto' -> 'xla' (the fastest on CPU too, module docstring); others are checked and
  returned."""
  if impl == 'auto':
    return 'xla'
  if impl not in _CONVS:
    raise ValueError(f'conv_impl must be one of {CONV_IMPLS}, got {impl!r}')
  return impl


class Conv3x3(nn.Module):
  """3x3 'SAME' convolution, stride 1 or 2, with nn.Conv's parameters (kernel [3, 3, Cin, Cout],
  bias [Cout]) whatever the implementation, so checkpoints are interchangeable:

  - 'xla': lax.conv and its autodiff (use on GPU/TPU);
  - 'im2col': the 9 shifted slices concatenated along channels, then one [9 Cin, Cout] matmul;
  - 'hybrid': lax.conv forward and input gradient, kernel gradient as 9 matmuls (custom VJP);
  - 'auto': 'xla'.

  Computes in `dtype`: the float32 kernel and bias and the input are cast to it.
  """
  features: int
  stride: int = 1
  impl: str = 'auto'
  kernel_init: nn.initializers.Initializer = _default_init
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel = self.param('kernel', self.kernel_init, (3, 3, x.shape[-1], self.features),
                        jnp.float32)
    bias = self.param('bias', _zeros, (self.features,), jnp.float32)
    x, kernel, bias = (a.astype(self.dtype) for a in (x, kernel, bias))
    # lax.conv's 'SAME' padding (for stride 2 on even sizes: 0 before, 1 after).
    pads = tuple(jax.lax.padtype_to_pads(x.shape[1:3], (3, 3), (self.stride,) * 2, 'SAME'))
    conv = _CONVS[resolve_conv_impl(self.impl)]
    return conv(x, kernel, self.stride, pads) + bias


class ResBlock(nn.Module):
  """DDPM residual block: GN -> SiLU -> conv -> + Dense(SiLU(emb)) -> GN -> SiLU -> dropout ->
  conv (zero-init), plus a 1x1 (dense) skip when the channel count changes."""
  features: int
  dropout: float
  norm_groups: int
  conv_impl: str
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, emb, train: bool):
    dt = self.dtype
    h = nn.silu(GroupNorm(self.norm_groups, name='norm1')(x))
    h = Conv3x3(self.features, impl=self.conv_impl, dtype=dt, name='conv1')(h)
    h = h + nn.Dense(self.features, kernel_init=_default_init, dtype=dt, name='emb_proj')(
        nn.silu(emb))[:, None, None, :]
    h = nn.silu(GroupNorm(self.norm_groups, name='norm2')(h))
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = Conv3x3(self.features, impl=self.conv_impl, kernel_init=_zeros, dtype=dt,
                name='conv2')(h)
    if x.shape[-1] != self.features:
      x = nn.Dense(self.features, kernel_init=_default_init, dtype=dt, name='skip')(x)
    return x + h


class AttnBlock(nn.Module):
  """Self-attention over the H*W positions: GN -> q, k, v (1x1) -> multi-head softmax attention
  -> 1x1 projection (zero-init) -> + input."""
  num_heads: int
  norm_groups: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, height, width, c = x.shape
    d, dt = c // self.num_heads, self.dtype
    h = GroupNorm(self.norm_groups, name='norm')(x).reshape(b, height * width, c)
    qkv = nn.Dense(3 * c, kernel_init=_default_init, dtype=dt, name='qkv')(h)
    qkv = qkv.reshape(b, height * width, 3, self.num_heads, d)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]          # [B, N, heads, d]
    # Scores accumulated and softmaxed in float32, as in the LM.
    logits = jnp.einsum('bqhd,bkhd->bhqk', q, k,
                        preferred_element_type=jnp.float32) / math.sqrt(d)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    h = jnp.einsum('bhqk,bkhd->bqhd', probs, v).reshape(b, -1, c)
    h = nn.Dense(c, kernel_init=_zeros, dtype=dt, name='proj')(h)
    return x + h.reshape(x.shape)


def _upsample_nearest(x):
  b, h, w, c = x.shape
  return jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c)).reshape(b, 2 * h, 2 * w, c)


class UNet(nn.Module):
  """DDPM U-Net (Ho et al. 2020) for [B, H, W, C] images; see the module docstring.

  `channels * channel_mults[i]` channels at level i, each level (but the last) halving H and W, so
  H and W must divide by 2**(len(channel_mults) - 1) (28 -> 14 -> 7 for Fashion-MNIST with the
  default (1, 2, 2)). Self-attention runs where the feature map's spatial size is in
  `attn_resolutions`, and in the middle.

  CPU timings (2-core AMD EPYC, shared so noisy; jax 0.10.2): one jitted fwd+bwd step at batch 64,
  channels=32, mults (1, 2, 2), attention at 7, dropout on; wall-clock median of 7, variants
  interleaved in one process. `conv_impl` 'hybrid' / 'xla' / 'im2col' (temp memory of the step):
    28x28x1, 1 res block:  1.89 / 3.65 / 2.02 s  (524 / 507 / 1457 MB)
    32x32x1, 1 res block:  2.40 / 4.96 / 2.56 s  (669 / 639 / 1880 MB)
    28x28x1, 2 res blocks: 4.45 / 7.12 / 8.06 s  (789 / 752 / 2119 MB; machine busier)
    32x32x1, 2 res blocks: 5.45 / 9.84 / 8.67 s  (975 / 943 / 2729 MB; machine busier)
  'im2col' materialises 9x-wide inputs and keeps them for the backward pass; fresh temp memory
  costs page faults on every step (XLA CPU maps its temp buffer anew per call), which is why it
  loses at 2 res blocks. Parameters (32x32x1): 1,062,497 (1 res block), 1,539,329 (2).
  Re-timed 2026-12-03 (28x28x1, 1 res block, attention at 14, no dropout, one core while
  another job ran on the second): 'hybrid' and 'xla' were within noise of each other (batch 32:
  0.84-0.90 / 0.72-0.78 s; batch 64: 1.80-2.11 / 1.70-1.96 s), so the gap above may have closed.
  2026-12-07, idle machine, benchmarks/diffusion_step.py (the harness's train step, batch 32, 5
  rounds of 3 steps; results/speed/2026-12-07/diff_*): 'hybrid' / 'xla' 610 / 539 ms on one
  device, 439 / 374 ms data-parallel over two; the gap has reversed, so 'auto' is now 'xla'.
  """
  channels: int = 32
  channel_mults: tuple[int, ...] = (1, 2, 2)
  num_res_blocks: int = 2
  attn_resolutions: tuple[int, ...] = (7,)
  dropout: float = 0.1
  num_classes: int = 0          # 0: unconditional; else labels in [0, num_classes], the last null
  norm_groups: int = 8
  num_heads: int = 1
  out_channels: int | None = None
  embed_scale: float = 1000.
  conv_impl: str = 'auto'       # see Conv3x3; 'auto' = 'xla'
  dtype: jnp.dtype = jnp.float32  # compute dtype (params float32; output float32)

  def _check(self, x):
    if x.ndim != 4:
      raise ValueError(f'UNet expects images [B, H, W, C], got shape {x.shape}')
    if self.conv_impl not in CONV_IMPLS:
      raise ValueError(f'UNet: conv_impl must be one of {CONV_IMPLS}, got {self.conv_impl!r}')
    f = 2 ** (len(self.channel_mults) - 1)
    height, width = x.shape[1:3]
    if height % f or width % f:
      raise ValueError(f'UNet: image {height}x{width} must divide by 2^(len(channel_mults) - 1)={f}'
                       f' (channel_mults={self.channel_mults}); pad the data or use fewer levels')
    for m in self.channel_mults:
      c = self.channels * m
      if c % self.norm_groups:
        raise ValueError(f'UNet: {c} channels (channels={self.channels} x mult {m}) do not divide '
                         f'into norm_groups={self.norm_groups}')
      if c % self.num_heads:
        raise ValueError(f'UNet: {c} channels do not divide into num_heads={self.num_heads}')

  @nn.compact
  def __call__(self, x, c_noise, labels=None, *, train: bool):
    self._check(x)
    if labels is not None and not self.num_classes:
      raise ValueError('UNet: labels given to an unconditional model (num_classes=0)')
    dt = self.dtype
    x = x.astype(dt)
    conv = lambda features, **kw: Conv3x3(features, impl=self.conv_impl, **{'dtype': dt, **kw})
    res = lambda features, name: ResBlock(features, self.dropout, self.norm_groups, self.conv_impl,
                                          dt, name=name)
    attn = lambda name: AttnBlock(self.num_heads, self.norm_groups, dt, name=name)

    emb_dim = 4 * self.channels
    emb = sinusoidal_embedding(self.embed_scale * c_noise, self.channels)   # float32
    emb = nn.Dense(emb_dim, kernel_init=_default_init, dtype=dt, name='embed_mlp_0')(emb)
    emb = nn.Dense(emb_dim, kernel_init=_default_init, dtype=dt, name='embed_mlp_1')(
        nn.silu(emb))
    if self.num_classes:
      emb = emb + _label_embedding(labels, x.shape[0], self.num_classes, emb_dim, dt)

    h = conv(self.channels, name='conv_in')(x)
    skips = [h]
    for level, mult in enumerate(self.channel_mults):
      for i in range(self.num_res_blocks):
        h = res(self.channels * mult, f'down{level}_res{i}')(h, emb, train)
        if h.shape[1] in self.attn_resolutions:
          h = attn(f'down{level}_attn{i}')(h)
        skips.append(h)
      if level != len(self.channel_mults) - 1:
        h = conv(h.shape[-1], stride=2, name=f'down{level}_downsample')(h)
        skips.append(h)

    h = res(h.shape[-1], 'mid_res0')(h, emb, train)
    h = attn('mid_attn')(h)
    h = res(h.shape[-1], 'mid_res1')(h, emb, train)

    for level, mult in reversed(list(enumerate(self.channel_mults))):
      for i in range(self.num_res_blocks + 1):
        h = jnp.concatenate([h, skips.pop()], axis=-1)
        h = res(self.channels * mult, f'up{level}_res{i}')(h, emb, train)
        if h.shape[1] in self.attn_resolutions:
          h = attn(f'up{level}_attn{i}')(h)
      if level:
        h = conv(h.shape[-1], name=f'up{level}_upsample')(_upsample_nearest(h))

    h = nn.silu(GroupNorm(self.norm_groups, name='norm_out')(h))
    out = self.out_channels or x.shape[-1]
    # The prediction enters the loss: the last conv (a few output channels) runs in float32.
    return conv(out, kernel_init=_zeros, dtype=jnp.float32, name='conv_out')(h)


class MLPDenoiser(nn.Module):
  """Residual MLP denoiser for [B, D] toy data: Dense in, `depth` blocks h + Dense(SiLU(Dense(
  SiLU(h) + emb))) with the noise (+ label) embedding added, then a zero-init Dense out."""
  hidden: int = 256
  depth: int = 3
  num_classes: int = 0
  embed_scale: float = 1000.
  dropout: float = 0.
  dtype: jnp.dtype = jnp.float32  # compute dtype (params float32; output float32)

  @nn.compact
  def __call__(self, x, c_noise, labels=None, *, train: bool):
    if x.ndim != 2:
      raise ValueError(f'MLPDenoiser expects [B, D] inputs, got shape {x.shape}')
    if labels is not None and not self.num_classes:
      raise ValueError('MLPDenoiser: labels given to an unconditional model (num_classes=0)')
    dt = self.dtype
    x = x.astype(dt)
    dense = lambda name, **kw: nn.Dense(self.hidden, kernel_init=_default_init, dtype=dt,
                                        name=name, **kw)
    emb = sinusoidal_embedding(self.embed_scale * c_noise, self.hidden)    # float32
    emb = dense('embed_mlp')(emb)
    if self.num_classes:
      emb = emb + _label_embedding(labels, x.shape[0], self.num_classes, self.hidden, dt)
    emb = nn.silu(emb)
    h = dense('dense_in')(x)
    for i in range(self.depth):
      z = dense(f'block{i}_0')(nn.silu(h) + emb)
      z = nn.Dropout(self.dropout, deterministic=not train)(nn.silu(z))
      h = h + dense(f'block{i}_1')(z)
    # The prediction enters the loss: float32 accumulation and output.
    out = nn.Dense(x.shape[-1], kernel_init=_zeros, name='dense_out',
                   **precision.f32_output(dt))(nn.silu(h))
    return out.astype(jnp.float32)
