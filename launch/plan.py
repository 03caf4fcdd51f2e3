"""`wam-plan pusht --workdir=DIR [--episodes=N] [--budget=STEPS] [--preset=dino_wm|vjepa2_ac]`

Closed-loop goal reaching in the PushT simulator with a trained world model. Each task is a start
state and a goal state taken `--goal_offset` steps apart on a scripted demonstration (seeds disjoint
from the demo's training and test sets), DINO-WM style; the goal is given as an image. Every method
runs exactly `--budget` environment steps (no early stop on success), then the final block pose is
scored with DINO-WM's rule: position error < 20 px and angle error < 20 degrees.

Methods, on the same tasks (same seeds, same initial states):
  planner   latent-space CEM / MPPI with the world model (receding horizon: re-plan every
            `--execute` steps, warm-started with the previous plan)
  policy    the jointly trained goal-conditioned policy head alone
  flow      chunks drawn from the flow-matching action head (a model trained with `loss.flow`)
  random    uniform random actions inside the dataset's q01..q99 action box
  hold      the agent commanded to its own position (the block stays where it starts)

The default is the stable-worldmodel PushT protocol: goal 25 steps ahead, 50-step budget, CEM with
300 samples, top 30, 30 iterations, horizon 5 model steps (`--preset=dino_wm`), receding horizon.
Success rates come with a 95 % Wilson interval: report at least 50 episodes.

Prints success rate, mean final position / angle errors and time per planning step, and writes
the per-episode record to WORKDIR/plan/pusht_<preset>.json (or --output).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from data_pipelines import paths
from launch.pusht_tasks import PushTTask, evaluate_controllers, format_results, make_tasks

log = logging.getLogger("wam-plan")


# ----------------------------------------------------------------------------------------------
# Controllers


class HoldStillController:
    """Commands the agent's own position: the block stays where it is (the do-nothing bar)."""

    name = "hold still"

    def reset(self, task: PushTTask) -> None:
        pass

    def act(self, frame: np.ndarray, step: int, agent: np.ndarray) -> np.ndarray:
        return np.asarray(agent, np.float64)[None]


class RandomController:
    name = "random"

    def __init__(self, low: np.ndarray, high: np.ndarray, seed: int = 0):
        self.low, self.high = np.asarray(low, np.float64), np.asarray(high, np.float64)
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    def reset(self, task: PushTTask) -> None:
        self.rng = np.random.default_rng([self.seed, task.seed])

    def act(self, frame: np.ndarray, step: int, agent: np.ndarray) -> np.ndarray:
        return self.rng.uniform(self.low, self.high)[None]


class PolicyHeadController:
    """The goal-conditioned policy head, or with `flow` a chunk drawn from the flow-matching head
    given the agent's position (one draw per call, seeded by task and call): executes the first
    `execute` actions of each chunk."""

    repeat = 1  # returns one action per env step (`ActionSpace.to_env_steps`)

    def __init__(self, wm: Any, execute: int = 1, *, flow: bool = False):
        self.wm, self.execute, self.flow = wm, int(execute), flow
        self.name = "flow policy" if flow else "policy"
        self.space = wm.action_space()
        self.goal, self.draw = None, 0

    def reset(self, task: PushTTask) -> None:
        self.goal = self.wm.encode(task.goal_image)
        self.draw = task.seed * 1000

    def act(self, frame: np.ndarray, step: int, agent: np.ndarray) -> np.ndarray:
        if self.flow:
            self.draw += 1
            chunk = self.wm.policy(self.wm.encode(frame), self.goal, sample=self.draw,
                                   proprio=agent if self.space.proprio_dim else None)
        else:
            chunk = self.wm.policy(self.wm.encode(frame), self.goal)
        return self.space.to_env_steps(chunk[: self.execute])


WARM_STARTS = ("previous", "policy", "demonstration")


