"""How much of the PushT state a *supervised* reader gets from the frames, and what a frame decoder
can draw: the upper bounds behind the probes and behind `loss.recon`.

    python benchmarks/angle_upper_bound.py --config=configs/pusht_plan.py:encoder \
        --override=--config.model.stem=conv --train_episodes=100,300,900 [--steps=1500] \
        [--decoders=upsample:64,broadcast:64 --decoder_steps=1500 --figure=drawn.png] \
        [--output=benchmarks/results/angle_upper_bound.json]

The linear probes of every self-supervised encoder read the block's angle at R^2 <= 0.13
(BENCHMARKS.md §11.13-11.18). Before asking the objective for it, this asks whether the frames
(at the config's image size) and this many episodes carry it at all: on fresh simulator episodes
rendered as the converted data holds frames (`launch/probe.pusht_frames`, the training frame
stride), it trains, with the targets as labels (agent x, y, block x, y, cos, sin of the angle,
standardized; squared error),

- `cnn`:     a small plain convolutional net (4 stride-2 3x3 convs, 32-256 channels, mean pool),
- `encoder`: the config's own encoder architecture from its initialization, its latent followed
             by one linear layer (can this architecture carry the angle when asked to?),

and scores R^2 on 100 further episodes that no reader saw, beside a ridge probe on the pixels
fitted on the same training episodes. Then each `--decoders` frame decoder (`model.decoder`'s
kind and width) learns to draw the largest training set's frames from their true state, and the
`cnn` reads its drawings of the test states back: a decoder that cannot draw the angle from the
state itself gives an encoder no reason to keep it. Prints tables and writes JSON.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import common  # noqa: E402
import host  # noqa: E402
import numpy as np  # noqa: E402

from launch import probe  # noqa: E402
from wam_jax.inference import probes  # noqa: E402

PIXEL_RIDGE_MAX_FRAMES = 8000  # the dual ridge's Gram matrix is frames^2: larger sets take minutes per fit


def _summary(per: dict[str, float]) -> dict[str, Any]:
    return {**probe.parts_r2(per), "per_target": per}


def _reader(kind: str, model_cfg: Any, seed: int) -> Any:
    """A flax module mapping uint8 frames `[B, S, S, 3]` to the 6 standardized targets."""
    import jax.numpy as jnp
    from flax import nnx

    rngs = nnx.Rngs(seed)
    if kind == "cnn":
        class CNN(nnx.Module):
            def __init__(self):
                chans = (3, 32, 64, 128, 256)
                self.convs = nnx.List([nnx.Conv(a, b, (3, 3), strides=(2, 2), rngs=rngs)
                                       for a, b in zip(chans[:-1], chans[1:], strict=True)])
                self.head = nnx.Linear(chans[-1], len(probe.TARGETS), rngs=rngs)

            def __call__(self, frames):
                x = frames.astype(jnp.float32) / 127.5 - 1.0
                for conv in self.convs:
                    x = nnx.gelu(conv(x))
                return self.head(x.mean((1, 2)))
        return CNN()

    from wam_jax.models.world_model import build_model

    class EncoderReader(nnx.Module):
        def __init__(self):
            self.model = build_model(model_cfg, rngs)
            grid = model_cfg.image_size // model_cfg.patch_size
            tokens = 1 if str(model_cfg.pool.kind) != "none" else grid * grid
            self.head = nnx.Linear(tokens * int(model_cfg.pool.dim if tokens == 1 else model_cfg.width),
                                   len(probe.TARGETS), rngs=rngs)

        def __call__(self, frames):
            z = self.model.encode(frames[:, None], encoder=self.model.encoder)
            return self.head(z.reshape(z.shape[0], -1))
    return EncoderReader()


def fit(module: Any, x: np.ndarray, y: np.ndarray, *, steps: int, batch: int, lr: float, seed: int) -> float:
    """Trains `module` (in place) on the squared error of `module(x)` to `y` with AdamW and a
    warmup-cosine schedule; returns the seconds it took."""
    import optax
    from flax import nnx

    sched = optax.warmup_cosine_decay_schedule(0.0, lr, max(steps // 20, 1), steps)
    opt = nnx.Optimizer(module, optax.adamw(sched, weight_decay=1e-4), wrt=nnx.Param)

    @nnx.jit
    def step(module, opt, xb, yb):
        loss, grads = nnx.value_and_grad(lambda m: ((m(xb) - yb) ** 2).mean())(module)
        opt.update(module, grads)
        return loss

    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    for _ in range(steps):
        idx = rng.integers(0, len(x), batch)
        step(module, opt, x[idx], y[idx])
    return time.perf_counter() - t0


def apply(module: Any, x: np.ndarray, batch: int) -> np.ndarray:
    """`module` over `x` in fixed-size batches (`probe.in_batches`: one compile)."""
    from flax import nnx

    fn = nnx.jit(lambda m, xb: m(xb))
    return probe.in_batches(lambda xb: fn(module, xb), x, batch)


def _drawer(model_cfg: Any, kind: str, width: int, seed: int) -> Any:
    """A frame decoder (`model.decoder`) of `kind` at `width`, drawing from the true state
    (standardized, lifted to the latent's size by a 2-layer MLP) in place of a latent; normalized
    pixels out, as `loss.recon`'s target (`to_uint8` makes them frames the readers take)."""
    from flax import nnx

    from wam_jax.models.decoder import FrameDecoder

    rngs = nnx.Rngs(seed)
    dim = int(model_cfg.pool.dim)

    class Drawer(nnx.Module):
        def __init__(self):
            self.lift = nnx.List([nnx.Linear(len(probe.TARGETS), 256, rngs=rngs), nnx.Linear(256, dim, rngs=rngs)])
            self.decoder = FrameDecoder(1, dim, int(model_cfg.image_size), width, kind=kind, rngs=rngs)

        def __call__(self, state):  # normalized pixels, as the recon loss's target
            return self.decoder(self.lift[1](nnx.gelu(self.lift[0](state)))[:, None])
    return Drawer()


def to_uint8(normalized: np.ndarray) -> np.ndarray:
    from wam_jax.models.encoder import IMAGENET_MEAN, IMAGENET_STD

    return np.clip((normalized * np.asarray(IMAGENET_STD) + np.asarray(IMAGENET_MEAN)) * 255 + 0.5, 0, 255).astype(np.uint8)


def draw_back(model_cfg: Any, args: argparse.Namespace, x: np.ndarray, y: np.ndarray, x_test: np.ndarray,
              y_test: np.ndarray, cnn: Any) -> list[dict[str, Any]]:
    """Each `--decoders` entry trained to draw the frames `x` from their true state `y`, then its
    drawings of the test states read back by the supervised `cnn` (fitted on `x`, `y`)."""
    from wam_jax.models.encoder import normalize_video

    mu, sd = y.mean(0), y.std(0) + 1e-8
    s_train, s_test = ((y - mu) / sd).astype(np.float32), ((y_test - mu) / sd).astype(np.float32)
    target = np.asarray(normalize_video(x))
    rows = []
    for spec in args.decoders.split(","):
        kind, width = spec.split(":")[0], int(spec.split(":")[1])
        drawer = _drawer(model_cfg, kind, width, args.seed)
        secs = fit(drawer, s_train, target, steps=args.decoder_steps or args.steps, batch=args.batch, lr=args.lr,
                   seed=args.seed)
        drawn = to_uint8(apply(drawer, s_test, args.batch))
        mse = float(np.mean(np.square(np.asarray(normalize_video(drawn)) - np.asarray(normalize_video(x_test)))))
        r2 = probes.r_squared(y_test, apply(cnn, drawn, args.batch) * sd + mu)
        rows.append({"decoder": spec, "test_mse": mse, "seconds": secs,
                     **_summary(dict(zip(probe.TARGETS, map(float, r2), strict=True)))})
        print("drawn", spec, {k: round(rows[-1][k], 3) for k in ("test_mse", "agent_pos", "block_pos", "block_angle")},
              flush=True)
        if args.figure:
            from PIL import Image

            pick = np.linspace(0, len(x_test) - 1, 8).astype(int)
            grid = np.concatenate([np.concatenate(list(x_test[pick]), 1), np.concatenate(list(drawn[pick]), 1)], 0)
            Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.Resampling.NEAREST).save(
                args.figure.replace(".png", f"_{kind}{width}.png"))
    return rows


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/pusht_plan.py:encoder")
    p.add_argument("--override", action="append", default=[], help="config overrides, e.g. --config.model.stem=conv")
    p.add_argument("--train_episodes", default="100,300,900")
    p.add_argument("--test_episodes", type=int, default=100)
    p.add_argument("--readers", default="cnn,encoder")
    p.add_argument("--decoders", default="upsample:64,upsample:128,broadcast:64",
                   help="KIND:WIDTH frame decoders (model.decoder) drawing from the true state, read back by the cnn")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--decoder_steps", type=int, default=0, help="the drawers' steps (0: --steps)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default="benchmarks/results/angle_upper_bound.json")
    p.add_argument("--figure", default="", help="PNG: real test frames over what each decoder drew")
    args = p.parse_args(argv)

    from data_pipelines.window_index import frame_stride
    from sim.pusht import CONTROL_FPS
    from wam_jax import config_utils

    os.chdir(host.REPO)
    cfg = config_utils.load_config(args.config, args.override)
    size = int(cfg.model.image_size)
    fps = float(cfg.data.target_fps)
    stride = frame_stride(CONTROL_FPS, fps) if fps > 0 else 1
    sizes = sorted(int(s) for s in args.train_episodes.split(","))
    t0 = time.perf_counter()
    x_all, y_all, g_all = probe.pusht_frames(max(sizes), image_size=size, stride=stride, seed=1)
    x_test, y_test, _ = probe.pusht_frames(args.test_episodes, image_size=size, stride=stride, seed=0)
    render_s = time.perf_counter() - t0
    rows, trained = [], {}  # the readers fitted on the largest set are kept
    for n in sizes:
        keep = g_all < n
        x, y = x_all[keep], y_all[keep]
        if len(x) <= PIXEL_RIDGE_MAX_FRAMES:
            pixels = np.concatenate([x, x_test]).reshape(len(x) + len(x_test), -1).astype(np.float32) / 255
            ridge = probes.linear_probe(pixels, np.concatenate([y, y_test]),
                                      np.concatenate([g_all[keep], np.full(len(x_test), -1)]),
                                      names=probe.TARGETS, seed=args.seed, test_groups=[-1])
            rows.append({"reader": "pixels, ridge", "train_episodes": n, "frames": int(len(x)), "seconds": None,
                         **_summary(ridge["r2"])})
        for kind in args.readers.split(","):
            reader = trained[kind] = _reader(kind, cfg.model, args.seed)
            mu, sd = y.mean(0), y.std(0) + 1e-8
            secs = fit(reader, x, ((y - mu) / sd).astype(np.float32), steps=args.steps, batch=args.batch,
                       lr=args.lr, seed=args.seed)
            pred = apply(reader, x_test, args.batch) * sd + mu
            r2 = probes.r_squared(y_test, pred)
            rows.append({"reader": kind, "train_episodes": n, "frames": int(len(x)), "seconds": secs,
                         **_summary(dict(zip(probe.TARGETS, map(float, r2), strict=True)))})
            print(kind, n, {k: round(rows[-1][k], 3) for k in ("agent_pos", "block_pos", "block_angle")}, flush=True)
    drawn_rows = []
    if "cnn" in args.readers.split(",") and args.decoders:
        drawn_rows = draw_back(cfg.model, args, x, y, x_test, y_test, trained["cnn"])
    print(common.format_table(rows, [("reader", "reader", ""), ("train_episodes", "train episodes", ""),
                                      ("frames", "frames", ""), ("agent_pos", "agent pos R^2", ".3f"),
                                      ("block_pos", "block pos R^2", ".3f"), ("block_angle", "block angle R^2", ".3f"),
                                      ("seconds", "train s", ".0f")]))
    if drawn_rows:
        print("\nThe frame decoder drawing from the true state, read back by the cnn:")
        print(common.format_table(drawn_rows, [("decoder", "decoder kind:width", ""),
                                               ("test_mse", "test MSE (normalized)", ".4f"),
                                               ("agent_pos", "agent pos R^2", ".3f"), ("block_pos", "block pos R^2", ".3f"),
                                               ("block_angle", "block angle R^2", ".3f"), ("seconds", "train s", ".0f")]))
    result = {"benchmark": "angle_upper_bound", "environment": host.environment(), "config": args.config,
              "overrides": args.override, "image_size": size, "stride": stride, "test_episodes": args.test_episodes,
              "steps": args.steps, "decoder_steps": args.decoder_steps or args.steps, "batch": args.batch,
              "lr": args.lr, "render_seconds": render_s, "rows": rows,
              "drawn_by_decoder": {"train_episodes": sizes[-1], "rows": drawn_rows}}
    print(f"\nwritten: {common.write_json(args.output, result)}")
    return result


if __name__ == "__main__":
    main()
