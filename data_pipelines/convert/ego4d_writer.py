"""Writes directories in the layout of the official Ego4D CLI download, from numpy frames.

Why: the Ego4D converter must be tested on the real layout and real codecs (H.264 and VP9 in mp4,
as in `full_scale` / `video_540ss`), and the PushT demo writes its action-free rollouts in the same
layout so that the demo exercises the exact Ego4D path. The layout follows the `ego4d` CLI
(`ego4d --output_directory=ROOT --datasets full_scale annotations --metadata`):

```
ROOT/
  ego4d.json                       # {"version", "date", "description", "videos": [...], "clips": [...]}
  v2/full_scale/<video_uid>.mp4
  v2/video_540ss/<video_uid>.mp4
  v2/clips/<clip_uid>.mp4
  v2/annotations/narration.json    # {video_uid: {"narration_pass_1": {"narrations": [...]}, ...}}
```

A `videos[]` entry carries `video_uid`, `duration_sec`, the benchmark splits `split_em`,
`split_av`, `split_fho` ("train" | "val" | "test" | null) and `video_metadata` (`fps`,
`num_frames`, `display_resolution_width/height`, `mp4_duration_sec`, `video_start_sec`,
`video_duration_sec`, `video_codec`). A narration is `{"timestamp_sec", "timestamp_frame",
"narration_text", "annotation_uid"}`.

It also makes broken inputs on purpose (a truncated mp4, a corrupt file, an mp4 whose header
durations disagree with its decoded timestamps), so that the converter's error paths are tested on
the bytes they will meet in a real download.
"""

from __future__ import annotations

import datetime
import json
import os
import struct
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np

from data_pipelines import paths

EGO4D_JSON = "ego4d.json"
NARRATION_JSON = "narration.json"
VIDEO_DIRS = ("full_scale", "video_540ss", "clips")
CODECS = {"h264": "libx264", "vp9": "libvpx-vp9"}
SPLIT_KEYS = ("split_em", "split_av", "split_fho")


# ---------------------------------------------------------------------------------------------
# Content


def moving_shapes(num_frames: int, height: int, width: int, *, fps: float = 30.0, seed: int = 0,
                  num_shapes: int = 4, timestamps: Sequence[float] | None = None) -> np.ndarray:
    """Deterministic synthetic video: coloured discs and boxes bouncing over a slow colour gradient.

    The content is a smooth function of time (positions are evaluated at each frame's timestamp),
    so a frame picked by timestamp can be recognised again after resampling. Returns uint8
    [T, H, W, 3].
    """
    rng = np.random.default_rng(seed)
    times = (np.arange(num_frames) / fps) if timestamps is None else np.asarray(timestamps, float)
    if len(times) != num_frames:
        raise ValueError(f"timestamps has {len(times)} entries, expected num_frames={num_frames}")
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    pos0 = rng.uniform(0.2, 0.8, (num_shapes, 2)) * (height, width)
    vel = rng.uniform(-0.35, 0.35, (num_shapes, 2)) * (height, width)  # px per second
    radius = rng.uniform(0.08, 0.18, num_shapes) * min(height, width)
    colors = rng.integers(40, 255, (num_shapes, 3)).astype(np.float32)
    is_box = rng.random(num_shapes) < 0.5
    base = rng.uniform(0, 2 * np.pi, 3)
    out = np.empty((num_frames, height, width, 3), np.uint8)
    for i, t in enumerate(times):
        phase = base + 0.5 * t
        img = np.empty((height, width, 3), np.float32)
        for c in range(3):
            img[..., c] = 60 + 40 * np.sin(phase[c] + xx / width * 2.0 + yy / height * (c + 1))
        # Reflecting motion: position folded into [r, size - r].
        for k in range(num_shapes):
            lo = radius[k]
            span = np.array([height, width]) - 2 * lo
            p = np.abs((pos0[k] - lo + vel[k] * t) % (2 * span) - span)  # triangle wave in [0, span]
            cy, cx = p + lo
            if is_box[k]:
                mask = (np.abs(yy - cy) < radius[k]) & (np.abs(xx - cx) < radius[k])
            else:
                mask = (yy - cy) ** 2 + (xx - cx) ** 2 < radius[k] ** 2
            img[mask] = colors[k]
        out[i] = np.clip(img, 0, 255).astype(np.uint8)
    return out


# ---------------------------------------------------------------------------------------------
# Encoding


