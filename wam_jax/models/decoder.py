"""`FrameDecoder`: pooled latents of a frame -> the frame at low resolution (`model.decoder`).

An auxiliary head for `loss.recon`: its gradient reaches the encoder and asks the latent to keep
what the frame shows, not only what the prediction loss finds easy to predict (an end-to-end
encoder trained by prediction and SIGReg alone spends its dimensions on the action-driven agent:
BENCHMARKS.md §11.12, where a 32 x 32 decoder at weight 1 did not change that on PushT). Decoded
frames also show what a prediction holds (`WorldModel.decode`) and give the planner a cost in
frame space (`cost='decoded'`). The predictor and the export do not use it.

Two kinds (`model.decoder.kind`):

- `upsample`: `Linear -> [s, s, width]` (s = 3 or 4: 4 for powers of two, 3 for PushT's native
  96 px), then per doubling: nearest upsampling and two 3x3 convolutions (GELU), halving the width,
  and a 3x3 convolution to RGB in the encoder's normalized pixel space.
- `broadcast`: a spatial broadcast decoder (Watters et al. 2019): `Linear -> width` tiled over a
  `size / 4` grid with two coordinate channels, two 3x3 convolutions there, then two doublings as
  above. Each cell computes its own function of (latent, x, y), so drawing an object at a pose is
  local work; from one vector, `upsample` must place it through a linear map to a 4 x 4 map (on
  PushT, even from the true state, it draws the block's pose only after some 6000 steps of 64
  frames, the block an orientation-less blob before: BENCHMARKS.md §11.19; `broadcast` was slower
  still there).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from wam_jax.models.linear import linear
from wam_jax.models.ops import gelu
from wam_jax.models.partitioning import mesh_optional, normal_init, zeros_init


def first_map(size: int) -> tuple[int, int]:
    """(side of the first feature map, number of doublings): size = side * 2^doublings with side 3
    or 4 (64 -> 4 * 2^4, 96 -> 3 * 2^5); raises for other sizes."""
    doublings = 0
    while size > 4 and size % 2 == 0:
        size, doublings = size // 2, doublings + 1
    if size not in (3, 4):
        raise ValueError("not 3 or 4 x a power of two")
    return size, doublings


def check_size(size: int, image_size: int) -> None:
    """`model.decoder.size`: 0 (no decoder) or 3 or 4 x 2^k dividing the image size."""
    if size == 0:
        return
    try:
        first_map(size)
        ok = image_size % size == 0
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"model.decoder.size={size}: expected 0 (no decoder) or 3 or 4 x a power of two "
                         f"that divides model.image_size={image_size} (e.g. {min(32, image_size)})")


KINDS = ("upsample", "broadcast")
BROADCAST_DOUBLINGS = 2  # 'broadcast' works at size / 4, then doubles twice


class FrameDecoder(nnx.Module):
    """latents `[..., N, D]` -> frames `[..., size, size, 3]` (normalized pixels, as the encoder's input)."""

    @mesh_optional
    def __init__(self, tokens: int, latent_dim: int, size: int, width: int, *, kind: str = "upsample",
                 rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32):
        if kind not in KINDS:
            raise ValueError(f"model.decoder.kind must be one of {KINDS}, got {kind!r}")
        self.size, self.width, self.kind = int(size), int(width), kind
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        d_in = tokens * latent_dim
        self.first, stages = first_map(self.size)

        def conv(c_in: int, c_out: int, std: float | None = None) -> nnx.Conv:
            return nnx.Conv(c_in, c_out, (3, 3), padding="SAME",
                            kernel_init=normal_init((None, None, "conv_in", None), std or (9 * c_in) ** -0.5),
                            bias_init=zeros_init((None,)), **kw)

        if kind == "broadcast":
            stages = min(stages, BROADCAST_DOUBLINGS)
            self.first = self.size >> stages
            self.inp = linear(d_in, width, ("embed", "mlp"), stddev=d_in**-0.5, **kw)
            self.mix = nnx.List([conv(width + 2, width), conv(width, width)])
        else:
            self.inp = linear(d_in, self.first**2 * width, ("embed", "mlp"), stddev=d_in**-0.5, **kw)
            self.mix = nnx.List([])
        widths = [max(8, width // 2 ** i) for i in range(stages + 1)]
        self.convs = nnx.List([nnx.List([conv(widths[i], widths[i + 1]), conv(widths[i + 1], widths[i + 1])])
                               for i in range(stages)])
        self.out = conv(widths[-1], 3)

    def __call__(self, z: jax.Array) -> jax.Array:
        lead = z.shape[:-2]
        h = gelu(self.inp(z.reshape(-1, z.shape[-2] * z.shape[-1])))
        f = self.first
        if self.kind == "broadcast":
            axis = jnp.linspace(-1.0, 1.0, f, dtype=h.dtype)
            coords = jnp.stack(jnp.meshgrid(axis, axis, indexing="ij"), axis=-1)  # [f, f, 2] (row, col)
            h = jnp.concatenate([jnp.broadcast_to(h[:, None, None, :], (h.shape[0], f, f, self.width)),
                                 jnp.broadcast_to(coords, (h.shape[0], f, f, 2))], axis=-1)
            for conv in self.mix:
                h = gelu(conv(h))
        else:
            h = h.reshape(-1, f, f, self.width)
        for first, second in self.convs:
            h = jax.image.resize(h, (h.shape[0], 2 * h.shape[1], 2 * h.shape[2], h.shape[3]), "nearest")
            h = gelu(second(gelu(first(h))))
        return self.out(h).astype(jnp.float32).reshape(*lead, self.size, self.size, 3)


def downsample(video: jax.Array, size: int) -> jax.Array:
    """Normalized frames `[..., H, W, 3]` -> `[..., size, size, 3]` by average pooling (the
    decoder's target; H and W are multiples of `size`)."""
    *lead, h, w, c = video.shape
    f = h // size
    return jnp.mean(video.reshape(*lead, size, f, w // f, f, c), axis=(-4, -2))
