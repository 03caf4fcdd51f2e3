"""Window index -> one training example in the batch schema (`schema.batch_spec`, without B).

`LoadClip` is a Grain transform: `random_map(window, rng)` is the training view (random resized crop
and colour jitter, identical for every frame of the clip), `map(window)` the evaluation view (center
square crop, no jitter). Every random draw comes from the `rng` Grain passes in, which Grain seeds
from the pipeline seed and the element's position, so a restored iterator reproduces batches bit for
bit. There are no flips: left/right matters for actions.

Only the `T` JPEGs of the clip are decoded, each straight to the crop at the output size (the JPEG
decoder's DCT downscaling is used when the crop is much larger than `image_size`).

Actions with a frame stride `s > 1`: the clip transition k (frame f_k -> f_k + s) spans the `s`
recorded actions a[f_k], ..., a[f_k + s - 1]. Dimensions marked delta (`dataset.json`
`"action_is_delta": [bool] * action_dim`) are summed, the others (absolute targets such as a gripper
command or a joint position) take the last one. A dataset without `action_is_delta` is treated as all
absolute (the safe reading: taking the last of a delta would drop motion, summing an absolute
would invent it). Normalization uses the per-step dataset stats: a delta dim's sum of `s` steps is
normalized as `(sum / s - mean) / std`, an absolute dim as `(a - mean) / std`; then clipped to ±5.
`denormalize_actions` inverts it.

Which statistics (`Normalization`): in training each source's own. In evaluation, the ones the model
was trained with for the clip's embodiment (`loader.trained_normalization`), so a dataset the model
never saw is fed in the units it knows, with no conversion afterwards.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np
import simplejpeg
from PIL import Image

from data_pipelines import records, schema
from data_pipelines.mixture import Source
from data_pipelines.window_index import WindowIndex

log = logging.getLogger(__name__)

_SIMPLEJPEG_COLORSPACES = ("YCbCr", "Gray", "RGB")  # CMYK / YCCK: Pillow converts them

NORM_CLIP = 5.0  # normalized actions / proprio are clipped to this many standard deviations
STD_FLOOR = 1e-6  # constant dims (std 0) normalize to 0 instead of inf
ASPECT_RANGE = (3.0 / 4.0, 4.0 / 3.0)  # random resized crop aspect ratio (w / h), log-uniform
GRAY = np.asarray([0.299, 0.587, 0.114])  # ITU-R 601 luma, as in PIL and torchvision


def transition_actions(actions: np.ndarray, frames: np.ndarray, stride: int, is_delta: np.ndarray,
                       *, chunk: bool = False) -> np.ndarray:
    """float32 [T-1, A]: per clip transition, the sum (delta dims) or last (absolute dims) of the
    `stride` recorded actions between consecutive clip frames; `chunk`: all of them, concatenated
    in time order ([T-1, stride * A])."""
    steps = frames[:-1, None] + np.arange(stride)[None, :]  # [T-1, s]
    raw = actions[steps]  # [T-1, s, A]
    if chunk:
        return raw.reshape(len(steps), -1).astype(np.float32)
    return np.where(is_delta, raw.sum(axis=1), raw[:, -1]).astype(np.float32)


def action_norm(mean: np.ndarray, std: np.ndarray, is_delta: np.ndarray, stride: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """(offset, scale) such that normalized = (a - offset) / scale for actions at this stride."""
    s = np.where(is_delta, float(stride), 1.0).astype(np.float32)
    return mean * s, np.maximum(std, STD_FLOOR) * s


def normalize_actions(actions: np.ndarray, mean: np.ndarray, std: np.ndarray, is_delta: np.ndarray,
                      stride: int) -> np.ndarray:
    offset, scale = action_norm(mean, std, is_delta, stride)
    return np.clip((actions - offset) / scale, -NORM_CLIP, NORM_CLIP).astype(np.float32)


def denormalize_actions(x: np.ndarray, mean: Sequence[float], std: Sequence[float],
                        is_delta: Sequence[bool], stride: int) -> np.ndarray:
    """Inverse of `normalize_actions` (up to the ±5 clip) over the dataset's own action dims:
    actions in the dataset's units, delta dims summed over `stride` recorded steps."""
    mean_a = np.asarray(mean, np.float32)
    std_a = np.asarray(std, np.float32)
    offset, scale = action_norm(mean_a, std_a, np.asarray(is_delta, bool), stride)
    d = mean_a.shape[0]
    return np.asarray(x, np.float32)[..., :d] * scale + offset