def encode_video(path: str, frames: np.ndarray, fps: float, *, codec: str = "h264",
                 timestamps: Sequence[float] | None = None, faststart: bool = False,
                 crf: int | None = None, gop: int | None = None, threads: int = 1) -> dict[str, Any]:
    """Encodes uint8 [T, H, W, 3] frames to an mp4 with PyAV (libx264 or libvpx-vp9, yuv420p).

    `timestamps` (seconds, increasing) gives a variable frame rate; by default frame i is shown
    at i / fps. `faststart` puts the index (moov) before the data, as streaming downloads have.
    VP9 output is byte-for-byte reproducible; H.264 (x264, even single-threaded on frames with
    zeroed padding) occasionally differs between runs by a grey level or two in a few pixels, so
    use VP9 where the bytes must not change (the PushT demo). Returns the stream facts that go
    into `video_metadata`.
    """
    import av

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames has shape {frames.shape} dtype {frames.dtype}, expected uint8 [T, H, W, 3]")
    n, h, w, _ = frames.shape
    if n == 0:
        raise ValueError(f"{path}: no frames to encode")
    if h % 2 or w % 2:
        raise ValueError(f"{path}: frame size {h}x{w} must be even for yuv420p")
    if codec not in CODECS:
        raise ValueError(f"codec {codec!r} not supported, expected one of {sorted(CODECS)}")
    rate = Fraction(fps).limit_denominator(1001)
    if timestamps is None:
        time_base = 1 / rate
        pts = list(range(n))
    else:
        if len(timestamps) != n:
            raise ValueError(f"timestamps has {len(timestamps)} entries, expected {n} (one per frame)")
        if np.any(np.diff(timestamps) <= 0):
            raise ValueError("timestamps must be strictly increasing")
        time_base = Fraction(1, 1000)
        pts = [round(t / time_base) for t in timestamps]
        if len(set(pts)) != n:
            raise ValueError("timestamps closer than 1 ms cannot be represented")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(path, "w", format="mp4", options=options) as container:
        stream = container.add_stream(CODECS[codec], rate=rate)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.codec_context.time_base = time_base
        stream.codec_context.thread_count = max(0, int(threads))
        opts = {}
        if codec == "h264":
            opts = {"preset": "veryfast", "crf": str(18 if crf is None else crf)}
        else:  # realtime VP9 keeps fixture generation fast; quality set by crf with b:v=0
            opts = {"deadline": "realtime", "cpu-used": "8", "crf": str(24 if crf is None else crf),
                    "b": "0"}
        if gop is not None:
            opts["g"] = str(gop)
        stream.options = opts
        for i in range(n):
            frame = _yuv420p_frame(frames[i])
            frame.pts, frame.time_base = pts[i], time_base
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    duration = float(pts[-1] * time_base + 1 / rate)  # the last frame is shown for one period
    return {"fps": float(rate), "num_frames": n, "width": w, "height": h, "duration_sec": duration,
            "codec": codec}


def _yuv420p_frame(rgb: np.ndarray) -> Any:
    """An RGB image as a yuv420p frame whose row padding is zeroed.

    Left to the encoder, the RGB -> YUV conversion can leave uninitialized padding bytes in the
    rows; converting here and zeroing them keeps them out of the encoded stream.
    """
    import av

    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
    for plane in frame.planes:
        if plane.line_size > plane.width:
            rows = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)
            rows[:, plane.width:] = 0
    return frame


# ---------------------------------------------------------------------------------------------
# Broken files (for tests of the converter's error paths)


def truncate_file(path: str, keep_fraction: float = 0.5) -> int:
    """Cuts a file to its first `keep_fraction` of bytes, like an interrupted download."""
    if not 0.0 <= keep_fraction < 1.0:
        raise ValueError(f"keep_fraction={keep_fraction} must be in [0, 1)")
    size = os.path.getsize(path)
    keep = int(size * keep_fraction)
    with open(path, "r+b") as f:
        f.truncate(keep)
    return keep


