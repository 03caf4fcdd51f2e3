"""Linear maps with logical axes: `linear` (one matrix) and `EmbodimentLinear` (one per embodiment).

The small input and output maps of the predictor, latent actions and action heads use these, so
every kernel is sharded by name and initialised at a chosen scale (fan-in scaled where inputs of
different kinds must enter at the same scale, zero where a module must start as the identity).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from wam_jax.models.partitioning import mesh_optional, normal_init, zeros_init


def linear(in_features: int, out_features: int, axes: tuple[str | None, str | None], *,
           rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32,
           use_bias: bool = True, stddev: float = 0.02) -> nnx.Linear:
    """`nnx.Linear` whose kernel carries logical axes `axes` and bias `axes[1]`; the kernel is
    truncated normal of std `stddev` (zeros when 0)."""
    return nnx.Linear(
        in_features, out_features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
        kernel_init=normal_init(axes, stddev),
        bias_init=zeros_init((axes[1],)),
        rngs=rngs,
    )


class EmbodimentLinear(nnx.Module):
    """A linear map with one weight matrix per embodiment (`[E, in, out]`), selected per example.

    Embodiments disagree on what action dimension i means, so the maps into and out of action
    space are per-embodiment; everything in between is shared.
    """

    @mesh_optional
    def __init__(self, num_embodiments: int, in_features: int, out_features: int,
                 axes: tuple[str | None, str | None], *, rngs: nnx.Rngs,
                 param_dtype=jnp.float32, dtype=jnp.float32, stddev: float = 0.02):
        self.num_embodiments = num_embodiments
        self.dtype = dtype
        self.kernel = nnx.Param(normal_init((None, *axes), stddev)(
            rngs.params(), (num_embodiments, in_features, out_features), param_dtype))
        self.bias = nnx.Param(zeros_init((None, axes[1]))(
            rngs.params(), (num_embodiments, out_features), param_dtype))

    def __call__(self, x: jax.Array, embodiment_id: jax.Array) -> jax.Array:
        """x `[B, ..., in]`, embodiment_id int `[B]` -> `[B, ..., out]` (ids clipped into range)."""
        e = jnp.clip(embodiment_id.astype(jnp.int32), 0, self.num_embodiments - 1)
        w = jnp.take(self.kernel[...], e, axis=0).astype(self.dtype)  # [B, in, out]
        b = jnp.take(self.bias[...], e, axis=0).astype(self.dtype)  # [B, out]
        lead = x.shape[1:-1]
        y = jnp.einsum("b...i,bio->b...o", x.astype(self.dtype), w)
        return y + b.reshape(b.shape[0], *([1] * len(lead)), b.shape[-1])
