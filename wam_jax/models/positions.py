"""Token positions: 3D RoPE tables, fixed 3D sin-cos embeddings, patch-grid coordinates.

Every token sits at a `(t, h, w)` grid coordinate. The encoder uses V-JEPA 2's RoPE layout (or
sin-cos) for checkpoint compatibility; the modules no checkpoint constrains (predictors, the
transition trunk) use the exact rotary layout, so no additive embedding competes with content.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Rope = tuple[jax.Array, jax.Array]  # (sin, cos) tables `[..., L, head_dim]`

ROPE_LAYOUTS = ("vjepa2", "rotary")


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


def sincos_1d(pos: jax.Array, dim: int) -> jax.Array:
    """`[sin | cos]` of `pos [...]` at `dim / 2` geometric frequencies -> `[..., dim]`."""
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
        sincos_1d(positions[..., 0], t),
        sincos_1d(positions[..., 1], hw),
        sincos_1d(positions[..., 2], hw),
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


def spatial_grid(num_tokens: int, grid_hw: tuple[int, int]) -> tuple[int, int]:
    """`grid_hw` when a frame's `num_tokens` fill it, else a ValueError naming both."""
    if grid_hw[0] * grid_hw[1] != num_tokens:
        raise ValueError(
            f"latents have {num_tokens} tokens per frame, expected Hp*Wp = {grid_hw[0]}*{grid_hw[1]}"
            f" = {grid_hw[0] * grid_hw[1]} (image_size / patch_size squared)")
    return grid_hw


def positions_with_extra(t: int, grid_hw: tuple[int, int], extra: int) -> jax.Array:
    """(t, h, w) float positions `[t * (extra + Hp*Wp), 3]`: per step `extra` tokens at the frame
    centre, then the patch grid in raster order."""
    hp, wp = grid_hw
    patches = grid_positions(1, hp, wp).astype(jnp.float32)  # [N, 3] with t = 0
    centre = jnp.array([[0.0, (hp - 1) / 2.0, (wp - 1) / 2.0]], jnp.float32)
    per_step = jnp.concatenate([jnp.repeat(centre, extra, axis=0), patches], axis=0)  # [E+N, 3]
    steps = jnp.arange(t, dtype=jnp.float32)[:, None, None] * jnp.array([1.0, 0.0, 0.0])
    return (per_step[None] + steps).reshape(t * per_step.shape[0], 3)
