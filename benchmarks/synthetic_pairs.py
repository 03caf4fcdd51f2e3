"""What synthetic pairs (`wam-synth`) carry, next to the recorded video they start from.

    python benchmarks/synthetic_pairs.py --workdir=GENERATOR --synthetic=DIR --real=VIDEO_DIR \
        [--episodes=200] [--output=OUT.json]

A policy trained on synthetic episodes sees the generator's decoded frames through the encoder.
Per model step, one row each for the synthetic episodes and for clips of the recorded video at
the model's frame stride: the mean pixel change between consecutive frames (0-255), the mean
latent L1 change, and the decode-encode round trip `|encode(decode(z)) - z|` of the frames'
latents, in units of a recorded step's latent change. On the recorded frames the round trip is
what `wam-synth` does to every imagined latent: a round trip as large as a recorded step means a
decoded frame does not carry the step its action was generated for.
"""

from __future__ import annotations

import argparse
import io
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import common  # noqa: E402

from data_pipelines import records  # noqa: E402
from data_pipelines.window_index import frame_stride  # noqa: E402


def episode_frames(directory: str, count: int, length: int, stride: int) -> np.ndarray:
    """uint8 `[n, length, S, S, 3]`: the first `length` frames at `stride` of up to `count` episodes."""
    from PIL import Image

    out = []
    for ep in records.iter_episodes(records.shard_paths(directory)):
        idx = list(range(0, len(ep), stride))[:length]
        if len(idx) == length:
            out.append(np.stack([np.asarray(Image.open(io.BytesIO(ep.frames[i])).convert("RGB")) for i in idx]))
        if len(out) == count:
            break
    return np.stack(out)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True, help="the generator (a flow head and a decoder)")
    p.add_argument("--synthetic", required=True, help="the wam-synth dataset")
    p.add_argument("--real", required=True, help="the recorded video dataset it started from")
    p.add_argument("--episodes", type=int, default=200)
    p.add_argument("--output", default="benchmarks/results/vag_synthetic_pairs.json")
    args = p.parse_args(argv)
    from wam_jax import WorldModel

    wm = WorldModel.load(args.workdir)
    syn_info, real_info = records.read_dataset_info(args.synthetic), records.read_dataset_info(args.real)
    length = int(min(syn_info["episode_lengths"]))
    stride = frame_stride(float(real_info["fps"]), float(syn_info["fps"]))
    syn = episode_frames(args.synthetic, args.episodes, length, 1)
    real = episode_frames(args.real, args.episodes, length, stride)
    rows = []
    for name, frames in (("synthetic", syn), ("recorded video", real)):
        z = np.asarray(wm.encode(frames))  # [n, T, N, D]
        trip = np.abs(np.asarray(wm.encode(wm.decode(z))) - z).mean(axis=(0, 2, 3))
        rows.append({"frames": name, "episodes": len(frames),
                     "pixel_change_first": float(np.abs(np.diff(frames[:, :2].astype(np.float32), axis=1)).mean()),
                     "pixel_change_later": float(np.abs(np.diff(frames[:, 1:].astype(np.float32), axis=1)).mean()),
                     "latent_change_first": float(np.abs(np.diff(z[:, :2], axis=1)).mean()),
                     "latent_change_later": float(np.abs(np.diff(z[:, 1:], axis=1)).mean()),
                     "round_trip_first": float(trip[0]), "round_trip_later": float(trip[1:].mean())})
    step = rows[1]["latent_change_later"]
    for r in rows:
        r["round_trip_later_per_real_step"] = r["round_trip_later"] / step
    print(common.format_table(rows, [
        ("frames", "frames", ""), ("episodes", "episodes", "d"),
        ("pixel_change_first", "pixel change, step 1", ".2f"), ("pixel_change_later", "later steps", ".2f"),
        ("latent_change_first", "latent change, step 1", ".4f"), ("latent_change_later", "later steps", ".4f"),
        ("round_trip_first", "decode-encode L1, frame 0", ".4f"), ("round_trip_later", "later frames", ".4f"),
        ("round_trip_later_per_real_step", "later / real step", ".2f")]))
    out = {"workdir": args.workdir, "synthetic": args.synthetic, "real": args.real, "stride": stride,
           "length": length, "rows": rows}
    print(f"\nwritten: {common.write_json(args.output, out)}")
    return out


if __name__ == "__main__":
    main()
