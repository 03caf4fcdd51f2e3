"""The training view (random resized crop, colour jitter) rendered on the accelerator
(`config.data.augment_on='device'`).

Why: with a clip's frames in their own records and libjpeg-turbo decoding them, what is left of a
clip's host CPU cost is the crop-resize and the jitter, frame by frame, at about twice the decode's
cost (BENCHMARKS.md §5.3). An accelerator host feeds many devices from a few cores; there the host
should decode and nothing more. With this mode the loader draws the same view from the same
random stream as on the host (`transforms.LoadClip.random_map`), keeps the frames at the stored
size and ships the view as 7 numbers per clip (`schema.view_vector`); `render_views` draws it
inside one jitted call on the global, sharded batch, before the train step sees it. The step, its
batch schema and the evaluation (center crop, on the host) are unchanged. The rendering matches
the host path's (Pillow's antialiased bilinear box resize, then `transforms.color_matrix`) within
one intensity level, which the jitter's factors can scale to a few.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from data_pipelines.schema import VIEW_KEY, VIEW_WIDTH
from data_pipelines.transforms import GRAY
from wam_jax import sharding


def _render_clip(frames: jax.Array, view: jax.Array, size: int) -> jax.Array:
    """uint8 [T, H, W, 3] and one view -> uint8 [T, size, size, 3]."""
    t, h, w, _ = frames.shape
    x0, y0, x1, y1, brightness, contrast, saturation = (view[i] for i in range(VIEW_WIDTH))
    scale = jnp.stack([size / ((y1 - y0) * h), size / ((x1 - x0) * w)])
    shift = -jnp.stack([y0 * h, x0 * w]) * scale
    x = jax.image.scale_and_translate(frames.astype(jnp.float32), (t, size, size, 3), (1, 2), scale, shift,
                                      method="linear", antialias=True)
    x = jnp.clip(jnp.round(x), 0.0, 255.0)  # Pillow rounds the resized frame to uint8 before the jitter
    gray = jnp.asarray(GRAY)
    mean_gray = jnp.mean(x, axis=(1, 2)) @ gray  # [T]: each frame's own, as the host path
    # brightness, then contrast around the mean gray, then saturation: transforms.color_matrix
    pixel_gray = (x @ gray)[..., None]
    x = (contrast * brightness * (saturation * x + (1.0 - saturation) * pixel_gray)
         + ((1.0 - contrast) * brightness * mean_gray)[:, None, None, None])
    return jnp.clip(jnp.round(x), 0.0, 255.0).astype(jnp.uint8)


def render_views(video: jax.Array, views: jax.Array, size: int) -> jax.Array:
    """uint8 [B, T, H, W, 3] frames at the stored size and float32 [B, 7] views -> uint8
    [B, T, size, size, 3], the clips the host path would have produced."""
    if views.shape != (video.shape[0], VIEW_WIDTH):
        raise ValueError(f"views have shape {views.shape}, expected [{video.shape[0]}, {VIEW_WIDTH}]")
    return jax.vmap(lambda f, v: _render_clip(f, v, size))(video, views)


def batch_placer(config: Any, mesh: Any, global_batch: int) -> Callable[[dict[str, np.ndarray]], dict[str, jax.Array]]:
    """The trainer's host batch -> global, sharded device batch: placed (`sharding.local_to_global`)
    and, with `config.data.augment_on='device'`, its views rendered in one jitted call that keeps
    the batch layout the train step expects (`sharding.batch_sharding`)."""

    def place(batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        return sharding.local_to_global(batch, mesh, global_batch)

    if str(config.data.augment_on) != "device":
        return place
    size = int(config.model.image_size)

    @jax.jit
    def render(batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        out = {k: v for k, v in batch.items() if k != VIEW_KEY}
        out["video"] = render_views(batch["video"], batch[VIEW_KEY], size)
        return {k: jax.lax.with_sharding_constraint(v, sharding.batch_sharding(mesh, v.ndim)) for k, v in out.items()}

    return lambda batch: render(place(batch))
