"""`wam-convert oxe`: an RLDS builder directory (an Open X-Embodiment dataset) -> wam_jax episodes.

Reads the builder dir TF-free (`data_pipelines.convert.rlds`), standardizes every episode with its
registry entry or a user spec (`data_pipelines.convert.oxe_registry`), center-crops each camera frame to a
square, resizes it to `--image_size` and re-encodes it as JPEG, and writes ArrayRecord shards with
`dataset.json`, `stats.json` and `manifest.json` (`data_pipelines.convert.common`).

Work is split into output shards of `--episodes_per_shard` consecutive source episodes (default:
one output shard per input shard), converted in `--workers` processes; a rerun resumes (finished
shards are kept, an interrupted one is redone). Episodes that cannot be used are skipped and
counted in the manifest: `empty_episode`, `too_short` (< `--min_length` steps), `corrupt_image`
(a frame that does not decode), `corrupt_record` (a record that does not parse, or a tfrecord
record that cannot be read, with the rest of its shard), `non_finite` (NaN / inf in action or
proprio), `bad_episode` (standardization failed, e.g. inconsistent array lengths).

    wam-convert oxe --input=/data/fractal20220817_data/0.1.0 --output=/data/wam/fractal
    wam-convert oxe --input=DIR --output=OUT --dataset=my_robot \\
        --image_key=observation/cam --action_key=action[0:6] --action_key=action[6:7]:clip01 \\
        --proprio_key=observation/state --language_key=language_instruction --fps=10
"""

from __future__ import annotations

import argparse
import functools
import io
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from data_pipelines import records
from data_pipelines.convert import common as convert_common
from data_pipelines.convert.oxe_registry import REGISTRY, custom_spec, get_spec, spec_for
from data_pipelines.convert.oxe_spec import DatasetSpec
from data_pipelines.convert.rlds import RLDSDataset, RLDSFormatError


class CorruptImageError(ValueError):
    """A stored camera frame could not be decoded."""


@dataclass(frozen=True)
class OXEOptions:
    image_size: int = 64
    jpeg_quality: int = 95
    min_length: int = 2


def _center_square(w: int, h: int) -> tuple[int, int, int, int]:
    m = min(w, h)
    x0, y0 = (w - m) // 2, (h - m) // 2
    return x0, y0, x0 + m, y0 + m


