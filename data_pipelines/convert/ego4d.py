"""`wam-convert ego4d`: Ego4D videos → converted episode shards (video-only, ≤ chunk_seconds each).

    wam-convert ego4d --input=EGO4D_ROOT --output=DIR [--video_dir=auto|full_scale|video_540ss|clips]
        [--target_fps=10] [--image_size=64] [--chunk_seconds=60] [--uids=a,b | --uid_file=F]
        [--split=train|val|test] [--workers=N]

Each video is decoded once, sequentially, with PyAV (frame-threaded), resampled to `target_fps`
by decoded timestamps (nearest source frame to every target time; header durations and the
metadata fps are never trusted), resized (shorter side) and center-cropped to `image_size`,
JPEG-encoded, and cut into chunks of at most `chunk_seconds`; every chunk is one episode with
`action=None, proprio=None` and the narrations that fall inside it (`t` relative to the chunk
start). Decoding every source frame and converting only the kept ones is what makes this fast:
random access into mp4 costs 100-300 ms per clip, sequential decoding ~1000 frames/s per core.

Robustness: one video is the unit of failure. A missing, corrupt or truncated file (or one that
fails to decode half way) is skipped with its reason in `manifest.json`; the job goes on.
Chunks of a video are buffered until the whole video decoded, so a video is either fully in the
dataset or reported as skipped, never half-written. Parallel over shards of videos (each worker
decodes its videos in order); resumable through `convert_common`.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from data_pipelines import records
from data_pipelines.convert import common as convert_common
from data_pipelines.convert.ego4d_layout import (
    VIDEO_DIRS,
    Ego4DLayout,
    Ego4DLayoutError,
    mp4_structure_problem,
    narrations_for,
    parse_uids,
)

VIDEO_SIDECAR_SUFFIX = ".videos.json"  # per-shard video table, next to convert_common's result


class VideoSkipped(Exception):
    """A video that cannot be converted; `reason` is the short code counted in the manifest."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True)
class Ego4DOptions:
    target_fps: float = 10.0
    image_size: int = 64
    chunk_seconds: float = 60.0
    min_chunk_frames: int = 2  # a shorter tail chunk is dropped (too short to make a clip)
    jpeg_quality: int = 95
    decode_threads: int = 0  # 0: FFmpeg picks (frame + slice threads)
    min_fps_ratio: float = 0.9  # skip videos whose real frame rate is below this × target_fps
    max_missing_frames: float = 0.02  # decoded < (1 - this) × frames listed in the mp4: truncated

    def __post_init__(self) -> None:
        if self.target_fps <= 0:
            raise ValueError(f"target_fps must be > 0, got {self.target_fps}")
        if self.image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {self.image_size}")
        if self.chunk_seconds * self.target_fps < 1:
            raise ValueError(
                f"chunk_seconds={self.chunk_seconds} at target_fps={self.target_fps} gives no frames per chunk"
            )
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in [1, 100], got {self.jpeg_quality}")

    @property
    def frames_per_chunk(self) -> int:
        return max(1, int(round(self.chunk_seconds * self.target_fps)))


# ---------------------------------------------------------------------------------------------
# Decoding


def _to_square(frame: Any, size: int) -> np.ndarray:
    """Resizes the shorter side to `size` in FFmpeg's swscale (area filter), then center-crops.

    Scaling first and cropping after is what keeps this cheap: swscale reads the full-resolution
    frame once and writes a small image, instead of converting a full RGB frame to crop it.
    """
    w, h = frame.width, frame.height
    if w >= h:
        sh, sw = size, max(size, int(round(w * size / h)))
    else:
        sw, sh = size, max(size, int(round(h * size / w)))
    rgb = frame.to_ndarray(width=sw, height=sh, format="rgb24", interpolation="AREA")
    y0, x0 = (sh - size) // 2, (sw - size) // 2
    return np.ascontiguousarray(rgb[y0:y0 + size, x0:x0 + size])


@dataclass
class DecodeStats:
    decoded_frames: int = 0  # source frames decoded
    kept_frames: int = 0  # frames after resampling
    listed_frames: int = 0  # frame count in the mp4 sample table
    first_time: float | None = None  # decoded timestamps (file time)
    last_time: float | None = None
    header_duration: float | None = None  # what the container claims
    out_of_order: int = 0  # frames dropped for non-increasing timestamps
    codec: str = ""
    width: int = 0
    height: int = 0


