"""Frames (with the robot's state) and windows of frames, sampled from a converted dataset, for
fitting and generating, not training.

`wam-plan --cost=scene` fits the latent directions the robot's own state explains
(`wam_jax.inference.state_subspace`) on frames and proprio the model trained on: a random sample
of frames of the dataset, decoded at the model's size as the loader does. `wam-synth` starts its
episodes from windows of a video dataset's frames.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from data_pipelines import records
from data_pipelines.transforms import decode_crop_resize
from data_pipelines.window_index import frame_stride, read_episode_table

FULL_FRAME = (0.0, 0.0, 1.0, 1.0)


def draw_positions(directory: str, info: dict[str, Any], positions: np.ndarray, count: int, *, seed: int,
                   replace: bool = False) -> Iterator[tuple[int, records.Episode, int]]:
    """(record, episode, index) for `count` positions drawn uniformly over `positions[e]` valid
    start indices of each episode `e`, in record order; only the episodes drawn are read."""
    offsets = np.concatenate([[0], np.cumsum(positions)])
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(int(offsets[-1]), size=count, replace=replace))
    source = records.open_shards(records.shard_paths(directory, info))
    episodes: dict[int, records.Episode] = {}
    for i in chosen:
        record = int(np.searchsorted(offsets, i, side="right") - 1)
        if record not in episodes:
            episodes = {record: records.deserialize_episode(source[record])}  # chosen is sorted
        yield record, episodes[record], int(i - offsets[record])


def sample_frames(directory: str, *, image_size: int, count: int = 2048, seed: int = 0
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 frames `[n, S, S, 3]`, float32 proprio `[n, P]`): `count` frames (or all, if fewer)
    drawn uniformly from a labeled dataset; only the episodes drawn are read."""
    info = records.read_dataset_info(directory)
    if not info.get("proprio_dim"):
        raise records.DatasetFormatError(f"{os.path.join(directory, records.DATASET_JSON)}: no proprio "
                                         "(proprio_dim 0); sample frames from a labeled dataset")
    lengths = np.asarray(read_episode_table(directory, info).lengths)
    reader = records.FrameReader(directory, info["shards"])
    frames, proprio = [], []
    for record, ep, t in draw_positions(directory, info, lengths, min(count, int(lengths.sum())), seed=seed):
        if ep.proprio is None:
            raise records.DatasetFormatError(f"{directory}: record {record} ({ep.episode_id!r}) has no proprio")
        frames.append(decode_crop_resize(reader.frames(ep, [t])[0], FULL_FRAME, image_size))
        proprio.append(ep.proprio[t])
    return np.stack(frames), np.asarray(proprio, np.float32)


def sample_windows(directory: str, *, image_size: int, target_fps: float, length: int, count: int, seed: int = 0
                   ) -> tuple[np.ndarray, list[str]]:
    """(uint8 windows `[n, length, S, S, 3]`, names `EPISODE@FRAME`): `count` windows of `length`
    frames at the loader's stride for `target_fps`, their starts drawn uniformly over the episodes
    long enough to hold them (with replacement when there are fewer starts than `count`)."""
    info = records.read_dataset_info(directory)
    stride = frame_stride(float(info["fps"]), target_fps)
    span = (length - 1) * stride
    starts = np.maximum(np.asarray(read_episode_table(directory, info).lengths) - span, 0)
    if starts.sum() == 0:
        raise ValueError(f"{directory}: no episode has the {span + 1} frames a window of {length} frames "
                         f"{stride} apart (data.target_fps={target_fps:g}) needs")
    reader = records.FrameReader(directory, info["shards"])
    windows, names = [], []
    for _, ep, t in draw_positions(directory, info, starts, count, seed=seed, replace=count > starts.sum()):
        jpegs = reader.frames(ep, range(t, t + span + 1, stride))
        windows.append(np.stack([decode_crop_resize(f, FULL_FRAME, image_size) for f in jpegs]))
        names.append(f"{ep.episode_id}@{t}")
    return np.stack(windows), names
