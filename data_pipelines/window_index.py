"""Index of every valid clip window of a converted dataset, in O(number of episodes) memory.

A clip is `T = config.data.num_frames` frames taken every `stride` frames from one episode, where
`stride = max(1, round(source_fps / target_fps))`, so clips from sources recorded at different rates
cover about the same wall-clock span; the batch carries `dt = stride / source_fps` (seconds between
the frames actually shown). A clip starting at frame `s` covers frames `s, s + stride, ...,
s + (T - 1) * stride`, so an episode of `L` frames has `max(0, L - (T - 1) * stride)` windows
(every start frame is a window). Episodes shorter than one clip contribute none and are counted.

Instead of materialising (episode, start) pairs, the index keeps one window count per episode and
their running sum: a flat window index maps back with one `searchsorted`. One million episodes cost
~16 MB, whatever their length.

The train / held-out split is by a stable hash of `episode_id` (SHA-256, not Python's salted
`hash`), so it is identical on every host and every run, and eval never sees a training episode.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from data_pipelines import records

SPLITS = ("train", "eval")


def frame_stride(source_fps: float, target_fps: float) -> int:
    """Frames to step per clip frame: `max(1, round(source_fps / target_fps))`, halves rounded up.

    Python's `round` rounds halves to even (round(2.5) == 2); halves go up here so that e.g. 25 fps
    at a 10 fps target steps 3 frames (0.12 s) the same way 15 fps steps 2 (0.133 s).
    """
    if not (source_fps > 0 and math.isfinite(source_fps)):
        raise ValueError(f"source fps must be a positive number, got {source_fps!r}")
    if not (target_fps > 0 and math.isfinite(target_fps)):
        raise ValueError(f"config.data.target_fps must be a positive number, got {target_fps!r}")
    return max(1, math.floor(source_fps / target_fps + 0.5))


def heldout_mask(episode_ids: list[str], fraction: float) -> np.ndarray:
    """bool [E]: True for episodes in the held-out split; a pure function of each id."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"config.data.heldout_fraction must be in [0, 1), got {fraction!r}")
    if fraction == 0.0 or not episode_ids:
        return np.zeros(len(episode_ids), dtype=bool)
    u = np.fromiter(
        (int.from_bytes(hashlib.sha256(e.encode("utf-8")).digest()[:8], "little") for e in episode_ids),
        dtype=np.uint64,
        count=len(episode_ids),
    )
    return (u.astype(np.float64) / 2.0**64) < fraction


@dataclass(frozen=True)
class EpisodeTable:
    """Per-episode facts the index needs, in record order (shards in `dataset.json` order)."""

    lengths: np.ndarray  # int64 [E] frames per episode
    episode_ids: list[str]


def _scan_record(data: bytes, where: str) -> tuple[str, int]:
    """(episode_id, number of frames) of one record without unpacking the frames."""
    unpacker = msgpack.Unpacker(io.BytesIO(data), raw=False, max_buffer_size=max(len(data), 1 << 20))
    episode_id: str | None = None
    num_frames: int | None = None
    try:
        for _ in range(unpacker.read_map_header()):
            key = unpacker.unpack()
            if key == "episode_id":
                episode_id = unpacker.unpack()
            elif key == "num_frames":  # version 2
                num_frames = int(unpacker.unpack())
            elif key == "frames":  # version 1: the frames themselves
                num_frames = unpacker.read_array_header()
                if episode_id is not None:
                    break
                for _ in range(num_frames):
                    unpacker.skip()
            else:
                unpacker.skip()
            if episode_id is not None and num_frames is not None:
                break
    except (msgpack.UnpackException, ValueError, TypeError) as e:
        raise records.DatasetFormatError(f"{where}: not a msgpack episode record ({e})") from e
    if episode_id is None or num_frames is None:
        raise records.DatasetFormatError(f"{where}: record has no 'episode_id' or no 'num_frames' ('frames' list "
                                         "in version 1)")
    return str(episode_id), int(num_frames)


