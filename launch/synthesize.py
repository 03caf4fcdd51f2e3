"""`wam-synth --workdir=DIR --source=DATASET --output=DIR`: synthetic paired episodes (VAG).

VAG's third claim is that generated video-action pairs are training data. Here a trained world
model with a flow-matching action head (`loss.flow`) and a frame decoder (`model.decoder`) turns
start frames of a converted dataset, typically action-free video, into labeled episodes:

1. from each of `--episodes` sampled start frames, with the same video's frame `--goal_steps`
   model steps later as the goal, `WorldModel.generate` draws an action chunk from the flow head
   and imagines its latents (the predictor's rollout under it), chunk after chunk from the last
   imagined latent, until `--steps` model steps are covered;
2. the frame decoder draws each imagined latent, and the episode is written in the converted
   format the converters write, one frame per model step (fps = the model's `data.target_fps`),
   the start frame real and the rest generated, each frame's action the model action it takes
   reduced as the loader reduces a stride (delta dims summed, absolute dims the last recorded
   step); no proprio (the video has none).

`--latents` also stores each frame's latent in the episode (`records.Episode.latent`): the
imagined latents themselves (the start frame's encoding first), or the recorded frames' encodings
under `--frames=recorded`. A consumer of this model's encoder (its export) then trains on the
pairs as generated, without the decoder's round trip (`benchmarks/synthetic_pairs.py` measures
what that round trip loses).

`--frames=recorded` is the control that isolates the generated frames: the source's own frames
at the model's stride, each labeled with the model's inverse-dynamics head (the action between it
and the next frame), VPT-style pseudo-labels; it needs neither flow head nor decoder.

`dataset.json` says `"synthetic": true` and `manifest.json` what generated it (model, step,
source, seeds), so the loader mixes it by weight like any dataset (`DIR:weight` in
`data.mixture`) and nobody takes it for recorded data. The episodes train a model whose actions
are reduced per stride (`data.stride_actions='reduce'`); at `data.target_fps` = the episodes'
fps their stride is 1.
"""

from __future__ import annotations

import argparse
import functools
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from data_pipelines import paths, records

log = logging.getLogger("wam-synth")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="wam-synth", description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True, help="training workdir or export with a flow head and a decoder")
    p.add_argument("--step", type=int, default=None)
    p.add_argument("--source", required=True, help="converted dataset whose frames start the episodes")
    p.add_argument("--output", required=True, help="the synthetic converted dataset to write")
    p.add_argument("--episodes", type=int, default=1000, help="synthetic episodes (start frames sampled)")
    p.add_argument("--steps", type=int, default=5, help="generated model steps per episode")
    p.add_argument("--goal_steps", type=int, default=5, help="model steps from the start frame to the goal frame")
    p.add_argument("--batch", type=int, default=256, help="episodes generated per call")
    p.add_argument("--frames", default="generated", choices=["generated", "recorded"],
                   help="generated: decoded imagined frames, flow-head actions; recorded: the source's frames, "
                        "inverse-dynamics actions (the control)")
    p.add_argument("--latents", action="store_true",
                   help="also store each frame's latent (the imagined one; encoded for real frames)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log_level", default="INFO")
    return p.parse_args(argv)


def sample_windows(source: str, *, image_size: int, target_fps: float, length: int, count: int, seed: int
                   ) -> tuple[np.ndarray, list[str]]:
    """(windows `[n, length, S, S, 3]` uint8, names `EPISODE@FRAME`): `count` windows of `length`
    frames at the model's stride, drawn uniformly (`data_pipelines.frame_sample.sample_windows`)."""
    from data_pipelines.frame_sample import sample_windows as sample

    try:
        return sample(source, image_size=image_size, target_fps=target_fps, length=length, count=count, seed=seed)
    except ValueError as e:
        raise ValueError(f"{e}; lower --goal_steps / --steps") from None


def recorded_rate(space: Any, model_actions: np.ndarray) -> np.ndarray:
    """Model actions `[..., dim]` (robot units) -> one recorded action per model step `[..., dim /
    chunk]`, reduced as the loader reduces a stride (delta dims summed, absolute dims the last)."""
    if space.chunk == 1:  # already one reduced action per model step
        return np.asarray(model_actions, np.float32)
    raw = space.dim // space.chunk
    per_step = model_actions.reshape(*model_actions.shape[:-1], space.chunk, raw)
    delta = np.asarray(space.is_delta[:raw], bool)
    return np.where(delta, per_step.sum(axis=-2), per_step[..., -1, :]).astype(np.float32)


