"""Shared transformer layers: 3D RoPE / sin-cos positions, attention, MLP, pre-norm block, block stack.

The block is V-JEPA 2's (pre-norm, qkv bias, exact-erf GELU MLP, LayerNorm eps 1e-6) so that Meta's
checkpoints convert one-to-one (see `vjepa2_convert.py`). Every parameter carries logical axis
names (`wam_jax.sharding` maps them to mesh axes); activations are constrained to
`('batch', 'tokens', 'embed')` at block boundaries. The stack scans over layers (one compiled
block, parameters stacked on a leading `'layers'` axis) and rematerializes per block.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from wam_jax import sharding

Rope = tuple[jax.Array, jax.Array]
KVCache = tuple[jax.Array, jax.Array]  # keys, values `[B, L, heads, head_dim]` (per layer)

ATTENTION_IMPLS = ("xla", "cudnn", "auto")
REMAT_POLICIES = ("none", "full", "dots")
MATMUL_DTYPES = ("", "float32", "bfloat16")
ROPE_LAYOUTS = ("vjepa2", "rotary")

_ACT_AXES = ("batch", "tokens", "embed")


def eager_sharding_scope() -> contextlib.AbstractContextManager:
    """Lets models be built with no mesh set (one CPU, tests, `eval_shape`): NNX shards annotated
    variables eagerly and fails without a mesh, so eager sharding is turned off unless a mesh
    (`jax.set_mesh`) is active. Logical-axis metadata is kept either way."""
    if jax.sharding.get_abstract_mesh().empty:
        return nnx.use_eager_sharding(False)
    return contextlib.nullcontext()


def mesh_optional(init: Callable) -> Callable:
    """Decorates a Module `__init__` to run under `eager_sharding_scope()`."""

    @functools.wraps(init)
    def wrapper(*args, **kwargs):
        with eager_sharding_scope():
            return init(*args, **kwargs)

    return wrapper


def _kernel_init(names: tuple[str | None, ...]) -> Callable:
    # V-JEPA 2 / timm ViT init: truncated normal, std 0.02.
    return nnx.with_partitioning(nnx.initializers.truncated_normal(stddev=0.02), names)


def _zeros_init(names: tuple[str | None, ...]) -> Callable:
    return nnx.with_partitioning(nnx.initializers.zeros_init(), names)


def _ones_init(names: tuple[str | None, ...]) -> Callable:
    return nnx.with_partitioning(nnx.initializers.ones_init(), names)


# ---------------------------------------------------------------------------------------------
# Positions
# ---------------------------------------------------------------------------------------------


def rope_part_dim(head_dim: int) -> int:
    """Channels of each of the t/h/w RoPE parts: V-JEPA 2 uses `2 * ((head_dim // 3) // 2)`; the
    remaining `head_dim - 3 * part` channels are left unrotated."""
    return 2 * ((head_dim // 3) // 2)


def rope_3d(
    positions: jax.Array,
    head_dim: int,
    base: float = 10000.0,
    *,
    layout: str = "vjepa2",
) -> Rope:
    """(sin, cos) tables for 3D RoPE, applied as `x * cos + rotate_pairs(x) * sin` (`apply_rope`).

    positions: float/int `[..., L, 3]` grid coordinates `(t, h, w)`. Returns float32 `(sin, cos)`
    of shape `[..., L, head_dim]`. The head dim is split into three parts of
    `rope_part_dim(head_dim)` channels for t, h, w (in that order); the rest is untouched
    (sin 0, cos 1). Within a part of `d` channels, frequencies are `base ** (-i / (d / 2))`,
    `i < d / 2`.

    layout:
      'vjepa2': exactly V-JEPA 2 (`rotate_queries_or_keys`): the `d/2` frequencies are *tiled*
        (`[f_0..f_{d/2-1}, f_0..f_{d/2-1}]`) while the rotation pairs channels `(2k, 2k+1)`. The two
        channels of a pair then see different angles, so this is not an exact rotation: it does
        not preserve norms and `<q_m, k_n>` is not a function of `m - n` alone. Needed for
        checkpoint compatibility.
      'rotary': the textbook RoPE: each pair `(2k, 2k+1)` rotates by one angle (frequencies
        repeated per pair); norm preserving and relative.
    """
    if layout not in ROPE_LAYOUTS:
        raise ValueError(f"rope layout must be one of {ROPE_LAYOUTS}, got {layout!r}")
    if positions.shape[-1] != 3:
        raise ValueError(f"rope_3d positions must be [..., L, 3] (t, h, w), got {positions.shape}")
    part = rope_part_dim(head_dim)
    if part == 0:
        raise ValueError(f"head_dim {head_dim} too small for 3D RoPE (needs >= 6)")
    positions = positions.astype(jnp.float32)
    half = part // 2
    omega = 1.0 / base ** (jnp.arange(half, dtype=jnp.float32) / (part / 2.0))  # [half]
    angles = []
    for axis in range(3):
        freq = positions[..., axis : axis + 1] * omega  # [..., L, half]
        if layout == "vjepa2":
            freq = jnp.concatenate([freq, freq], axis=-1)
        else:
            freq = jnp.repeat(freq, 2, axis=-1)
        angles.append(freq)
    angle = jnp.concatenate(angles, axis=-1)  # [..., L, 3 * part]
    sin, cos = jnp.sin(angle), jnp.cos(angle)
    rest = head_dim - 3 * part
    if rest:
        pad_shape = (*angle.shape[:-1], rest)
        sin = jnp.concatenate([sin, jnp.zeros(pad_shape, jnp.float32)], axis=-1)
        cos = jnp.concatenate([cos, jnp.ones(pad_shape, jnp.float32)], axis=-1)
    return sin, cos


def rotate_pairs(x: jax.Array) -> jax.Array:
    """`(x_0, x_1, x_2, x_3, ...) -> (-x_1, x_0, -x_3, x_2, ...)` over the last axis."""
    x1 = x[..., 0::2]
    x2 = x[..., 1::2]
    return jnp.stack([-x2, x1], axis=-1).reshape(x.shape)


def apply_rope(x: jax.Array, rope: Rope) -> jax.Array:
    """Applies `rope_3d` tables to `x [B, L, heads, head_dim]`; tables are `[L, Dh]` or `[B, L, Dh]`.

    Computed in float32 and cast back, so bf16 activations do not lose the angle precision.
    """
    sin, cos = rope
    if sin.shape[-1] != x.shape[-1] or sin.shape[-2] != x.shape[-3]:
        raise ValueError(
            f"rope tables {sin.shape} do not match queries/keys {x.shape} "
            "(expected [..., L, head_dim] with L and head_dim of x [B, L, heads, head_dim])"
        )
    sin = jnp.expand_dims(sin, -2)  # broadcast over heads
    cos = jnp.expand_dims(cos, -2)
    xf = x.astype(jnp.float32)
    return (xf * cos + rotate_pairs(xf) * sin).astype(x.dtype)


def _sincos_1d(pos: jax.Array, dim: int) -> jax.Array:
    omega = 1.0 / 10000.0 ** (jnp.arange(dim // 2, dtype=jnp.float32) / (dim / 2.0))
    angle = pos[..., None] * omega
    return jnp.concatenate([jnp.sin(angle), jnp.cos(angle)], axis=-1)


def sincos_3d(positions: jax.Array, dim: int) -> jax.Array:
    """Fixed 3D sin-cos position embedding `[..., L, dim]` from `(t, h, w)` positions `[..., L, 3]`.

    V-JEPA (1) layout: `[t | h | w]` with t taking half of the channels and h, w a quarter each
    (each part `[sin | cos]`); channels left over when `dim` is not a multiple of 8 are zero.
    """
    if positions.shape[-1] != 3:
        raise ValueError(
            f"sincos_3d positions must be [..., L, 3] (t, h, w), got {positions.shape}"
        )
    positions = positions.astype(jnp.float32)
    hw = 2 * (dim // 8)
    t = 2 * ((dim - 2 * hw) // 2)
    parts = [
        _sincos_1d(positions[..., 0], t),
        _sincos_1d(positions[..., 1], hw),
        _sincos_1d(positions[..., 2], hw),
    ]
    emb = jnp.concatenate(parts, axis=-1)
    rest = dim - emb.shape[-1]
    if rest:
        emb = jnp.concatenate([emb, jnp.zeros((*emb.shape[:-1], rest), jnp.float32)], axis=-1)
    return emb


def grid_positions(t: int, h: int, w: int) -> jax.Array:
    """Integer `(t, h, w)` coordinates `[t*h*w, 3]` in raster order (t slowest, w fastest), the
    token order of a Conv3d patch embedding flattened as in V-JEPA 2."""
    tt, hh, ww = jnp.meshgrid(jnp.arange(t), jnp.arange(h), jnp.arange(w), indexing="ij")
    return jnp.stack([tt.reshape(-1), hh.reshape(-1), ww.reshape(-1)], axis=-1).astype(jnp.int32)


# ---------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------


def _check_impl(attention_impl: str) -> str:
    if attention_impl not in ATTENTION_IMPLS:
        raise ValueError(
            f"attention implementation must be one of {ATTENTION_IMPLS}, got {attention_impl!r}"
        )
    return attention_impl


def head_major_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                         mask: jax.Array | None = None) -> jax.Array:
    """Softmax attention computed with heads as a batch dimension: `[B, L, heads, Dh]` in and out.

    The same math as `jax.nn.dot_product_attention(implementation='xla')` (scale `Dh**-0.5`,
    float32 logits and softmax, probabilities cast to the value dtype, masked logits set to a
    large negative number), laid out for XLA:CPU: q/k/v are transposed once to `[B, heads, L,
    Dh]` so both products are plain batched matmuls (`bhqd,bhkd->bhqk`, `bhqk,bhkd->bhqd`).
    JAX's version contracts `BTNH,BSNH->BNTS` and `BNTS,BSNH->BTNH` on the token-major layout,
    which XLA:CPU runs as strided batched dots at a third of the dense matmul rate; at V-JEPA 2
    S size (8 x 256 tokens, 6 heads of 64) forward + backward take 1.5x less time this way
    (BENCHMARKS.md §8).
    `mask`: bool, broadcastable to `[B, heads, Lq, Lk]` (True = may attend).
    """
    scale = q.shape[-1] ** -0.5
    logits_dtype = jnp.promote_types(q.dtype, jnp.float32)
    qh = jnp.swapaxes(q * jnp.asarray(scale, q.dtype), 1, 2)  # [B, H, Lq, Dh]
    kh = jnp.swapaxes(k, 1, 2)
    vh = jnp.swapaxes(v, 1, 2)
    logits = jnp.einsum("bhqd,bhkd->bhqk", qh, kh, preferred_element_type=logits_dtype)
    if mask is not None:
        big_neg = jnp.asarray(-0.7 * float(jnp.finfo(logits.dtype).max), logits.dtype)
        logits = jnp.where(mask, logits, big_neg)
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
    out = jnp.einsum("bhqk,bhkd->bhqd", probs, vh)
    return jnp.swapaxes(out, 1, 2)  # [B, Lq, H, Dh]


# ---------------------------------------------------------------------------------------------
# Mixed-precision projections: bf16 operands, f32 accumulation, forward and backward
# ---------------------------------------------------------------------------------------------


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


class Attention(nnx.Module):
    """Multi-head self-attention: fused qkv projection (bias optional), optional RoPE on q/k,
    optional boolean mask (True = may attend; `[L, L]`, `[B, L, L]` or broadcastable to
    `[B, heads, L, L]`, never materialized at full size), attention, output projection.

    `attention_impl`: 'xla' runs `head_major_attention` (JAX's math in the layout XLA:CPU runs
    fastest), 'cudnn' `jax.nn.dot_product_attention`'s cuDNN kernel, 'auto' cuDNN-or-XLA as JAX
    chooses on GPU and 'xla' elsewhere.

    Parameters: `qkv.kernel [D, 3, heads, head_dim]`, `qkv.bias [3, heads, head_dim]`,
    `proj.kernel [heads, head_dim, D]`, `proj.bias [D]` (V-JEPA 2's `attn.qkv` / HF's
    `query|key|value` and `attn.proj` reshape into these directly).
    """

    @mesh_optional
    def __init__(
        self,
        dim: int,
        heads: int,
        *,
        rngs: nnx.Rngs,
        qkv_bias: bool = True,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        attention_impl: str = "xla",
    ):
        if dim % heads:
            raise ValueError(f"attention width {dim} is not a multiple of heads {heads}")
        self.dim = dim
        self.heads = heads
        self.head_dim = dim // heads
        self.dtype = dtype
        self.implementation = _check_impl(attention_impl)
        self.qkv = nnx.LinearGeneral(
            dim,
            (3, heads, self.head_dim),
            use_bias=qkv_bias,
            dtype=dtype,
            param_dtype=param_dtype,
            kernel_init=_kernel_init(("embed", "qkv", "heads", "kv")),
            bias_init=_zeros_init(("qkv", "heads", "kv")),
            rngs=rngs,
        )
        self.proj = nnx.LinearGeneral(
            (heads, self.head_dim),
            dim,
            axis=(-2, -1),
            dtype=dtype,
            param_dtype=param_dtype,
            kernel_init=_kernel_init(("heads", "kv", "embed")),
            bias_init=_zeros_init(("embed",)),
            rngs=rngs,
        )

    def __call__(
        self,
        x: jax.Array,
        *,
        mask: jax.Array | None = None,
        rope: Rope | None = None,
    ) -> jax.Array:
        q, k, v = self._qkv(x, rope)
        return self._attend(q, k, v, mask)

    def with_cache(self, x: jax.Array, *, rope: Rope | None = None,
                   cache: KVCache | None = None, mask: jax.Array | None = None
                   ) -> tuple[jax.Array, KVCache]:
        """Attention of the new tokens `x [B, L, D]` over the cached keys/values of earlier
        tokens plus their own; returns (output, cache extended by x's keys/values).

        `rope` covers the new tokens only; cached keys were rotated when they were computed.
        Autoregressive rollouts use it so each step runs only its own tokens (block-causal
        attention: earlier tokens never see later ones, so their keys/values do not change)."""
        q, k, v = self._qkv(x, rope)
        if cache is not None:
            k = jnp.concatenate([cache[0].astype(k.dtype), k], axis=1)
            v = jnp.concatenate([cache[1].astype(v.dtype), v], axis=1)
        return self._attend(q, k, v, mask), (k, v)

    def _qkv(self, x: jax.Array, rope: Rope | None) -> tuple[jax.Array, jax.Array, jax.Array]:
        qkv = self.qkv(x)  # [B, L, 3, heads, head_dim]
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        if rope is not None:
            q = apply_rope(q, rope)
            k = apply_rope(k, rope)
        return q, k, v

    def _attend(self, q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None
                ) -> jax.Array:
        if mask is not None:
            if mask.dtype != jnp.bool_:
                raise ValueError(
                    f"attention mask must be bool (True = may attend), got {mask.dtype}"
                )
            if mask.ndim == 3:  # [B, L, L]: same mask for every head
                mask = mask[:, None]
            if mask.ndim not in (2, 4):
                raise ValueError(
                    "attention mask must be [L, L], [B, L, L] or broadcastable [B, heads, L, L], "
                    f"got shape {mask.shape}"
                )
        impl = self.implementation
        if impl == "auto":  # cuDNN where JAX can use it, else the XLA:CPU-friendly layout
            impl = None if jax.default_backend() == "gpu" else "xla"
        if impl == "xla":
            out = head_major_attention(q, k, v, mask)
        else:
            out = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=impl)
        return self.proj(out)


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


class Mlp(nnx.Module):
    """`fc2(gelu(fc1(x)))` with exact (erf) GELU, as in V-JEPA 2; hidden = `int(dim * mlp_ratio)`."""

    @mesh_optional
    def __init__(
        self,
        dim: int,
        mlp_ratio: float,
        *,
        rngs: nnx.Rngs,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        hidden: int | None = None,
    ):
        hidden = int(dim * mlp_ratio) if hidden is None else hidden
        self.fc1 = nnx.Linear(
            dim,
            hidden,
            dtype=dtype,
            param_dtype=param_dtype,
            kernel_init=_kernel_init(("embed", "mlp")),
            bias_init=_zeros_init(("mlp",)),
            rngs=rngs,
        )
        self.fc2 = nnx.Linear(
            hidden,
            dim,
            dtype=dtype,
            param_dtype=param_dtype,
            kernel_init=_kernel_init(("mlp", "embed")),
            bias_init=_zeros_init(("embed",)),
            rngs=rngs,
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(gelu(self.fc1(x)))


def layer_norm(
    dim: int, *, rngs: nnx.Rngs, eps: float = 1e-6, dtype=jnp.float32, param_dtype=jnp.float32
) -> nnx.LayerNorm:
    """LayerNorm with replicated (`'norm'`) scale and bias."""
    return nnx.LayerNorm(
        dim,
        epsilon=eps,
        dtype=dtype,
        param_dtype=param_dtype,
        scale_init=_ones_init(("norm",)),
        bias_init=_zeros_init(("norm",)),
        rngs=rngs,
    )


class Block(nnx.Module):
    """Pre-norm transformer block: `x + attn(norm1(x))`, then `x + mlp(norm2(x))`."""

    @mesh_optional
    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_ratio: float,
        *,
        rngs: nnx.Rngs,
        qkv_bias: bool = True,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        attention_impl: str = "xla",
        norm_eps: float = 1e-6,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        self.norm1 = layer_norm(dim, rngs=rngs, eps=norm_eps, **kw)
        self.attn = Attention(
            dim, heads, rngs=rngs, qkv_bias=qkv_bias, attention_impl=attention_impl, **kw
        )
        self.norm2 = layer_norm(dim, rngs=rngs, eps=norm_eps, **kw)
        self.mlp = Mlp(dim, mlp_ratio, rngs=rngs, **kw)

    def __call__(
        self,
        x: jax.Array,
        *,
        mask: jax.Array | None = None,
        rope: Rope | None = None,
    ) -> jax.Array:
        x = sharding.constrain(x, _ACT_AXES)
        x = x + self.attn(self.norm1(x), mask=mask, rope=rope)
        x = x + self.mlp(self.norm2(x))
        return sharding.constrain(x, _ACT_AXES)

    def with_cache(self, x: jax.Array, *, rope: Rope | None = None,
                   cache: KVCache | None = None, mask: jax.Array | None = None
                   ) -> tuple[jax.Array, KVCache]:
        """`__call__` for new tokens attending over a key/value cache (see `Attention.with_cache`)."""
        x = sharding.constrain(x, _ACT_AXES)
        a, cache = self.attn.with_cache(self.norm1(x), rope=rope, cache=cache, mask=mask)
        x = x + a
        x = x + self.mlp(self.norm2(x))
        return sharding.constrain(x, _ACT_AXES), cache


def remat_policy(name: str):
    """'none' -> no remat; 'full' -> save nothing (recompute the block); 'dots' -> save matmul
    outputs without batch dims (projections / MLP), recompute attention and elementwise ops."""
    if name not in REMAT_POLICIES:
        raise ValueError(f"remat must be one of {REMAT_POLICIES}, got {name!r}")
    if name == "full":
        return jax.checkpoint_policies.nothing_saveable
    if name == "dots":
        return jax.checkpoint_policies.dots_with_no_batch_dims_saveable
    return None


class BlockStack(nnx.Module):
    """`depth` Blocks.

    scan=True: parameters stacked on a leading `'layers'` axis (created with `nnx.vmap`, run with
    `nnx.scan`) so the block compiles once whatever the depth; scan=False: an `nnx.List` of blocks
    (`blocks[i]`), same math. `remat` ('none' | 'full' | 'dots') applies per block.
    `scan_unroll` (scanned stacks only, JAX's `scan(unroll=)`): 1 runs one block per loop
    iteration; k runs k; 0 unrolls the whole stack, which keeps the stacked parameter layout
    (checkpoints, sharding) but compiles and runs like scan=False: no loop, no per-iteration
    stacking of saved activations, longer compiles (BENCHMARKS.md §8).
    `stacked_to_list` / `list_to_stacked` convert parameter states between the two layouts.
    """

    @mesh_optional
    def __init__(
        self,
        depth: int,
        dim: int,
        heads: int,
        mlp_ratio: float,
        *,
        rngs: nnx.Rngs,
        scan: bool = True,
        scan_unroll: int = 1,
        remat: str = "none",
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        qkv_bias: bool = True,
        attention_impl: str = "xla",
        norm_eps: float = 1e-6,
    ):
        if depth < 1:
            raise ValueError(f"BlockStack depth must be >= 1, got {depth}")
        remat_policy(remat)  # validate early
        if isinstance(scan_unroll, bool) or int(scan_unroll) != scan_unroll or scan_unroll < 0:
            raise ValueError(
                f"model.scan_unroll must be an int >= 0 (0: unroll every layer), got {scan_unroll!r}"
            )
        self.depth = depth
        self.scan = scan
        self.scan_unroll = int(scan_unroll)
        self.remat = remat

        def make(r: nnx.Rngs) -> Block:
            return Block(
                dim,
                heads,
                mlp_ratio,
                rngs=r,
                qkv_bias=qkv_bias,
                dtype=dtype,
                param_dtype=param_dtype,
                attention_impl=attention_impl,
                norm_eps=norm_eps,
            )

        if scan:

            @nnx.split_rngs(splits=depth)
            @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
            def make_stacked(r: nnx.Rngs) -> Block:
                return make(r)

            self.blocks = make_stacked(rngs)
        else:
            self.blocks = nnx.List([make(rngs) for _ in range(depth)])

    def __call__(
        self,
        x: jax.Array,
        *,
        mask: jax.Array | None = None,
        rope: Rope | None = None,
    ) -> jax.Array:
        def apply(block: Block, h: jax.Array) -> jax.Array:
            return block(h, mask=mask, rope=rope)

        if self.remat != "none":
            apply = nnx.remat(apply, policy=remat_policy(self.remat), prevent_cse=not self.scan)

        if not self.scan:
            for block in self.blocks:
                x = apply(block, x)
            return x

        @nnx.scan(
            in_axes=(nnx.Carry, 0),
            out_axes=nnx.Carry,
            transform_metadata={nnx.PARTITION_NAME: "layers"},
            unroll=self.scan_unroll,
        )
        def run(h: jax.Array, block: Block) -> jax.Array:
            return apply(block, h)

        return run(x, self.blocks)

    def with_cache(self, x: jax.Array, *, rope: Rope | None = None,
                   cache: KVCache | None = None, mask: jax.Array | None = None
                   ) -> tuple[jax.Array, KVCache]:
        """Inference over new tokens with per-layer key/value caches.

        `cache`: None (the first call: x is the whole prefix) or the previous call's cache,
        keys/values stacked over layers `[depth, B, L, heads, head_dim]`. Returns the outputs and
        the cache extended by x's tokens. No remat: this path is for rollouts, not gradients."""
        if not self.scan:
            new_k, new_v = [], []
            for i, block in enumerate(self.blocks):
                layer = None if cache is None else (cache[0][i], cache[1][i])
                x, (k, v) = block.with_cache(x, rope=rope, cache=layer, mask=mask)
                new_k.append(k)
                new_v.append(v)
            return x, (jnp.stack(new_k), jnp.stack(new_v))

        if cache is None:
            @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0),
                      transform_metadata={nnx.PARTITION_NAME: "layers"}, unroll=self.scan_unroll)
            def prefill(h: jax.Array, block: Block) -> tuple[jax.Array, KVCache]:
                return block.with_cache(h, rope=rope, mask=mask)

            return prefill(x, self.blocks)

        @nnx.scan(in_axes=(nnx.Carry, 0, 0), out_axes=(nnx.Carry, 0),
                  transform_metadata={nnx.PARTITION_NAME: "layers"}, unroll=self.scan_unroll)
        def extend(h: jax.Array, block: Block, layer: KVCache) -> tuple[jax.Array, KVCache]:
            return block.with_cache(h, rope=rope, cache=layer, mask=mask)

        return extend(x, self.blocks, cache)


def stacked_to_list(state: nnx.State | dict, depth: int) -> list[dict]:
    """Splits a scanned stack's block params (leading `layers` axis) into per-layer pure dicts."""
    pure = nnx.to_pure_dict(state) if isinstance(state, nnx.State) else state
    return [jax.tree.map(lambda a, i=i: a[i], pure) for i in range(depth)]


def list_to_stacked(states: list[nnx.State | dict]) -> dict:
    """Stacks per-layer block params on a new leading axis: the scanned layout, as a pure dict."""
    pures = [nnx.to_pure_dict(s) if isinstance(s, nnx.State) else s for s in states]
    return jax.tree.map(lambda *a: jnp.stack(a), *pures)


def load_params(module: nnx.Module, pure: dict) -> None:
    """Writes a pure dict of arrays (as `nnx.to_pure_dict` gives) into `module`'s params in place,
    keeping each variable's metadata (logical axes). Fails on keys the module does not have."""
    state = nnx.state(module, nnx.Param)
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(module, state)
