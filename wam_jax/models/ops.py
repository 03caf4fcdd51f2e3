"""Numeric primitives written for speed: a bf16 matmul with its own gradient, and exact GELU.

Both are drop-in replacements with the math of their JAX counterparts, shaped for XLA:CPU
(BENCHMARKS.md §8): `bf16_dot_general` / `use_matmul_dtype` run the projection and MLP matmuls
with bf16 operands and f32 accumulation in the forward *and* backward pass, and `gelu` evaluates
the erf form, which XLA:CPU computes faster than JAX's erfc form.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

MATMUL_DTYPES = ("", "float32", "bfloat16")


def _is_trailing_contraction(dimension_numbers, lhs_ndim: int) -> int | None:
    """k when `dimension_numbers` contract the last k lhs dims with the first k rhs dims (in
    order, no batch dims), the only form `nnx.Linear` / `nnx.LinearGeneral` emit here; else None."""
    (lc, rc), (lb, rb) = dimension_numbers
    k = len(lc)
    if lb or rb or tuple(lc) != tuple(range(lhs_ndim - k, lhs_ndim)) or tuple(rc) != tuple(range(k)):
        return None
    return k


def _trailing_dims(lhs_ndim: int, rhs_ndim: int, k: int):
    lead = lhs_ndim - k
    out = rhs_ndim - k
    fwd = ((tuple(range(lead, lhs_ndim)), tuple(range(k))), ((), ()))
    d_lhs = ((tuple(range(lead, lead + out)), tuple(range(k, rhs_ndim))), ((), ()))  # g . w
    d_rhs = ((tuple(range(lead)), tuple(range(lead))), ((), ()))  # x . g
    return fwd, d_lhs, d_rhs


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _mixed_contract(x: jax.Array, w: jax.Array, k: int, operand_dtype) -> jax.Array:
    fwd, _, _ = _trailing_dims(x.ndim, w.ndim, k)
    return jax.lax.dot_general(x.astype(operand_dtype), w.astype(operand_dtype), fwd,
                               preferred_element_type=jnp.float32)


def _mixed_contract_fwd(x, w, k, operand_dtype):
    xo, wo = x.astype(operand_dtype), w.astype(operand_dtype)
    fwd, _, _ = _trailing_dims(x.ndim, w.ndim, k)
    y = jax.lax.dot_general(xo, wo, fwd, preferred_element_type=jnp.float32)
    # Residuals in the operand dtype: half the bytes saved for the backward pass.
    return y, (xo, wo, jnp.zeros((0,), x.dtype), jnp.zeros((0,), w.dtype))


def _mixed_contract_bwd(k, operand_dtype, res, g):
    xo, wo, x_tag, w_tag = res
    _, d_lhs, d_rhs = _trailing_dims(xo.ndim, wo.ndim, k)
    go = g.astype(operand_dtype)
    dx = jax.lax.dot_general(go, wo, d_lhs, preferred_element_type=jnp.float32)
    dw = jax.lax.dot_general(xo, go, d_rhs, preferred_element_type=jnp.float32)
    return dx.astype(x_tag.dtype), dw.astype(w_tag.dtype)


_mixed_contract.defvjp(_mixed_contract_fwd, _mixed_contract_bwd)


def bf16_dot_general(lhs: jax.Array, rhs: jax.Array, dimension_numbers, precision=None,
                     preferred_element_type=None, **kwargs) -> jax.Array:
    """`lax.dot_general` with bfloat16 operands and float32 accumulation, in the backward pass too.

    A drop-in `dot_general` for `nnx.Linear` / `nnx.LinearGeneral`. XLA:CPU ignores dot
    algorithm presets (`precision=BF16_BF16_F32` computes in f32), so the operands are cast
    explicitly, and a custom VJP casts the cotangent as well: JAX's own transpose of a mixed dot
    would run both backward matmuls (2/3 of the FLOPs) in float32. The result has the inputs'
    dtype (float32 stays float32). Contractions other than "last k dims of lhs with the first k
    of rhs", and calls with an explicit `out_sharding`, fall back to a cast + `lax.dot_general`
    (bf16 forward, JAX's transpose rule backward).
    """
    del precision  # the operand dtype is the precision
    out_dtype = preferred_element_type or jnp.result_type(lhs.dtype, rhs.dtype)
    k = _is_trailing_contraction(dimension_numbers, lhs.ndim)
    if k is None or kwargs.get("out_sharding") is not None:
        y = jax.lax.dot_general(lhs.astype(jnp.bfloat16), rhs.astype(jnp.bfloat16), dimension_numbers,
                                preferred_element_type=jnp.float32, **kwargs)
    else:
        y = _mixed_contract(lhs, rhs, k, jnp.dtype(jnp.bfloat16))
    return y.astype(out_dtype)


def use_matmul_dtype(module: nnx.Module, matmul_dtype: str | None) -> nnx.Module:
    """Sets the operand dtype of every `nnx.Linear` / `nnx.LinearGeneral` under `module`.

    '' / None / 'float32': unchanged (each layer multiplies in its compute dtype). 'bfloat16':
    bf16 operands with float32 accumulation and float32 results (`bf16_dot_general`), while
    activations, norms, softmax and parameters keep their dtypes: on CPUs with AVX512-BF16 the
    projection and MLP matmuls run at ≈2x the f32 rate (see BENCHMARKS.md for the measured step
    time and the loss agreement). The attention score/value products stay in the compute dtype.
    Apply before `make_target_encoder()` (a clone keeps the setting). Returns `module`.
    """
    if matmul_dtype not in MATMUL_DTYPES and matmul_dtype is not None:
        raise ValueError(f"matmul dtype must be one of {MATMUL_DTYPES}, got {matmul_dtype!r}")
    if matmul_dtype != "bfloat16":
        return module
    for _, m in nnx.iter_graph(module):
        if isinstance(m, nnx.Linear | nnx.LinearGeneral):
            m.dot_general = bf16_dot_general
    return module


def gelu(x: jax.Array) -> jax.Array:
    """Exact GELU, `x * Phi(x) = x/2 * (1 + erf(x / sqrt 2))`, the formula PyTorch's `nn.GELU` uses.

    Same function as `jax.nn.gelu(x, approximate=False)` (which goes through `erfc`; the two agree
    to ~1e-6), written with `erf` because XLA:CPU's `erf` is a short polynomial while its `erfc`
    evaluates exponentials on both branches and selects: on a 2-core CPU the forward is 2-3x and
    forward+backward 1.3-1.5x faster (`benchmarks/gelu.py`, BENCHMARKS.md §8), the library S train
    step about 3 %. Computed in float32 whatever the input dtype, so bfloat16 activations keep
    the precision of the tail; the result has x's dtype.
    """
    xf = x.astype(jnp.float32)
    return (0.5 * xf * (1.0 + jax.lax.erf(xf * 0.7071067811865476))).astype(x.dtype)
