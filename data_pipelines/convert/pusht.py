"""`wam-convert pusht`: the PushT demo data, generated with the `gym_pusht` simulator.

    wam-convert pusht --output=DIR [--labeled_episodes=N] [--video_episodes=M] [--test_episodes=K]
        [--steps=S] [--seed=0] [--workers=W] [--image_size=64]

writes

```
DIR/
  rlds/pusht/0.1.0/            labeled episodes: a genuine RLDS builder directory (train split)
  rlds_test/pusht/0.1.0/       held-out labeled episodes (own builder directory, same features)
  ego4d/                       action-free rollouts in the Ego4D layout: ego4d.json,
                               v2/full_scale/<uid>.mp4 (VP9, 10 fps),
                               v2/annotations/narration.json
  converted/pusht_labeled      ← `wam-convert oxe` of rlds/      (registry entry 'pusht')
  converted/pusht_test         ← `wam-convert oxe` of rlds_test/
  converted/pusht_video        ← `wam-convert ego4d` of ego4d/
  generation.json              sizes, seeds, timings, success rates
```

so the demo runs the same conversion code as real Open X-Embodiment and Ego4D data.

Episodes are scripted PushT rollouts (`sim.rollouts`: the `sim.scripted_policy` expert in the
`sim.pusht` simulator, one episode per seed). Observation per step: the rendered image (96x96),
`state` = agent position (2), `block_pose` = (x, y, angle) of the T; action = the absolute 2-d
target position of the agent (what `gym_pusht` takes); language "push the T to the target".
Each episode's `success` is the `sim.success` rule, the one `wam-plan pusht` scores with.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from data_pipelines import paths, records
from sim.pusht import CONTROL_FPS, GOAL_POSE, MAX_STEPS, RENDER_SIZE, make_env
from sim.rollouts import Rollout, behaviour_of, rollout
from sim.success import pose_error

LANGUAGE = "push the T to the target"


# ---------------------------------------------------------------------------------------------
# Rollouts, in worker processes


CHUNK = 16  # seeds per worker task; about 2 x workers chunks of frames are in memory at once


def _iter_batch(seeds: Sequence[int], steps: int, noise_scale: float, image_size: int,
                video_paths: Sequence[str] | None = None, random_fraction: float = 0.0) -> Iterator[Rollout]:
    """Rollouts for `seeds` in this process, one simulator for all. With `video_paths`, each
    rollout is encoded to its mp4 right here and comes without images (so frames never cross
    process boundaries)."""
    from data_pipelines.convert import ego4d_writer

    env = make_env(image_size, obs_type="state")
    try:
        for i, seed in enumerate(seeds):
            r = rollout(seed, steps, noise_scale=noise_scale, image_size=image_size, env=env,
                        behaviour=behaviour_of(seed, random_fraction))
            if video_paths is not None:
                # VP9: its encoder output is byte-for-byte reproducible (x264's is not quite).
                ego4d_writer.encode_video(video_paths[i], r.images, CONTROL_FPS, codec="vp9")
                r.images = None  # type: ignore[assignment]
            yield r
    finally:
        env.close()


def _rollout_batch(*args: Any) -> list[Rollout]:
    """`_iter_batch` in a worker process (a result must be whole to cross back)."""
    return list(_iter_batch(*args))


def generate_rollouts(seeds: Sequence[int], steps: int, *, noise_scale: float = 1.0,
                      image_size: int = RENDER_SIZE, workers: int = 1,
                      video_paths: Sequence[str] | None = None, random_fraction: float = 0.0,
                      chunk: int = CHUNK) -> Iterator[Rollout]:
    """Rollouts for `seeds`, yielded in seed order, deterministic for any `workers` and `chunk`
    (each rollout depends only on its seed). Lazy: `workers` processes work `chunk` seeds at a
    time, at most two chunks each ahead of the consumer, so memory does not grow with the number
    of episodes (every frame of 3000 episodes at 96 px is 8 GB). `video_paths` (one per seed):
    encode mp4s in the workers instead of returning images."""
    seeds = list(seeds)
    if video_paths is not None and len(video_paths) != len(seeds):
        raise ValueError(f"{len(video_paths)} video paths for {len(seeds)} seeds")

    def task(lo: int) -> tuple[Any, ...]:
        hi = min(lo + chunk, len(seeds))
        return (seeds[lo:hi], steps, noise_scale, image_size,
                None if video_paths is None else video_paths[lo:hi], random_fraction)

    starts = iter(range(0, len(seeds), chunk))
    workers = max(1, min(workers, -(-len(seeds) // chunk)))
    if workers == 1:
        yield from _iter_batch(seeds, steps, noise_scale, image_size, video_paths, random_fraction)
        return
    import multiprocessing as mp

    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        pending = collections.deque(pool.submit(_rollout_batch, *task(lo))
                                    for lo in itertools.islice(starts, 2 * workers))
        while pending:
            part = pending.popleft().result()
            lo = next(starts, None)
            if lo is not None:
                pending.append(pool.submit(_rollout_batch, *task(lo)))
            yield from part


# ---------------------------------------------------------------------------------------------
# Writers


def _kept_without_frames(stream: Iterable[Rollout], kept: list[Rollout]) -> Iterator[Rollout]:
    """`stream` passed on (to the writer); each rollout is then kept without its frames in
    `kept`, for the summary, so the frames of one set are never all in memory."""
    for r in stream:
        yield r
        r.images = None  # type: ignore[assignment]
        kept.append(r)


def rlds_features(image_size: int = RENDER_SIZE) -> Any:
    from data_pipelines.convert import rlds_writer as rw

    return rw.rlds_features(
        observation={
            "image": rw.image((image_size, image_size, 3), "jpeg"),
            "state": rw.tensor((2,)),
            "block_pose": rw.tensor((3,)),
        },
        action=rw.tensor((2,)),
        language_instruction=True,
        episode_metadata={"file_path": rw.text(), "seed": rw.tensor((), np.int64),
                          "success": rw.tensor((), np.bool_)},
    )


def rlds_episode(r: Rollout, index: int, split: str) -> dict[str, Any]:
    """RLDS steps: step t holds the observation before action t; the final observation is a last
    step whose action holds the agent's target (the agent stays where it is)."""
    from data_pipelines.convert import rlds_writer as rw

    n = len(r.actions)
    actions = np.concatenate([r.actions, r.actions[-1:] if n else r.agent_pos[:1]], axis=0)
    steps = [
        {
            "observation": {"image": r.images[t], "state": r.agent_pos[t], "block_pose": r.block_pose[t]},
            "action": actions[t],
            "language_instruction": LANGUAGE,
            "reward": 1.0 if (t == n and r.terminated) else 0.0,
        }
        for t in range(n + 1)
    ]
    return rw.episode_from_steps(
        steps, terminal=r.terminated,
        episode_metadata={"file_path": f"pusht/{split}/episode_{index:05d}", "seed": np.int64(r.seed),
                          "success": bool(r.success)},
    )


