"""Small Ego4D download directories for tests, written with the real codecs and layout.

`make_ego4d_root` writes (in well under a second):

| uid | file | what it tests |
|---|---|---|
| `vid-h264` | H.264, 30 fps, 160x120, 6 s, split train, narrations | round trip, narrations, chunks |
| `vid-vp9`  | VP9, 25 fps, 128x96, 4 s, split val | second codec, fps resampling |
| `vid-vfr`  | H.264, variable frame rate (jittered timestamps), split test | timestamp resampling |
| `vid-dur`  | H.264 whose mp4 header durations are 40% of the real length | trusting decoded timestamps |

and with `bad=True` also `vid-trunc` (mp4 cut to 60% of its bytes), `vid-corrupt` (random bytes)
and `vid-missing` (listed in ego4d.json, no file).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from data_pipelines.convert import ego4d_writer as w


@dataclasses.dataclass
class FixtureVideo:
    uid: str
    frames: np.ndarray | None
    fps: float
    codec: str = "h264"
    split: str | None = None
    narrations: tuple[tuple[float, str], ...] = ()
    timestamps: np.ndarray | None = None


NARRATIONS_H264 = ((0.5, "#C C opens the drawer"), (2.25, "#C C picks a spoon"),
                   (2.95, "#C C closes the drawer"), (5.1, "#C C walks to the sink"))


def fixture_videos() -> list[FixtureVideo]:
    rng = np.random.default_rng(7)
    vfr_times = np.cumsum(np.r_[0.0, rng.uniform(0.02, 0.05, 119)])
    return [
        FixtureVideo("vid-h264", w.moving_shapes(180, 120, 160, fps=30, seed=1), 30.0, "h264", "train",
                     NARRATIONS_H264),
        FixtureVideo("vid-vp9", w.moving_shapes(100, 96, 128, fps=25, seed=2), 25.0, "vp9", "val",
                     ((1.0, "#C C looks around"),)),
        FixtureVideo("vid-vfr", w.moving_shapes(120, 96, 128, seed=3, timestamps=vfr_times), 30.0, "h264",
                     "test", timestamps=vfr_times),
        FixtureVideo("vid-dur", w.moving_shapes(90, 96, 128, fps=30, seed=4), 30.0, "h264", None),
    ]


def make_ego4d_root(root: str, *, bad: bool = False, good: bool = True,
                    video_dir: str = "full_scale") -> dict[str, FixtureVideo]:
    """Writes the fixture layout under `root`; returns the good videos by uid (frames included)."""
    writer = w.Ego4DLayoutWriter(root)
    videos = fixture_videos() if good else []
    for v in videos:
        writer.add_video(v.uid, v.frames, v.fps, codec=v.codec, video_dir=video_dir, split=v.split,
                         narrations=v.narrations, timestamps=v.timestamps)
        if v.uid == "vid-dur":
            w.scale_mp4_durations(writer.video_path(v.uid, video_dir), media_factor=0.4, movie_factor=0.4)
    if bad:
        frames = w.moving_shapes(60, 96, 128, seed=9)
        path = writer.add_video("vid-trunc", frames, 30.0, split="train")
        w.truncate_file(path, 0.6)
        writer.add_video("vid-corrupt", frames, 30.0, split="train")
        w.write_corrupt_file(writer.video_path("vid-corrupt", video_dir), 8192, seed=1)
        writer.add_video("vid-missing", None, 30.0, split="train")
    writer.finish()
    return {v.uid: v for v in videos}


def decode_all(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Every frame of an mp4 at full resolution with its timestamp (s from stream start), decoded
    independently of the converter (no threading, no scaling in FFmpeg)."""
    import av

    frames, times = [], []
    with av.open(path) as c:
        s = c.streams.video[0]
        start = float(s.start_time * s.time_base) if s.start_time is not None else 0.0
        for f in c.decode(s):
            times.append(f.time - start)
            frames.append(f.to_ndarray(format="rgb24"))
    return np.stack(frames), np.asarray(times)


def reference_frames(path: str, target_fps: float, size: int) -> tuple[np.ndarray, np.ndarray]:
    """What a correct conversion must contain: for t = k / target_fps the source frame nearest
    in time, resized (shorter side, PIL box filter) and center-cropped to `size`."""
    from PIL import Image

    frames, times = decode_all(path)
    targets = np.arange(0.0, times[-1] + 1e-9, 1.0 / target_fps)
    out = []
    for t in targets:
        f = frames[nearest_index(times, t)]
        h, wd = f.shape[:2]
        if wd >= h:
            nh, nw = size, max(size, round(wd * size / h))
        else:
            nw, nh = size, max(size, round(h * size / wd))
        r = np.asarray(Image.fromarray(f).resize((nw, nh), Image.BOX))
        y0, x0 = (nh - size) // 2, (nw - size) // 2
        out.append(r[y0:y0 + size, x0:x0 + size])
    return np.stack(out), targets


def index_coded_frames(num_frames: int, height: int = 96, width: int = 128) -> np.ndarray:
    """Frames whose flat gray levels encode their index: top half 20 + 8 (i mod 25), bottom half
    20 + 8 (i div 25). Steps of 8 survive YUV conversion, scaling and JPEG, so the source frame
    behind any converted frame can be read back exactly (up to 625 frames)."""
    if num_frames > 625:
        raise ValueError("index coding supports at most 625 frames")
    i = np.arange(num_frames)
    out = np.empty((num_frames, height, width, 3), np.uint8)
    out[:, : height // 2] = (20 + 8 * (i % 25)).astype(np.uint8)[:, None, None, None]
    out[:, height // 2:] = (20 + 8 * (i // 25)).astype(np.uint8)[:, None, None, None]
    return out


def read_index(frame: np.ndarray) -> int:
    """Inverse of `index_coded_frames` on a (scaled, cropped, JPEG'd) frame."""
    h = frame.shape[0]
    top = float(frame[h // 8: 3 * h // 8].mean())
    bottom = float(frame[5 * h // 8: 7 * h // 8].mean())
    return int(round((top - 20) / 8)) + 25 * int(round((bottom - 20) / 8))


def nearest_index(times: np.ndarray, t: float) -> int:
    """Index of the timestamp nearest to t; ties (to 1e-9 s) go to the earlier frame."""
    return int(np.argmin(np.round(np.abs(np.asarray(times) - t), 9)))
