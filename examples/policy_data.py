"""The data of `examples/downstream_policy.py`: recorded demonstrations, hindsight goals, and
synthetic pairs written by `wam-synth --latents`.

A synthetic episode (VAG's generated data, kept in latent space) is one frame per model step:
each frame's latent as the generator imagined it, and the action it takes, reduced over the
model's stride as the loader reduces one. To train on it beside recorded demonstrations, the
demonstrations' labels follow the same rule (`--label_stride`): each frame's action is the one
reduced over the `stride` recorded steps from it, so a recorded and a generated frame mean the same
thing by their action.
"""

from __future__ import annotations

import io
import json
import os
from typing import Any

import numpy as np

START_CHECK = 8  # synthetic episodes whose real start frame is re-encoded to check the latent space
START_TOLERANCE = 0.1  # mean |z - z'| / mean |z| allowed between a start latent and its re-encoding


def stride_labels(action: np.ndarray, stride: int, is_delta: np.ndarray) -> np.ndarray:
    """float32 [T, A]: each step's action reduced over the `stride` recorded steps from it, by the
    loader's rule (`transforms.transition_actions`: delta dims summed, absolute dims the last);
    past the episode's end absolute dims hold the last action and delta dims add nothing."""
    from data_pipelines.transforms import transition_actions

    if stride == 1:
        return action.astype(np.float32)
    pad = np.where(is_delta, 0.0, action[-1])
    padded = np.concatenate([action, np.broadcast_to(pad, (stride - 1, action.shape[1]))])
    return transition_actions(padded, np.arange(len(action) + 1), stride, np.asarray(is_delta, bool))


def load_demos(path: str, image_size: int, max_episodes: int | None = None, label_stride: int = 1
               ) -> dict[str, Any]:
    """Frames (uint8, resized to `image_size`), actions (reduced over `label_stride` steps),
    proprio and episode index of a converted PushT dataset, and its fps."""
    from PIL import Image

    from data_pipelines import records

    info = records.read_dataset_info(path)
    if not info.get("action_dim"):
        raise ValueError(f"{path}: dataset has no actions (kind {info.get('kind')!r}); pass a labeled PushT dataset")
    is_delta = np.asarray(info.get("action_is_delta") or [False] * int(info["action_dim"]), bool)
    frames, actions, proprio, episode = [], [], [], []
    for i, ep in enumerate(records.iter_episodes(records.shard_paths(path, info))):
        if max_episodes is not None and i >= max_episodes:
            break
        for jpeg in ep.frames:
            img = Image.open(io.BytesIO(jpeg)).convert("RGB")
            if img.size != (image_size, image_size):
                img = img.resize((image_size, image_size), Image.Resampling.BICUBIC, reducing_gap=3.0)
            frames.append(np.asarray(img, np.uint8))
        actions.append(stride_labels(ep.action, label_stride, is_delta))
        proprio.append(ep.proprio if ep.proprio is not None else np.zeros((len(ep), 2), np.float32))
        episode += [i] * len(ep)
    return {"frames": np.stack(frames), "action": np.concatenate(actions).astype(np.float32),
            "proprio": np.concatenate(proprio).astype(np.float32), "episode": np.asarray(episode),
            "fps": float(info["fps"])}


