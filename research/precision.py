"""Mixed precision from `config.precision`: bf16 compute over float32 master weights.

    --config.precision.compute=bfloat16   # the networks' matmuls, convs and activations in bf16
    --config.precision.moments=bfloat16   # the optimizer's first moment (Adam's mu) in bf16

What runs in the compute dtype: every dense/conv/attention layer of every family's networks
(inputs are cast to it at the first layer) and the activations between them. What stays float32
whatever `compute` says:
- parameters (flax `param_dtype`; the layers cast them to the compute dtype when they use them),
  hence the gradients, the update and the EMA copy;
- normalisation statistics (GroupNorm, BatchNorm, RMSNorm: computed in float32, cast back) and
  BatchNorm's running averages;
- softmax inputs of attention (scores accumulated in float32) and sinusoidal embeddings;
- every network output that enters a loss: the LM's logits, a VAE's posterior parameters and
  pixel logits, a denoiser's prediction, a discriminator's logits, a classifier's logits. Their
  output layers take compute-dtype operands but accumulate and return float32 (`f32_output`),
  except the U-Net's last 3x3 conv (a few output channels), which runs in float32;
- losses, log-likelihoods, KL terms, metrics;
- the optimizer's second moment (Adam's nu): 1/sqrt(nu) sets every parameter's step size, and
  optax offers no bf16 option for it. Only the first moment follows `precision.moments`
  (`research/optim.py`; adam, adamw, lamb and momentum have one).

A family reads `compute_dtype(config)` when it builds its networks; networks take a `dtype`
field (flax convention: computation dtype; parameters stay float32).
"""
from __future__ import annotations

import functools
from typing import Any

import jax.numpy as jnp
from jax import lax

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def compute_name(config) -> str:
  """'float32' | 'bfloat16': `config.precision.compute`. Configs saved before the precision
  section existed (a JSON dict of another run) fall back to the LM's old `model.dtype`, else
  float32."""
  precision = config.get('precision') or {}
  if precision.get('compute'):
    return str(precision['compute'])
  model = config.get('model') or {}
  return str(model.get('dtype') or 'float32')


def compute_dtype(config) -> Any:
  """The jnp dtype the networks compute in (`config.precision.compute`)."""
  return DTYPES[compute_name(config)]


def _promote_keep_bias(inputs, kernel, bias=None, *, dtype=None, inexact=True):
  """flax `promote_dtype` for an output layer: operands to `dtype`, the bias left float32 (it is
  added to the float32 accumulator)."""
  del inexact
  cast = lambda a: None if a is None else jnp.asarray(a, dtype)
  return cast(inputs), cast(kernel), bias


def f32_output(dtype, conv: bool = False) -> dict:
  """Keyword arguments that make an `nn.Dense` (or with `conv`, an `nn.Conv`) an output layer:
  `dtype` operands, float32 accumulation, float32 bias and result (what the LM does for its
  logits). Empty for float32 compute, so the float32 program is unchanged."""
  if jnp.dtype(dtype) == jnp.float32:
    return {}
  op, name = ((lax.conv_general_dilated, 'conv_general_dilated') if conv
              else (lax.dot_general, 'dot_general'))
  return {'dtype': dtype, 'promote_dtype': _promote_keep_bias,
          name: functools.partial(op, preferred_element_type=jnp.float32)}