class PlannerController:
    """Latent CEM/MPPI with receding horizon and warm starts; records the time of each plan.

    `warm_start`: 'previous' (the last plan shifted by the executed actions), 'policy' (every
    plan starts from the goal-conditioned policy head's chunk, padded with its last action to
    the horizon) or 'demonstration' (from the task's own demonstration actions still ahead, its
    last one held: an oracle start that measures whether the energy keeps a solution it is handed,
    not a planner to report). Returns one action per env step (`ActionSpace.to_env_steps`)."""

    repeat = 1

    def __init__(self, wm: Any, config: Any, *, execute: int = 1, seed: int = 0, name: str = "planner",
                 warm_start: str = "previous", context_proprio: bool = False, decoder: Any = None,
                 cost: str = "latent", scene_basis: Any = None, cost_steps: str = "last"):
        if warm_start not in WARM_STARTS:
            raise ValueError(f"--warm_start={warm_start!r}; expected one of {WARM_STARTS}")
        if decoder is not None and warm_start != "previous" and decoder.encode is None:
            raise ValueError(f"--warm_start={warm_start}: the search {decoder.name!r} cannot start from actions")
        self.decoder, self.cost, self.scene_basis, self.cost_steps = decoder, cost, scene_basis, cost_steps
        self.wm, self.config, self.execute, self.seed, self.name = wm, config, int(execute), seed, name
        self.warm_start = warm_start
        self.context_proprio = bool(context_proprio)
        self.space = wm.action_space()
        self.goal = None
        self.prev = None
        self.task = None
        self.times: list[float] = []
        self.key = None

    def reset(self, task: PushTTask) -> None:
        import jax

        if self.warm_start == "demonstration" and task.demo_actions is None:
            raise ValueError(f"--warm_start=demonstration: task {task.seed} has no demonstration actions")
        self.goal = self.wm.encode(task.goal_image)
        self.task = task
        self.prev = None
        self.key = jax.random.key(self.seed * 1_000_003 + task.seed)

    def act(self, frame: np.ndarray, step: int, agent: np.ndarray) -> np.ndarray:
        import jax

        from wam_jax.inference import planning

        t0 = time.perf_counter()
        self.key, sub = jax.random.split(self.key)
        z = self.wm.encode(frame)
        init = self.prev
        if self.warm_start == "policy":
            chunk = np.asarray(self.wm.policy(z, self.goal), np.float32)[: self.config.horizon]
            init = np.concatenate([chunk, np.repeat(chunk[-1:], self.config.horizon - len(chunk), axis=0)])
        elif self.warm_start == "demonstration":
            init = self.space.from_env_steps(self.task.demo_ahead(step, self.config.horizon * self.space.frame_stride))
        if self.warm_start != "previous" and self.decoder is not None:
            init = self.decoder.encode(init, np.asarray(agent, np.float32))
        res = self.wm.plan_latents(z, self.goal, preset=self.config, key=sub, init_mean=init,
                                   context_proprio=agent if self.context_proprio else None,
                                   decoder=self.decoder, anchor=np.asarray(agent, np.float32), cost=self.cost,
                                   scene_basis=self.scene_basis, steps=self.cost_steps)
        actions = np.asarray(res.actions)
        self.times.append(time.perf_counter() - t0)
        n = min(self.execute, actions.shape[0])
        self.prev = planning.shift_plan(actions if self.decoder is None else res.variables, n)
        return self.space.to_env_steps(actions[:n])


ACTION_SEARCHES = ("box", "walk")


def walk_decoder(space: Any, step_px: float) -> Any:
    """The planner searches how far the agent's target moves per model step (at most `step_px`
    in x and y), starting from the agent: targets stay a bounded walk from the agent, as in every
    training episode, instead of anywhere in the workspace. A chunk model gets the recorded steps
    of each stride linearly interpolated from the previous target."""
    import jax.numpy as jnp

    from wam_jax.inference import planning

    chunk, raw = space.chunk, space.dim // space.chunk
    low, high = space.step_box()

    def fn(u: Any, anchor: Any) -> Any:  # u [S, H, raw] in [-1, 1], anchor [raw] -> [S, H, chunk * raw]
        targets = jnp.clip(anchor + jnp.cumsum(u * step_px, axis=1), low, high)
        if chunk == 1:
            return targets
        prev = jnp.concatenate([jnp.broadcast_to(anchor, targets[:, :1].shape), targets[:, :-1]], axis=1)
        frac = jnp.arange(1, chunk + 1, dtype=targets.dtype)[None, None, :, None] / chunk
        steps = prev[:, :, None] + frac * (targets - prev)[:, :, None]  # [S, H, chunk, raw]
        return steps.reshape(*targets.shape[:2], chunk * raw)

    def encode(actions: np.ndarray, anchor: np.ndarray) -> np.ndarray:  # [H, chunk * raw] -> u [H, raw]
        targets = np.asarray(actions, np.float32).reshape(len(actions), chunk, raw)[:, -1]
        prev = np.concatenate([np.asarray(anchor, np.float32)[None], targets[:-1]])
        return np.clip((targets - prev) / step_px, -1.0, 1.0)

    return planning.ActionDecoder(name=f"pusht_walk_{step_px:g}_{chunk}", dim=raw, lower=-1.0, upper=1.0, fn=fn,
                                  encode=encode)


