"""Dense layers whose weight gradient XLA's CPU backend runs fast.

The weight gradient of y = x @ W is dW = x^T @ dy, a contraction over the token (or pixel) axis,
which is the *major* axis of both row-major operands. XLA:CPU's matmul kernels want the
contraction on the minor axis of the left operand, so its layout pass transposes one operand
first, and it picks the larger one: for an MLP's down projection that is the [tokens, 4d]
activation, transposed inside a loop fusion with the GELU backward. On the LM benchmark's
model (4 x 128 wide, 32 x 128 tokens) those four transposes took 80 ms of a 430 ms step.

`dot_general` (pass it to `nn.Dense(dot_general=...)`) computes the same product with a custom
VJP whose weight gradient transposes the *smaller* operand explicitly, behind an optimization
barrier so the transpose is not folded back into the dot: dW = x^T @ dy when x is narrower than
dy, else (dy^T @ x)^T. Measured: LM fwd+bwd 443 -> 312 ms (`benchmarks/lm_step.py` has the
train step). The input gradient and the forward pass are the plain products.

Only on CPU ('auto'): GPU and TPU matmuls take transposed operands natively, and there the
barrier would only cost a copy. Reverse mode only (custom_vjp): no jax.jvp through these layers.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

IMPLS = ('auto', 'xla', 'cpu')


def weight_grad(x2, g2, dtype=None):
  """x2^T @ g2 for x2 [N, K], g2 [N, M] -> [K, M] (in `dtype`, default x2's; accumulated in
  float32), with the smaller operand transposed explicitly (module docstring)."""
  f32 = jnp.float32
  if x2.shape[1] <= g2.shape[1]:
    out = jnp.matmul(jax.lax.optimization_barrier(x2.T), g2, preferred_element_type=f32)
  else:
    out = jnp.matmul(jax.lax.optimization_barrier(g2.T), x2, preferred_element_type=f32).T
  return out.astype(dtype or x2.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _matmul(x, w, out_dtype):
  return jnp.matmul(x, w, preferred_element_type=out_dtype)


def _matmul_fwd(x, w, out_dtype):
  return _matmul(x, w, out_dtype), (x, w)


def _matmul_bwd(out_dtype, res, g):
  x, w = res
  dt = jnp.promote_types(x.dtype, g.dtype)     # float32 when the output was (bf16 operands)
  dx = jnp.matmul(g.astype(dt), w.T.astype(dt)).astype(x.dtype)
  dw = weight_grad(x.reshape(-1, x.shape[-1]).astype(dt), g.reshape(-1, g.shape[-1]).astype(dt),
                   w.dtype)
  return dx, dw


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


def resolve(impl: str) -> str:
  """'auto' -> 'cpu' on the CPU backend, 'xla' elsewhere; others are checked and returned."""
  if impl not in IMPLS:
    raise ValueError(f'matmul impl must be one of {IMPLS}, got {impl!r}')
  if impl == 'auto':
    return 'cpu' if jax.default_backend() == 'cpu' else 'xla'
  return impl


def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None,
                impl: str = 'auto'):
  """`lax.dot_general` for nn.Dense: x [..., K] @ W [K, M] through the CPU-friendly VJP under
  impl 'cpu' ('auto' on CPU); any other contraction, or impl 'xla', is lax.dot_general."""
  (lc, rc), (lb, rb) = dimension_numbers
  dense = (tuple(lc) == (lhs.ndim - 1,) and tuple(rc) == (0,) and not lb and not rb
           and rhs.ndim == 2 and precision is None)
  if not dense or resolve(impl) != 'cpu':
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                               preferred_element_type=preferred_element_type)
  return _matmul(lhs, rhs, None if preferred_element_type is None
                 else jnp.dtype(preferred_element_type))
