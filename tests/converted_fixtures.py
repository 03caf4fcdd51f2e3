"""Writes small converted datasets (the real on-disk format) for loader tests and benchmarks.

Episodes are built so tests can recover what the loader read: frame `t` of episode `e` has
`proprio[t, 0] = t` and `proprio[t, 1] = e`, and the default stats are mean 0 / std 1000 so the
normalized proprio is exactly `(t, e) / 1000`. Actions are `action[t, d] = (d + 1) * (t + 1)`; a
privileged state, when asked for, `(t, -e)` (normalized the same way).
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from data_pipelines import records

PROPRIO_SCALE = 1000.0


def _jpeg(pixels: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def frame_pixels(episode: int, t: int, image_size: tuple[int, int], texture: bool,
                 rng: np.random.Generator | None = None) -> np.ndarray:
    """uint8 [H, W, 3]. Flat colour (R = t, G = episode) or, with `texture`, a moving smooth
    pattern plus noise that costs as much to decode as a camera frame."""
    h, w = image_size
    if not texture:
        px = np.empty((h, w, 3), np.uint8)
        px[..., 0] = (t * 7) % 256
        px[..., 1] = (episode * 13) % 256
        px[..., 2] = 128
        return px
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    phase = 0.15 * t + episode
    base = np.stack([
        np.sin(xx / 9.0 + phase), np.cos(yy / 7.0 - phase), np.sin((xx + yy) / 13.0 + 2 * phase)
    ], axis=-1)
    noise = (rng or np.random.default_rng(episode * 100003 + t)).normal(0, 0.25, (h, w, 3))
    return np.clip((base + noise) * 60 + 128, 0, 255).astype(np.uint8)


def write_converted_dataset(
    directory: str,
    *,
    name: str = "toy",
    kind: str = "robot",
    embodiment: str | None = None,
    episode_lengths: Sequence[int] = (12, 12, 12, 12, 12, 12),
    fps: float = 10.0,
    image_size: tuple[int, int] = (32, 32),
    action_dim: int = 3,
    proprio_dim: int = 4,
    privileged_dim: int = 0,
    action_is_delta: Sequence[bool] | None = None,
    stats: dict[str, Any] | None = None,
    num_shards: int = 2,
    texture: bool = False,
    static: bool = False,
    index_in_json: bool = False,
    jpeg_quality: int = 90,
) -> str:
    """Writes `directory` as a converted dataset; returns the directory."""
    os.makedirs(directory, exist_ok=True)
    if kind == "video":
        action_dim = proprio_dim = privileged_dim = 0
    n = len(episode_lengths)
    num_shards = max(1, min(num_shards, n))
    shards = [records.shard_name(i, num_shards) for i in range(num_shards)]
    ids = [f"{name}-ep{e:04d}" for e in range(n)]
    rng = np.random.default_rng(0)
    for s, shard in enumerate(shards):
        writer = records.ShardWriter(os.path.join(directory, shard))
        for e in range(s * n // num_shards, (s + 1) * n // num_shards):
            length = int(episode_lengths[e])
            t = np.arange(length, dtype=np.float32)
            action = proprio = None
            if action_dim:
                action = (t[:, None] + 1) * np.arange(1, action_dim + 1, dtype=np.float32)[None, :]
            if proprio_dim:
                proprio = np.zeros((length, proprio_dim), np.float32)
                proprio[:, 0] = t
                if proprio_dim > 1:
                    proprio[:, 1] = e
            privileged = None
            if privileged_dim:
                privileged = np.zeros((length, privileged_dim), np.float32)
                privileged[:, 0] = t
                if privileged_dim > 1:
                    privileged[:, 1] = -e
            if static:  # every frame of the episode is the same image (same JPEG bytes)
                frames = [_jpeg(frame_pixels(e, 0, image_size, texture, rng), jpeg_quality)] * length
            else:
                frames = [_jpeg(frame_pixels(e, i, image_size, texture, rng), jpeg_quality)
                          for i in range(length)]
            writer.write(records.Episode(
                episode_id=ids[e], frames=frames, action=action, proprio=proprio, privileged=privileged,
                language=f"task {e}", fps=fps, meta={"episode": e},
            ))
        writer.close()
    info: dict[str, Any] = {
        "format": records.FORMAT_NAME,
        "version": records.FORMAT_VERSION,
        "name": name,
        "kind": kind,
        "embodiment": embodiment or name,
        "num_episodes": n,
        "num_frames": int(sum(episode_lengths)),
        "image_size": list(image_size),
        "fps": fps,
        "action_dim": action_dim,
        "proprio_dim": proprio_dim,
        "privileged_dim": privileged_dim or None,
        "action_keys": [f"a{d}" for d in range(action_dim)],
        "shards": shards,
    }
    if action_is_delta is not None:
        info["action_is_delta"] = [bool(x) for x in action_is_delta]
    if index_in_json:
        info["episode_lengths"] = [int(x) for x in episode_lengths]
        info["episode_ids"] = ids
    records.write_json_atomic(os.path.join(directory, records.DATASET_JSON), info)

    def unit(dim: int) -> dict[str, Any] | None:
        if not dim:
            return None
        return {"mean": [0.0] * dim, "std": [PROPRIO_SCALE] * dim,
                "q01": [-PROPRIO_SCALE] * dim, "q99": [PROPRIO_SCALE] * dim}

    if stats is None:
        stats = {"action": unit(action_dim), "proprio": unit(proprio_dim), "privileged": unit(privileged_dim)}
    records.write_json_atomic(os.path.join(directory, records.STATS_JSON), stats)
    records.write_json_atomic(os.path.join(directory, records.MANIFEST_JSON),
                              {"num_episodes": n, "skipped": []})
    return directory


def decode_windows(batch: dict[str, np.ndarray]) -> list[tuple[int, int]]:
    """(episode, first frame) of every example of a batch from a fixture dataset with proprio."""
    p = batch["proprio"] * PROPRIO_SCALE
    return [(int(round(p[i, 0, 1])), int(round(p[i, 0, 0]))) for i in range(p.shape[0])]