def decode_resampled(path: str, target_fps: float, *, threads: int = 0,
                     stats: DecodeStats | None = None) -> Iterator[tuple[float, Any]]:
    """Yields `(t, av.VideoFrame)` at t = 0, 1/target_fps, 2/target_fps, ... (file time, seconds
    from the stream start) choosing, for each t, the decoded frame whose timestamp is nearest
    (the earlier one on a tie).

    Timestamps come from decoded frames (pts × time_base), so variable frame rates, edit lists and
    container / stream durations that disagree with the samples do not shift anything. Targets
    after the last decoded frame are not produced.
    """
    import av

    stats = stats if stats is not None else DecodeStats()
    with av.open(path, metadata_errors="ignore") as container:
        if not container.streams.video:
            raise VideoSkipped("no_video_stream", f"{path}: no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if threads:
            stream.codec_context.thread_count = threads
        stats.listed_frames = int(stream.frames or 0)
        stats.codec = stream.codec_context.name
        stats.width, stats.height = stream.codec_context.width, stream.codec_context.height
        if stream.duration is not None and stream.time_base is not None:
            stats.header_duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            stats.header_duration = container.duration / 1e6
        start = (float(stream.start_time * stream.time_base)
                 if stream.start_time is not None and stream.time_base is not None else None)
        rate = float(stream.average_rate or stream.guessed_rate or 30.0)
        step = 1.0 / target_fps
        k = 0
        prev: Any = None
        prev_t = -np.inf
        for index, frame in enumerate(container.decode(stream)):
            stats.decoded_frames += 1
            t_abs = frame.time if frame.time is not None else index / rate
            if start is None:
                start = t_abs
            t = t_abs - start
            if t <= prev_t:
                stats.out_of_order += 1
                continue
            if stats.first_time is None:
                stats.first_time = t
            stats.last_time = t
            while k * step <= t:
                target = k * step
                # Nearest in time; an exact tie (up to float noise) goes to the earlier frame.
                pick = prev if prev is not None and target - prev_t <= t - target + 1e-9 else frame
                stats.kept_frames += 1
                yield target, pick
                k += 1
            prev, prev_t = frame, t


def _classify_open_error(path: str, err: Exception) -> VideoSkipped:
    problem = None
    try:
        problem = mp4_structure_problem(path)
    except OSError:
        pass
    if problem == "truncated":
        return VideoSkipped("truncated_video", f"{path}: truncated mp4 ({type(err).__name__}: {err})")
    return VideoSkipped("corrupt_video", f"{path}: cannot be decoded ({type(err).__name__}: {err})")


def video_episodes(item: dict[str, Any], opts: Ego4DOptions, stats: DecodeStats | None = None
                   ) -> list[records.Episode]:
    """All chunk episodes of one video (raises VideoSkipped with a reason if it cannot be used)."""
    import av

    path = item["path"]
    if not os.path.exists(path):
        raise VideoSkipped("missing_video", f"{path}: file not found")
    if os.path.getsize(path) == 0:
        raise VideoSkipped("truncated_video", f"{path}: empty file")
    stats = stats if stats is not None else DecodeStats()
    times: list[float] = []
    jpegs: list[bytes] = []
    try:
        for t, frame in decode_resampled(path, opts.target_fps, threads=opts.decode_threads, stats=stats):
            times.append(t)
            jpegs.append(convert_common.encode_jpeg(_to_square(frame, opts.image_size), opts.jpeg_quality))
    except VideoSkipped:
        raise
    except av.error.FFmpegError as e:
        if stats.decoded_frames == 0:
            raise _classify_open_error(path, e) from e
        problem = mp4_structure_problem(path)
        reason = "truncated_video" if problem == "truncated" else "decode_error"
        raise VideoSkipped(
            reason, f"{path}: decoding failed after {stats.decoded_frames} frames ({type(e).__name__}: {e})"
        ) from e
    if stats.decoded_frames == 0:
        raise VideoSkipped("empty_video", f"{path}: no frames decoded")
    if stats.listed_frames and stats.decoded_frames < (1 - opts.max_missing_frames) * stats.listed_frames - 1:
        raise VideoSkipped(
            "truncated_video",
            f"{path}: decoded {stats.decoded_frames} of the {stats.listed_frames} frames listed in the mp4",
        )
    span = (stats.last_time or 0.0) - (stats.first_time or 0.0)
    if stats.decoded_frames > 1 and span > 0:
        real_fps = (stats.decoded_frames - 1) / span
        if real_fps < opts.min_fps_ratio * opts.target_fps:
            raise VideoSkipped(
                "fps_below_target",
                f"{path}: {real_fps:.2f} frames/s decoded, below target_fps={opts.target_fps} "
                f"(resampling would repeat frames)",
            )

    narrs = [tuple(n) for n in item.get("narrations", [])]
    n = opts.frames_per_chunk
    episodes = []
    for c, lo in enumerate(range(0, len(jpegs), n)):
        chunk = jpegs[lo:lo + n]
        if len(chunk) < opts.min_chunk_frames:
            continue
        start = times[lo]
        end = start + len(chunk) / opts.target_fps
        episodes.append(records.Episode(
            episode_id=f"{item['uid']}_{c:04d}",
            frames=chunk,
            action=None,
            proprio=None,
            language="",
            narrations=[{"t": round(t - start, 6), "text": s} for t, s in narrs if start <= t < end],
            fps=opts.target_fps,
            meta={
                "source": item["rel_path"],
                "uid": item["uid"],
                "video_uid": item["video_uid"],
                "split": item["split"],
                "chunk_index": c,
                "chunk_start_sec": round(start, 6),
                "video_start_sec": round(item["offset_sec"] + start, 6),
                "codec": stats.codec,
                "source_size": f"{stats.width}x{stats.height}",
            },
        ))
    if not episodes:
        raise VideoSkipped(
            "too_short",
            f"{path}: {len(jpegs)} frame(s) at {opts.target_fps} fps, fewer than min_chunk_frames={opts.min_chunk_frames}",
        )
    return episodes


def produce(plan: convert_common.ShardPlan, log: convert_common.ShardLog, *, out_dir: str,
            options: dict[str, Any]) -> Iterator[records.Episode]:
    """convert_common producer: the chunks of every video of one shard, in order.

    Each video runs under its own try/except: any failure skips that video only. A per-shard
    video table (decode counts, timings, status) goes to `.progress/<shard>.videos.json`.
    """
    import av.logging

    # No Python log callback (PyAV's default): with one installed, a frame-decoding thread that logs
    # waits for the GIL while the main thread, holding it, frees the codec context and waits for
    # that thread; a bit-flipped mp4 deadlocked this way. Skip reasons go to the manifest anyway.
    av.logging.set_level(None)
    opts = Ego4DOptions(**options)
    table = []
    for item in plan.items:
        stats = DecodeStats()
        t0 = time.perf_counter()
        row: dict[str, Any] = {"uid": item["uid"], "path": item["rel_path"]}
        try:
            episodes = video_episodes(item, opts, stats)
        except VideoSkipped as e:
            log.skip(item["uid"], e.reason, str(e))
            row.update(status="skipped", reason=e.reason)
            episodes = []
        except Exception as e:  # noqa: BLE001 - one video must never end the job
            log.skip(item["uid"], "decode_error", f"{item['path']}: {type(e).__name__}: {e}")
            row.update(status="skipped", reason="decode_error")
            episodes = []
        else:
            row.update(status="ok", chunks=len(episodes))
        row.update(
            decoded_frames=stats.decoded_frames,
            kept_frames=stats.kept_frames,
            decoded_seconds=None if stats.last_time is None else round(stats.last_time - (stats.first_time or 0), 3),
            header_duration=stats.header_duration,
            seconds=round(time.perf_counter() - t0, 4),
        )
        table.append(row)
        yield from episodes
    records.write_json_atomic(
        os.path.join(out_dir, convert_common.PROGRESS_DIR, plan.name + VIDEO_SIDECAR_SUFFIX), table
    )


# ---------------------------------------------------------------------------------------------
# The job


def convert(input_root: str, output_dir: str, *, video_dir: str = "auto", uids: Sequence[str] | None = None,
            split: str | None = None, options: Ego4DOptions | None = None, workers: int = 1,
            videos_per_shard: int = 4, name: str = "ego4d", embodiment: str = "ego4d",
            progress: bool = True, manifest_extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Converts (or resumes converting) an Ego4D download; returns the final manifest.

    Raises Ego4DLayoutError for a bad layout or selection (before anything is written) and
    convert_common.NoValidEpisodesError when every selected video was skipped (nothing is left
    behind).
    """
    options = options or Ego4DOptions()
    layout = Ego4DLayout.open(input_root)
    if video_dir == "auto":
        video_dir = layout.detect_video_dir()
    entries = layout.select(video_dir, uids=uids, split=split)
    if not entries:
        raise Ego4DLayoutError(
            f"{layout.metadata_path}: no {video_dir} entries selected"
            + (f" for split={split!r}" if split else "") + (f" among uids {list(uids)[:5]}" if uids else "")
        )
    narrations = layout.narrations({e.video_uid for e in entries})
    items = []
    for e in entries:
        path = layout.video_path(e, video_dir)
        items.append({
            "uid": e.uid, "video_uid": e.video_uid, "split": e.split, "offset_sec": e.offset_sec,
            "path": path, "rel_path": os.path.relpath(path, layout.root),
            "narrations": [list(n) for n in narrations_for(e, narrations)],
        })
    plans = convert_common.plan_shards(items, items_per_shard=max(1, videos_per_shard))
    dataset_info = {
        "name": name,
        "kind": "video",
        "embodiment": embodiment,
        "image_size": [options.image_size, options.image_size],
        "fps": options.target_fps,
        "action_keys": [],
        "source": "ego4d",
        "video_dir": video_dir,
        "split": split,
        "chunk_seconds": options.chunk_seconds,
        "jpeg_quality": options.jpeg_quality,
    }
    t0 = time.time()
    producer = functools.partial(produce, out_dir=os.path.abspath(output_dir), options=asdict(options))
    convert_common.run_conversion(
        output_dir, plans, producer, dataset_info=dataset_info, workers=workers, progress=progress,
        manifest_extra={"input": layout.root, "video_dir": video_dir, **(manifest_extra or {})},
        desc=f"{name} ({len(items)} videos)",
    )
    elapsed = time.time() - t0
    # Fold the per-shard video tables into the manifest: per-video status and decode throughput.
    table: list[dict[str, Any]] = []
    for plan in plans:
        p = os.path.join(output_dir, convert_common.PROGRESS_DIR, plan.name + VIDEO_SIDECAR_SUFFIX)
        if os.path.exists(p):
            with open(p) as f:
                table.extend(json.load(f))
    manifest_path = os.path.join(output_dir, records.MANIFEST_JSON)
    with open(manifest_path) as f:
        manifest = json.load(f)
    decoded = sum(r.get("decoded_frames", 0) for r in table)
    worker_seconds = sum(r.get("seconds", 0.0) for r in table)
    this_run = manifest.get("this_run", {})
    manifest["videos"] = {
        "selected": len(items),
        "converted": sum(r["status"] == "ok" for r in table),
        "skipped": sum(r["status"] != "ok" for r in table),
        "table": table,
    }
    manifest["throughput"] = {
        "decoded_frames": decoded,
        "decoded_frames_per_s": decoded / elapsed if elapsed > 0 else None,
        "decoded_frames_per_worker_s": decoded / worker_seconds if worker_seconds > 0 else None,
        "output_frames_per_s": this_run.get("frames_per_s"),
        "note": "decoded_frames sums every shard's table, including shards finished by an earlier run",
    }
    records.write_json_atomic(manifest_path, manifest)
    return manifest


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, help="Ego4D download root (holds ego4d.json and v2/)")
    parser.add_argument("--output", required=True, help="output dataset directory")
    parser.add_argument("--video_dir", default="auto", choices=("auto", *VIDEO_DIRS),
                        help="which videos to read (auto: video_540ss, else full_scale, else clips)")
    parser.add_argument("--target_fps", type=float, default=10.0)
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--chunk_seconds", type=float, default=60.0, help="episode length limit")
    parser.add_argument("--min_chunk_frames", type=int, default=2)
    parser.add_argument("--uids", default=None, help="comma-separated video (or clip) uids")
    parser.add_argument("--uid_file", default=None, help="file of uids (whitespace/comma separated)")
    parser.add_argument("--split", default=None, choices=("train", "val", "test"))
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--videos_per_shard", type=int, default=4)
    parser.add_argument("--jpeg_quality", type=int, default=95)
    parser.add_argument("--decode_threads", type=int, default=0, help="0: FFmpeg default")
    parser.add_argument("--name", default="ego4d", help="dataset name in dataset.json")
    parser.add_argument("--embodiment", default="ego4d", help="embodiment tag in dataset.json")
    parser.add_argument("--no_progress", action="store_true")


def main(args: argparse.Namespace) -> dict[str, Any]:
    options = Ego4DOptions(
        target_fps=args.target_fps, image_size=args.image_size, chunk_seconds=args.chunk_seconds,
        min_chunk_frames=args.min_chunk_frames, jpeg_quality=args.jpeg_quality,
        decode_threads=args.decode_threads,
    )
    manifest = convert(
        args.input, args.output, video_dir=args.video_dir, uids=parse_uids(args.uids, args.uid_file),
        split=args.split, options=options, workers=args.workers, videos_per_shard=args.videos_per_shard,
        name=args.name, embodiment=args.embodiment, progress=not args.no_progress,
        manifest_extra={"args": {k: v for k, v in vars(args).items() if not callable(v)}},
    )
    v, tp = manifest["videos"], manifest["throughput"]
    print(
        f"{args.output}: {manifest['num_episodes']} episodes, {manifest['num_frames']} frames from "
        f"{v['converted']}/{v['selected']} videos ({v['skipped']} skipped: "
        f"{manifest['skipped_by_reason'] or 'none'}); decoded {tp['decoded_frames']} frames at "
        f"{(tp['decoded_frames_per_s'] or 0):.0f} frames/s in {manifest['seconds']:.1f} s"
    )
    return manifest
