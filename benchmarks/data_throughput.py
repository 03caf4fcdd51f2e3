"""Data throughput: the Grain loader on converted data vs a bare JPEG-decode loop vs RLDS + tf.data.

Prints one table of clips/s and frames/s:

- `decode only`: one thread decoding exactly the JPEGs of the same random clips from memory (no
  read, no crop, no batching), with Pillow and with libjpeg-turbo through simplejpeg (the
  loader's decoder; the faster of the two is the ceiling): what a single core can do at best.
- `grain workers=N`: `data_pipelines.loader.make_iterator` (random windows, random resized crop,
  colour jitter, normalization, batching), for each N in --workers.
- `views on device (host part)`: the loader with `config.data.augment_on='device'`: it decodes
  the clip's frames at the stored size and draws the view; `views rendered by jax` times the part
  moved to the accelerator (crop, resize, jitter of a batch, jitted) on this process's backend.
- `rlds tf.data`: the same episodes written as an RLDS builder dir (`rlds_writer`) and read the way
  users do today: `tfds.builder_from_directory(dir).as_dataset()` (decodes every frame), clips of T
  consecutive steps per episode (non-overlapping), the same random resized crop and colour jitter
  with tf.image ops, shuffle buffer, batch, prefetch.

Without --data a textured converted dataset is generated into a temporary directory.

    python benchmarks/data_throughput.py --workers 0,1,2 --batches 20 --repeats 3

On a shared machine compare the CPU ms / clip column (steady) rather than clips/s (depends on
the CPU share the process gets).
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
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import host  # noqa: E402

from configs import base  # noqa: E402
from data_pipelines import loader, records  # noqa: E402


def _config(data: str, args: argparse.Namespace, workers: int, augment_on: str = "host") -> Any:
    c = base.get_config()
    c.data.augment_on = augment_on
    c.data.mixture = data
    c.data.num_frames = args.num_frames
    c.data.global_batch_size = args.batch
    c.data.num_workers = workers
    c.data.read_threads = args.read_threads
    c.data.heldout_fraction = 0.0
    c.model.image_size = args.image_size
    c.data.crop_scale = tuple(args.crop_scale)
    c.data.color_jitter = args.color_jitter
    info = records.read_dataset_info(data)
    c.data.target_fps = float(info["fps"])  # stride 1: same frames as the RLDS clips
    c.model.action_dim = max(c.model.action_dim, int(info.get("action_dim") or 0))
    c.model.proprio_dim = max(c.model.proprio_dim, int(info.get("proprio_dim") or 0))
    return c


RLDS_ROW = "rlds tfds.as_dataset + tf.data"
DEVICE_ROW = "views rendered by jax (device part, this backend)"
Result = tuple[float, float | None]  # (clips/s wall-clock, CPU ms per clip in this process)


def _timed(next_batch: Any, args: argparse.Namespace, in_process: bool = True) -> Result:
    for _ in range(args.warmup):
        next_batch()
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(args.batches):
        next_batch()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    clips = args.batches * args.batch
    return clips / wall, (1e3 * cpu / clips if in_process else None)


def bench_grain(data: str, args: argparse.Namespace, workers: int, augment_on: str = "host") -> Result:
    """The loader after `--warmup` batches (worker start-up excluded); `augment_on='device'`: its
    host part only (decode; the view is rendered by `bench_device_render`)."""
    it = loader.make_iterator(_config(data, args, workers, augment_on), seed=0)
    try:
        return _timed(lambda: next(it), args, in_process=workers == 0)
    finally:
        it.close()


def bench_device_render(data: str, args: argparse.Namespace) -> Result:
    """What `augment_on='device'` moves to the accelerator: rendering a batch's views (crop,
    resize, jitter; `wam_jax.training.device_views`), jitted, here on this process's JAX backend."""
    import jax

    from wam_jax.training import device_views

    it = loader.make_iterator(_config(data, args, 0, "device"), seed=0)
    try:
        batch = next(it)
    finally:
        it.close()
    video, views = jax.device_put(batch["video"]), jax.device_put(batch["view"])
    render = jax.jit(lambda v, w: device_views.render_views(v, w, args.image_size))
    return _timed(lambda: render(video, views).block_until_ready(), args)


