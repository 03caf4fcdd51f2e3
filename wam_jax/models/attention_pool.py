"""Attention pooling of a frame's patch tokens to one vector (`model.pool.kind='attn'`).

A mean over patch tokens keeps what is everywhere alike; a learned query attending over the
tokens (the multi-head attention-pooling head of big_vision's ViT, "MAP") weights the tokens that
hold an object and reads their content. On PushT it did not bring the block's angle into the
latent, which a mean-pooled latent lacks too (BENCHMARKS.md §11.13, A10).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from wam_jax.models.linear import linear
from wam_jax.models.partitioning import mesh_optional, normal_init


class AttentionPool(nnx.Module):
    """`[B, N, W]` tokens -> `[B, W]`: `heads` attention heads of one learned query each."""

    @mesh_optional
    def __init__(self, width: int, heads: int, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32):
        if width % heads:
            raise ValueError(f"attention pooling: width {width} is not divisible by {heads} heads")
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.heads = heads
        self.query = nnx.Param(normal_init(("embed",), 1.0)(rngs.params(), (width,), param_dtype))
        self.key = linear(width, width, ("embed", "mlp"), stddev=width**-0.5, **kw)
        self.value = linear(width, width, ("embed", "mlp"), stddev=width**-0.5, **kw)
        self.out = linear(width, width, ("mlp", "embed"), stddev=width**-0.5, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, n, w = x.shape
        h = self.heads
        k = self.key(x).reshape(b, n, h, w // h)
        v = self.value(x).reshape(b, n, h, w // h)
        q = self.query[...].astype(k.dtype).reshape(h, w // h)
        weights = jax.nn.softmax(jnp.einsum("hd,bnhd->bhn", q, k) * (w // h) ** -0.5, axis=-1)
        return self.out(jnp.einsum("bhn,bnhd->bhd", weights, v).reshape(b, w))
