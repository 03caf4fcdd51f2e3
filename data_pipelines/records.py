"""The converted-dataset on-disk format: msgpack episode records in ArrayRecord shards.

One format for every source (OXE robots, Ego4D video, PushT) so the loader has a single code path.
See docs/ARCHITECTURE.md for the field table.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

FORMAT_NAME = "wam_jax.episodes"
FORMAT_VERSION = 1
DATASET_JSON = "dataset.json"
STATS_JSON = "stats.json"
MANIFEST_JSON = "manifest.json"


class DatasetFormatError(ValueError):
    """A path given as a converted dataset is not one; the message names the path and field."""


def encode_array(x: np.ndarray | None) -> dict[str, Any] | None:
    if x is None:
        return None
    x = np.ascontiguousarray(x)
    return {"dtype": x.dtype.str, "shape": list(x.shape), "data": x.tobytes()}


def decode_array(d: dict[str, Any] | None) -> np.ndarray | None:
    if d is None:
        return None
    return np.frombuffer(d["data"], dtype=np.dtype(d["dtype"])).reshape(d["shape"])


@dataclass
class Episode:
    """One episode (or one ≤60 s video chunk) of a converted dataset."""

    episode_id: str
    frames: list[bytes]
    action: np.ndarray | None = None  # float32 [T, A]: action taken at step t
    proprio: np.ndarray | None = None  # float32 [T, P]
    wrist_frames: list[bytes] = field(default_factory=list)
    language: str = ""
    narrations: list[dict[str, Any]] = field(default_factory=list)
    fps: float = 10.0
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.frames)


def serialize_episode(ep: Episode) -> bytes:
    n = len(ep.frames)
    for name, arr in (("action", ep.action), ("proprio", ep.proprio)):
        if arr is not None and (arr.ndim != 2 or arr.shape[0] != n):
            raise ValueError(
                f"episode {ep.episode_id!r}: {name} has shape {arr.shape}, expected [{n}, D] "
                f"(one row per frame)"
            )
    return msgpack.packb(
        {
            "episode_id": ep.episode_id,
            "frames": list(ep.frames),
            "wrist_frames": list(ep.wrist_frames),
            "action": encode_array(None if ep.action is None else ep.action.astype(np.float32)),
            "proprio": encode_array(None if ep.proprio is None else ep.proprio.astype(np.float32)),
            "language": ep.language,
            "narrations": list(ep.narrations),
            "fps": float(ep.fps),
            "meta": dict(ep.meta),
        },
        use_bin_type=True,
    )


def deserialize_episode(data: bytes) -> Episode:
    d = msgpack.unpackb(data, raw=False)
    return Episode(
        episode_id=d["episode_id"],
        frames=d["frames"],
        wrist_frames=d.get("wrist_frames") or [],
        action=decode_array(d.get("action")),
        proprio=decode_array(d.get("proprio")),
        language=d.get("language", ""),
        narrations=d.get("narrations") or [],
        fps=float(d.get("fps", 10.0)),
        meta=d.get("meta") or {},
    )


def shard_name(index: int, count: int) -> str:
    return f"episodes-{index:05d}-of-{count:05d}.array_record"


class ShardWriter:
    """Writes one ArrayRecord shard atomically: a `.tmp` file renamed on close.

    An interrupted conversion leaves only `.tmp` files behind, which a resumed run redoes.
    """

    def __init__(self, path: str):
        from array_record.python import array_record_module

        self.path = path
        self.tmp_path = path + ".tmp"
        self._writer = array_record_module.ArrayRecordWriter(self.tmp_path, "group_size:1")
        self.count = 0

    def write(self, ep: Episode) -> None:
        self._writer.write(serialize_episode(ep))
        self.count += 1

    def close(self) -> None:
        self._writer.close()
        os.replace(self.tmp_path, self.path)

    def abort(self) -> None:
        self._writer.close()
        if os.path.exists(self.tmp_path):
            os.remove(self.tmp_path)


def write_json_atomic(path: str, obj: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def read_dataset_info(directory: str) -> dict[str, Any]:
    """Reads and validates `DIR/dataset.json`; raises DatasetFormatError naming what is wrong."""
    path = os.path.join(directory, DATASET_JSON)
    if not os.path.isdir(directory):
        raise DatasetFormatError(f"{directory}: not a directory (expected a converted dataset)")
    if not os.path.exists(path):
        raise DatasetFormatError(
            f"{directory}: no {DATASET_JSON}; this is not a converted wam_jax dataset "
            f"(run `wam-convert` on it first)"
        )
    try:
        with open(path) as f:
            info = json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetFormatError(f"{path}: not valid JSON ({e})") from e
    if info.get("format") != FORMAT_NAME:
        raise DatasetFormatError(f"{path}: field 'format' is {info.get('format')!r}, expected {FORMAT_NAME!r}")
    for key in ("name", "kind", "shards", "num_episodes", "image_size", "fps"):
        if key not in info:
            raise DatasetFormatError(f"{path}: missing field {key!r}")
    for shard in info["shards"]:
        if not os.path.exists(os.path.join(directory, shard)):
            raise DatasetFormatError(f"{path}: lists shard {shard!r}, which does not exist")
    return info


def read_stats(directory: str) -> dict[str, Any] | None:
    path = os.path.join(directory, STATS_JSON)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def shard_paths(directory: str, info: dict[str, Any] | None = None) -> list[str]:
    info = info or read_dataset_info(directory)
    return [os.path.join(directory, s) for s in info["shards"]]


def open_shards(paths: Sequence[str]) -> Any:
    """One `ArrayRecordDataSource` over `paths`; a shard that cannot be opened (truncated, its
    footer corrupt) is a DatasetFormatError naming it."""
    import grain

    try:
        return grain.sources.ArrayRecordDataSource(list(paths))
    except RuntimeError as e:
        for p in paths:
            try:
                grain.sources.ArrayRecordDataSource([p])
            except RuntimeError as shard_error:
                raise DatasetFormatError(f"{p}: this shard cannot be opened ({shard_error}); "
                                         f"re-convert the dataset") from e
        raise


def iter_episodes(paths: Sequence[str]) -> Iterator[Episode]:
    """Sequential read of all episodes in the given shards (for stats, tests and eval)."""
    from array_record.python import array_record_data_source

    for p in paths:
        src = array_record_data_source.ArrayRecordDataSource([p])
        for i in range(len(src)):
            yield deserialize_episode(src[i])