def read_episode_table(directory: str, info: dict[str, Any] | None = None) -> EpisodeTable:
    """Episode lengths and ids of a converted dataset.

    Fast path: `dataset.json` lists `episode_lengths` and `episode_ids` (record order). Otherwise
    every record is read once, parsing only its id and the length of its frame list.
    """

    info = info or records.read_dataset_info(directory)
    where = os.path.join(directory, records.DATASET_JSON)
    paths = records.shard_paths(directory, info)
    source = records.open_shards(paths) if paths else None
    num_records = len(source) if source is not None else 0
    if num_records != info["num_episodes"]:
        raise records.DatasetFormatError(
            f"{where}: 'num_episodes' is {info['num_episodes']} but its shards hold {num_records} records"
        )
    lengths_field, ids_field = info.get("episode_lengths"), info.get("episode_ids")
    if lengths_field is not None and ids_field is not None:
        if len(lengths_field) != num_records or len(ids_field) != num_records:
            raise records.DatasetFormatError(
                f"{where}: 'episode_lengths' ({len(lengths_field)}) and 'episode_ids' "
                f"({len(ids_field)}) must both have one entry per record ({num_records})"
            )
        return EpisodeTable(np.asarray(lengths_field, dtype=np.int64), [str(e) for e in ids_field])
    lengths = np.zeros(num_records, dtype=np.int64)
    ids: list[str] = []
    if source is not None:
        with source:
            for i in range(num_records):
                episode_id, n = _scan_record(source[i], f"{directory} record {i}")
                ids.append(episode_id)
                lengths[i] = n
    return EpisodeTable(lengths, ids)


@dataclass(frozen=True)
class WindowIndex:
    """Flat window index -> (record index, start frame) for one source and one split.

    Only episodes with at least one window in the split are kept, so `offsets` is strictly
    increasing and `searchsorted` lands on the right episode.
    """

    record: np.ndarray  # int64 [E'] record index (into the dataset's shards) of each kept episode
    offsets: np.ndarray  # int64 [E' + 1] exclusive running sum of window counts
    num_frames: int  # T
    stride: int  # frames between clip frames
    fps: float  # source frame rate
    split: str
    num_episodes: int  # episodes in the dataset (both splits)
    num_split_episodes: int  # episodes assigned to this split
    num_too_short: int  # of those, episodes shorter than one clip (no windows)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def dt(self) -> float:
        """Seconds between consecutive clip frames."""
        return self.stride / self.fps

    @property
    def span(self) -> int:
        """Frames covered by one clip, first to last inclusive."""
        return (self.num_frames - 1) * self.stride + 1

    def lookup(self, index: int) -> tuple[int, int]:
        """(record index, start frame) of flat window `index` in [0, len)."""
        n = len(self)
        if not 0 <= index < n:
            raise IndexError(f"window index {index} out of range [0, {n})")
        e = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return int(self.record[e]), int(index - self.offsets[e])

    def frame_indices(self, start: int) -> np.ndarray:
        """int64 [T]: the frames of the clip starting at `start`."""
        return start + self.stride * np.arange(self.num_frames, dtype=np.int64)

    def summary(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "num_windows": len(self),
            "num_episodes": self.num_episodes,
            "num_split_episodes": self.num_split_episodes,
            "num_indexed_episodes": int(self.record.shape[0]),
            "num_too_short": self.num_too_short,
            "stride": self.stride,
            "dt": self.dt,
        }


def build_window_index(
    table: EpisodeTable,
    *,
    num_frames: int,
    fps: float,
    target_fps: float,
    split: str,
    heldout_fraction: float,
) -> WindowIndex:
    """The window index of one split of one dataset (see module docstring)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if num_frames < 2:
        raise ValueError(f"config.data.num_frames must be >= 2 (a clip has T-1 transitions), got {num_frames}")
    stride = frame_stride(fps, target_fps)
    held = heldout_mask(table.episode_ids, heldout_fraction)
    in_split = held if split == "eval" else ~held
    span = (num_frames - 1) * stride + 1
    counts = np.where(in_split, np.maximum(table.lengths - span + 1, 0), 0)
    keep = np.flatnonzero(counts > 0)
    offsets = np.zeros(keep.shape[0] + 1, dtype=np.int64)
    np.cumsum(counts[keep], out=offsets[1:])
    return WindowIndex(
        record=keep.astype(np.int64),
        offsets=offsets,
        num_frames=num_frames,
        stride=stride,
        fps=float(fps),
        split=split,
        num_episodes=int(table.lengths.shape[0]),
        num_split_episodes=int(in_split.sum()),
        num_too_short=int((in_split & (table.lengths < span)).sum()),
    )
