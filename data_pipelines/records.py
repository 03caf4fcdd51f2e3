"""The converted-dataset on-disk format: msgpack episode records in ArrayRecord shards.

One format for every source (OXE robots, Ego4D video, PushT) so the loader has a single code path.
Version 2 keeps each frame (a JPEG) in its own record of a `frames-*` shard beside its
`episodes-*` shard, so a clip reads its T frames, not the whole episode (600 frames for an Ego4D
chunk); the episode record holds everything else and where its frames are. Version 1 (frames
inside the episode record) stays readable. See docs/ARCHITECTURE.md for the field table.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import msgpack
import numpy as np

from data_pipelines import paths

FORMAT_NAME = "wam_jax.episodes"
FORMAT_VERSION = 2  # 2: frames in their own records; 1: frames inside the episode record
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


@dataclass(frozen=True)
class FrameRef:
    """Where a version-2 episode's frames are: records `start .. start + count - 1` of the frames
    shard `shard` (a file name beside the episode shard), wrist frames from `wrist_start`."""

    shard: str
    start: int
    count: int
    wrist_start: int | None = None


@dataclass
class Episode:
    """One episode (or one ≤60 s video chunk) of a converted dataset."""

    episode_id: str
    frames: list[bytes]
    action: np.ndarray | None = None  # float32 [T, A]: action taken at step t
    proprio: np.ndarray | None = None  # float32 [T, P]
    # A state the robot does not sense, recorded by a simulator (PushT: the block's pose): a
    # training target and probe ground truth, never a model input.
    privileged: np.ndarray | None = None  # float32 [T, K]
    # Each frame's latent in the space of the model that generated the episode (`wam-synth
    # --latents`: the imagined latents themselves), so a consumer of that model's encoder can
    # train on them without the decoder's round trip.
    latent: np.ndarray | None = None  # float32 [T, ...]
    wrist_frames: list[bytes] = field(default_factory=list)
    language: str = ""
    narrations: list[dict[str, Any]] = field(default_factory=list)
    fps: float = 10.0
    meta: dict[str, Any] = field(default_factory=dict)
    # Set on an episode record read without its frames (version 2): `frames` is then empty.
    frame_ref: FrameRef | None = None

    def __len__(self) -> int:
        return self.frame_ref.count if self.frame_ref is not None else len(self.frames)


def frames_shard_name(shard: str) -> str:
    """The frames shard beside an episode shard: `episodes-00000-of-00004.array_record` ->
    `frames-00000-of-00004.array_record` (any other name gets a `frames-` prefix)."""
    head, name = os.path.split(shard)
    name = "frames-" + (name[len("episodes-"):] if name.startswith("episodes-") else name)
    return os.path.join(head, name)


def serialize_episode(ep: Episode, ref: FrameRef) -> bytes:
    """The episode record without its frames, which `ref` locates."""
    n = len(ep.frames)
    for name, arr in (("action", ep.action), ("proprio", ep.proprio), ("privileged", ep.privileged)):
        if arr is not None and (arr.ndim != 2 or arr.shape[0] != n):
            raise ValueError(
                f"episode {ep.episode_id!r}: {name} has shape {arr.shape}, expected [{n}, D] "
                f"(one row per frame)"
            )
    if ep.latent is not None and (ep.latent.ndim < 2 or ep.latent.shape[0] != n):
        raise ValueError(f"episode {ep.episode_id!r}: latent has shape {ep.latent.shape}, expected [{n}, ...]")
    return msgpack.packb(
        {
            "episode_id": ep.episode_id,
            "num_frames": n,
            "frames_shard": ref.shard,
            "frames_start": ref.start,
            "wrist_start": ref.wrist_start,
            "action": encode_array(None if ep.action is None else ep.action.astype(np.float32)),
            "proprio": encode_array(None if ep.proprio is None else ep.proprio.astype(np.float32)),
            "privileged": encode_array(None if ep.privileged is None else ep.privileged.astype(np.float32)),
            "latent": encode_array(None if ep.latent is None else ep.latent.astype(np.float32)),
            "language": ep.language,
            "narrations": list(ep.narrations),
            "fps": float(ep.fps),
            "meta": dict(ep.meta),
        },
        use_bin_type=True,
    )


def deserialize_episode(data: bytes) -> Episode:
    """An episode record; a version-2 record comes without its frames (`frame_ref` says where)."""
    d = msgpack.unpackb(data, raw=False)
    ref = None
    if "frames" not in d:  # version 2
        ref = FrameRef(str(d["frames_shard"]), int(d["frames_start"]), int(d["num_frames"]),
                       None if d.get("wrist_start") is None else int(d["wrist_start"]))
    return Episode(
        episode_id=d["episode_id"],
        frames=d.get("frames") or [],
        wrist_frames=d.get("wrist_frames") or [],
        frame_ref=ref,
        action=decode_array(d.get("action")),
        proprio=decode_array(d.get("proprio")),
        privileged=decode_array(d.get("privileged")),
        latent=decode_array(d.get("latent")),
        language=d.get("language", ""),
        narrations=d.get("narrations") or [],
        fps=float(d.get("fps", 10.0)),
        meta=d.get("meta") or {},
    )


def shard_name(index: int, count: int) -> str:
    return f"episodes-{index:05d}-of-{count:05d}.array_record"


class ShardWriter:
    """Writes one episode shard and its frames shard atomically: `.tmp` files renamed on close
    (the frames shard first, so an episode shard never points at a missing file).

    An interrupted conversion leaves only `.tmp` files behind, which a resumed run redoes.
    """

    def __init__(self, path: str):
        from array_record.python import array_record_module

        self.path, self.frames_path = path, frames_shard_name(path)
        self._writer = array_record_module.ArrayRecordWriter(path + ".tmp", "group_size:1")
        # JPEGs do not compress: stored as they are, one frame per record.
        self._frames = array_record_module.ArrayRecordWriter(self.frames_path + ".tmp", "group_size:1,uncompressed")
        self.count = 0
        self.num_frame_records = 0

    def _write_frames(self, frames: Sequence[bytes]) -> int:
        start = self.num_frame_records
        for f in frames:
            self._frames.write(f)
        self.num_frame_records += len(frames)
        return start

    def write(self, ep: Episode) -> None:
        if ep.frame_ref is not None:
            raise ValueError(f"episode {ep.episode_id!r} was read without its frames; read it with iter_episodes")
        if ep.wrist_frames and len(ep.wrist_frames) != len(ep.frames):
            raise ValueError(f"episode {ep.episode_id!r}: {len(ep.wrist_frames)} wrist frames for "
                             f"{len(ep.frames)} frames (one per step, or none)")
        start = self._write_frames(ep.frames)
        wrist = self._write_frames(ep.wrist_frames) if ep.wrist_frames else None
        ref = FrameRef(os.path.basename(self.frames_path), start, len(ep.frames), wrist)
        self._writer.write(serialize_episode(ep, ref))
        self.count += 1

    def close(self) -> None:
        self._writer.close()
        self._frames.close()
        os.replace(self.frames_path + ".tmp", self.frames_path)
        os.replace(self.path + ".tmp", self.path)

    def abort(self) -> None:
        self._writer.close()
        self._frames.close()
        for p in (self.path + ".tmp", self.frames_path + ".tmp"):
            if os.path.exists(p):
                os.remove(p)


def shard_files(shard: str) -> tuple[str, str]:
    """The files one shard of a conversion writes (episode shard, frames shard)."""
    return shard, frames_shard_name(shard)


def write_json_atomic(path: str, obj: Any) -> None:
    paths.write_atomic(path, json.dumps(obj, indent=2, sort_keys=True))


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
    version = info.get("version", 1)
    if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise DatasetFormatError(f"{path}: field 'version' is {version!r}; this wam_jax reads versions 1 to "
                                 f"{FORMAT_VERSION} (a newer wam_jax wrote it, or re-convert the dataset)")
    for shard in info["shards"]:
        for f in shard_files(shard)[:1 if version == 1 else 2]:
            if not os.path.exists(os.path.join(directory, f)):
                raise DatasetFormatError(f"{path}: lists shard {shard!r}, but {f!r} does not exist")
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


def open_shards(files: Sequence[str]) -> Any:
    """One `ArrayRecordDataSource` over `files`; a shard that cannot be opened (truncated, its
    footer corrupt) is a DatasetFormatError naming it."""
    import grain

    try:
        return grain.sources.ArrayRecordDataSource(list(files))
    except RuntimeError as e:
        for p in files:
            try:
                grain.sources.ArrayRecordDataSource([p])
            except RuntimeError as shard_error:
                raise DatasetFormatError(f"{p}: this shard cannot be opened ({shard_error}); "
                                         f"re-convert the dataset") from e
        raise


def open_frames(path: str) -> Any:
    """An `ArrayRecordReader` over one frames shard, so a clip's frames come in one `read` call
    (one call per frame, as `ArrayRecordDataSource` makes them, costs several times as much:
    BENCHMARKS.md §5.3); a shard that cannot be opened is named as `open_shards` names it."""
    from array_record.python import array_record_module

    reader = array_record_module.ArrayRecordReader(path, "readahead_buffer_size:0")
    if not reader.ok():
        open_shards([path])  # raises with the reader's own reason
        raise DatasetFormatError(f"{path}: this shard cannot be opened; re-convert the dataset")
    return reader


class FrameReader:
    """Reads frames of a dataset's episodes by index: from the frames shards (version 2, opened
    on construction, so a damaged one is named at start-up) or from the record itself (version 1).
    Pickles without its open files (Grain's worker processes reopen them)."""

    def __init__(self, directory: str, shards: Sequence[str]):
        self.directory = directory
        self.names = [os.path.basename(frames_shard_name(s)) for s in shards
                      if os.path.exists(frames_shard_name(os.path.join(directory, s)))]
        self._open()

    def _open(self) -> None:
        self.sources = {n: open_frames(os.path.join(self.directory, n)) for n in self.names}

    def __getstate__(self) -> dict[str, Any]:
        return {"directory": self.directory, "names": self.names}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._open()

    def frames(self, ep: Episode, indices: Sequence[int], wrist: bool = False) -> list[bytes]:
        ref = ep.frame_ref
        if ref is None:
            own = ep.wrist_frames if wrist else ep.frames
            return [own[int(i)] for i in indices]
        if wrist and ref.wrist_start is None:
            raise IndexError(f"episode {ep.episode_id!r} has no wrist frames")
        if ref.shard not in self.sources:
            raise DatasetFormatError(f"{self.directory}: episode {ep.episode_id!r} points at frames shard "
                                     f"{ref.shard!r}, which is not beside its episode shard")
        start = ref.wrist_start if wrist else ref.start
        positions = [start + int(i) for i in indices]
        if positions and positions == list(range(positions[0], positions[0] + len(positions))):
            return list(self.sources[ref.shard].read(positions[0], positions[-1] + 1))  # one range
        return list(self.sources[ref.shard].read(positions)) if positions else []

    def episode(self, ep: Episode) -> Episode:
        """`ep` with its frames (and wrist frames) read in."""
        if ep.frame_ref is None:
            return ep
        every = range(len(ep))
        return replace(ep, frames=self.frames(ep, every),
                       wrist_frames=self.frames(ep, every, wrist=True) if ep.frame_ref.wrist_start is not None else [],
                       frame_ref=None)


def iter_episodes(files: Sequence[str]) -> Iterator[Episode]:
    """Sequential read of all episodes in the given shards, frames included (for stats, tests and
    eval)."""
    from array_record.python import array_record_data_source

    for p in files:
        src = array_record_data_source.ArrayRecordDataSource([p])
        reader = FrameReader(os.path.dirname(p), [os.path.basename(p)])
        for i in range(len(src)):
            yield reader.episode(deserialize_episode(src[i]))