# ----------------------------------------------------------------------------------------------
# CLI


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="wam-plan", description=__doc__.split("\n\n")[0])
    p.add_argument("task", choices=["pusht"], help="the environment")
    p.add_argument("--workdir", required=True, help="training workdir or export directory (with predictor)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--budget", type=int, default=50, help="env steps per episode (no early stop)")
    p.add_argument("--goal_offset", type=int, default=25, help="steps between start and goal on the demonstration")
    p.add_argument("--preset", default="dino_wm", choices=["vjepa2_ac", "dino_wm"],
                   help="planner settings: dino_wm (CEM 300 samples, top 30, 30 iterations, horizon 5: the "
                        "stable-worldmodel PushT protocol, the default) or vjepa2_ac (CEM 400x10, horizon 2)")
    p.add_argument("--method", default=None, choices=["cem", "mppi"], help="override the preset's optimizer")
    p.add_argument("--samples", type=int, default=None, help="override the preset's number of samples")
    p.add_argument("--elites", type=int, default=None)
    p.add_argument("--iterations", type=int, default=None)
    p.add_argument("--horizon", type=int, default=None)
    p.add_argument("--execute", type=int, default=1, help="actions executed per plan (receding horizon)")
    p.add_argument("--actions", default="box", choices=list(ACTION_SEARCHES),
                   help="what CEM samples: 'box' the model's actions in the data's q01..q99 box; 'walk' "
                        "per-step moves of the agent's target from the agent (launch/plan.py walk_decoder)")
    p.add_argument("--walk_step_px", type=float, default=50.0, help="--actions=walk: largest move per model step")
    p.add_argument("--cost", default="latent", choices=["latent", "decoded", "scene", "privileged"],
                   help="the energy: L1 to the goal latents; between the frames the model's frame decoder "
                        "draws from the prediction and from the goal (models trained with model.decoder); "
                        "scene: L1 to the goal latents without the directions the agent's position explains; "
                        "privileged: L1 between the block poses the model reads out of both (loss.privileged)")
    p.add_argument("--cost_steps", default="last", choices=["last", "all"],
                   help="the predicted steps the cost compares with the goal: the horizon's last (V-JEPA "
                        "2-AC, DINO-WM) or the mean over all of them (fewer goals on PushT: BENCHMARKS.md §11.22)")
    p.add_argument("--scene_data", default=None,
                   help="--cost=scene: converted dataset whose frames and proprio fit those directions "
                        "(default: the first dataset of the model's training mixture)")
    p.add_argument("--scene_frames", type=int, default=2048, help="--cost=scene: frames sampled to fit them")
    p.add_argument("--warm_start", default="previous", choices=list(WARM_STARTS),
                   help="CEM's initial mean: the previous plan shifted, the policy head's chunk, or the task's "
                        "demonstration actions still ahead (an oracle start: does the energy keep a solution?)")
    p.add_argument("--context_proprio", default="on", choices=["on", "off"],
                   help="give the planner's rollouts the agent position at the current frame (the "
                        "predictor trains with proprio beside every observed frame); off: latents only")
    p.add_argument("--planner", default="on", choices=["on", "off"],
                   help="off: run only the --baselines (e.g. a policy head on its own, much faster)")
    p.add_argument("--baselines", default="hold,random,policy",
                   help="comma list of baselines to run (hold, random, policy, none; flow: the "
                        "flow-matching head's chunks, for a model trained with loss.flow)")
    p.add_argument("--devices", type=int, default=None,
                   help="use the first N devices (default: all; parameters and samples are sharded over them)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=None, help="JSON output (default: WORKDIR/plan/pusht_<preset>.json)")
    p.add_argument("--log_level", default="WARNING")
    return p.parse_args(list(argv))


def scene_subspace(wm: Any, data: str | None, frames: int, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    """`--cost=scene`'s basis, fitted on `frames` frames of `data` (default: the first dataset of
    the model's training mixture), and what to record of it."""
    from data_pipelines.frame_sample import sample_frames
    from data_pipelines.mixture import parse_mixture
    from wam_jax.inference.state_subspace import explained_share

    data = data or parse_mixture(str(wm.config.data.mixture))[0][0]
    t0 = time.perf_counter()
    video, proprio = sample_frames(data, image_size=wm.image_size, count=frames, seed=seed)
    basis = wm.state_subspace(video, proprio)
    z = np.asarray(wm.encode(video[:256])).reshape(min(256, len(video)), -1)
    info = {"data": paths.absolute(data), "frames": len(video), "rank": int(basis.shape[1]),
            "latent_dim": int(basis.shape[0]), "variance_share": explained_share(z, basis),
            "seconds": time.perf_counter() - t0}
    log.info("scene cost: %d of %d latent directions explained by the proprio (%.0f%% of the variance), from %d "
             "frames of %s", info["rank"], info["latent_dim"], 100 * info["variance_share"], len(video), data)
    return basis, info


def main(argv: Sequence[str]) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.WARNING),
                        format="%(asctime)s %(levelname)s %(name)s] %(message)s")
    if args.episodes < 1 or args.budget < 1:
        raise ValueError(f"--episodes={args.episodes} and --budget={args.budget} must be >= 1")
    if args.planner == "off" and args.baselines.strip() in ("", "none"):
        raise ValueError("--planner=off with --baselines=none: nothing to evaluate")
    import jax

    from wam_jax import WorldModel
    from wam_jax.inference import planning
    from wam_jax.inference.evaluation import write_metrics
    from wam_jax.inference.load import inference_mesh

    devices = jax.devices()[: args.devices] if args.devices else None
    wm = WorldModel.load(args.workdir, args.step, mesh=inference_mesh(devices))
    space = wm.action_space()
    overrides = {k: v for k, v in (("method", args.method), ("num_samples", args.samples),
                                   ("num_elites", args.elites), ("num_iterations", args.iterations),
                                   ("horizon", args.horizon)) if v is not None}
    if "num_samples" in overrides and "num_elites" not in overrides:
        overrides["num_elites"] = max(1, min(planning.preset(args.preset).num_elites, overrides["num_samples"]))
    cfg = planning.preset(args.preset, **overrides)
    repeat = space.frame_stride  # the baselines' targets are held for the training frame stride
    t0 = time.perf_counter()
    tasks = make_tasks(args.episodes, image_size=wm.image_size, goal_offset=args.goal_offset, seed=args.seed)
    log.info("made %d tasks in %.1fs", len(tasks), time.perf_counter() - t0)

    # The agent position is PushT's proprio; a model trained without proprio plans on latents alone.
    use_proprio = args.context_proprio == "on" and space.proprio_dim > 0 and space.proprio_mean is not None
    name = (f"planner ({args.preset}{f', {args.warm_start} warm start' if args.warm_start != 'previous' else ''}"
            f"{', latents only' if not use_proprio else ''})")
    decoder = walk_decoder(space, args.walk_step_px) if args.actions == "walk" else None
    if decoder is not None:
        name = name[:-1] + f", walk {args.walk_step_px:g} px)"
    if args.cost != "latent" or args.cost_steps != "last":
        name = name[:-1] + f", {args.cost} cost{' on all steps' if args.cost_steps == 'all' else ''})"
    basis, scene = (scene_subspace(wm, args.scene_data, args.scene_frames, args.seed) if args.cost == "scene"
                    else (None, None))
    controllers: list[Any] = [PlannerController(wm, cfg, execute=args.execute, seed=args.seed, name=name,
                                                warm_start=args.warm_start, context_proprio=use_proprio,
                                                decoder=decoder, cost=args.cost, scene_basis=basis,
                                                cost_steps=args.cost_steps)
                              ] if args.planner == "on" else []
    baselines = [b.strip() for b in args.baselines.split(",") if b.strip() and b.strip() != "none"]
    for b in baselines:
        if b in ("policy", "flow"):
            controllers.append(PolicyHeadController(wm, execute=args.execute, flow=b == "flow"))
        elif b == "hold":
            controllers.append(HoldStillController())
        elif b == "random":
            controllers.append(RandomController(*space.step_box(), seed=args.seed))
        else:
            raise ValueError(f"--baselines: unknown baseline {b!r}; expected hold, random, policy, flow or none")
    results = evaluate_controllers(controllers, tasks, budget=args.budget, image_size=wm.image_size, repeat=repeat)
    header = (f"PushT goal reaching: {args.episodes} episodes, budget {args.budget} steps (no early stop), "
              f"goal {args.goal_offset} demo steps ahead; success = block < 20 px and < 20 deg from the goal\n"
              f"planner: {cfg}")
    # The record on disk first, then the table: nothing after a finished evaluation can lose it.
    record = {"workdir": paths.absolute(args.workdir), "step": wm.step, "preset": args.preset,
              "planner": dataclasses.asdict(cfg), "budget": args.budget, "episodes": args.episodes,
              "goal_offset": args.goal_offset, "execute": args.execute, "warm_start": args.warm_start,
              "context_proprio": use_proprio, "actions": args.actions, "walk_step_px": args.walk_step_px,
              "cost": args.cost, "cost_steps": args.cost_steps,
              "scene": scene, "results": results}
    out = paths.absolute(args.output or os.path.join(args.workdir, "plan", f"pusht_{args.preset}.json"))
    out = write_metrics(record, os.path.dirname(out), os.path.basename(out))  # local or gs://
    print(format_results(results, header))
    print(f"\nper-episode record: {out}")
    return record


def run(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point (`launch/cli.py`)."""
    from launch.cli import run_main

    run_main("wam-plan", main, argv, value_errors=False)


if __name__ == "__main__":
    run()
