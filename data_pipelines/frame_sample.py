"""Frames with the robot's state, sampled from a converted dataset (for fitting, not training).

`wam-plan --cost=scene` fits the latent directions the robot's own state explains
(`wam_jax.inference.state_subspace`) on frames and proprio the model trained on: a random sample
of frames of the dataset, decoded at the model's size as the loader does.
"""

from __future__ import annotations

import os

import numpy as np

from data_pipelines import records
from data_pipelines.transforms import decode_crop_resize
from data_pipelines.window_index import read_episode_table

FULL_FRAME = (0.0, 0.0, 1.0, 1.0)


def sample_frames(directory: str, *, image_size: int, count: int = 2048, seed: int = 0
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 frames `[n, S, S, 3]`, float32 proprio `[n, P]`): `count` frames (or all, if fewer)
    drawn uniformly from a labeled dataset; only the episodes drawn are read."""
    info = records.read_dataset_info(directory)
    if not info.get("proprio_dim"):
        raise records.DatasetFormatError(f"{os.path.join(directory, records.DATASET_JSON)}: no proprio "
                                         "(proprio_dim 0); sample frames from a labeled dataset")
    lengths = read_episode_table(directory, info).lengths
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(int(offsets[-1]), size=min(count, int(offsets[-1])), replace=False))
    source = records.open_shards(records.shard_paths(directory, info))
    reader = records.FrameReader(directory, info["shards"])
    frames, proprio, episodes = [], [], {}
    for i in chosen:
        record = int(np.searchsorted(offsets, i, side="right") - 1)
        if record not in episodes:
            episodes = {record: records.deserialize_episode(source[record])}  # chosen is sorted
        ep, t = episodes[record], int(i - offsets[record])
        if ep.proprio is None:
            raise records.DatasetFormatError(f"{directory}: record {record} ({ep.episode_id!r}) has no proprio")
        frames.append(decode_crop_resize(reader.frames(ep, [t])[0], FULL_FRAME, image_size))
        proprio.append(ep.proprio[t])
    return np.stack(frames), np.asarray(proprio, np.float32)