def write_corrupt_file(path: str, num_bytes: int = 4096, seed: int = 0) -> None:
    """Writes random bytes under an `.mp4` name: no container can be opened from it."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(np.random.default_rng(seed).bytes(num_bytes))


_CONTAINER_BOXES = (b"moov", b"trak", b"mdia")


def _mp4_boxes(data: bytes | bytearray, start: int = 0, end: int | None = None):
    """Yields (type, start, header_size, size) of the boxes in data[start:end], descending into
    moov/trak/mdia, so header fields are found by structure and never inside media data."""
    end = len(data) if end is None else end
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        header = 8
        if size == 1:
            size = struct.unpack(">Q", data[pos + 8:pos + 16])[0]
            header = 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            raise ValueError(f"malformed mp4 box {kind!r} at byte {pos}")
        yield kind, pos, header, size
        if kind in _CONTAINER_BOXES:
            yield from _mp4_boxes(data, pos + header, pos + size)
        pos += size


def scale_mp4_durations(path: str, *, media_factor: float = 1.0, movie_factor: float = 1.0) -> None:
    """Rewrites the durations in an mp4 header so they disagree with the sample timestamps.

    `media_factor` scales the track's `mdhd` duration (what PyAV reports as the stream and, through
    it, the container duration); `movie_factor` scales `mvhd` and `tkhd`. The samples (and so the
    decoded timestamps) are untouched: this reproduces files whose header durations lie, which a
    converter must survive by trusting decoded timestamps. FFmpeg keeps the smaller of the `mdhd`
    duration and the sample-table sum, so only a factor < 1 changes what PyAV reports.
    """
    with open(path, "rb") as f:
        data = bytearray(f.read())
    # Offsets of the duration field after the box header: full-box version/flags (4), then
    # creation/modification times (4 or 8 each), then timescale (mvhd, mdhd) or track id +
    # reserved (tkhd).
    offsets = {b"mdhd": (16, 24), b"mvhd": (16, 24), b"tkhd": (20, 28)}
    factors = {b"mdhd": media_factor, b"mvhd": movie_factor, b"tkhd": movie_factor}
    found = set()
    for kind, pos, header, _ in list(_mp4_boxes(data)):
        if kind not in offsets or factors[kind] == 1.0:
            continue
        found.add(kind)
        body = pos + header
        version = data[body]
        if version == 0:
            off = body + offsets[kind][0]
            old = struct.unpack(">I", data[off:off + 4])[0]
            data[off:off + 4] = struct.pack(">I", max(1, int(round(old * factors[kind]))))
        else:
            off = body + offsets[kind][1]
            old = struct.unpack(">Q", data[off:off + 8])[0]
            data[off:off + 8] = struct.pack(">Q", max(1, int(round(old * factors[kind]))))
    wanted = {k for k, f in factors.items() if f != 1.0}
    if wanted - found:
        raise ValueError(f"{path}: mp4 boxes {sorted(wanted - found)} not found")
    with open(path, "wb") as f:
        f.write(bytes(data))


# ---------------------------------------------------------------------------------------------
# The layout


def probe_video(path: str) -> dict[str, Any]:
    """Stream facts of an mp4 as the Ego4D metadata records them (from the container header)."""
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0.0)
        duration = (float(stream.duration * stream.time_base) if stream.duration is not None
                    else (container.duration or 0) / 1e6)
        return {"fps": fps, "num_frames": int(stream.frames), "width": stream.codec_context.width,
                "height": stream.codec_context.height, "duration_sec": duration,
                "codec": stream.codec_context.name}


@dataclass
class Ego4DLayoutWriter:
    """Builds an Ego4D download directory; call `add_*`, then `finish()` writes the JSON files.

    Example:
        w = Ego4DLayoutWriter(root)
        w.add_video("uid-1", frames, fps=30, codec="h264", split="train",
                    narrations=[(1.5, "#C C picks a cup")])
        w.finish()
    """

    root: str
    version: str = "v2"
    videos: list[dict[str, Any]] = field(default_factory=list)
    clips: list[dict[str, Any]] = field(default_factory=list)
    narrations: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def version_dir(self) -> str:
        return os.path.join(self.root, self.version)

    def video_path(self, uid: str, video_dir: str = "full_scale") -> str:
        if video_dir not in VIDEO_DIRS:
            raise ValueError(f"video_dir {video_dir!r} not one of {VIDEO_DIRS}")
        return os.path.join(self.version_dir, video_dir, f"{uid}.mp4")

    def add_video(self, uid: str, frames: np.ndarray | None, fps: float, *, codec: str = "h264",
                  video_dir: str = "full_scale", split: str | None = None,
                  narrations: Sequence[tuple[float, str]] = (), timestamps: Sequence[float] | None = None,
                  faststart: bool = False, metadata_overrides: dict[str, Any] | None = None,
                  scenarios: Sequence[str] = ()) -> str:
        """Encodes `frames` to `v2/<video_dir>/<uid>.mp4` and records its `videos[]` entry.

        `frames=None` records the entry without writing a file (a video missing from the
        download). `metadata_overrides` replaces `video_metadata` fields (e.g. a wrong fps or
        duration, as real metadata sometimes has). Returns the mp4 path.
        """
        path = self.video_path(uid, video_dir)
        if frames is not None:
            facts = encode_video(path, frames, fps, codec=codec, timestamps=timestamps, faststart=faststart)
        else:
            facts = {"fps": float(fps), "num_frames": 0, "width": 0, "height": 0, "duration_sec": 0.0,
                     "codec": codec}
        self._record(uid, facts, split=split, narrations=narrations,
                     metadata_overrides=metadata_overrides, scenarios=scenarios)
        return path

    def register_video(self, uid: str, *, video_dir: str = "full_scale", split: str | None = None,
                       narrations: Sequence[tuple[float, str]] = (), scenarios: Sequence[str] = ()) -> str:
        """Records the `videos[]` entry of an mp4 already written at `video_path(uid, video_dir)`
        (e.g. encoded in a worker process); its metadata is read from the file."""
        path = self.video_path(uid, video_dir)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such video to register")
        self._record(uid, probe_video(path), split=split, narrations=narrations, scenarios=scenarios)
        return path

    def _record(self, uid: str, facts: dict[str, Any], *, split: str | None,
                narrations: Sequence[tuple[float, str]], metadata_overrides: dict[str, Any] | None = None,
                scenarios: Sequence[str] = ()) -> None:
        metadata = {
            "fps": facts["fps"],
            "num_frames": facts["num_frames"],
            "display_resolution_width": facts["width"],
            "display_resolution_height": facts["height"],
            "sample_resolution_width": facts["width"],
            "sample_resolution_height": facts["height"],
            "mp4_duration_sec": facts["duration_sec"],
            "video_start_sec": 0.0,
            "video_duration_sec": facts["duration_sec"],
            "video_codec": facts["codec"],
            "audio_start_sec": None,
            "audio_duration_sec": None,
        }
        metadata.update(metadata_overrides or {})
        entry: dict[str, Any] = {
            "video_uid": uid,
            "duration_sec": metadata["video_duration_sec"],
            "scenarios": list(scenarios),
            "video_source": "synthetic",
            "device": "synthetic",
            "is_stereo": False,
            "video_metadata": metadata,
        }
        for key in SPLIT_KEYS:
            entry[key] = split
        self.videos.append(entry)
        if narrations:
            self.add_narrations(uid, narrations, fps=facts["fps"])

    def add_clip(self, clip_uid: str, video_uid: str, frames: np.ndarray, fps: float, *,
                 video_start_sec: float, codec: str = "h264") -> str:
        """Encodes a clip cut from `video_uid` to `v2/clips/<clip_uid>.mp4`, records `clips[]`."""
        path = self.video_path(clip_uid, "clips")
        facts = encode_video(path, frames, fps, codec=codec)
        self.clips.append({
            "clip_uid": clip_uid,
            "video_uid": video_uid,
            "video_start_sec": float(video_start_sec),
            "video_end_sec": float(video_start_sec) + facts["duration_sec"],
            "video_start_frame": int(round(video_start_sec * facts["fps"])),
            "video_end_frame": int(round(video_start_sec * facts["fps"])) + facts["num_frames"],
            "clip_metadata": {"fps": facts["fps"], "num_frames": facts["num_frames"],
                              "display_resolution_width": facts["width"],
                              "display_resolution_height": facts["height"],
                              "mp4_duration_sec": facts["duration_sec"]},
        })
        return path

    def add_narrations(self, uid: str, narrations: Sequence[tuple[float, str]], *, fps: float = 30.0) -> None:
        """Adds `(timestamp_sec, text)` narrations (video time) to `narration_pass_1` of `uid`."""
        items = self.narrations.setdefault(uid, [])
        for t, text in narrations:
            items.append({
                "timestamp_sec": float(t),
                "timestamp_frame": int(round(float(t) * fps)),
                "narration_text": str(text),
                "annotation_uid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{uid}/{t}/{text}")),
            })

    def finish(self) -> str:
        """Writes `ego4d.json` and `v2/annotations/narration.json`; returns the ego4d.json path."""
        os.makedirs(self.version_dir, exist_ok=True)
        meta = {
            "version": self.version,
            "date": datetime.date(2023, 1, 1).isoformat(),
            "description": "Ego4D-layout videos written by data_pipelines.convert.ego4d_writer",
            "videos": self.videos,
            "clips": self.clips,
            "concurrent_video_sets": [],
            "physical_settings": [],
        }
        meta_path = os.path.join(self.root, EGO4D_JSON)
        _write_json(meta_path, meta)
        narration = {
            uid: {
                "status": "complete",
                "narration_pass_1": {
                    "narrations": sorted(items, key=lambda x: x["timestamp_sec"]),
                    "summaries": [],
                },
            }
            for uid, items in self.narrations.items()
        }
        _write_json(os.path.join(self.version_dir, "annotations", NARRATION_JSON), narration)
        return meta_path


def _write_json(path: str, obj: Any) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    paths.write_atomic(path, json.dumps(obj))
