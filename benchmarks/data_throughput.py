"""Data throughput: the Grain loader on converted data vs a bare JPEG-decode loop vs RLDS + tf.data.

Prints one table of clips/s and frames/s:

- `decode only (ceiling)`: one thread decoding exactly the JPEGs of the same random clips from
  memory (no read, no crop, no batching) -- what a single core can do at best.
- `grain workers=N`: `data_pipelines.loader.make_iterator` (random windows, random resized crop,
  colour jitter, normalization, batching), for each N in --workers.
- `rlds tf.data`: the same episodes written as an RLDS builder dir (`rlds_writer`) and read the way
  users do today: `tfds.builder_from_directory(dir).as_dataset()` (decodes every frame), clips of T
  consecutive steps per episode, resize, shuffle buffer, batch, prefetch.

Without --data a textured converted dataset is generated into a temporary directory.

    python benchmarks/data_throughput.py --workers 0,1,2 --batches 20
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import base  # noqa: E402
from data_pipelines import loader, records  # noqa: E402


def _config(data: str, args: argparse.Namespace, workers: int) -> Any:
    c = base.get_config()
    c.data.mixture = data
    c.data.num_frames = args.num_frames
    c.data.global_batch_size = args.batch
    c.data.num_workers = workers
    c.data.read_threads = args.read_threads
    c.data.heldout_fraction = 0.0
    c.model.image_size = args.image_size
    info = records.read_dataset_info(data)
    c.data.target_fps = float(info["fps"])  # stride 1: same frames as the RLDS clips
    c.model.action_dim = max(c.model.action_dim, int(info.get("action_dim") or 0))
    c.model.proprio_dim = max(c.model.proprio_dim, int(info.get("proprio_dim") or 0))
    return c


def bench_grain(data: str, args: argparse.Namespace, workers: int) -> float:
    """clips/s of the loader after `--warmup` batches (worker start-up excluded)."""
    it = loader.make_iterator(_config(data, args, workers), seed=0)
    try:
        for _ in range(args.warmup):
            next(it)
        t0 = time.perf_counter()
        for _ in range(args.batches):
            next(it)
        dt = time.perf_counter() - t0
    finally:
        it.close()
    return args.batches * args.batch / dt


def bench_decode_only(data: str, args: argparse.Namespace) -> float:
    """clips/s of decoding the clips' JPEGs (already in memory) with PIL on one thread."""
    from PIL import Image

    episodes = list(records.iter_episodes(records.shard_paths(data)))
    rng = np.random.default_rng(0)
    n = args.batches * args.batch
    t = args.num_frames
    picks = []
    for _ in range(n):
        ep = episodes[rng.integers(len(episodes))]
        start = int(rng.integers(0, len(ep.frames) - t + 1))
        picks.append(ep.frames[start:start + t])
    t0 = time.perf_counter()
    for frames in picks:
        for f in frames:
            np.asarray(Image.open(io.BytesIO(f)).convert("RGB"))
    return n / (time.perf_counter() - t0)


def write_rlds_copy(data: str, out_dir: str) -> str:
    """The converted episodes as an RLDS builder dir (JPEG bytes stored as given)."""
    from data_pipelines import rlds_writer as rw

    info = records.read_dataset_info(data)
    h, w = info["image_size"]
    a, p = int(info.get("action_dim") or 0), int(info.get("proprio_dim") or 0)
    features = rw.rlds_features(
        observation={"image": rw.image((h, w, 3), "jpeg"), "state": rw.tensor((p,))},
        action=rw.tensor((a,)), language_instruction=True)

    def episodes():
        for ep in records.iter_episodes(records.shard_paths(data, info)):
            steps = [{"observation": {"image": ep.frames[i], "state": ep.proprio[i]},
                      "action": ep.action[i], "language_instruction": ep.language}
                     for i in range(len(ep.frames))]
            yield rw.episode_from_steps(steps)

    return rw.write_rlds_dataset(out_dir, "bench", "1.0.0", features, episodes(),
                                 file_format="tfrecord", num_shards=4, overwrite=True)


