"""`ConvStem`: the encoder's tokens from stride-2 3x3 convolutions instead of one patch matmul
(`model.stem='conv'`).

Why: a patch embedding sees each `p x p` patch through one linear map, and a ViT trained from
scratch on little data is slow to learn shapes that sit inside patches or straddle them (PushT's
T is about 2 x 2 patches at 64 px, its stem 4 px wide: no encoder with the patch stem learned the
block's angle, BENCHMARKS.md §11.12-11.16). A stack of small convolutions ("early convolutions",
Xiao et al. 2021) gives the tokens local edges and orientations first (at patch 8 and width 128,
about a fifth more encoder FLOPs; 1.4x the forward time on a 2-core CPU), and yields the same
`H/p x W/p` token grid, so everything after the stem (blocks, pooling, predictor, planner,
export) is unchanged.

`log2(p)` stages of `Conv 3x3 stride 2 -> LayerNorm over channels -> GELU` (channels doubling up
to the encoder width), then a 1x1 projection to the width. Per frame: with `tubelet = 2` a clip's
two frames per tubelet are stemmed alone and averaged, so a frame repeated over the tubelet
(`embed_single_frames`, V-JEPA 2-AC's per-frame encoding) gives that frame's tokens. Not a V-JEPA 2
architecture: its checkpoints convert only into the patch stem.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from wam_jax.models.blocks import layer_norm
from wam_jax.models.linear import linear
from wam_jax.models.ops import gelu
from wam_jax.models.partitioning import mesh_optional, normal_init, zeros_init

STEMS = ("patch", "conv")


def stem_stages(patch_size: int) -> int:
    """Stride-2 stages that reach a `patch_size` stride (`log2`); raises unless a power of two >= 2."""
    stages = patch_size.bit_length() - 1
    if patch_size < 2 or 2**stages != patch_size:
        raise ValueError(f"model.stem='conv' needs model.patch_size to be a power of two >= 2 "
                         f"(one stride-2 convolution per doubling), got {patch_size}")
    return stages


class ConvStem(nnx.Module):
    """frames -> `[.., H/p, W/p, width]` tokens; the interface of `encoder.PatchEmbed`."""

    @mesh_optional
    def __init__(self, patch_size: int, tubelet: int, in_channels: int, dim: int, *, rngs: nnx.Rngs,
                 dtype=jnp.float32, param_dtype=jnp.float32):
        stages = stem_stages(patch_size)
        self.patch_size, self.tubelet, self.dtype = patch_size, tubelet, dtype
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        widths = [in_channels] + [max(16, dim // 2 ** (stages - 1 - i)) for i in range(stages)]
        self.convs = nnx.List([
            nnx.Conv(widths[i], widths[i + 1], (3, 3), strides=(2, 2), padding="SAME",
                     kernel_init=normal_init(("patch", "patch", "conv_in", None), (9 * widths[i]) ** -0.5),
                     bias_init=zeros_init((None,)), **kw)
            for i in range(stages)])
        self.norms = nnx.List([layer_norm(w, **kw) for w in widths[1:]])
        self.proj = linear(widths[-1], dim, (None, "embed"), stddev=widths[-1] ** -0.5, **kw)

    def embed_single_frames(self, frames: jax.Array) -> jax.Array:
        """`[B, H, W, C]` -> `[B, H/p, W/p, D]`."""
        h = frames.astype(self.dtype)
        for conv, norm in zip(self.convs, self.norms, strict=True):
            h = gelu(norm(conv(h)))
        return self.proj(h).astype(self.dtype)

    def __call__(self, video: jax.Array) -> jax.Array:
        """`[B, T, H, W, C]` (T a multiple of tubelet) -> `[B, T/tubelet, H/p, W/p, D]`, the frames
        of a tubelet averaged after the stem."""
        b, t, h, w, c = video.shape
        y = self.embed_single_frames(video.reshape(b * t, h, w, c))
        y = y.reshape(b, t // self.tubelet, self.tubelet, *y.shape[1:])
        return jnp.mean(y, axis=2).astype(self.dtype)
