"""The batch schema shared by every source: missing modalities are masks, not code paths."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

BATCH_KEYS = (
    "video",
    "action",
    "action_mask",
    "proprio",
    "proprio_mask",
    "privileged",
    "privileged_mask",
    "timestep_mask",
    "embodiment_id",
    "source_id",
    "dt",
)


# `config.data.augment_on='device'`: training batches also carry each clip's view, float32 [B, 7]
# (crop box x0, y0, x1, y1 as fractions of the frame; brightness, contrast, saturation factors), and
# their frames at the stored size; the trainer renders the view on the device
# (`wam_jax.training.device_views`) and drops the key before the step sees the batch.
VIEW_KEY = "view"
VIEW_WIDTH = 7


def view_vector(box: tuple[float, float, float, float], jitter: tuple[float, float, float] | None) -> np.ndarray:
    """One clip's view: its crop box and its colour factors (1, 1, 1: none)."""
    return np.asarray((*box, *(jitter or (1.0, 1.0, 1.0))), np.float32)


def privileged_width(dim: int) -> int:
    """Columns of `privileged` for a model that reads `dim` dims out: at least one (masked), since
    Grain's shared-memory batching cannot hold an empty array."""
    return max(1, int(dim))


def batch_spec(batch_size: int, num_frames: int, image_size: int, action_dim: int, proprio_dim: int,
               privileged_dim: int = 0) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shapes and dtypes of one batch; the single source of truth for loader, model and tests."""
    b, t = batch_size, num_frames
    return {
        "video": ((b, t, image_size, image_size, 3), np.dtype(np.uint8)),
        "action": ((b, t - 1, action_dim), np.dtype(np.float32)),
        "action_mask": ((b, t - 1, action_dim), np.dtype(np.bool_)),
        "proprio": ((b, t, proprio_dim), np.dtype(np.float32)),
        "proprio_mask": ((b, t, proprio_dim), np.dtype(np.bool_)),
        # A simulator's state (PushT: the block's pose): a training target only, never an input.
        "privileged": ((b, t, privileged_width(privileged_dim)), np.dtype(np.float32)),
        "privileged_mask": ((b, t, privileged_width(privileged_dim)), np.dtype(np.bool_)),
        "timestep_mask": ((b, t), np.dtype(np.bool_)),
        "embodiment_id": ((b,), np.dtype(np.int32)),
        "source_id": ((b,), np.dtype(np.int32)),
        "dt": ((b,), np.dtype(np.float32)),
    }


def validate_batch(batch: Mapping[str, Any], *, num_frames: int | None = None, image_size: int | None = None,
                   action_dim: int | None = None, proprio_dim: int | None = None,
                   privileged_dim: int | None = None) -> None:
    """Raises ValueError naming the key and the expected shape; runs on host before any tracing."""
    missing = [k for k in BATCH_KEYS if k not in batch]
    if missing:
        raise ValueError(f"batch is missing keys {missing}; expected keys {list(BATCH_KEYS)}")
    video = batch["video"]
    if getattr(video, "ndim", None) != 5 or video.shape[-1] != 3:
        raise ValueError(f"batch['video'] has shape {getattr(video, 'shape', None)}, expected [B, T, H, W, 3]")
    if np.dtype(video.dtype) != np.uint8:
        raise ValueError(f"batch['video'] has dtype {video.dtype}, expected uint8")
    b, t, h, w, _ = video.shape
    if num_frames is not None and t != num_frames:
        raise ValueError(f"batch['video'] has {t} frames, expected T={num_frames}: shape [B, {num_frames}, H, W, 3]")
    if image_size is not None and (h, w) != (image_size, image_size):
        raise ValueError(
            f"batch['video'] has frames {h}x{w}, expected {image_size}x{image_size}: "
            f"shape [B, T, {image_size}, {image_size}, 3]"
        )
    a = batch["action"].shape[-1]
    p, k = batch["proprio"].shape[-1], batch["privileged"].shape[-1]
    spec = batch_spec(b, t, h, a if action_dim is None else action_dim, p if proprio_dim is None else proprio_dim,
                      k if privileged_dim is None else privileged_dim)
    for key, (shape, dtype) in spec.items():
        x = batch[key]
        if tuple(x.shape) != shape:
            raise ValueError(f"batch[{key!r}] has shape {tuple(x.shape)}, expected {list(shape)}")
        if np.dtype(x.dtype) != dtype:
            raise ValueError(f"batch[{key!r}] has dtype {x.dtype}, expected {dtype}")