def bench_decode_only(data: str, args: argparse.Namespace, decoder: str) -> Result:
    """clips/s of decoding the clips' JPEGs (already in memory) to RGB arrays on one thread, with
    Pillow or with libjpeg-turbo through simplejpeg (what the loader uses)."""
    import simplejpeg
    from PIL import Image

    decode = {"pillow": lambda f: np.asarray(Image.open(io.BytesIO(f)).convert("RGB")),
              "simplejpeg": lambda f: simplejpeg.decode_jpeg(f, "RGB")}[decoder]
    episodes = list(records.iter_episodes(records.shard_paths(data)))
    rng = np.random.default_rng(0)
    n = args.batches * args.batch
    t = args.num_frames
    picks = []
    for _ in range(n):
        ep = episodes[rng.integers(len(episodes))]
        start = int(rng.integers(0, len(ep.frames) - t + 1))
        picks.append(ep.frames[start:start + t])
    t0, c0 = time.perf_counter(), time.process_time()
    for frames in picks:
        for f in frames:
            decode(f)
    return n / (time.perf_counter() - t0), 1e3 * (time.process_time() - c0) / n


def write_rlds_copy(data: str, out_dir: str) -> str:
    """The converted episodes as an RLDS builder dir (JPEG bytes stored as given)."""
    from data_pipelines.convert import rlds_writer as rw

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


