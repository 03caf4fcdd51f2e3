"""Small deterministic RLDS builder directories that mimic real OXE datasets' feature layouts
(`tests/rlds_layouts.py`: the key names, nesting, dtypes and encodings of each), at tiny image
sizes. Images are generated "moving shapes" scenes, so converted frames can be checked against
the source.

`make_fixture` returns the builder directory together with the generating values and, per
episode, the standardized action / proprio / language that the registry must produce, written
out here independently of `oxe_registry` so tests compare two implementations.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field

import numpy as np

from data_pipelines.convert import rlds_writer as W
from tests.rlds_layouts import LAYOUTS, features_and_builder, moving_shapes

__all__ = ["LAYOUTS", "Fixture", "SourceEpisode", "corrupt_jpeg", "make_fixture", "moving_shapes"]


def corrupt_jpeg() -> bytes:
    """Bytes that start like a JPEG but cannot be decoded (truncated after the header)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()[:40]


@dataclass
class SourceEpisode:
    """What was written for one episode and what standardization must give for it."""

    images: np.ndarray  # uint8 [T, H, W, 3], the primary camera as generated
    wrist: np.ndarray | None  # uint8 [T, h, w, 3] or None
    action: np.ndarray  # float32 [T, A]: expected standardized action
    proprio: np.ndarray | None  # float32 [T, P]: expected standardized proprio
    language: str
    fault: str | None = None  # 'corrupt_image' | 'empty' | None


@dataclass
class Fixture:
    path: str
    layout: str
    file_format: str
    episodes: list[SourceEpisode] = field(default_factory=list)

    def valid(self, min_length: int = 1) -> list[tuple[int, SourceEpisode]]:
        return [
            (i, e)
            for i, e in enumerate(self.episodes)
            if e.fault is None and len(e.images) >= min_length
        ]


def make_fixture(
    root: str,
    layout: str,
    *,
    num_episodes: int = 4,
    length: int = 6,
    file_format: str = "tfrecord",
    encoding: str = "jpeg",
    image_hw: tuple[int, int] = (24, 32),
    num_shards: int | None = 2,
    faults: dict[int, str | int] | None = None,
    seed: int = 0,
    version: str | None = None,
) -> Fixture:
    """Writes a builder dir `root/<layout>/<version>` and returns it with the ground truth.

    Args:
      faults: per episode index, 'corrupt_image' (frame 1 stored as undecodable JPEG bytes),
        'empty' (no steps) or an int (that episode's length instead of `length`).
      num_shards: shard files to write (None: TFDS's choice).
    """
    if version is None:
        version = "1.0.0" if layout in ("bridge_dataset", "droid") else "0.1.0"
    faults = dict(faults or {})
    feats, build = features_and_builder(layout, image_hw, encoding)
    rng = np.random.default_rng(seed)
    H, Wd = image_hw
    fixture = Fixture(os.path.join(root, layout, version), layout, file_format)

    image_path = {
        "fractal20220817_data": "image",
        "kuka": "image",
        "bridge": "image",
        "bridge_dataset": "image_0",
        "language_table": "rgb",
        "taco_play": "rgb_static",
        "droid": "exterior_image_1_left",
        "pusht": "image",
    }[layout]

    def episodes():
        for e in range(num_episodes):
            fault = faults.get(e)
            T = 0 if fault == "empty" else (fault if isinstance(fault, int) else length)
            steps, top, truth = build(e, T, rng)
            if fault == "corrupt_image" and T > 1:
                steps[1]["observation"][image_path] = corrupt_jpeg()
            fixture.episodes.append(
                SourceEpisode(
                    images=np.stack([moving_shapes(e, t, H, Wd) for t in range(T)])
                    if T
                    else np.zeros((0, H, Wd, 3), np.uint8),
                    wrist=truth.get("wrist"),
                    action=np.asarray(truth["action"], np.float32),
                    proprio=np.asarray(truth["proprio"], np.float32),
                    language=truth["language"],
                    fault=fault if isinstance(fault, str) else None,
                )
            )
            yield W.episode_from_steps(steps, **top)

    W.write_rlds_dataset(
        fixture.path,
        layout,
        version,
        feats,
        episodes(),
        file_format=file_format,
        num_shards=None if num_shards is None else min(num_shards, num_episodes),
        overwrite=True,
    )
    return fixture