def process_frame(frame: Any, size: int, quality: int = 95) -> bytes:
    """Stored frame (JPEG / PNG bytes or uint8 array) -> center-square crop -> `size`² JPEG.

    For JPEG sources the decoder's DCT scaling (`Image.draft`) is used when the frame is much
    larger than the target, which decodes a 640x480 frame to 64 px several times faster.
    JPEG is written without chroma subsampling (small images keep their colour edges).
    """
    from PIL import Image, UnidentifiedImageError

    if isinstance(frame, bytes | bytearray | memoryview):
        try:
            img = Image.open(io.BytesIO(bytes(frame)))
            if img.format == "JPEG":
                w, h = img.size
                m = min(w, h)
                img.draft("RGB", (max(1, w * size // m), max(1, h * size // m)))
            img = img.convert("RGB")  # forces the full decode: truncated data raises here
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise CorruptImageError(f"{type(e).__name__}: {e}") from e
    else:
        arr = np.asarray(frame)
        if arr.dtype != np.uint8 or arr.ndim not in (2, 3):
            raise CorruptImageError(
                f"image array has shape {arr.shape} dtype {arr.dtype}, expected uint8 [H, W(, C)]"
            )
        img = Image.fromarray(arr).convert("RGB")
    box = _center_square(*img.size)
    img = img.resize((size, size), Image.Resampling.BICUBIC, box=box, reducing_gap=3.0)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, subsampling=0)
    return buf.getvalue()


# ------------------------------------------------------------------------------ work items
def _ranges(items: Sequence[Sequence[int]]) -> Iterator[tuple[int, int, int]]:
    """Consecutive (shard, index) items -> (shard, start, stop) runs."""
    run: list[int] | None = None
    for s, i in items:
        if run is not None and run[0] == s and run[2] == i:
            run[2] += 1
        else:
            if run is not None:
                yield tuple(run)  # type: ignore[misc]
            run = [s, i, i + 1]
    if run is not None:
        yield tuple(run)  # type: ignore[misc]


@functools.lru_cache(maxsize=4)
def _open(builder_dir: str, split: str) -> RLDSDataset:
    return RLDSDataset(builder_dir, split)


def produce(
    plan: convert_common.ShardPlan,
    log: convert_common.ShardLog,
    *,
    builder_dir: str,
    split: str,
    spec: DatasetSpec,
    options: OXEOptions,
) -> Iterator[records.Episode]:
    """convert_common producer: the standardized episodes of one output shard."""
    ds = _open(builder_dir, split)
    size, q = options.image_size, options.jpeg_quality
    named = False
    for shard, start, stop in _ranges(plan.items):
        fname = os.path.basename(ds.shard_paths[shard])
        expected = start
        for (_, i), ep in ds.episodes(shard, start, stop, decode_images=False, errors="return"):
            item = f"{fname}#{i}"
            expected = i + 1
            if isinstance(ep, RLDSFormatError):
                log.skip(item, "corrupt_record", str(ep))
                continue
            try:
                std = spec.standardize(ep)
            except (ValueError, KeyError, IndexError) as e:
                log.skip(item, "bad_episode", f"{type(e).__name__}: {e}")
                continue
            n = len(std)
            if n == 0:
                log.skip(item, "empty_episode", "0 steps")
                continue
            if n < options.min_length:
                log.skip(item, "too_short", f"{n} steps < --min_length {options.min_length}")
                continue
            bad = [
                name
                for name, arr in (("action", std.action), ("proprio", std.proprio), ("privileged", std.privileged))
                if arr is not None and not np.all(np.isfinite(arr))
            ]
            if bad:
                log.skip(item, "non_finite", f"NaN or inf in {' and '.join(bad)}")
                continue
            try:
                frames = _frames(std.frames, spec.image_keys[0], size, q)
                wrist = (
                    _frames(std.wrist_frames, spec.wrist_image_keys[0], size, q)
                    if std.wrist_frames
                    else []
                )
            except CorruptImageError as e:
                log.skip(item, "corrupt_image", str(e))
                continue
            log.set_info("action_is_delta", spec.delta_mask(int(std.action.shape[1])))
            log.set_info("action_dim", int(std.action.shape[1]))
            log.set_info("proprio_dim", None if std.proprio is None else int(std.proprio.shape[1]))
            log.set_info("privileged_dim", None if std.privileged is None else int(std.privileged.shape[1]))
            if not named:  # once per shard: the names follow from the keys and their widths
                for modality, names in spec.dim_names(ep).items():
                    log.set_info(f"{modality}_names", names)
                named = True
            meta: dict[str, Any] = {"source_file": fname, "source_index": int(i), "length": n}
            md = ep.get("episode_metadata")
            if isinstance(md, dict) and isinstance(md.get("file_path"), str):
                meta["file_path"] = md["file_path"]  # the episode's origin in the raw data
            yield records.Episode(
                episode_id=f"{ds.name}/{split}/{shard:05d}/{i:06d}",
                frames=frames,
                wrist_frames=wrist,
                action=std.action,
                proprio=std.proprio,
                privileged=std.privileged,
                language=std.language,
                fps=spec.fps,
                meta=meta,
            )
        for j in range(expected, stop):  # past an unreadable record of a tfrecord shard
            log.skip(f"{fname}#{j}", "corrupt_record", "not readable: follows an unreadable record")


def _frames(frames: Sequence[Any], key: str, size: int, quality: int) -> list[bytes]:
    out = []
    for t, f in enumerate(frames):
        try:
            out.append(process_frame(f, size, quality))
        except CorruptImageError as e:
            raise CorruptImageError(f"step {t}, {key}: {e}") from None
    return out


# ------------------------------------------------------------------------------ the job
def convert(
    input_dir: str,
    output_dir: str,
    *,
    dataset: str | None = None,
    spec: DatasetSpec | None = None,
    split: str = "train",
    options: OXEOptions | None = None,
    workers: int = 1,
    episodes_per_shard: int | None = None,
    max_episodes: int | None = None,
    progress: bool = True,
    manifest_extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Converts (or resumes converting) one RLDS builder dir; returns the written manifest.

    Args:
      dataset: registry name (default: the builder's own name); ignored when `spec` is given.
      spec: an explicit (unresolved) spec, e.g. from `oxe_registry.custom_spec`.
      episodes_per_shard: output shard size; None keeps one output shard per input shard.
      max_episodes: convert only the first N episodes (for quick looks).

    Raises:
      RLDSFormatError / RLDSKeyError: bad builder dir or a key the dataset lacks (nothing is
        written); NoValidEpisodesError: every episode was skipped (nothing is left behind).
    """
    options = options or OXEOptions()
    if options.image_size < 8:
        raise ValueError(f"--image_size must be >= 8, got {options.image_size}")
    ds = RLDSDataset(input_dir, split)
    spec = spec.resolve(ds) if spec is not None else spec_for(ds, dataset)

    items = [(s, i) for s, n in enumerate(ds.shard_lengths) for i in range(n)][
        : max_episodes if max_episodes is not None else None
    ]
    if not items:
        raise convert_common.NoValidEpisodesError(
            f"{input_dir}: split {split!r} has no episodes ("
            + (f"--max_episodes={max_episodes}" if len(ds) else
               f"its shardLengths in dataset_info.json: {ds.shard_lengths}")
            + "); nothing was written"
        )
    if episodes_per_shard is None:
        by_shard: dict[int, list[tuple[int, int]]] = {}
        for it in items:
            by_shard.setdefault(it[0], []).append(it)
        groups = list(by_shard.values())
        plans = [convert_common.ShardPlan(k, len(groups), tuple(g)) for k, g in enumerate(groups)]
    else:
        plans = convert_common.plan_shards(items, items_per_shard=episodes_per_shard)

    action_keys = list(spec.action_keys) or [p.describe() for p in spec.action]
    dataset_info = {
        "name": dataset or ds.name,
        "kind": "robot",
        "embodiment": spec.embodiment,
        "image_size": [options.image_size, options.image_size],
        "fps": spec.fps,
        "action_keys": action_keys,
        "source": "rlds",
        "source_name": ds.name,
        "source_version": ds.version,
        "source_split": split,
        "standardization": spec.describe(),
        "has_wrist": bool(spec.wrist_image_keys),
        "jpeg_quality": options.jpeg_quality,
        "min_length": options.min_length,
    }
    producer = functools.partial(
        produce,
        builder_dir=os.path.abspath(input_dir),
        split=split,
        spec=spec,
        options=options,
    )
    t0 = time.time()
    convert_common.run_conversion(
        output_dir,
        plans,
        producer,
        dataset_info=dataset_info,
        workers=workers,
        progress=progress,
        manifest_extra={
            "input": os.path.abspath(input_dir),
            "source_episodes": len(items),
            **(manifest_extra or {}),
        },
        desc=f"{dataset_info['name']} ({len(items)} episodes)",
    )
    manifest = _read_json(os.path.join(output_dir, records.MANIFEST_JSON))
    manifest["wall_seconds"] = time.time() - t0
    return manifest


def _read_json(path: str) -> dict[str, Any]:
    import json

    with open(path) as f:
        return json.load(f)


# ------------------------------------------------------------------------------ CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--input", required=True, help="RLDS builder dir (holds features.json, dataset_info.json)"
    )
    parser.add_argument("--output", required=True, help="output dataset directory")
    parser.add_argument(
        "--dataset",
        default=None,
        help=f"registry entry (default: the builder's name); known: {', '.join(sorted(REGISTRY))}",
    )
    parser.add_argument("--split", default="train")
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--jpeg_quality", type=int, default=95)
    parser.add_argument(
        "--min_length", type=int, default=2, help="skip episodes with fewer steps (counted)"
    )
    parser.add_argument("--image_key", default=None, help="step key of the primary camera")
    parser.add_argument("--wrist_image_key", default=None, help="step key of the wrist camera")
    parser.add_argument(
        "--action_key",
        action="append",
        default=None,
        help="step key(s) concatenated into the action: 'path', 'path[a:b]', "
        "'path[a:b]:transform' (rel2abs_gripper, binarize_gripper, invert, clip01, cos_sin); repeatable",
    )
    parser.add_argument(
        "--proprio_key", action="append", default=None, help="step key(s) of proprio; repeatable"
    )
    parser.add_argument(
        "--privileged_key", action="append", default=None,
        help="step key(s) of a state the robot does not sense (a simulator's object pose; an angle "
        "as 'path[2:3]:cos_sin'): a training target (loss.privileged), never an input; repeatable",
    )
    parser.add_argument(
        "--language_key", default=None, help="step or episode_metadata key of the instruction"
    )
    parser.add_argument(
        "--delta_dims",
        default=None,
        help="action dims that are per-step deltas, e.g. '0:6' or '0,1,2' (the rest are "
        "absolute targets); default: the registry's, or all absolute for new action keys",
    )
    parser.add_argument("--fps", type=float, default=None, help="control rate (Hz)")
    parser.add_argument("--embodiment", default=None)
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument(
        "--episodes_per_shard",
        type=int,
        default=None,
        help="episodes per output shard (default: one output shard per input shard)",
    )
    parser.add_argument("--max_episodes", type=int, default=None)
    parser.add_argument("--no_progress", action="store_true")


def spec_from_args(args: argparse.Namespace, builder_name: str | None = None) -> DatasetSpec | None:
    """A user spec when any key flag is given (on top of the registry entry if there is one)."""
    flags = (
        args.delta_dims,
        args.image_key,
        args.wrist_image_key,
        args.action_key,
        args.proprio_key,
        args.privileged_key,
        args.language_key,
        args.fps,
        args.embodiment,
    )
    if all(f is None for f in flags):
        return None
    name = args.dataset or builder_name or "custom"
    base = get_spec(name) if name in REGISTRY else None
    return custom_spec(
        name=name,
        image_key=args.image_key,
        action_keys=args.action_key or (),
        proprio_keys=args.proprio_key or (),
        privileged_keys=args.privileged_key or (),
        language_key=args.language_key,
        wrist_image_key=args.wrist_image_key,
        fps=args.fps,
        embodiment=args.embodiment,
        delta_dims=parse_dims(args.delta_dims),
        base=base,
    )


def parse_dims(text: str | None) -> list[int] | None:
    """'0:6' -> [0..5]; '0,2,5' -> [0, 2, 5]; '' -> [] (no delta dims); None -> None."""
    if text is None:
        return None
    text = text.strip()
    if not text:
        return []
    if ":" in text:
        a, b = text.split(":", 1)
        return list(range(int(a or 0), int(b)))
    return [int(x) for x in text.split(",") if x.strip()]


def main(args: argparse.Namespace) -> dict[str, Any]:
    builder_name = None
    if args.dataset is None and any(
        getattr(args, k) is not None for k in ("image_key", "action_key")
    ):
        builder_name = RLDSDataset(args.input, args.split).name
    spec = spec_from_args(args, builder_name)
    manifest = convert(
        args.input,
        args.output,
        dataset=args.dataset,
        spec=spec,
        split=args.split,
        options=OXEOptions(args.image_size, args.jpeg_quality, args.min_length),
        workers=args.workers,
        episodes_per_shard=args.episodes_per_shard,
        max_episodes=args.max_episodes,
        progress=not args.no_progress,
        manifest_extra={"args": {k: v for k, v in vars(args).items() if not callable(v)}},
    )
    run = manifest["this_run"]
    print(
        f"{args.output}: {manifest['num_episodes']} episodes, {manifest['num_frames']} frames "
        f"in {manifest['num_shards']} shards; skipped {manifest['num_skipped']} "
        f"({manifest['skipped_by_reason'] or 'none'}); this run: {run['episodes']} episodes at "
        f"{(run['episodes_per_s'] or 0):.1f} episodes/s, {(run['frames_per_s'] or 0):.0f} frames/s"
    )
    return manifest