def generate_episodes(wm: Any, starts: np.ndarray, goals: np.ndarray, *, steps: int, seed: int, batch: int
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(frames `[n, steps + 1, S, S, 3]`: the start frame, then the decoded imagined ones;
    recorded-rate actions `[n, steps + 1, A]`, robot units, reduced per model step; latents
    `[n, steps + 1, N, D]`: the start frame's encoding, then the imagined latents drawn)."""
    space = wm.action_space()
    frames, actions, latents = [], [], []
    for b0 in range(0, len(starts), batch):
        z = wm.encode(starts[b0:b0 + batch])
        g = wm.encode(goals[b0:b0 + batch])
        lat, act, k = [z], [], 0
        while len(act) < steps + 1:  # one more action than imagined frames: the last frame's own
            z_h, chunk = wm.generate(z, g, sample=seed * 100_003 + b0 + k)
            lat.extend(np.moveaxis(z_h, 1, 0))
            act.extend(np.moveaxis(chunk, 1, 0))
            z, k = z_h[:, -1], k + 1
        latents.append(np.stack(lat[:steps + 1], axis=1))
        imagined = wm.decode(latents[-1][:, 1:])  # [b, steps, S, S, 3]
        frames.append(np.concatenate([starts[b0:b0 + batch, None], imagined], axis=1))
        actions.append(recorded_rate(space, np.stack(act[:steps + 1], axis=1)))
    return np.concatenate(frames), np.concatenate(actions), np.concatenate(latents)


def label_recorded(wm: Any, windows: np.ndarray, *, batch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The control: windows of `steps + 2` recorded frames -> (their first `steps + 1` frames, the
    inverse-dynamics action from each to the next, reduced per model step, those frames' latents)."""
    space = wm.action_space()
    actions, latents = [], []
    for b0 in range(0, len(windows), batch):
        z = wm.encode(windows[b0:b0 + batch])
        actions.append(recorded_rate(space, wm.infer_actions(z)))
        latents.append(np.asarray(z)[:, :-1])
    return windows[:, :-1], np.concatenate(actions), np.concatenate(latents)


def produce(plan: Any, log_: Any, *, frames: np.ndarray, actions: np.ndarray, latents: np.ndarray | None,
            names: Sequence[str], fps: float, quality: int = 95) -> Iterator[records.Episode]:
    """The converter producer (`convert.common`) of the generated episodes `plan.items`."""
    from data_pipelines.convert.common import encode_jpeg

    for i in plan.items:
        yield records.Episode(episode_id=f"synthetic-{i:06d}", frames=[encode_jpeg(f, quality) for f in frames[i]],
                              action=actions[i], latent=None if latents is None else latents[i], fps=fps,
                              meta={"start": names[i], "synthetic": True})


def main(argv: Sequence[str]) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.INFO))
    if min(args.episodes, args.steps, args.goal_steps, args.batch) < 1:
        raise ValueError(f"--episodes={args.episodes}, --steps={args.steps}, --goal_steps={args.goal_steps} and "
                         f"--batch={args.batch} must be >= 1")
    from data_pipelines.convert import common
    from wam_jax import WorldModel

    wm = WorldModel.load(args.workdir, args.step)
    generated = args.frames == "generated"
    if generated and not (wm.has_flow_head and wm.has_decoder):
        raise ValueError(f"{args.workdir}: wam-synth needs a flow head and a frame decoder (train with "
                         "model.flow_head.depth > 0, loss.flow > 0, model.decoder.size > 0, loss.recon > 0); "
                         f"this model has {'a' if wm.has_flow_head else 'no'} flow head and "
                         f"{'a' if wm.has_decoder else 'no'} decoder")
    space = wm.action_space()
    fps = float(wm.config.data.target_fps)
    length = args.goal_steps + 1 if generated else args.steps + 2
    windows, names = sample_windows(args.source, image_size=wm.image_size, target_fps=fps, length=length,
                                    count=args.episodes, seed=args.seed)
    if generated:
        frames, actions, latents = generate_episodes(wm, windows[:, 0], windows[:, -1], steps=args.steps,
                                                     seed=args.seed, batch=args.batch)
    else:
        frames, actions, latents = label_recorded(wm, windows, batch=args.batch)
    log.info("wrote %d episodes of %d %s frames from %s", len(frames), frames.shape[1], args.frames, args.source)
    raw = space.dim // space.chunk
    names_a = list(space.action_names[:raw]) if space.chunk == 1 else [n.rsplit("@", 1)[0] for n in space.action_names[:raw]]
    info = {"name": f"{space.embodiment}_synthetic", "kind": "robot", "embodiment": space.embodiment,
            "image_size": [wm.image_size, wm.image_size], "fps": fps, "source": "wam-synth", "synthetic": True,
            "action_is_delta": [bool(d) for d in space.is_delta[:raw]], "action_names": names_a,
            "jpeg_quality": 95, "min_length": args.steps + 1}
    generator = {"workdir": paths.absolute(args.workdir), "step": wm.step, "source": paths.absolute(args.source),
                 "episodes": args.episodes, "steps": args.steps, "goal_steps": args.goal_steps, "seed": args.seed,
                 "frames": args.frames, "actions": "flow head" if generated else "inverse dynamics",
                 "latents": list(latents.shape[2:]) if args.latents else None}
    plans = common.plan_shards(list(range(len(frames))), items_per_shard=512)
    produce_fn = functools.partial(produce, frames=frames, actions=actions, names=names, fps=fps,
                                   latents=latents if args.latents else None)
    ds = common.run_conversion(args.output, plans, produce_fn, dataset_info=info,
                               manifest_extra={"synthetic": True, "generator": generator},
                               desc=f"{info['name']} ({len(frames)} episodes)")
    print(f"wrote {ds['num_episodes']} synthetic episodes ({ds['num_frames']} frames at {fps:g} fps) to "
          f"{paths.absolute(args.output)}")
    return ds


def run(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point (`launch/cli.py`)."""
    from launch.cli import run_main

    run_main("wam-synth", main, argv)


if __name__ == "__main__":
    run()