def bench_rlds(rlds_dir: str, args: argparse.Namespace) -> Result:
    import tensorflow as tf
    import tensorflow_datasets as tfds

    t, size = args.num_frames, args.image_size
    builder = tfds.builder_from_directory(rlds_dir)
    ds = builder.as_dataset(split="train")  # the writer marks it ordered: no file shuffling
    ds = ds.repeat()
    # non-overlapping clips of T consecutive steps, per episode
    ds = ds.flat_map(lambda ep: ep["steps"].batch(t, drop_remainder=True))

    lo, hi = args.crop_scale
    jitter = args.color_jitter

    def to_clip(steps: dict[str, Any]) -> dict[str, Any]:
        # the same augmentation as the Grain loader, the tf.data way (as Octo-style pipelines do):
        # one random box and one set of colour factors for the whole clip
        frames = tf.cast(steps["observation"]["image"], tf.float32)
        area = tf.sqrt(tf.random.uniform([], lo, hi))
        ratio = tf.exp(tf.random.uniform([], np.log(3 / 4), np.log(4 / 3)))
        fw = tf.minimum(area * tf.sqrt(ratio), 1.0)
        fh = tf.minimum(area / tf.sqrt(ratio), 1.0)
        x0 = tf.random.uniform([], 0.0, 1.0 - fw + 1e-6)
        y0 = tf.random.uniform([], 0.0, 1.0 - fh + 1e-6)
        boxes = tf.tile([[y0, x0, y0 + fh, x0 + fw]], [t, 1])
        video = tf.image.crop_and_resize(frames, boxes, tf.range(t), (size, size))
        if jitter > 0:
            video = tf.image.adjust_brightness(video / 255.0, tf.random.uniform([], -jitter, jitter))
            video = tf.image.adjust_contrast(video, tf.random.uniform([], 1 - jitter, 1 + jitter))
            video = tf.image.adjust_saturation(video, tf.random.uniform([], 1 - jitter, 1 + jitter)) * 255.0
        video = tf.cast(tf.round(tf.clip_by_value(video, 0.0, 255.0)), tf.uint8)
        return {"video": video, "action": steps["action"][:-1], "proprio": steps["observation"]["state"]}

    ds = ds.map(to_clip, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.shuffle(256, seed=0).batch(args.batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    it = ds.as_numpy_iterator()
    return _timed(lambda: next(it), args)


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
    p.add_argument("--crop-scale", type=float, nargs=2, default=(0.8, 1.0))
    p.add_argument("--color-jitter", type=float, default=0.1)
    p.add_argument("--augment-on", default="host",
                   help="comma-separated config.data.augment_on values for the grain rows (host,device)")
    p.add_argument("--no-rlds", action="store_true", help="skip the RLDS + tf.data row")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds; best clips/s is kept")
    p.add_argument("--json", default=common.default_json_path("data_throughput", False),
                   help="result file")
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
    print(f"cpus: {os.cpu_count()}, load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")

    ceilings = {"pillow": "decode only, Pillow (1 thread)",
                "simplejpeg": "decode only, simplejpeg (ceiling, 1 thread)"}
    benches: list[tuple[str, Any]] = [(name, lambda d=d: bench_decode_only(data, args, d))
                                      for d, name in ceilings.items()]
    for w in (int(x) for x in args.workers.split(",")):
        for on in args.augment_on.split(","):
            name = f"grain workers={w}" + (", views on device (host part)" if on == "device" else "")
            benches.append((name, lambda w=w, on=on: bench_grain(data, args, w, on)))
    if "device" in args.augment_on.split(","):
        benches.append((DEVICE_ROW, lambda: bench_device_render(data, args)))
    if not args.no_rlds:
        rlds_dir = write_rlds_copy(data, os.path.join(tmp.name, "rlds"))
        benches.append((RLDS_ROW, lambda: bench_rlds(rlds_dir, args)))
    # Rounds interleave the pipelines so a burst of load from other processes hits all of them;
    # each row keeps its best clips/s and its median CPU time per clip.
    results: dict[str, list[Result]] = {name: [] for name, _ in benches}
    for _ in range(args.repeats):
        for name, fn in benches:
            results[name].append(fn())
    rows: list[tuple[str, Result]] = []
    for name, runs in results.items():
        cpus = [c for _, c in runs if c is not None]
        rows.append((name, (max(r for r, _ in runs), float(np.median(cpus)) if cpus else None)))
    load_before, load = load, os.getloadavg()
    print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")

    print("\n| pipeline | clips/s | frames/s | CPU ms / clip |\n|---|---:|---:|---:|")
    for name, (cps, cpu) in rows:
        cpu_s = "(workers)" if cpu is None else f"{cpu:.1f}"
        print(f"| {name} | {cps:.1f} | {cps * args.num_frames:.0f} | {cpu_s} |")
    by_name = dict(rows)
    print()
    for on in args.augment_on.split(","):
        best = max(r[0] for n, r in rows if n.startswith("grain") and ("on device" in n) == (on == "device"))
        for name in ceilings.values():
            print(f"best grain ({on} views) / {name} (clips/s): {best / by_name[name][0]:.2f}")
        if not args.no_rlds:
            print(f"best grain ({on} views) / rlds tf.data (clips/s): {best / by_name[RLDS_ROW][0]:.2f}")
    grain_cpu = by_name.get("grain workers=0", (0.0, None))[1]
    if grain_cpu is not None:
        print(f"CPU per clip, grain workers=0 / simplejpeg decode only: "
              f"{grain_cpu / by_name[ceilings['simplejpeg']][1]:.2f}", end="")
        if not args.no_rlds:
            print(f"; grain workers=0 / rlds tf.data: {grain_cpu / by_name[RLDS_ROW][1]:.2f}", end="")
        print()
    print("CPU ms / clip counts this process's threads only (not worker processes); on a shared "
          "machine it is steadier than clips/s.")
    settings = {k: v for k, v in vars(args).items() if k not in ("json", "data")}
    common.write_json(args.json, {
        "environment": host.environment(), "settings": settings,
        "load_before": load_before, "load_after": load,
        "rows": [{"pipeline": name, "clips_per_s": cps, "frames_per_s": cps * args.num_frames,
                  "cpu_ms_per_clip": cpu} for name, (cps, cpu) in rows],
        "rounds": {name: [{"clips_per_s": r, "cpu_ms_per_clip": c} for r, c in runs]
                   for name, runs in results.items()},
    })
    print(f"\nwrote {args.json}")
    tmp.cleanup()


if __name__ == "__main__":
    main()
