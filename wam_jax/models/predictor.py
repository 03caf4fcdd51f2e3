"""Predictors over encoder latents.

- `LatentPredictor`: the action-conditioned world model. Per step t the sequence holds
  `[c_t, proprio_t, z_t^1 .. z_t^N]`; attention is frame-block-causal (tokens of step t see steps
  <= t), so one teacher-forced pass predicts z_{t+1} for every t at once, and an autoregressive
  rollout is the same network fed its own outputs. How the conditioning c_t enters
  (`action_cond`, one of `ACTION_CONDS`): 'token' (its own token, V-JEPA 2-AC), 'channels' (added
  to every latent token's input, i.e. concatenated on the channels and projected, DINO-WM),
  'token_channels' (both), 'adaln' (AdaLN-zero in every block, LeWM).
- `MaskedPredictor`: the V-JEPA encoder self-supervision predictor: context tokens plus learned
  mask tokens at the masked positions, full attention, predictions at the masked positions.

Neither is checkpoint-bound, so both use the exact rotary RoPE layout whatever the encoder's
`pos_emb`: no additive embedding competes with the content.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from wam_jax import sharding
from wam_jax.models import positions
from wam_jax.models.attention import KVCache
from wam_jax.models.blocks import BlockStack, layer_norm
from wam_jax.models.linear import linear
from wam_jax.models.partitioning import ACT_AXES, mesh_optional, normal_init

ACTION_CONDS = ("token", "channels", "token_channels", "adaln")


def _rope(pos: jax.Array, head_dim: int) -> positions.Rope:
    return positions.rope_3d(pos, head_dim, layout="rotary")


class LatentPredictor(nnx.Module):
    """Frame-block-causal transformer: (z_{<=t}, c_{<=t}, proprio_{<=t}) -> z_{t+1}."""

    @mesh_optional
    def __init__(self, *, latent_dim: int, width: int, depth: int, heads: int, mlp_ratio: float,
                 cond_dim: int, proprio_dim: int, grid_hw: tuple[int, int], rngs: nnx.Rngs,
                 scan: bool = True, scan_unroll: int = 1, remat: str = "none",
                 dtype=jnp.float32, param_dtype=jnp.float32, attention_impl: str = "xla",
                 residual: bool = True, action_cond: str = "token_channels"):
        if action_cond not in ACTION_CONDS:
            raise ValueError(f"model.predictor.action_cond must be one of {ACTION_CONDS}, "
                             f"got {action_cond!r}")
        self.action_cond = action_cond
        self.latent_dim = latent_dim
        self.residual = residual
        self.width = width
        self.head_dim = width // heads
        self.cond_dim = cond_dim
        self.proprio_dim = proprio_dim
        self.grid_hw = tuple(grid_hw)
        self.dtype = dtype
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        # Fan-in scaled input maps: latents, conditioning and proprio enter at the same (unit)
        # scale, so neither drowns the others in the first block's LayerNorm.
        self.latent_in = linear(latent_dim, width, ("embed", "mlp"), stddev=latent_dim**-0.5, **kw)
        self.cond_in = linear(cond_dim, width, ("latent_action", "embed"), stddev=cond_dim**-0.5,
                              **kw)
        # Proprio enters as [value * mask, mask]: "absent" differs from "zero".
        self.proprio_in = (linear(2 * proprio_dim, width, ("act", "embed"),
                                  stddev=(2 * proprio_dim) ** -0.5, **kw) if proprio_dim else None)
        self.token_type = nnx.Param(normal_init((None, "embed"))(rngs.params(), (3, width), param_dtype))
        self.blocks = BlockStack(depth, width, heads, mlp_ratio, scan=scan, scan_unroll=scan_unroll,
                                 remat=remat, attention_impl=attention_impl,
                                 adaln=action_cond == "adaln", **kw)
        self.norm = layer_norm(width, **kw)
        # residual=True predicts z_{t+1} - z_t; the zero-initialised output then starts exactly at
        # the copy-last-frame baseline and training only has to learn the change.
        self.latent_out = linear(width, latent_dim, ("mlp", "embed"),
                                 stddev=0.0 if residual else 0.02, **kw)

    def __call__(self, z: jax.Array, cond: jax.Array, proprio: jax.Array | None = None,
                 proprio_mask: jax.Array | None = None) -> jax.Array:
        """z `[B, S, N, D]`, cond `[B, S, du]`, proprio/proprio_mask `[B, S, P]` (None = absent)
        -> predicted next latents `[B, S, N, D]` (output s predicts step s + 1), float32."""
        x, block_cond = self._tokens(z, cond, proprio, proprio_mask)
        rope, mask = self._rope_and_mask(z.shape[1], 0)
        return self._readout(self.blocks(x, mask=mask, rope=rope, cond=block_cond), z)

    def prefill(self, z: jax.Array, cond: jax.Array, proprio: jax.Array | None = None,
                proprio_mask: jax.Array | None = None) -> tuple[jax.Array, KVCache]:
        """`__call__` that also returns the per-layer key/value cache of steps `0..S-1`."""
        x, block_cond = self._tokens(z, cond, proprio, proprio_mask)
        rope, mask = self._rope_and_mask(z.shape[1], 0)
        x, cache = self.blocks.with_cache(x, rope=rope, mask=mask, cond=block_cond)
        return self._readout(x, z), cache

    def extend(self, z: jax.Array, cond: jax.Array, proprio: jax.Array | None,
               proprio_mask: jax.Array | None, cache: KVCache, start: int
               ) -> tuple[jax.Array, KVCache]:
        """Predictions for steps `start..start+S-1` (inputs `[B, S, ...]`) given the cache of
        steps `0..start-1`: equal to running `__call__` on the whole sequence and keeping its
        last S outputs (block-causal attention), at the cost of the new steps only."""
        expected = start * (z.shape[2] + 2)
        if cache[0].shape[2] != expected:
            raise ValueError(f"LatentPredictor.extend: the cache holds {cache[0].shape[2]} tokens, "
                             f"expected {expected} for start={start}")
        x, block_cond = self._tokens(z, cond, proprio, proprio_mask)
        rope, mask = self._rope_and_mask(z.shape[1], start)
        x, cache = self.blocks.with_cache(x, rope=rope, cache=cache, mask=mask, cond=block_cond)
        return self._readout(x, z), cache

    def _tokens(self, z: jax.Array, cond: jax.Array, proprio: jax.Array | None,
                proprio_mask: jax.Array | None) -> tuple[jax.Array, jax.Array | None]:
        """Per step `[c_t, proprio_t, z_t^1..N]`, flattened to `[B, S * (N + 2), W]`, and the
        per-token AdaLN conditioning (same shape; None unless `action_cond='adaln'`)."""
        b, s, n, _ = z.shape
        positions.spatial_grid(n, self.grid_hw)
        types = self.token_type[...].astype(self.dtype)
        c_emb = self.cond_in(cond.astype(self.dtype))[:, :, None]  # [B, S, 1, W]
        mode = self.action_cond
        # 'channels': added to every latent token of its step, a direct path (DINO-WM's per-patch
        # concat) that does not have to be found by attention first: action conditioning learns
        # much faster than through the token alone. Without 'token' the slot keeps only its type.
        lat = self.latent_in(z.astype(self.dtype)) + types[2]
        if mode in ("channels", "token_channels"):
            lat = lat + c_emb
        c = (c_emb if mode in ("token", "token_channels") else jnp.zeros_like(c_emb)) + types[0]
        p = jnp.broadcast_to(types[1], (b, s, 1, self.width))
        if self.proprio_in is not None:
            if proprio is None:  # absent: the same input as a batch whose proprio mask is false
                feats = jnp.zeros((b, s, 2 * self.proprio_dim), self.dtype)
            else:
                pm = (jnp.ones(proprio.shape, jnp.bool_) if proprio_mask is None else proprio_mask)
                feats = jnp.concatenate([jnp.where(pm, proprio, 0.0), pm.astype(proprio.dtype)], -1)
            p = p + self.proprio_in(feats.astype(self.dtype))[:, :, None]
        x = jnp.concatenate([c, p.astype(lat.dtype), lat], axis=2).reshape(b, s * (n + 2), self.width)
        block_cond = None
        if mode == "adaln":
            block_cond = jnp.broadcast_to(c_emb, (b, s, n + 2, self.width)).reshape(x.shape)
            block_cond = sharding.constrain(block_cond, ACT_AXES)
        return sharding.constrain(x, ACT_AXES), block_cond

    def _rope_and_mask(self, s: int, start: int) -> tuple[positions.Rope, jax.Array | None]:
        """RoPE tables of steps `start..start+s-1`, and the block-causal mask of those queries over
        keys of steps `0..start+s-1` (None when one step attends to everything before it)."""
        per_step = self.grid_hw[0] * self.grid_hw[1] + 2
        pos = positions.positions_with_extra(s, self.grid_hw, 2) + jnp.array([start, 0.0, 0.0])
        rope = _rope(pos, self.head_dim)
        if s == 1:
            return rope, None
        q_step = start + jnp.repeat(jnp.arange(s), per_step)
        k_step = jnp.repeat(jnp.arange(start + s), per_step)
        return rope, (k_step[None, :] <= q_step[:, None])[None, None]  # [1, 1, Lq, Lk]

    def _readout(self, x: jax.Array, z: jax.Array) -> jax.Array:
        b, s, n, _ = z.shape
        x = x.reshape(b, s, n + 2, self.width)[:, :, 2:]
        out = self.latent_out(self.norm(x)).astype(jnp.float32)
        return out + z.astype(jnp.float32) if self.residual else out


class MaskedPredictor(nnx.Module):
    """V-JEPA predictor: fills masked token positions from the context encoder's visible tokens."""

    @mesh_optional
    def __init__(self, *, latent_dim: int, width: int, depth: int, heads: int, mlp_ratio: float,
                 rngs: nnx.Rngs, scan: bool = True, scan_unroll: int = 1, remat: str = "none",
                 dtype=jnp.float32, param_dtype=jnp.float32, attention_impl: str = "xla"):
        self.width = width
        self.head_dim = width // heads
        self.dtype = dtype
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.latent_in = linear(latent_dim, width, ("embed", "mlp"), **kw)
        self.mask_token = nnx.Param(normal_init(("embed",))(rngs.params(), (width,), param_dtype))
        self.blocks = BlockStack(depth, width, heads, mlp_ratio, scan=scan, scan_unroll=scan_unroll,
                                 remat=remat, attention_impl=attention_impl, **kw)
        self.norm = layer_norm(width, **kw)
        self.latent_out = linear(width, latent_dim, ("mlp", "embed"), **kw)

    def __call__(self, context: jax.Array, keep_idx: jax.Array, mask_idx: jax.Array,
                 grid_thw: tuple[int, int, int]) -> jax.Array:
        """context `[B, K, D]` (encoder outputs at `keep_idx`), indices into the flattened
        `grid_thw` token grid -> predictions `[B, M, D]` at `mask_idx`, float32."""
        b, k = keep_idx.shape
        m = mask_idx.shape[1]
        ctx = self.latent_in(context.astype(self.dtype))
        tok = jnp.broadcast_to(self.mask_token[...].astype(ctx.dtype), (b, m, self.width))
        x = sharding.constrain(jnp.concatenate([ctx, tok], axis=1), ACT_AXES)
        grid = positions.grid_positions(*grid_thw).astype(jnp.float32)  # [L, 3]
        pos = jnp.take(grid, jnp.concatenate([keep_idx, mask_idx], axis=1), axis=0)
        rope = _rope(pos, self.head_dim)
        x = self.blocks(x, rope=rope)
        return self.latent_out(self.norm(x[:, k:])).astype(jnp.float32)
