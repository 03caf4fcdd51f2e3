"""Multi-block tube masks for V-JEPA-style encoder self-supervision.

A mask is a union of random spatial rectangles ("blocks") extended over every time step (a
"tube"), so the model cannot solve the task by copying the same patch from a neighbouring frame.
Everything is sampled with `jax.random` inside `jit`; the numbers of kept and masked tokens are
fixed by `mask_ratio` alone so every shape is static: when the sampled blocks cover more (less)
than the target fraction, the surplus is given back (taken) at random, with block tokens always
preferred for masking.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp


class TubeMask(NamedTuple):
    """Token indices into the flattened `[T' * Hp * Wp]` token sequence, sorted ascending."""

    keep_idx: jax.Array  # int32 [B, T' * num_keep_spatial]  (context tokens)
    mask_idx: jax.Array  # int32 [B, T' * num_mask_spatial]  (tokens to predict)


def num_masked_spatial(grid_hw: tuple[int, int], mask_ratio: float) -> int:
    """Masked tokens per frame; at least one token is kept and at least one is masked."""
    n = grid_hw[0] * grid_hw[1]
    if n < 2:
        raise ValueError(f"tube masks need at least 2 tokens per frame, got grid {grid_hw}")
    if not 0.0 < mask_ratio < 1.0:
        raise ValueError(f"model.ssl.mask_ratio must be in (0, 1), got {mask_ratio}")
    return int(min(max(round(mask_ratio * n), 1), n - 1))


def _block_membership(key: jax.Array, grid_hw: tuple[int, int], scale: float,
                      aspect: tuple[float, float]) -> jax.Array:
    """One random rectangle covering ~`scale` of the frame: bool [Hp, Wp]."""
    hp, wp = grid_hw
    k_ar, k_top, k_left = jax.random.split(key, 3)
    log_ar = jax.random.uniform(k_ar, (), minval=math.log(aspect[0]), maxval=math.log(aspect[1]))
    ar = jnp.exp(log_ar)
    area = scale * hp * wp
    h = jnp.clip(jnp.round(jnp.sqrt(area * ar)), 1, hp).astype(jnp.int32)
    w = jnp.clip(jnp.round(jnp.sqrt(area / ar)), 1, wp).astype(jnp.int32)
    top = jax.random.randint(k_top, (), 0, hp - h + 1)
    left = jax.random.randint(k_left, (), 0, wp - w + 1)
    rows = jnp.arange(hp)[:, None]
    cols = jnp.arange(wp)[None, :]
    return (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)


def sample_tube_masks(key: jax.Array, batch_size: int, grid_thw: tuple[int, int, int], *,
                      mask_ratio: float, num_blocks: int, block_scale: float,
                      aspect: tuple[float, float] = (0.75, 1.5)) -> TubeMask:
    """Samples one multi-block tube mask per example.

    Args:
      key: PRNG key.
      batch_size: B.
      grid_thw: token grid (T', Hp, Wp) of the encoder's output sequence.
      mask_ratio: fraction of spatial tokens masked (the same positions in every frame).
      num_blocks: rectangles per mask; their union is preferred for masking.
      block_scale: area of each rectangle as a fraction of the frame.
      aspect: range of the rectangles' height/width ratio (log-uniform).

    Returns:
      `TubeMask` with static shapes `[B, T' * (Hp*Wp - M)]` and `[B, T' * M]`,
      `M = num_masked_spatial((Hp, Wp), mask_ratio)`.
    """
    t, hp, wp = grid_thw
    n = hp * wp
    m = num_masked_spatial((hp, wp), mask_ratio)
    if num_blocks < 1:
        raise ValueError(f"model.ssl.num_blocks must be >= 1, got {num_blocks}")

    def one(k: jax.Array) -> tuple[jax.Array, jax.Array]:
        k_blocks, k_tie = jax.random.split(k)
        blocks = jax.vmap(lambda kb: _block_membership(kb, (hp, wp), block_scale, aspect))(
            jax.random.split(k_blocks, num_blocks))
        in_block = jnp.any(blocks, axis=0).reshape(n)
        # Block tokens score in [1, 2), the others in [0, 1): the top-m are masked.
        score = in_block.astype(jnp.float32) + jax.random.uniform(k_tie, (n,))
        order = jnp.argsort(-score)
        masked = jnp.sort(order[:m])
        kept = jnp.sort(order[m:])
        return kept.astype(jnp.int32), masked.astype(jnp.int32)

    kept_s, masked_s = jax.vmap(one)(jax.random.split(key, batch_size))  # [B, n-m], [B, m]
    offsets = (jnp.arange(t, dtype=jnp.int32) * n)[None, :, None]
    keep_idx = (offsets + kept_s[:, None, :]).reshape(batch_size, t * (n - m))
    mask_idx = (offsets + masked_s[:, None, :]).reshape(batch_size, t * m)
    return TubeMask(keep_idx=keep_idx, mask_idx=mask_idx)
