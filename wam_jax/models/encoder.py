"""The video ViT encoder, architecturally identical to V-JEPA 2's so its checkpoints convert.

Tubelet patch embedding (V-JEPA 2's Conv3d, written as one matmul over each `tubelet x p x p x C`
patch; or `model.stem='conv'`, a few stride-2 convolutions to the same token grid:
`models/conv_stem.py`) -> pre-norm blocks with 3D RoPE (or fixed 3D sin-cos added to the tokens) -> final
LayerNorm (eps 1e-6). Two ways to run it:

- `__call__`: the V-JEPA 2 encoder: full spatio-temporal attention over the clip's
  `(T / tubelet) * N` tokens; `keep_idx` keeps only some tokens (masked self-supervision), which
  keep their true positions.
- `encode_frames`: per-step latents for the world model: every frame is encoded alone (frames
  folded into the batch; with tubelet 2 each frame fills both tubelet slots, as V-JEPA 2-AC does),
  so step t's latents depend on frame t only. With `model.pool.kind='mean'` a frame's tokens are
  mean-pooled and projected (LeWM's pooled latents) to one vector: `N = 1`, `D = model.pool.dim`;
  with `'grid'` they are average-pooled over `pool.grid x pool.grid` regions of the patch grid and
  each region projected: `N = pool.grid^2` vectors that keep where things are.

Preprocessing spec (also what `jax.export` artifacts document): RGB uint8 `[B, T, H, W, 3]` ->
`normalize_video` (scale to [0, 1], then ImageNet mean/std) -> float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
from flax import nnx

from wam_jax import sharding
from wam_jax.models.attention_pool import AttentionPool
from wam_jax.models.blocks import BlockStack, layer_norm
from wam_jax.models.conv_stem import STEMS, ConvStem
from wam_jax.models.linear import linear
from wam_jax.models.ops import gelu
from wam_jax.models.partitioning import ACT_AXES, mesh_optional, ones_init, zeros_init
from wam_jax.models.positions import grid_positions, rope_3d, sincos_3d

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
POS_EMBS = ("rope", "sincos")
POOLS = ("none", "mean", "grid", "attn")


def pool_grid(config: mlc.ConfigDict) -> int:
    """Regions per side of a frame's pooled latents (`model.pool`): `pool.grid` for 'grid', 1 for
    'mean' and 'attn' (one vector per frame) and for 'none' (unused)."""
    return int(config.pool.get("grid", 1)) if str(config.pool.kind) == "grid" else 1


class Projector(nnx.Module):
    """`Linear -> BatchNorm -> GELU -> Linear`: the pooled frame vector's head (LeWM's projector).

    The BatchNorm is what lets an end-to-end encoder start spread out: mean-pooled tokens of
    frames that differ in a few patches are nearly equal, and normalizing each hidden feature over
    the batch removes the shared part at once (a per-sample LayerNorm cannot; on PushT it stayed
    collapsed at effective rank 1.0, BENCHMARKS.md §11). `train=True` (the training encoder)
    normalizes with the batch and updates the running statistics; otherwise (targets, inference,
    export) the running statistics are used, so a latent never depends on the rest of its batch.
    """

    @mesh_optional
    def __init__(self, width: int, hidden: int, dim: int, *, rngs: nnx.Rngs, dtype=jnp.float32,
                 param_dtype=jnp.float32):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.dim = dim
        self.fc1 = linear(width, hidden, ("embed", "mlp"), stddev=width**-0.5, **kw)
        self.norm = nnx.BatchNorm(hidden, momentum=0.99, epsilon=1e-5, scale_init=ones_init(("norm",)),
                                  bias_init=zeros_init(("norm",)), **kw)
        self.fc2 = linear(hidden, dim, ("mlp", "embed"), stddev=hidden**-0.5, **kw)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        h = self.fc1(x)
        lead = h.shape[:-1]
        h = self.norm(h.reshape(-1, h.shape[-1]), use_running_average=not train).reshape(*lead, -1)
        return self.fc2(gelu(h))


def normalize_video(video_uint8: jax.Array | np.ndarray) -> jax.Array:
    """uint8 RGB `[..., H, W, 3]` -> float32 `(x / 255 - mean) / std` with ImageNet mean/std (the
    statistics V-JEPA 2 was trained with)."""
    if video_uint8.dtype != jnp.uint8:
        raise ValueError(f"normalize_video expects uint8 RGB frames, got dtype {video_uint8.dtype}")
    if video_uint8.shape[-1] != 3:
        raise ValueError(
            f"normalize_video expects [..., H, W, 3] RGB frames, got shape {video_uint8.shape}"
        )
    x = jnp.asarray(video_uint8).astype(jnp.float32) / 255.0
    return (x - jnp.asarray(IMAGENET_MEAN, jnp.float32)) / jnp.asarray(IMAGENET_STD, jnp.float32)


def _dtype(name: str | jnp.dtype, field: str) -> jnp.dtype:
    try:
        return jnp.dtype(name)
    except TypeError as e:
        raise ValueError(f"model config {field}={name!r} is not a dtype name") from e


class PatchEmbed(nnx.Module):
    """V-JEPA 2's `Conv3d(kernel = stride = (tubelet, p, p))` as a matmul per tubelet patch.

    `kernel [tubelet, p, p, C, D]` (= torch `weight[D, C, tubelet, p, p]` transposed), `bias [D]`.
    """

    @mesh_optional
    def __init__(
        self,
        patch_size: int,
        tubelet: int,
        in_channels: int,
        dim: int,
        *,
        rngs: nnx.Rngs,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
    ):
        self.patch_size = patch_size
        self.tubelet = tubelet
        self.dtype = dtype
        shape = (tubelet, patch_size, patch_size, in_channels, dim)
        kernel_init = nnx.with_partitioning(
            nnx.initializers.truncated_normal(stddev=0.02),
            ("patch", "patch", "patch", "conv_in", "embed"),
        )
        self.kernel = nnx.Param(kernel_init(rngs.params(), shape, param_dtype))
        self.bias = nnx.Param(
            nnx.with_partitioning(nnx.initializers.zeros_init(), ("embed",))(
                rngs.params(), (dim,), param_dtype
            )
        )

    def __call__(self, video: jax.Array) -> jax.Array:
        """`[B, T, H, W, C]` (T a multiple of tubelet) -> `[B, T/tubelet, H/p, W/p, D]`."""
        b, t, h, w, c = video.shape
        p, u = self.patch_size, self.tubelet
        x = video.astype(self.dtype).reshape(b, t // u, u, h // p, p, w // p, p, c)
        kernel = self.kernel[...].astype(self.dtype)
        y = jnp.einsum("btuhpwqc,upqcd->bthwd", x, kernel, preferred_element_type=jnp.float32)
        return (y + self.bias[...]).astype(self.dtype)

    def embed_single_frames(self, frames: jax.Array) -> jax.Array:
        """`[B, H, W, C]` -> `[B, H/p, W/p, D]`, each frame repeated over the tubelet: the same as
        `__call__` on `tubelet` copies of the frame (one matmul with the kernel summed over time)."""
        b, h, w, c = frames.shape
        p = self.patch_size
        x = frames.astype(self.dtype).reshape(b, h // p, p, w // p, p, c)
        kernel = jnp.sum(self.kernel[...], axis=0).astype(self.dtype)
        y = jnp.einsum("bhpwqc,pqcd->bhwd", x, kernel, preferred_element_type=jnp.float32)
        return (y + self.bias[...]).astype(self.dtype)


class VideoEncoder(nnx.Module):
    """Video ViT encoder (V-JEPA 2 architecture) built from a model config (`config.model`).

    Uses `image_size, patch_size, stem ('patch'|'conv'), tubelet (1|2), in_channels, pos_emb ('rope'|'sincos'),
    encoder.{width, depth, heads, mlp_ratio}, dtype, param_dtype, remat, scan_layers, scan_unroll,
    attention`, `encoder.norm_eps` and `encoder.qkv_bias` (converted V-JEPA 2 configs set their
    checkpoint's values).
    Parameters: `patch_embed.{kernel,bias}`, `blocks` (a `blocks.BlockStack`), `norm.{scale,bias}`,
    and with `pool.kind='mean'`, `'grid'` or `'attn'` the `projector` (`pool.hidden`, `pool.dim`,
    `pool.grid`); with 'attn' also `attn_pool` (`models/attention_pool.py`).
    """

    @mesh_optional
    def __init__(self, config: mlc.ConfigDict, *, rngs: nnx.Rngs):
        enc = config.encoder
        if config.tubelet not in (1, 2):
            raise ValueError(f"model config tubelet must be 1 or 2, got {config.tubelet}")
        if config.pos_emb not in POS_EMBS:
            raise ValueError(
                f"model config pos_emb must be one of {POS_EMBS}, got {config.pos_emb!r}"
            )
        if config.image_size % config.patch_size:
            raise ValueError(
                f"model config image_size {config.image_size} is not a multiple of "
                f"patch_size {config.patch_size}"
            )
        if enc.width % enc.heads:
            raise ValueError(
                f"model config encoder.width {enc.width} is not a multiple of encoder.heads {enc.heads}"
            )
        self.image_size = int(config.image_size)
        self.patch_size = int(config.patch_size)
        self.tubelet = int(config.tubelet)
        self.in_channels = int(config.in_channels)
        self.pos_emb = str(config.pos_emb)
        self.width = int(enc.width)
        self.heads = int(enc.heads)
        self.depth = int(enc.depth)
        self.dtype = _dtype(config.dtype, "dtype")
        param_dtype = _dtype(config.param_dtype, "param_dtype")
        norm_eps = float(enc.norm_eps)
        kw = dict(dtype=self.dtype, param_dtype=param_dtype)

        stem = str(config.stem)
        if stem not in STEMS:
            raise ValueError(f"model config stem must be one of {STEMS}, got {stem!r}")
        self.patch_embed = (PatchEmbed if stem == "patch" else ConvStem)(
            self.patch_size, self.tubelet, self.in_channels, self.width, rngs=rngs, **kw
        )
        self.blocks = BlockStack(
            self.depth,
            self.width,
            self.heads,
            float(enc.mlp_ratio),
            rngs=rngs,
            scan=bool(config.scan_layers),
            scan_unroll=int(config.scan_unroll),
            remat=str(config.remat),
            qkv_bias=bool(enc.qkv_bias),
            attention_impl=str(config.attention),
            norm_eps=norm_eps,
            **kw,
        )
        self.norm = layer_norm(self.width, rngs=rngs, eps=norm_eps, **kw)
        self.pool = str(config.pool.kind)
        if self.pool not in POOLS:
            raise ValueError(f"model config pool.kind must be one of {POOLS}, got {self.pool!r}")
        self.pool_grid = pool_grid(config)
        g = self.image_size // self.patch_size
        if self.pool_grid < 1 or g % self.pool_grid:
            raise ValueError(f"model config pool.grid={self.pool_grid} must be >= 1 and divide the "
                             f"{g}x{g} patch grid (image_size / patch_size)")
        self.projector: Projector | None = nnx.data(None)
        self.attn_pool: AttentionPool | None = nnx.data(None)
        if self.pool == "attn":
            self.attn_pool = AttentionPool(self.width, self.heads, rngs=rngs, **kw)
        if self.pool != "none":
            hidden = int(config.pool.hidden) or 4 * self.width
            self.projector = Projector(self.width, hidden, int(config.pool.dim), rngs=rngs, **kw)

    @property
    def latent_shape(self) -> tuple[int, int]:
        """`(N, D)` of one frame's latents in `encode_frames`."""
        if self.projector is not None:
            return self.pool_grid ** 2, self.projector.dim
        return self.num_patches, self.width

    # ----------------------------------------------------------------------------- geometry

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid `(H / p, W / p)` of one frame."""
        g = self.image_size // self.patch_size
        return g, g

    @property
    def num_patches(self) -> int:
        """Tokens per frame (per tubelet slot): `N = (H / p) * (W / p)`."""
        gh, gw = self.grid
        return gh * gw

    def num_tokens(self, num_frames: int) -> int:
        """Tokens of a clip in `__call__`: `(T / tubelet) * N`."""
        return (num_frames // self.tubelet) * self.num_patches

    normalize_video = staticmethod(normalize_video)

    # ----------------------------------------------------------------------------- checks

    def _check_video(self, video: jax.Array, name: str, *, clip: bool) -> None:
        s = self.image_size
        expected = f"float [B, T, {s}, {s}, {self.in_channels}]"
        if clip and self.tubelet > 1:
            expected += f" with T a multiple of tubelet {self.tubelet}"
        if video.ndim != 5:
            raise ValueError(
                f"{name} must be {expected}, got rank {video.ndim} shape {video.shape}"
            )
        if not jnp.issubdtype(video.dtype, jnp.floating):
            raise ValueError(
                f"{name} must be {expected} (normalized, see normalize_video), got dtype {video.dtype}"
            )
        _, t, h, w, c = video.shape
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(
                f"{name} frames {h}x{w} are not divisible by patch_size {self.patch_size}; "
                f"expected {expected}"
            )
        if (h, w) != (s, s) or c != self.in_channels:
            raise ValueError(f"{name} must be {expected}, got shape {video.shape}")
        if clip and t % self.tubelet:
            raise ValueError(f"{name} must be {expected}, got T={t}")
        if t < 1:
            raise ValueError(f"{name} must have at least one frame, got shape {video.shape}")

    # ----------------------------------------------------------------------------- forward

    def _add_sincos(self, x: jax.Array, positions: jax.Array) -> jax.Array:
        """Adds the fixed sin-cos embedding (pos_emb='sincos'); it belongs to the token (added
        before any token dropping, as in V-JEPA)."""
        if self.pos_emb != "sincos":
            return x
        return x + sincos_3d(positions, self.width).astype(x.dtype)

    def _transform(self, x: jax.Array, positions: jax.Array) -> jax.Array:
        """Tokens `[B, L, D]` at grid positions `[L, 3]` or `[B, L, 3]` -> normed latents."""
        rope = None
        if self.pos_emb == "rope":
            rope = rope_3d(positions, self.width // self.heads)
        x = sharding.constrain(x, ACT_AXES)
        x = self.norm(self.blocks(x, rope=rope))
        return sharding.constrain(x, ACT_AXES)

    def __call__(self, video: jax.Array, *, keep_idx: jax.Array | None = None) -> jax.Array:
        """Clip encoder: `video` float `[B, T, H, W, 3]` (normalized) -> `[B, L, D]`,
        `L = (T / tubelet) * N`, tokens in (t, h, w) raster order.

        keep_idx: int `[B, K]` indices into those L tokens; only they enter the transformer (the
        others are dropped after the patch embedding), each at its true (t, h, w) position, and
        the output is `[B, K, D]` in `keep_idx` order. This is V-JEPA's context encoder: it equals
        gathering a full run's outputs only when K = L (attention sees fewer tokens otherwise).
        """
        self._check_video(video, "video", clip=True)
        b, t = video.shape[:2]
        gh, gw = self.grid
        x = self.patch_embed(video).reshape(b, -1, self.width)
        positions = grid_positions(t // self.tubelet, gh, gw)
        x = self._add_sincos(x, positions)
        if keep_idx is not None:
            if keep_idx.ndim != 2 or keep_idx.shape[0] != b:
                raise ValueError(
                    f"keep_idx must be int [B={b}, K] indices into the {x.shape[1]} tokens, "
                    f"got shape {keep_idx.shape}"
                )
            if not jnp.issubdtype(keep_idx.dtype, jnp.integer):
                raise ValueError(f"keep_idx must be an integer array, got dtype {keep_idx.dtype}")
            x = jnp.take_along_axis(x, keep_idx[..., None], axis=1)
            positions = positions[keep_idx]  # [B, K, 3]
        return self._transform(x, positions)

    def frame_tokens(self, video: jax.Array) -> jax.Array:
        """`video` float `[B, T, H, W, 3]` -> each frame's own transformer tokens `[B * T, gh * gw,
        width]` before any pooling: what pooled latents are made of (probes read them too)."""
        self._check_video(video, "video", clip=False)
        b, t, h, w, c = video.shape
        gh, gw = self.grid
        x = self.patch_embed.embed_single_frames(video.reshape(b * t, h, w, c))
        x = x.reshape(b * t, gh * gw, self.width)
        positions = grid_positions(1, gh, gw)
        return self._transform(self._add_sincos(x, positions), positions)

    def encode_frames(self, video: jax.Array, *, train: bool = False) -> jax.Array:
        """Per-step latents: `video` float `[B, T, H, W, 3]` -> `[B, T, N, D]`, every frame encoded
        on its own (folded into the batch; with tubelet 2 the frame fills both tubelet slots, as in
        V-JEPA 2-AC), so step t's latents depend on frame t only. Pooled: `[B, T, pool.grid^2,
        pool.dim]` (row-major regions; one vector for 'mean');
        `train=True` normalizes the projector with batch statistics (see `Projector`)."""
        b, t = video.shape[:2]
        gh, gw = self.grid
        z = self.frame_tokens(video)
        if self.attn_pool is not None:
            z = self.projector(self.attn_pool(z)[:, None], train=train)
        elif self.projector is not None:
            g = self.pool_grid  # average over (gh / g) x (gw / g) patches per region, row-major
            z = jnp.mean(z.reshape(b * t, g, gh // g, g, gw // g, self.width), axis=(2, 4))
            z = self.projector(z.reshape(b * t, g * g, self.width), train=train)
        return z.reshape(b, t, *self.latent_shape)