def load_synthetic(path: str, encoder: Any, *, image_size: int, label_stride: int, demo_fps: float,
                   action_dim: int | None = None) -> dict[str, Any]:
    """Latents, actions and episode index of a `wam-synth --latents` dataset, checked to be
    usable beside demonstrations at `demo_fps` labeled over `label_stride` steps and encoded by
    `encoder`: its episodes must carry latents of the encoder's shape, at the stride's fps, and
    their real start frames must encode to their first latent (the generator's latent space)."""
    from data_pipelines import records
    from data_pipelines.frame_sample import FULL_FRAME
    from data_pipelines.transforms import decode_crop_resize

    info = records.read_dataset_info(path)
    if not info.get("synthetic"):
        raise ValueError(f"{path}: not a synthetic dataset (dataset.json has no \"synthetic\": true); "
                         "--synthetic takes the output of `wam-synth --latents`")
    if abs(float(info["fps"]) * label_stride - demo_fps) > 1e-3 * demo_fps:
        stride = demo_fps / float(info["fps"])
        raise ValueError(f"--label_stride={label_stride}: {path} has one frame per {stride:g} recorded steps "
                         f"({info['fps']:g} fps against the demonstrations' {demo_fps:g}); pass "
                         f"--label_stride={stride:g} (also to every run it is compared with)")
    source = records.open_shards(records.shard_paths(path, info))  # the records alone: no frames read
    eps = [records.deserialize_episode(source[i]) for i in range(len(source))]
    if action_dim is not None and eps[0].action.shape[1] != action_dim:
        raise ValueError(f"{path}: {eps[0].action.shape[1]} action dims, the demonstrations have {action_dim}")
    if any(ep.latent is None for ep in eps):
        raise ValueError(f"{path}: episodes without latents; write it with `wam-synth --latents`")
    shape = tuple(encoder(np.zeros((image_size, image_size, 3), np.uint8)).shape)
    if eps[0].latent.shape[1:] != shape:
        raise ValueError(f"{path}: latents of shape {eps[0].latent.shape[1:]} per frame, the encoder gives {shape}")
    reader = records.FrameReader(path, info["shards"])
    starts = np.stack([decode_crop_resize(reader.frames(ep, [0])[0], FULL_FRAME, image_size) for ep in eps[:START_CHECK]])
    first = np.stack([ep.latent[0] for ep in eps[:START_CHECK]])
    gap = float(np.abs(np.asarray(encoder(starts)) - first).mean() / max(np.abs(first).mean(), 1e-8))
    if gap > START_TOLERANCE:
        with open(os.path.join(path, records.MANIFEST_JSON)) as f:
            generator = json.load(f).get("generator", {}).get("workdir")
        raise ValueError(f"{path}: its start frames encode {gap:.2f} (relative L1) away from their stored latents: "
                         f"the latents are not this export's (generator: {generator}); pass its export")
    return {"latent": np.concatenate([ep.latent for ep in eps]).astype(np.float32),
            "action": np.concatenate([ep.action for ep in eps]).astype(np.float32),
            "episode": np.repeat(np.arange(len(eps)), [len(ep) for ep in eps]), "start_gap": gap}


def hindsight_spans(episode: np.ndarray, max_offset: int) -> np.ndarray:
    """Per frame, the largest goal offset inside its own episode (0 for an episode's last frame).

    `episode` holds each frame's episode index, frames of one episode contiguous (`load_demos`)."""
    last = np.searchsorted(episode, episode, side="right") - 1
    return np.minimum(max_offset, last - np.arange(len(episode)))


def sample_hindsight(rng: np.random.Generator, spans: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """`size` (frame, goal frame) index pairs: the goal 1..span steps later in the same episode."""
    valid = np.flatnonzero(spans > 0)
    idx = valid[rng.integers(0, len(valid), size)]
    return idx, idx + rng.integers(1, spans[idx] + 1)


def goal_batch(rng: np.random.Generator, size: int, real: tuple[np.ndarray, ...],
               synthetic: tuple[np.ndarray, ...] | None = None, weight: float = 0.0) -> tuple[np.ndarray, ...]:
    """(inputs, goal inputs, proprio, targets) of `size` hindsight pairs from `real` = (inputs,
    proprio, targets, spans); with `synthetic` = (latents, targets, spans), a binomial `weight`
    share of the rows comes from it instead, with zero proprio (generated episodes have none)."""
    k = 0 if synthetic is None else int(rng.binomial(size, weight))
    x, prop, y, spans = real
    idx, goal = sample_hindsight(rng, spans, size - k)
    batch = x[idx], x[goal], prop[idx], y[idx]
    if k:
        z, y_syn, spans_syn = synthetic
        i, g = sample_hindsight(rng, spans_syn, k)
        extra = z[i], z[g], np.zeros((k, prop.shape[1]), prop.dtype), y_syn[i]
        batch = tuple(np.concatenate(pair) for pair in zip(batch, extra, strict=True))
    return batch
