"""Frames with the robot's state, sampled from a converted dataset (for fitting, not training).

`wam-plan --cost=scene` fits the latent directions the robot's own state explains
(`wam_jax.inference.state_subspace`) on frames and proprio the model trained on: a random sample
of frames of the dataset, decoded at the model's size as the loader does.
"""

from __future__ import annotations

import numpy as np

from data_pipelines import records
from data_pipelines.transforms import decode_crop_resize

FULL_FRAME = (0.0, 0.0, 1.0, 1.0)


def sample_frames(directory: str, *, image_size: int, count: int = 2048, seed: int = 0
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 frames `[n, S, S, 3]`, float32 proprio `[n, P]`): `count` frames (or all, if fewer)
    drawn uniformly from the episodes of `directory` that record proprio."""
    info = records.read_dataset_info(directory)
    files = records.shard_paths(directory, info)
    source = records.open_shards(files)
    episodes = [records.deserialize_episode(source[i]) for i in range(len(source))]
    episodes = [ep for ep in episodes if ep.proprio is not None and len(ep) > 0]
    if not episodes:
        raise records.DatasetFormatError(f"{directory}: no episode records proprio (the robot's state); "
                                         "sample frames from a labeled dataset")
    where = [(e, t) for e, ep in enumerate(episodes) for t in range(len(ep))]
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(where), size=min(count, len(where)), replace=False))
    reader = records.FrameReader(directory, info["shards"])
    frames, proprio = [], []
    for i in chosen:
        e, t = where[i]
        ep = episodes[e]
        frames.append(decode_crop_resize(reader.frames(ep, [t])[0], FULL_FRAME, image_size))
        proprio.append(ep.proprio[t])
    return np.stack(frames), np.asarray(proprio, np.float32)