def write_rlds(out_dir: str, rollouts: Iterable[Rollout], *, split_tag: str, image_size: int = RENDER_SIZE
               ) -> str:
    from data_pipelines.convert import rlds_writer as rw

    return rw.write_rlds_dataset(
        out_dir, "pusht", "0.1.0", rlds_features(image_size),
        (rlds_episode(r, i, split_tag) for i, r in enumerate(rollouts)),
        file_format="tfrecord", overwrite=True,
        description=f"PushT scripted pushing episodes ({split_tag}), gym_pusht, 10 Hz.",
    )


# ---------------------------------------------------------------------------------------------
# The demo data job


@dataclass(frozen=True)
class DemoSizes:
    labeled_episodes: int = 40
    video_episodes: int = 80
    test_episodes: int = 10
    steps: int = 100  # control steps per episode at most (10 Hz); an episode ends early on success
    seed: int = 0
    # Share of episodes (in every set) pushed by `sim.random_policy` instead of the expert: actions
    # that the frames do not predict, so the world model has to read them (BENCHMARKS.md §11).
    random_fraction: float = 0.0

    def seeds(self) -> dict[str, list[int]]:
        """Disjoint seed ranges per set, so the test episodes never share an initial state."""
        base = self.seed * 1_000_000
        return {
            "labeled": [base + i for i in range(self.labeled_episodes)],
            "test": [base + 300_000 + i for i in range(self.test_episodes)],
            "video": [base + 600_000 + i for i in range(self.video_episodes)],
        }


OUTPUT_PARTS = {"rlds", "rlds_test", "ego4d", "converted"}  # what `generate` writes before generation.json
VIDEO_NOISE_SCALE = 1.5  # the action-free rollouts explore more than the labeled demonstrations


