"""`wam-replay pusht --workdir=DIR [--episodes=N] [--draws=K]`: executable trajectory replay (VAG).

From held-out PushT start states (the `wam-plan` tasks), the model generates a paired (imagined
latent trajectory, action chunk) toward the task's goal frame: the chunk drawn from the
flow-matching head (`WorldModel.policy(sample=...)`), the latents the predictor's rollout under
it (`WorldModel.predict`, the pairing of `models/vag.py`). The chunk is then executed in the
simulator, each model step's real frame encoded, and the imagined latents compared with the real
ones per horizon step, next to the copy-last baseline (the start latent held) and to the same
replay of the regression policy head's chunk. `--budget` > 0 adds goal success of the executed
actions in closed loop (chunks regenerated every `--execute` steps), flow head next to the policy
head, in the `wam-plan` harness.

Writes WORKDIR/replay/pusht.json (or --output) and prints the tables.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from data_pipelines import paths
from launch import pusht_tasks


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="wam-replay", description=__doc__.split("\n\n")[0])
    p.add_argument("task", choices=["pusht"], help="the environment")
    p.add_argument("--workdir", required=True, help="training workdir or export (trained with loss.flow)")
    p.add_argument("--step", type=int, default=None)
    p.add_argument("--episodes", type=int, default=20, help="held-out start states")
    p.add_argument("--draws", type=int, default=4, help="flow chunks drawn per start state")
    p.add_argument("--goal_offset", type=int, default=25)
    p.add_argument("--budget", type=int, default=0, help="closed-loop env steps per task (0 = replay only)")
    p.add_argument("--execute", type=int, default=1, help="model steps executed per chunk in closed loop")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=None)
    p.add_argument("--log_level", default="WARNING")
    return p.parse_args(argv)


def replay_errors(wm: Any, tasks: Sequence[pusht_tasks.PushTTask], *, draws: int, flow: bool) -> dict[str, Any]:
    """Per horizon step k: mean L1 of the imagined latent against the real one after executing the
    chunk's first k + 1 model actions, and of the start latent against it (copy-last)."""
    from sim import pusht

    space = wm.action_space()
    env = pusht.make_env(pusht.RENDER_SIZE, obs_type="state")
    imagined_l1, copy_l1 = [], []
    try:
        for task in tasks:
            goal = wm.encode(task.goal_image)
            for d in range(draws if flow else 1):
                pusht.reset_to_state(env, task.start_state, seed=task.seed)
                agent = pusht.get_state(env)[:2]
                z0 = wm.encode(pusht_tasks.observe(env, wm.image_size))
                chunk = (wm.policy(z0, goal, sample=task.seed * 1000 + d, proprio=agent) if flow
                         else wm.policy(z0, goal))
                proprio = agent[None] if space.proprio_dim else None
                imagined = np.asarray(wm.predict(z0, chunk, proprio=proprio))  # [h, N, D]
                real = []
                for k in range(chunk.shape[0]):
                    for a in space.to_env_steps(chunk[k:k + 1]):
                        pusht_tasks.step_env(env, a)
                    real.append(np.asarray(wm.encode(pusht_tasks.observe(env, wm.image_size))))
                real = np.stack(real)
                imagined_l1.append(np.abs(imagined - real).mean(axis=(-2, -1)))
                copy_l1.append(np.abs(np.asarray(z0)[None] - real).mean(axis=(-2, -1)))
    finally:
        env.close()
    im, cp = np.mean(imagined_l1, axis=0), np.mean(copy_l1, axis=0)
    return {"imagined_l1": im.tolist(), "copy_l1": cp.tolist(), "ratio": (im / cp).tolist(),
            "num_chunks": len(imagined_l1)}


def format_replay(rows: dict[str, Any]) -> str:
    h = len(next(iter(rows.values()))["ratio"])
    head = "".join(f"{f'h={k + 1}':>9s}" for k in range(h))
    lines = [f"Replay: imagined vs real latents after executing the chunk (L1 / copy-last L1)\n  {'chunk':<22s}{head}"]
    for name, r in rows.items():
        lines.append(f"  {name:<22s}" + "".join(f"{v:>9.3f}" for v in r["ratio"]))
    return "\n".join(lines)


def main(argv: Sequence[str]) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.WARNING))
    if args.episodes < 1 or args.draws < 1 or args.budget < 0:
        raise ValueError(f"--episodes={args.episodes} and --draws={args.draws} must be >= 1, --budget >= 0")
    from launch.plan import PolicyHeadController
    from wam_jax import WorldModel
    from wam_jax.inference.evaluation import write_metrics

    wm = WorldModel.load(args.workdir, args.step)
    if not wm.has_flow_head:
        raise ValueError(f"{args.workdir}: the model has no flow head; train it with model.flow_head.depth > 0 "
                         "and loss.flow > 0")
    tasks = pusht_tasks.make_tasks(args.episodes, image_size=wm.image_size, goal_offset=args.goal_offset,
                                   seed=args.seed)
    rows = {"flow head": replay_errors(wm, tasks, draws=args.draws, flow=True),
            "policy head": replay_errors(wm, tasks, draws=1, flow=False)}
    record: dict[str, Any] = {"workdir": paths.absolute(args.workdir), "step": wm.step, "episodes": args.episodes, "draws": args.draws,
                              "goal_offset": args.goal_offset, "replay": rows}
    if args.budget:
        controllers = [PolicyHeadController(wm, args.execute, flow=True), PolicyHeadController(wm, args.execute)]
        record["closed_loop"] = pusht_tasks.evaluate_controllers(controllers, tasks, budget=args.budget,
                                                                 image_size=wm.image_size)
        record["budget"] = args.budget
    out = paths.absolute(args.output or os.path.join(args.workdir, "replay", "pusht.json"))
    write_metrics(record, os.path.dirname(out), name=os.path.basename(out))
    print(format_replay(rows))
    if args.budget:
        print(pusht_tasks.format_results(record["closed_loop"], f"Closed loop, {args.budget} steps"))
    print(f"record: {out}")
    return record


def run(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point (`launch/cli.py`)."""
    from launch.cli import run_main

    run_main("wam-replay", main, argv)


if __name__ == "__main__":
    run()
