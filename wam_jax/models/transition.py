"""`TransitionEncoder`: a pair of latent frames -> one pooled vector.

The trunk shared by the latent action model (what changed between z_t and z_{t+1}) and the action
heads (which action did that; which actions lead to the goal). Each owner has its own weights.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from wam_jax import sharding
from wam_jax.models import positions
from wam_jax.models.blocks import BlockStack, layer_norm
from wam_jax.models.linear import linear
from wam_jax.models.partitioning import ACT_AXES, mesh_optional, normal_init


class TransitionEncoder(nnx.Module):
    """(z_a, z_b) `[..., N, D]` each -> pooled feature `[..., width]`.

    Per token `delta_in(z_b - z_a) + context_in(z_a)`, a pooling token prepended, a few
    transformer blocks, the pooling token's output normed. With `change_only_init` (the latent
    action model) `context_in` and the pooling token start at zero: the output is then a function
    of the *change* alone (exactly constant when nothing changed), so latent-action codes start
    spread over transitions instead of being swamped by the static content both frames share;
    context is learned on top. Supervised heads start with both streams.
    """

    @mesh_optional
    def __init__(self, *, latent_dim: int, width: int, depth: int, heads: int, mlp_ratio: float,
                 grid_hw: tuple[int, int], rngs: nnx.Rngs, scan: bool = True,
                 scan_unroll: int = 1, remat: str = "none",
                 dtype=jnp.float32, param_dtype=jnp.float32, attention_impl: str = "xla",
                 change_only_init: bool = True):
        self.width = width
        self.head_dim = width // heads
        self.grid_hw = tuple(grid_hw)
        self.dtype = dtype
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        std = latent_dim**-0.5
        self.delta_in = linear(latent_dim, width, ("embed", "mlp"), stddev=std, **kw)
        self.context_in = linear(latent_dim, width, ("embed", "mlp"), use_bias=False,
                                 stddev=0.0 if change_only_init else std, **kw)
        self.pool_token = nnx.Param(normal_init(("embed",), 0.0 if change_only_init else 0.02)(
            rngs.params(), (width,), param_dtype))
        self.blocks = BlockStack(depth, width, heads, mlp_ratio, scan=scan,
                                 scan_unroll=scan_unroll, remat=remat,
                                 attention_impl=attention_impl, **kw)
        self.norm = layer_norm(width, **kw)

    def __call__(self, z_a: jax.Array, z_b: jax.Array) -> jax.Array:
        lead, (n, d) = z_a.shape[:-2], z_a.shape[-2:]
        positions.spatial_grid(n, self.grid_hw)
        z_a = z_a.reshape(-1, n, d).astype(self.dtype)
        z_b = z_b.reshape(-1, n, d).astype(self.dtype)
        x = self.delta_in(z_b - z_a) + self.context_in(z_a)
        pool = jnp.broadcast_to(self.pool_token[...].astype(x.dtype), (x.shape[0], 1, self.width))
        x = sharding.constrain(jnp.concatenate([pool, x], axis=1), ACT_AXES)
        pos = positions.positions_with_extra(1, self.grid_hw, 1)
        rope = positions.rope_3d(pos, self.head_dim, layout="rotary")
        x = self.blocks(x, rope=rope)
        return self.norm(x[:, 0]).reshape(*lead, self.width)