def _summary(rollouts: Sequence[Rollout]) -> dict[str, Any]:
    goal = GOAL_POSE
    moved = [float(np.linalg.norm(r.block_pose[-1, :2] - r.block_pose[0, :2])) for r in rollouts]
    start_err = [pose_error(r.block_pose[0], goal)[0] for r in rollouts]
    end_err = [pose_error(r.block_pose[-1], goal)[0] for r in rollouts]
    return {
        "episodes": len(rollouts),
        "random_episodes": sum(r.behaviour == "random" for r in rollouts),
        "steps": int(sum(len(r.actions) for r in rollouts)),
        "success_rate": float(np.mean([r.success for r in rollouts])) if rollouts else 0.0,
        "terminated_rate": float(np.mean([r.terminated for r in rollouts])) if rollouts else 0.0,
        "mean_coverage": float(np.mean([r.coverage for r in rollouts])) if rollouts else 0.0,
        "mean_block_moved_px": float(np.mean(moved)) if moved else 0.0,
        "mean_block_error_px": {"start": float(np.mean(start_err)) if rollouts else 0.0,
                                "end": float(np.mean(end_err)) if rollouts else 0.0},
    }


def generate(output: str, sizes: DemoSizes = DemoSizes(), *, workers: int = 1, image_size: int = 64,
             convert: bool = True, progress: bool = True, overwrite: bool = False,
             replace_stale: bool = False) -> dict[str, Any]:
    """Generates the PushT demo data under `output` and converts it (see the module docstring).

    A finished `output` with the same sizes is kept as is (the demo can be re-run cheaply);
    anything else already there is an error unless `overwrite`, or, with `replace_stale` (the
    demo's own data dir), a finished generation of other sizes holding nothing but its own parts.
    Returns `generation.json`.
    """
    import shutil

    from data_pipelines.convert import ego4d as convert_ego4d
    from data_pipelines.convert import ego4d_writer
    from data_pipelines.convert import oxe as convert_oxe

    paths.local_only(output, "--output")
    report_path = os.path.join(output, "generation.json")
    wanted = {"sizes": sizes.__dict__, "image_size": image_size, "render_size": RENDER_SIZE,
              "converted": convert}
    if os.path.exists(report_path) and not overwrite:
        with open(report_path) as f:
            report = json.load(f)
        if {k: report.get(k) for k in wanted} == wanted:
            if progress:
                print(f"{output}: PushT demo data already generated ({report_path})")
            return report
    if os.path.exists(output) and os.listdir(output):
        ours = set(os.listdir(output)) <= OUTPUT_PARTS | {"generation.json"}
        interrupted = ours and not os.path.exists(report_path)
        stale = ours and replace_stale and os.path.exists(report_path)
        if not (overwrite or interrupted or stale):
            raise FileExistsError(
                f"{output}: exists and holds other data or a generation with other sizes "
                f"(see its generation.json); pass --overwrite to replace it or choose another --output"
            )
        if (interrupted or stale) and progress:
            what = "an interrupted generation" if interrupted else "a generation of other sizes"
            print(f"[pusht] {output}: redoing {what}", flush=True)
        shutil.rmtree(output)
    os.makedirs(output, exist_ok=True)
    seeds = sizes.seeds()
    timings: dict[str, float] = {}
    report: dict[str, Any] = dict(wanted)
    t_all = time.perf_counter()

    def log(msg: str) -> None:
        if progress:
            print(f"[pusht] {msg}", flush=True)

    # Labeled demonstrations and the held-out labeled test set: RLDS builder directories.
    rlds_dirs = {"labeled": os.path.join(output, "rlds", "pusht", "0.1.0"),
                 "test": os.path.join(output, "rlds_test", "pusht", "0.1.0")}
    for part in ("labeled", "test"):
        if not seeds[part]:
            continue
        t0 = time.perf_counter()
        rollouts: list[Rollout] = []
        stream = generate_rollouts(seeds[part], sizes.steps, workers=workers, random_fraction=sizes.random_fraction)
        write_rlds(rlds_dirs[part], _kept_without_frames(stream, rollouts),
                   split_tag="train" if part == "labeled" else "test")
        timings[f"simulate_write_{part}"] = time.perf_counter() - t0
        report[part] = {**_summary(rollouts), "rlds_dir": os.path.relpath(rlds_dirs[part], output)}
        log(f"{part}: {len(rollouts)} episodes, {report[part]['steps']} steps, success "
            f"{report[part]['success_rate']:.0%}, block moved {report[part]['mean_block_moved_px']:.0f} px "
            f"on average ({timings[f'simulate_write_{part}']:.1f} s to simulate and write)")

    # Action-free rollouts: mp4 videos in the Ego4D layout (encoded inside the workers).
    video_root = os.path.join(output, "ego4d")
    if seeds["video"]:
        t0 = time.perf_counter()
        layout = ego4d_writer.Ego4DLayoutWriter(video_root)
        uids = [f"pusht-{i:05d}" for i in range(len(seeds["video"]))]
        videos = [layout.video_path(u) for u in uids]
        rollouts = list(generate_rollouts(seeds["video"], sizes.steps, noise_scale=VIDEO_NOISE_SCALE,
                                          workers=workers, video_paths=videos,
                                          random_fraction=sizes.random_fraction))  # frames stay in the mp4s
        for uid in uids:
            layout.register_video(uid, split="train", scenarios=("pusht",),
                                  narrations=[(0.0, f"#C C starts to {LANGUAGE}")])
        layout.finish()
        timings["simulate_encode_video"] = time.perf_counter() - t0
        report["video"] = {**_summary(rollouts), "ego4d_root": os.path.relpath(video_root, output)}
        log(f"video: {len(rollouts)} rollouts as mp4 ({timings['simulate_encode_video']:.1f} s)")
        del rollouts

    if convert:
        conv_root = os.path.join(output, "converted")
        report["converted_dirs"] = {}
        jobs = []
        if seeds["labeled"]:
            jobs.append(("pusht_labeled", "oxe", rlds_dirs["labeled"]))
        if seeds["test"]:
            jobs.append(("pusht_test", "oxe", rlds_dirs["test"]))
        if seeds["video"]:
            jobs.append(("pusht_video", "ego4d", video_root))
        for name, kind, src in jobs:
            dst = os.path.join(conv_root, name)
            t0 = time.perf_counter()
            if kind == "oxe":
                m = convert_oxe.convert(src, dst, dataset="pusht", options=convert_oxe.OXEOptions(image_size),
                                        workers=workers, progress=progress)
            else:
                m = convert_ego4d.convert(
                    src, dst, video_dir="full_scale",
                    options=convert_ego4d.Ego4DOptions(target_fps=CONTROL_FPS, image_size=image_size),
                    workers=workers, name=name, embodiment="pusht", progress=progress)
            timings[f"convert_{name}"] = time.perf_counter() - t0
            report["converted_dirs"][name] = {"path": os.path.relpath(dst, output),
                                              "episodes": m["num_episodes"], "frames": m["num_frames"],
                                              "skipped": m["num_skipped"]}
    timings["total"] = time.perf_counter() - t_all
    report["timings_s"] = {k: round(v, 2) for k, v in timings.items()}
    report["workers"] = workers
    records.write_json_atomic(report_path, report)
    log(f"done in {timings['total']:.1f} s -> {output}")
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = DemoSizes()
    parser.add_argument("--output", required=True, help="output directory (rlds/, ego4d/, converted/)")
    parser.add_argument("--labeled_episodes", type=int, default=d.labeled_episodes,
                        help="scripted demonstrations with actions (RLDS)")
    parser.add_argument("--video_episodes", type=int, default=d.video_episodes,
                        help="action-free rollouts (mp4, Ego4D layout)")
    parser.add_argument("--test_episodes", type=int, default=d.test_episodes,
                        help="held-out labeled episodes (own RLDS builder dir)")
    parser.add_argument("--steps", type=int, default=d.steps, help="max control steps per episode (10 Hz)")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--random_fraction", type=float, default=d.random_fraction,
                        help="share of episodes pushed at random instead of by the scripted expert")
    parser.add_argument("--image_size", type=int, default=64, help="converted frame size")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--no_convert", action="store_true", help="only generate the sources")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    parser.add_argument("--no_progress", action="store_true")


def main(args: argparse.Namespace) -> dict[str, Any]:
    for name in ("labeled_episodes", "video_episodes", "test_episodes"):
        if getattr(args, name) < 0:
            raise SystemExit(f"--{name} must be >= 0, got {getattr(args, name)}")
    if not 2 <= args.steps <= MAX_STEPS:
        raise SystemExit(f"--steps must be in [2, {MAX_STEPS}], got {args.steps}")
    if args.labeled_episodes + args.video_episodes + args.test_episodes == 0:
        raise SystemExit("nothing to generate: all episode counts are 0")
    if not 0.0 <= args.random_fraction <= 1.0:
        raise SystemExit(f"--random_fraction must be a share in [0, 1], got {args.random_fraction}")
    sizes = DemoSizes(args.labeled_episodes, args.video_episodes, args.test_episodes, args.steps, args.seed,
                      args.random_fraction)
    return generate(args.output, sizes, workers=args.workers, image_size=args.image_size,
                    convert=not args.no_convert, progress=not args.no_progress, overwrite=args.overwrite)
