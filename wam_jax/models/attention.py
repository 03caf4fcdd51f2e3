"""Multi-head self-attention: qkv projection, RoPE, masks, and the choice of attention kernel.

`Attention` is V-JEPA 2's (fused qkv with bias, output projection) so its checkpoints convert
one-to-one (`vjepa2_convert.py`). The score/value products run `head_major_attention` (JAX's math in
the layout XLA:CPU runs fastest), `jax.nn.dot_product_attention` (cuDNN) or TPU's Pallas splash
kernel; `splash.choose` picks per platform (`model.attention='auto'`).
`with_cache` attends new tokens over a key/value cache, for autoregressive rollouts.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from wam_jax.models import splash
from wam_jax.models.partitioning import mesh_optional, normal_init, zeros_init
from wam_jax.models.positions import Rope, apply_rope

KVCache = tuple[jax.Array, jax.Array]  # keys, values `[B, L, heads, head_dim]` (per layer)

ATTENTION_IMPLS = ("xla", "cudnn", "splash", "auto")


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


class Attention(nnx.Module):
    """Multi-head self-attention: fused qkv projection (bias optional), optional RoPE on q/k,
    optional boolean mask (True = may attend; `[L, L]`, `[B, L, L]` or broadcastable to
    `[B, heads, L, L]`, never materialized at full size), attention, output projection.

    `attention_impl`: 'xla' runs `head_major_attention` (JAX's math in the layout XLA:CPU runs
    fastest), 'cudnn' `jax.nn.dot_product_attention`'s cuDNN kernel, 'splash' TPU's Pallas
    kernel, 'auto' the platform's (splash on TPU, cuDNN-or-XLA as JAX chooses on GPU, 'xla'
    elsewhere; `splash.choose`).

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
            kernel_init=normal_init(("embed", "qkv", "heads", "kv")),
            bias_init=zeros_init(("qkv", "heads", "kv")),
            rngs=rngs,
        )
        self.proj = nnx.LinearGeneral(
            (heads, self.head_dim),
            dim,
            axis=(-2, -1),
            dtype=dtype,
            param_dtype=param_dtype,
            kernel_init=normal_init(("heads", "kv", "embed")),
            bias_init=zeros_init(("embed",)),
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
        impl = splash.choose(self.implementation, q, k, mask)
        if impl == "splash":
            out = splash.splash_attention(q, k, v)
        elif impl == "xla":
            out = head_major_attention(q, k, v, mask)
        else:
            out = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=impl)
        return self.proj(out)
