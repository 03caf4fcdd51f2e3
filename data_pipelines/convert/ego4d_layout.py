"""Reads an Ego4D download: `ego4d.json`, the video files and the narrations.

The layout is what the official CLI writes (`ego4d --output_directory=ROOT --datasets full_scale
annotations --metadata`): `ROOT/ego4d.json` (some mirrors keep it in `ROOT/v2/`), the videos in
`ROOT/v2/{full_scale,video_540ss,clips}/<uid>.mp4` and the narrations in
`ROOT/v2/annotations/narration.json` as
`{video_uid: {"narration_pass_1": {"narrations": [{"timestamp_sec", "narration_text", ...}]}}}`.

Everything here is metadata only (no decoding), so it is cheap to call in the parent process of a
parallel conversion. Timestamps are "video time": seconds from the start of the parent video, the
time base of narrations; a clip carries its offset in that time.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from data_pipelines import paths

EGO4D_JSON = "ego4d.json"
NARRATION_JSON = "narration.json"
VIDEO_DIRS = ("full_scale", "video_540ss", "clips")
# Auto-detection order: the 540p downscale is the cheapest to decode and plenty for the small
# training resolutions; full_scale next; clips (a benchmark subset) last.
AUTO_ORDER = ("video_540ss", "full_scale", "clips")
SPLITS = ("train", "val", "test")
NARRATION_PASSES = ("narration_pass_1", "narration_pass_2")


class Ego4DLayoutError(ValueError):
    """The input is not a readable Ego4D layout; the message names the file and field."""


@dataclass(frozen=True)
class VideoEntry:
    """One video file to convert: a full video (`full_scale`/`video_540ss`) or a benchmark clip."""

    uid: str  # file stem: video_uid, or clip_uid for clips
    video_uid: str  # the parent video (narrations are keyed by it)
    split: str  # 'train' | 'val' | 'test' (see `video_split`)
    offset_sec: float = 0.0  # start of this file in parent-video time (clips); 0 for full videos
    duration_sec: float | None = None  # from the metadata; informational, decoding is trusted
    fps: float | None = None
    num_frames: int | None = None
    width: int | None = None
    height: int | None = None
    scenarios: tuple[str, ...] = ()


def video_split(entry: dict[str, Any]) -> str:
    """The split of a `videos[]` entry from its benchmark splits (`split_em`, `split_av`,
    `split_fho`, ...).

    A video any benchmark holds out as 'test' is 'test', else one any benchmark uses for 'val' is
    'val', else 'train'. Pretraining on 'train' therefore never sees benchmark evaluation video.
    """
    values = {v for k, v in entry.items() if k.startswith("split_") and isinstance(v, str)}
    if "test" in values:
        return "test"
    if "val" in values:
        return "val"
    return "train"


def _optional_float(d: dict[str, Any], *keys: str) -> float | None:
    for k in keys:
        v = d.get(k)
        if isinstance(v, int | float) and not isinstance(v, bool):
            return float(v)
    return None


def _load_json(path: str) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise Ego4DLayoutError(f"{path}: not valid JSON ({e})") from e


@dataclass
class Ego4DLayout:
    """An Ego4D download directory. Build with `Ego4DLayout.open(root)`."""

    root: str
    metadata_path: str
    version_dir: str  # ROOT/v2 (or v1); holds the video directories and annotations
    metadata: dict[str, Any] = field(repr=False)

    @classmethod
    def open(cls, root: str) -> Ego4DLayout:
        root = paths.absolute(paths.local_only(root, "--input (an Ego4D download root)"))
        if not os.path.isdir(root):
            raise Ego4DLayoutError(f"{root}: not a directory (expected an Ego4D download root)")
        candidates = [os.path.join(root, EGO4D_JSON)] + [
            os.path.join(root, v, EGO4D_JSON) for v in ("v2", "v1")
        ]
        metadata_path = next((p for p in candidates if os.path.isfile(p)), None)
        if metadata_path is None:
            raise Ego4DLayoutError(
                f"{root}: no {EGO4D_JSON} (looked for {', '.join(candidates)}); download it with "
                f"`ego4d --output_directory={root} --metadata`"
            )
        version_dir = next(
            (os.path.join(root, v) for v in ("v2", "v1") if os.path.isdir(os.path.join(root, v))),
            root,  # a root that is itself the version directory
        )
        metadata = _load_json(metadata_path)
        if not isinstance(metadata, dict) or not isinstance(metadata.get("videos"), list):
            raise Ego4DLayoutError(
                f"{metadata_path}: expected an object with a list field 'videos' "
                f"(entries {{video_uid, duration_sec, video_metadata: {{fps, ...}}}})"
            )
        for i, v in enumerate(metadata["videos"]):
            if not isinstance(v, dict) or not isinstance(v.get("video_uid"), str):
                raise Ego4DLayoutError(f"{metadata_path}: videos[{i}] has no string field 'video_uid'")
            if "video_metadata" in v and not isinstance(v["video_metadata"], dict):
                raise Ego4DLayoutError(
                    f"{metadata_path}: videos[{i}] ({v['video_uid']}): field 'video_metadata' must be an object"
                )
        clips = metadata.get("clips", [])
        if not isinstance(clips, list):
            raise Ego4DLayoutError(f"{metadata_path}: field 'clips' must be a list")
        for i, c in enumerate(clips):
            if not isinstance(c, dict) or not isinstance(c.get("clip_uid"), str) or not isinstance(
                c.get("video_uid"), str
            ):
                raise Ego4DLayoutError(
                    f"{metadata_path}: clips[{i}] needs string fields 'clip_uid' and 'video_uid'"
                )
            if c.get("clip_metadata") is not None and not isinstance(c["clip_metadata"], dict):
                raise Ego4DLayoutError(
                    f"{metadata_path}: clips[{i}] ({c['clip_uid']}): field 'clip_metadata' must be an object"
                )
        return cls(root=root, metadata_path=metadata_path, version_dir=version_dir, metadata=metadata)

    # -- videos ---------------------------------------------------------------------------------

    def video_dir_path(self, video_dir: str) -> str:
        if video_dir not in VIDEO_DIRS:
            raise Ego4DLayoutError(f"video_dir {video_dir!r} is not one of {VIDEO_DIRS}")
        return os.path.join(self.version_dir, video_dir)

    def detect_video_dir(self) -> str:
        """The first of `AUTO_ORDER` that exists and holds mp4 files."""
        for name in AUTO_ORDER:
            path = os.path.join(self.version_dir, name)
            if os.path.isdir(path) and any(f.endswith(".mp4") for f in os.listdir(path)):
                return name
        raise Ego4DLayoutError(
            f"{self.version_dir}: none of {', '.join(AUTO_ORDER)} holds .mp4 files; download videos "
            f"with `ego4d --output_directory={self.root} --datasets video_540ss`"
        )

    def video_path(self, entry: VideoEntry, video_dir: str) -> str:
        return os.path.join(self.video_dir_path(video_dir), f"{entry.uid}.mp4")

    def entries(self, video_dir: str) -> list[VideoEntry]:
        """All entries for `video_dir`, in metadata order: `videos[]` for full videos, `clips[]`
        for clips (each inheriting the split of its parent video)."""
        videos = {v["video_uid"]: v for v in self.metadata["videos"]}
        out: list[VideoEntry] = []
        if video_dir == "clips":
            for c in self.metadata.get("clips", []):
                parent = videos.get(c["video_uid"], {})
                cm = c.get("clip_metadata") or {}
                start = _optional_float(c, "video_start_sec") or 0.0
                end = _optional_float(c, "video_end_sec")
                out.append(VideoEntry(
                    uid=c["clip_uid"], video_uid=c["video_uid"], split=video_split(parent),
                    offset_sec=start,
                    duration_sec=(end - start) if end is not None else _optional_float(cm, "mp4_duration_sec"),
                    fps=_optional_float(cm, "fps"), num_frames=_int_or_none(cm.get("num_frames")),
                    width=_int_or_none(cm.get("display_resolution_width")),
                    height=_int_or_none(cm.get("display_resolution_height")),
                    scenarios=_str_tuple(parent.get("scenarios")),
                ))
            return out
        self.video_dir_path(video_dir)  # validates the name
        for v in self.metadata["videos"]:
            vm = v.get("video_metadata") or {}
            out.append(VideoEntry(
                uid=v["video_uid"], video_uid=v["video_uid"], split=video_split(v), offset_sec=0.0,
                duration_sec=_optional_float(v, "duration_sec") or _optional_float(vm, "video_duration_sec"),
                fps=_optional_float(vm, "fps"), num_frames=_int_or_none(vm.get("num_frames")),
                width=_int_or_none(vm.get("display_resolution_width", vm.get("width"))),
                height=_int_or_none(vm.get("display_resolution_height", vm.get("height"))),
                scenarios=_str_tuple(v.get("scenarios")),
            ))
        return out

    def select(self, video_dir: str, *, uids: Iterable[str] | None = None, split: str | None = None
               ) -> list[VideoEntry]:
        """Entries filtered by uid (video or clip uid) and split; unknown uids are an error."""
        entries = self.entries(video_dir)
        if uids is not None:
            wanted = list(dict.fromkeys(uids))
            known = {e.uid for e in entries} | {e.video_uid for e in entries}
            unknown = [u for u in wanted if u not in known]
            if unknown:
                shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
                raise Ego4DLayoutError(
                    f"{self.metadata_path}: {len(unknown)} requested uid(s) not in "
                    f"{'clips' if video_dir == 'clips' else 'videos'}[]: {shown}"
                )
            keep = set(wanted)
            entries = [e for e in entries if e.uid in keep or e.video_uid in keep]
        if split is not None:
            if split not in SPLITS:
                raise Ego4DLayoutError(f"split {split!r} is not one of {SPLITS}")
            entries = [e for e in entries if e.split == split]
        return entries

    # -- narrations -----------------------------------------------------------------------------

    def narration_path(self) -> str | None:
        for base in (self.version_dir, self.root):
            p = os.path.join(base, "annotations", NARRATION_JSON)
            if os.path.isfile(p):
                return p
        return None

    def narrations(self, video_uids: Iterable[str] | None = None) -> dict[str, list[tuple[float, str]]]:
        """`{video_uid: [(timestamp_sec, text), ...]}` sorted by time; empty if not downloaded.

        Uses `narration_pass_1`, falling back to `narration_pass_2` for videos without it: the two
        passes are independent narrations of the same video, so merging them would duplicate.
        """
        path = self.narration_path()
        if path is None:
            return {}
        data = _load_json(path)
        if not isinstance(data, dict):
            raise Ego4DLayoutError(f"{path}: expected an object keyed by video_uid")
        keep = None if video_uids is None else set(video_uids)
        out: dict[str, list[tuple[float, str]]] = {}
        for uid, record in data.items():
            if keep is not None and uid not in keep:
                continue
            if not isinstance(record, dict):
                raise Ego4DLayoutError(f"{path}: [{uid!r}] must be an object with 'narration_pass_1'")
            for pass_name in NARRATION_PASSES:
                block = record.get(pass_name)
                if not block:
                    continue
                items = block.get("narrations") if isinstance(block, dict) else None
                if not isinstance(items, list):
                    raise Ego4DLayoutError(f"{path}: [{uid!r}][{pass_name!r}] has no list 'narrations'")
                parsed = []
                for j, n in enumerate(items):
                    n = n if isinstance(n, dict) else {}  # not an object: reported as missing fields
                    t, text = n.get("timestamp_sec"), n.get("narration_text")
                    if not isinstance(t, int | float) or not isinstance(text, str):
                        raise Ego4DLayoutError(
                            f"{path}: [{uid!r}][{pass_name!r}]['narrations'][{j}] needs a number "
                            f"'timestamp_sec' and a string 'narration_text'"
                        )
                    parsed.append((float(t), text.strip()))
                out[uid] = sorted(parsed)
                break
        return out


def narrations_for(entry: VideoEntry, narrations: dict[str, list[tuple[float, str]]]
                   ) -> list[tuple[float, str]]:
    """Narrations of `entry` in its own file time (clip offset removed; outside ones dropped)."""
    items = narrations.get(entry.video_uid, [])
    if entry.offset_sec == 0.0 and entry.uid == entry.video_uid:
        return list(items)
    end = None if entry.duration_sec is None else entry.offset_sec + entry.duration_sec
    return [(t - entry.offset_sec, s) for t, s in items
            if t >= entry.offset_sec and (end is None or t < end)]


def read_uid_file(path: str) -> list[str]:
    """uids from a text file: whitespace- or comma-separated; `#` starts a comment."""
    if not os.path.isfile(path):
        raise Ego4DLayoutError(f"--uid_file {path}: no such file")
    uids: list[str] = []
    with open(path) as f:
        for line in f:
            line = line.split("#", 1)[0]
            uids.extend(u for u in line.replace(",", " ").split() if u)
    if not uids:
        raise Ego4DLayoutError(f"--uid_file {path}: no uids in the file")
    return uids


def parse_uids(uids: str | Sequence[str] | None, uid_file: str | None) -> list[str] | None:
    if uids and uid_file:
        raise Ego4DLayoutError("give either --uids or --uid_file, not both")
    if uid_file:
        return read_uid_file(uid_file)
    if not uids:
        return None
    if isinstance(uids, str):
        uids = uids.split(",")
    out = [u.strip() for u in uids if u.strip()]
    return out or None


def _str_tuple(x: Any) -> tuple[str, ...]:
    """An informational list of names (e.g. `scenarios`); anything but a list of strings is ignored."""
    return tuple(s for s in x if isinstance(s, str)) if isinstance(x, list | tuple) else ()


def _int_or_none(x: Any) -> int | None:
    return int(x) if isinstance(x, int | float) and not isinstance(x, bool) else None


def mp4_structure_problem(path: str) -> str | None:
    """Classifies an mp4 that FFmpeg cannot open by its top-level box structure (headers only).

    Returns 'truncated' when the file starts like an mp4 but a box runs past the end of the file
    or the index (`moov`) is missing (an interrupted download), 'corrupt' when the bytes are not
    an mp4 box sequence at all, and None when the structure looks whole.
    """
    import struct

    size = os.path.getsize(path)
    kinds: list[bytes] = []
    with open(path, "rb") as f:
        pos = 0
        while pos + 8 <= size:
            f.seek(pos)
            head = f.read(16)
            box_size, kind = struct.unpack(">I4s", head[:8])
            header = 8
            if box_size == 1 and len(head) >= 16:
                box_size, header = struct.unpack(">Q", head[8:16])[0], 16
            elif box_size == 0:
                box_size = size - pos
            if not kind.isascii() or not kind.decode("ascii", "replace").isprintable() or box_size < header:
                return "corrupt" if not kinds else "truncated"
            kinds.append(kind)
            if pos + box_size > size:
                return "truncated"
            pos += box_size
    if not kinds or kinds[0] not in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip"):
        return "corrupt"
    if b"moov" not in kinds:
        return "truncated"
    return None