def bench_rlds(rlds_dir: str, args: argparse.Namespace) -> float:
    import tensorflow as tf
    import tensorflow_datasets as tfds

    t, size = args.num_frames, args.image_size
    builder = tfds.builder_from_directory(rlds_dir)
    ds = builder.as_dataset(split="train")  # the writer marks it ordered: no file shuffling
    ds = ds.repeat()
    # non-overlapping clips of T consecutive steps, per episode
    ds = ds.flat_map(lambda ep: ep["steps"].batch(t, drop_remainder=True))

    def to_clip(steps: dict[str, Any]) -> dict[str, Any]:
        video = tf.image.resize(steps["observation"]["image"], (size, size), antialias=True)
        return {"video": tf.cast(tf.round(video), tf.uint8), "action": steps["action"][:-1],
                "proprio": steps["observation"]["state"]}

    ds = ds.map(to_clip, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.shuffle(256, seed=0).batch(args.batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    it = ds.as_numpy_iterator()
    for _ in range(args.warmup):
        next(it)
    t0 = time.perf_counter()
    for _ in range(args.batches):
        next(it)
    return args.batches * args.batch / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="converted dataset dir (default: generate one)")
    p.add_argument("--episodes", type=int, default=24)
    p.add_argument("--length", type=int, default=64, help="frames per generated episode")
    p.add_argument("--frame-size", type=int, default=160, help="stored JPEG size of generated frames")
    p.add_argument("--image-size", type=int, default=128, help="model image size (output)")
    p.add_argument("--num-frames", type=int, default=8)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--batches", type=int, default=20, help="timed batches per row")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--workers", default="0,1,2", help="comma-separated grain worker counts")
    p.add_argument("--read-threads", type=int, default=4)
    p.add_argument("--no-rlds", action="store_true", help="skip the RLDS + tf.data row")
    args = p.parse_args()

    tmp = tempfile.TemporaryDirectory(prefix="wam_bench_")
    data = args.data
    if data is None:
        from tests.converted_fixtures import write_converted_dataset

        data = write_converted_dataset(
            os.path.join(tmp.name, "converted"), name="bench", episode_lengths=[args.length] * args.episodes,
            image_size=(args.frame_size, args.frame_size), texture=True, num_shards=4, action_dim=7,
            proprio_dim=8, index_in_json=True)
    info = records.read_dataset_info(data)
    load = os.getloadavg()
    print(f"data: {data} ({info['num_episodes']} episodes, {info['num_frames']} frames, "
          f"{info['image_size'][0]}x{info['image_size'][1]} JPEG) -> clips of {args.num_frames} "
          f"frames at {args.image_size}x{args.image_size}, batch {args.batch}")
    print(f"cpus: {os.cpu_count()}, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")

    rows: list[tuple[str, float]] = [("decode only (ceiling, 1 thread)", bench_decode_only(data, args))]
    for w in (int(x) for x in args.workers.split(",")):
        rows.append((f"grain workers={w}", bench_grain(data, args, w)))
    if not args.no_rlds:
        rlds_dir = write_rlds_copy(data, os.path.join(tmp.name, "rlds"))
        rows.append(("rlds tfds.as_dataset + tf.data", bench_rlds(rlds_dir, args)))

    print(f"\n| pipeline | clips/s | frames/s |\n|---|---:|---:|")
    for name, cps in rows:
        print(f"| {name} | {cps:.1f} | {cps * args.num_frames:.0f} |")
    ceiling = rows[0][1]
    best = max(c for n, c in rows if n.startswith("grain"))
    print(f"\nbest grain / decode-only ceiling: {best / ceiling:.2f}")
    if not args.no_rlds:
        print(f"best grain / rlds tf.data: {best / rows[-1][1]:.2f}")
    tmp.cleanup()


if __name__ == "__main__":
    main()