def normalize(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return np.clip((x - mean) / np.maximum(std, STD_FLOOR), -NORM_CLIP, NORM_CLIP).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Normalization:
    """The statistics (and embodiment id) a source's clips are fed to the model with.

    `stride` is the frame stride the action statistics are applied at (a delta dim's offset and
    scale grow with it); `chunk` > 1: a transition's action is that many recorded actions
    concatenated (`data.stride_actions='chunk'`), each normalized as one step (then `stride` is 1).
    None statistics: that modality is left out (zeros, mask false).
    """

    embodiment_id: int
    stride: int = 1
    chunk: int = 1
    action_mean: np.ndarray | None = None  # float32 [A_s], per recorded step
    action_std: np.ndarray | None = None
    action_is_delta: np.ndarray | None = None  # bool [A_s]
    proprio_mean: np.ndarray | None = None
    proprio_std: np.ndarray | None = None
    privileged_mean: np.ndarray | None = None
    privileged_std: np.ndarray | None = None

    @classmethod
    def of_source(cls, source: Source, stride: int, *, chunk: bool = False) -> Normalization:
        """The source's own statistics (training); `chunk`: `data.stride_actions='chunk'`."""
        a, p, k = source.action_dim, source.proprio_dim, source.privileged_dim
        return cls(embodiment_id=source.embodiment_id, stride=1 if chunk else int(stride),
                   chunk=int(stride) if chunk else 1,
                   action_mean=source.stat("action", "mean") if a else None,
                   action_std=source.stat("action", "std") if a else None,
                   action_is_delta=np.asarray(source.action_is_delta, bool),
                   proprio_mean=source.stat("proprio", "mean") if p else None,
                   proprio_std=source.stat("proprio", "std") if p else None,
                   privileged_mean=source.stat("privileged", "mean") if k else None,
                   privileged_std=source.stat("privileged", "std") if k else None)

    @property
    def has_actions(self) -> bool:
        return self.action_mean is not None and self.action_std is not None

    def action_affine(self) -> tuple[np.ndarray, np.ndarray]:
        """(offset, scale) [chunk * A_s]: robot units = normalized * scale + offset."""
        if not self.has_actions:
            return np.zeros((0,), np.float32), np.ones((0,), np.float32)
        offset, scale = action_norm(self.action_mean, self.action_std, self.delta_mask(), self.stride)
        return np.tile(offset, self.chunk), np.tile(scale, self.chunk)

    def delta_mask(self) -> np.ndarray:
        d = len(self.action_mean) if self.action_mean is not None else 0
        return np.zeros(d, bool) if self.action_is_delta is None else np.asarray(self.action_is_delta, bool)


def random_crop_box(rng: np.random.Generator, height: int, width: int, scale: tuple[float, float]
                    ) -> tuple[float, float, float, float]:
    """Random resized crop as fractions (x0, y0, x1, y1) of the frame: area fraction uniform in
    `scale`, aspect ratio log-uniform in ASPECT_RANGE around a square (the output is square)."""
    area = rng.uniform(scale[0], scale[1]) * height * width
    ratio = math.exp(rng.uniform(math.log(ASPECT_RANGE[0]), math.log(ASPECT_RANGE[1])))
    w = min(math.sqrt(area * ratio), width)
    h = min(math.sqrt(area / ratio), height)
    fw, fh = w / width, h / height
    x0 = rng.uniform(0.0, 1.0 - fw)
    y0 = rng.uniform(0.0, 1.0 - fh)
    return x0, y0, x0 + fw, y0 + fh


def center_crop_box(height: int, width: int) -> tuple[float, float, float, float]:
    """The largest centered square, as fractions of the frame."""
    side = min(height, width)
    fw, fh = side / width, side / height
    return (1.0 - fw) / 2, (1.0 - fh) / 2, (1.0 + fw) / 2, (1.0 + fh) / 2


def color_matrix(brightness: float, contrast: float, saturation: float, mean_gray: float
                 ) -> tuple[float, ...]:
    """PIL 12-tuple RGB -> RGB affine matrix of brightness, then contrast, then saturation.

    Each step is affine in the pixel (brightness x -> b x; contrast x -> c x + (1 - c) mean_gray(x);
    saturation x -> s x + (1 - s) gray(x)), so the three compose into one matrix applied in one pass
    with one final clip, where torchvision clips after each step (they differ only on pixels pushed
    out of range mid-way).
    """
    b, c, s = brightness, contrast, saturation
    offset = (1.0 - c) * b * mean_gray
    rows: list[float] = []
    for i in range(3):
        rows.extend(c * b * (s * (i == j) + (1.0 - s) * float(GRAY[j])) for j in range(3))
        rows.append(offset)
    return tuple(rows)


def _libjpeg_turbo(jpeg: bytes, min_size: tuple[int, int]) -> np.ndarray | None:
    """uint8 [H, W, 3] from libjpeg-turbo (simplejpeg), or None where Pillow must decide: CMYK /
    YCCK JPEGs (which simplejpeg would decode to wrong colours) and whatever simplejpeg refuses
    (it raises on corrupt or truncated data; Pillow then names the error)."""
    try:
        h, w, colorspace, _ = simplejpeg.decode_jpeg_header(jpeg)
        if colorspace in _SIMPLEJPEG_COLORSPACES:
            small = 2 * min_size[0] <= w and 2 * min_size[1] <= h
            return simplejpeg.decode_jpeg(jpeg, "RGB", min_width=min_size[0] if small else 0,
                                          min_height=min_size[1] if small else 0)
    except ValueError:
        pass
    return None


def _pillow(jpeg: bytes, min_size: tuple[int, int]) -> Image.Image:
    img = Image.open(io.BytesIO(jpeg))
    if min(min_size) > 0:
        img.draft("RGB", min_size)  # shrinks by 2x or more, or not at all
    return img.convert("RGB")


def decode_rgb(jpeg: bytes, min_size: tuple[int, int] = (0, 0)) -> Image.Image:
    """One JPEG as an RGB PIL image, at least `min_size` (width, height) when the decoder's DCT
    scaling can shrink it by 2x or more (finer factors decode slower than full size).

    libjpeg-turbo through simplejpeg decodes at about twice Pillow's speed on small frames
    (BENCHMARKS.md §5.3); CMYK / YCCK JPEGs, and any simplejpeg refuses, go through Pillow, which
    reads the former and raises OSError on the latter.
    """
    rgb = _libjpeg_turbo(jpeg, min_size)
    return _pillow(jpeg, min_size) if rgb is None else Image.fromarray(rgb, "RGB")


def decode_rgb_array(jpeg: bytes) -> np.ndarray:
    """uint8 [H, W, 3]: one JPEG at its stored size, as `decode_rgb` decodes it, without the trip
    through a PIL image (what `augment_on='device'` ships)."""
    rgb = _libjpeg_turbo(jpeg, (0, 0))
    return np.asarray(_pillow(jpeg, (0, 0))) if rgb is None else rgb


def decode_crop_resize(jpeg: bytes, box: tuple[float, float, float, float], size: int,
                       jitter: tuple[float, float, float] | None = None) -> np.ndarray:
    """uint8 [size, size, 3]: the `box` (fractions of the frame) of one JPEG, resized bilinearly,
    then colour-jittered with factors (brightness, contrast, saturation) if given.

    Everything runs in C (libjpeg-turbo, Pillow), which releases the GIL, so reader threads overlap."""
    x0, y0, x1, y1 = box
    # the crop must keep >= `size` pixels a side: the frame needs size / (crop fraction)
    img = decode_rgb(jpeg, (math.ceil(size / (x1 - x0)), math.ceil(size / (y1 - y0))))
    width, height = img.size
    out = img.resize((size, size), Image.Resampling.BILINEAR,
                     box=(x0 * width, y0 * height, x1 * width, y1 * height))
    if jitter is not None:
        hist = np.asarray(out.histogram(), np.float64).reshape(3, 256)
        channel_mean = hist @ np.arange(256.0) / (size * size)
        out = out.convert("RGB", color_matrix(*jitter, float(channel_mean @ GRAY)))
    return np.asarray(out, dtype=np.uint8)


class BadRecordsError(RuntimeError):
    """More unreadable records than `config.data.max_bad_records`; lists every one."""


class _BadRecord(Exception):
    pass


class LoadClip(grain.transforms.RandomMap, grain.transforms.Map):
    """Flat window index of one source -> one example (schema.batch_spec without the batch dim).

    Picklable: the ArrayRecord data source reopens its files lazily in each worker process.

    A record that cannot be read (a corrupt ArrayRecord chunk, an undecodable JPEG) is logged with
    its shard file and index and skipped: training gets None, which Grain drops without changing
    the iterator's position arithmetic (a resumed iterator yields the same batches); evaluation
    gets an all-masked example, so batch counts stay fixed. Past `max_bad_records` skips (counted
    per process, or per worker process with `data.num_workers > 0`) `BadRecordsError` stops the
    run with the list.

    `view_on_device` (`config.data.augment_on='device'`): the training view is drawn as on the host
    but not rendered: frames at the stored size and the view (`schema.VIEW_KEY`) for the trainer to
    render on the accelerator (`wam_jax.training.device_views`). The evaluation view is the host's.
    """

    def __init__(self, source: Source, index: WindowIndex, *, image_size: int, action_dim: int,
                 proprio_dim: int, privileged_dim: int = 0, crop_scale: Sequence[float] = (0.8, 1.0),
                 color_jitter: float = 0.0, norm: Normalization | None = None, max_bad_records: int = 100,
                 view_on_device: bool = False):
        if len(crop_scale) != 2 or not 0.0 < crop_scale[0] <= crop_scale[1] <= 1.0:
            raise ValueError(f"config.data.crop_scale must be (lo, hi) with 0 < lo <= hi <= 1, got {crop_scale!r}")
        if not 0.0 <= color_jitter < 1.0:
            raise ValueError(f"config.data.color_jitter must be in [0, 1), got {color_jitter!r}")
        self.source = source
        self.index = index
        self.image_size = int(image_size)
        self.action_dim = int(action_dim)
        self.proprio_dim = int(proprio_dim)
        self.privileged_dim = schema.privileged_width(privileged_dim)
        self.crop_scale = (float(crop_scale[0]), float(crop_scale[1]))
        self.jitter = float(color_jitter)
        self.view_on_device = bool(view_on_device)
        h, w = source.info["image_size"]
        self.frame_hw = (int(h), int(w))
        self.is_delta = np.asarray(source.action_is_delta, dtype=bool)
        self.norm = norm if norm is not None else Normalization.of_source(source, index.stride)
        if self.norm.chunk > 1 and self.norm.chunk != index.stride:
            raise ValueError(f"{source.path}: the model takes chunks of {self.norm.chunk} recorded actions per "
                             f"transition, but this dataset's frame stride is {index.stride} at "
                             f"config.data.target_fps={index.fps / index.stride:g}; use a target_fps that gives "
                             f"stride {self.norm.chunk}")
        if self.norm.chunk * source.action_dim > self.action_dim:
            raise ValueError(f"{source.path}: data.stride_actions='chunk' feeds {self.norm.chunk} x "
                             f"{source.action_dim} action dims per transition but config.model.action_dim is "
                             f"{self.action_dim}; raise it to at least {self.norm.chunk * source.action_dim}")
        self.max_bad_records = int(max_bad_records)
        self.bad: list[str] = []
        self.shards = records.shard_paths(source.path, source.info)
        self.data = records.open_shards(self.shards)
        self.frames = records.FrameReader(source.path, source.info["shards"])

    def random_map(self, element: int, rng: np.random.Generator) -> dict[str, Any] | None:
        box = random_crop_box(rng, *self.frame_hw, self.crop_scale)
        jitter = None
        if self.jitter > 0:
            lo, hi = 1.0 - self.jitter, 1.0 + self.jitter
            jitter = (rng.uniform(lo, hi), rng.uniform(lo, hi), rng.uniform(lo, hi))
        try:
            return self.load(int(element), box, jitter, on_device=self.view_on_device)
        except _BadRecord as e:
            self._skip(str(e))
            return None

    def map(self, element: int) -> dict[str, Any]:
        try:
            return self.load(int(element), center_crop_box(*self.frame_hw), None)
        except _BadRecord as e:
            self._skip(str(e))
            t, s = self.index.num_frames, self.image_size
            return PaddingClip(num_frames=t, image_size=s, action_dim=self.action_dim,
                               proprio_dim=self.proprio_dim, privileged_dim=self.privileged_dim,
                               dt=self.index.dt).map(element)

    def _where(self, record: int) -> str:
        """'SHARD record i' for a flat record index (shard lengths are read only on this error path)."""
        for path in self.shards:
            n = len(grain.sources.ArrayRecordDataSource([path]))
            if record < n:
                return f"{path} record {record}"
            record -= n
        return f"{self.source.path} record {record}"

    def _skip(self, what: str) -> None:
        self.bad.append(what)
        log.warning("skipping an unreadable record (%d so far, data.max_bad_records=%d): %s",
                    len(self.bad), self.max_bad_records, what)
        if len(self.bad) > self.max_bad_records:
            raise BadRecordsError(
                f"{len(self.bad)} unreadable records in {self.source.path} (more than "
                f"data.max_bad_records={self.max_bad_records}): " + "; ".join(self.bad))

    def _episode(self, record: int) -> records.Episode:
        try:
            return records.deserialize_episode(self.data[record])
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            raise _BadRecord(f"{self._where(record)}: {type(e).__name__}: {e}") from e

    def load(self, window: int, box: tuple[float, float, float, float],
             jitter: tuple[float, float, float] | None, on_device: bool = False) -> dict[str, Any]:
        record, start = self.index.lookup(window)
        ep = self._episode(record)
        frames = self.index.frame_indices(start)
        if frames[-1] >= len(ep):
            raise records.DatasetFormatError(
                f"{os.path.join(self.source.path, records.DATASET_JSON)}: record {record} "
                f"({ep.episode_id!r}) has {len(ep)} frames but the window index needs frame "
                f"{frames[-1]}; 'episode_lengths' does not match the shards"
            )
        for name, arr, dim in (("action", ep.action, self.source.action_dim),
                               ("proprio", ep.proprio, self.source.proprio_dim),
                               ("privileged", ep.privileged, self.source.privileged_dim)):
            if arr is not None and dim and arr.shape[1] != dim:
                raise records.DatasetFormatError(
                    f"{self.source.path}: record {record} ({ep.episode_id!r}) has {name} of shape "
                    f"{list(arr.shape)}, but dataset.json says {name}_dim={dim}"
                )
        try:
            jpegs = self.frames.frames(ep, frames)
        except RuntimeError as e:  # ArrayRecord: a frame record fails its checksum
            raise _BadRecord(f"{self._where(record)} ({ep.episode_id!r}), frames {list(frames)} in "
                             f"{ep.frame_ref.shard if ep.frame_ref else 'the record'}: {e}") from e
        try:
            if on_device:  # the stored frames; the trainer renders the view
                video = np.stack([decode_rgb_array(j) for j in jpegs])
            else:
                video = np.stack([decode_crop_resize(j, box, self.image_size, jitter) for j in jpegs])
        except (OSError, SyntaxError, ValueError) as e:  # PIL's errors for corrupt or truncated JPEGs
            raise _BadRecord(f"{self._where(record)} ({ep.episode_id!r}), a frame of {list(frames)}: "
                             f"{type(e).__name__}: {e}") from e
        if on_device and video.shape[1:3] != self.frame_hw:
            raise records.DatasetFormatError(
                f"{self.source.path}: record {record} ({ep.episode_id!r}) has frames of "
                f"{video.shape[2]}x{video.shape[1]} px, but dataset.json says image_size={list(self.frame_hw)}; "
                f"config.data.augment_on='device' batches frames at the stored size (use 'host')")

        t = self.index.num_frames
        norm = self.norm
        action = np.zeros((t - 1, self.action_dim), np.float32)
        action_mask = np.zeros((t - 1, self.action_dim), bool)
        if norm.has_actions and ep.action is not None and self.source.action_dim:
            a = min(self.source.action_dim, len(norm.action_mean))
            n = norm.chunk  # recorded actions per transition fed to the model (1: reduced)
            raw = transition_actions(ep.action, frames, self.index.stride, self.is_delta, chunk=n > 1)
            raw = raw.reshape(t - 1, n, -1)[..., :a]
            x = normalize_actions(raw, norm.action_mean[:a], norm.action_std[:a], norm.delta_mask()[:a], norm.stride)
            action[:, :n * a] = x.reshape(t - 1, n * a)
            action_mask[:, :n * a] = True
        proprio = np.zeros((t, self.proprio_dim), np.float32)
        proprio_mask = np.zeros((t, self.proprio_dim), bool)
        if norm.proprio_mean is not None and norm.proprio_std is not None and ep.proprio is not None:
            p = min(self.source.proprio_dim, len(norm.proprio_mean))
            proprio[:, :p] = normalize(ep.proprio[frames][:, :p], norm.proprio_mean[:p], norm.proprio_std[:p])
            proprio_mask[:, :p] = True
        privileged = np.zeros((t, self.privileged_dim), np.float32)
        privileged_mask = np.zeros((t, self.privileged_dim), bool)
        k = min(self.source.privileged_dim, self.privileged_dim)
        if k and norm.privileged_mean is not None and norm.privileged_std is not None and ep.privileged is not None:
            privileged[:, :k] = normalize(ep.privileged[frames][:, :k], norm.privileged_mean[:k],
                                          norm.privileged_std[:k])
            privileged_mask[:, :k] = True
        out = {
            "video": video,
            "action": action,
            "action_mask": action_mask,
            "proprio": proprio,
            "proprio_mask": proprio_mask,
            "privileged": privileged,
            "privileged_mask": privileged_mask,
            "timestep_mask": np.ones((t,), bool),
            "embodiment_id": np.int32(norm.embodiment_id),
            "source_id": np.int32(self.source.source_id),
            "dt": np.float32(self.index.dt),
        }
        if on_device:
            out[schema.VIEW_KEY] = schema.view_vector(box, jitter)
        return out


class PaddingClip(grain.transforms.Map):
    """An all-masked example (every mask false, zeros) used to fill the last eval batch, so every
    process runs the same number of full batches and no held-out window is dropped."""

    def __init__(self, *, num_frames: int, image_size: int, action_dim: int, proprio_dim: int, dt: float,
                 privileged_dim: int = 0):
        self.shape = (int(num_frames), int(image_size), int(action_dim), int(proprio_dim),
                      schema.privileged_width(privileged_dim))
        self.dt = float(dt)

    def map(self, element: int) -> dict[str, Any]:
        del element
        t, s, a, p, k = self.shape
        return {
            "video": np.zeros((t, s, s, 3), np.uint8),
            "action": np.zeros((t - 1, a), np.float32),
            "action_mask": np.zeros((t - 1, a), bool),
            "proprio": np.zeros((t, p), np.float32),
            "proprio_mask": np.zeros((t, p), bool),
            "privileged": np.zeros((t, k), np.float32),
            "privileged_mask": np.zeros((t, k), bool),
            "timestep_mask": np.zeros((t,), bool),
            "embodiment_id": np.int32(0),
            "source_id": np.int32(0),
            "dt": np.float32(self.dt),
        }
