"""The PushT goal-reaching harness shared by `wam-plan` and the scripts that score controllers:
tasks (start and goal states on held-out demonstrations), the controller protocol, episodes
scored by DINO-WM's rule, success rates with their Wilson interval."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

TASK_SEED_BASE = 900_000  # disjoint from the demo's labeled (0+), test (300_000+) and video (600_000+) seeds


# ----------------------------------------------------------------------------------------------
# Tasks and observations


@dataclasses.dataclass
class PushTTask:
    seed: int
    start_state: np.ndarray  # [agent_x, agent_y, block_x, block_y, angle]
    goal_state: np.ndarray
    goal_image: np.ndarray  # uint8 [S, S, 3] at the model's image size
    demo_actions: np.ndarray | None = None  # [goal_offset, 2]: the demonstration's own actions

    @property
    def goal_pose(self) -> np.ndarray:
        return self.goal_state[2:]

    def demo_ahead(self, step: int, n: int) -> np.ndarray:
        """The demonstration's `n` actions from env step `step` on, its last one held past its end
        ([n, 2]): replayed from the start they reach the goal."""
        if self.demo_actions is None:
            raise ValueError(f"task {self.seed} has no demonstration actions")
        ahead = np.asarray(self.demo_actions[min(step, len(self.demo_actions) - 1):][:n], np.float32)
        return np.concatenate([ahead, np.repeat(ahead[-1:], n - len(ahead), axis=0)])


def observe(env: Any, image_size: int) -> np.ndarray:
    """The frame as the training data saw it (`sim.pusht.to_model_size` of the render)."""
    from sim import pusht

    return pusht.to_model_size(pusht.render(env), image_size)


def make_tasks(num: int, *, image_size: int, goal_offset: int = 25, seed: int = 0, env: Any = None
               ) -> list[PushTTask]:
    """`num` start/goal pairs: a scripted demonstration's state at t=0 and at t=goal_offset.

    Pairs whose start already satisfies the success rule (the block barely moved) are skipped, so
    no task is solved at its first frame; the next seed is tried instead (deterministically). A
    start just outside the rule can still end inside it without a plan (holding still solves 1 of
    the first 50: the agent's contact settles the block), so hold still is reported beside.
    """
    from sim import pusht
    from sim.rollouts import rollout
    from sim.success import is_success

    own = env is None
    env = env or pusht.make_env(pusht.RENDER_SIZE, obs_type="state")
    tasks = []
    s = TASK_SEED_BASE + seed * 10_000
    try:
        while len(tasks) < num:
            r = rollout(s, goal_offset, image_size=pusht.RENDER_SIZE, env=env)
            start = np.concatenate([r.agent_pos[0], r.block_pose[0]]).astype(np.float64)
            goal = np.concatenate([r.agent_pos[-1], r.block_pose[-1]]).astype(np.float64)
            if not is_success(start[2:], goal[2:]):
                pusht.reset_to_state(env, goal, seed=s)
                tasks.append(PushTTask(seed=s, start_state=start, goal_state=goal,
                                       goal_image=observe(env, image_size), demo_actions=r.actions))
            s += 1
            if s - TASK_SEED_BASE - seed * 10_000 > 100 * num + 100:
                raise RuntimeError(f"found only {len(tasks)} of {num} PushT tasks where the block moves "
                                   f"in {goal_offset} demonstration steps; raise --goal_offset")
    finally:
        if own:
            env.close()
    return tasks


class Controller(Protocol):
    name: str

    def reset(self, task: PushTTask) -> None: ...

    def act(self, frame: np.ndarray, step: int, agent: np.ndarray) -> np.ndarray:
        """Current frame (uint8 [S, S, 3]) and agent position (PushT's proprio) -> actions
        to execute next, [n, 2] in env units."""
        ...


# ----------------------------------------------------------------------------------------------
# Episodes


def step_env(env: Any, action: np.ndarray) -> None:
    """One PushT env step toward the target `action` (px), clipped into the 512-px workspace."""
    env.step(np.clip(action, 0.0, 512.0).astype(np.float32))


def run_episode(env: Any, task: PushTTask, controller: Controller, *, budget: int, image_size: int,
                repeat: int = 1) -> dict[str, Any]:
    """Runs exactly `budget` env steps (no early stop); each action is held `repeat` env steps
    (the training frame stride), or the controller's own `repeat` where it has one (controllers
    that return one action per env step). Returns final errors and success by the DINO-WM rule."""
    from sim import pusht
    from sim.success import is_success, pose_error

    pusht.reset_to_state(env, task.start_state, seed=task.seed)
    controller.reset(task)
    start_err = pose_error(pusht.block_pose(env), task.goal_pose)
    repeat = int(getattr(controller, "repeat", repeat))
    steps = 0
    ever = False
    while steps < budget:
        actions = np.asarray(controller.act(observe(env, image_size), steps, pusht.get_state(env)[:2]),
                             np.float64).reshape(-1, 2)
        for a in actions:
            for _ in range(repeat):
                if steps >= budget:
                    break
                step_env(env, a)
                steps += 1
                ever = ever or is_success(pusht.block_pose(env), task.goal_pose)
    pos, ang = pose_error(pusht.block_pose(env), task.goal_pose)
    return {"seed": task.seed, "success": bool(is_success(pusht.block_pose(env), task.goal_pose)),
            "pos_error": pos, "angle_error": ang, "start_pos_error": start_err[0],
            "start_angle_error": start_err[1], "reached_at_some_step": bool(ever)}


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a success rate (sound at 0 / n and n / n, unlike +-2 SE)."""
    if n == 0:
        return float("nan"), float("nan")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def mcnemar_p(only_a: int, only_b: int) -> float:
    """Exact two-sided McNemar p-value: the discordant tasks as fair coin flips."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1)) / 2.0**n
    return float(min(1.0, 2.0 * tail))


def paired(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> dict[str, Any]:
    """Two controllers on the tasks both ran (matched by task seed): both, one only, McNemar."""
    wa, wb = ({e["seed"]: bool(e["success"]) for e in x} for x in (a, b))
    common = sorted(set(wa) & set(wb))
    only_a = sum(wa[s] and not wb[s] for s in common)
    only_b = sum(wb[s] and not wa[s] for s in common)
    return {"tasks": len(common), "both": sum(wa[s] and wb[s] for s in common), "only_first": only_a,
            "only_this": only_b, "mcnemar_p": mcnemar_p(only_a, only_b)}


def summarize(episodes: list[dict[str, Any]], times: Sequence[float] = ()) -> dict[str, Any]:
    t = np.asarray(times, np.float64)
    steady = t[1:] if t.size > 1 else t  # the first plan includes compilation
    wins = sum(bool(e["success"]) for e in episodes)
    return {
        "episodes": len(episodes),
        "success_rate": float(np.mean([e["success"] for e in episodes])) if episodes else float("nan"),
        "success_ci95": wilson_interval(wins, len(episodes)),
        "mean_pos_error": float(np.mean([e["pos_error"] for e in episodes])) if episodes else float("nan"),
        "mean_angle_error": float(np.mean([e["angle_error"] for e in episodes])) if episodes else float("nan"),
        "reached_at_some_step": float(np.mean([e["reached_at_some_step"] for e in episodes])) if episodes else float("nan"),
        "plan_s_mean": float(steady.mean()) if steady.size else None,
        "plan_s_first": float(t[0]) if t.size else None,
        "num_plans": int(t.size),
    }


def evaluate_controllers(controllers: Sequence[Controller], tasks: Sequence[PushTTask], *, budget: int,
                         image_size: int, repeat: int = 1, progress: bool = True) -> dict[str, Any]:
    """Every controller on every task (same initial states); per-method summary + episodes."""
    from sim import pusht

    env = pusht.make_env(pusht.RENDER_SIZE, obs_type="state")
    out: dict[str, Any] = {}
    try:
        for c in controllers:
            eps = []
            t0 = time.perf_counter()
            if progress and getattr(c, "times", None) is not None:  # a planner
                print(f"[{c.name}] the first plan compiles the planner (seconds to a minute)", flush=True)
            for i, task in enumerate(tasks):
                eps.append(run_episode(env, task, c, budget=budget, image_size=image_size, repeat=repeat))
                if progress:
                    e = eps[-1]
                    eta = (time.perf_counter() - t0) / (i + 1) * (len(tasks) - i - 1)
                    print(f"[{c.name}] episode {i + 1}/{len(tasks)}: success={e['success']} "
                          f"pos {e['pos_error']:.1f}px angle {e['angle_error']:.1f}deg "
                          f"(start {e['start_pos_error']:.1f}px {e['start_angle_error']:.1f}deg), "
                          f"ETA {eta:.0f}s", flush=True)
            out[c.name] = {**summarize(eps, getattr(c, "times", ())), "seconds": time.perf_counter() - t0,
                           "episode_records": eps}
    finally:
        env.close()
    return out


def format_results(results: dict[str, Any], header: str) -> str:
    lines = [header, f"  {'method':<20s}{'success':>9s}{'95% interval':>15s}{'pos err (px)':>14s}"
                     f"{'angle err (deg)':>17s}{'s / plan':>10s}{'ever reached':>14s}"]
    for name, r in results.items():
        t = r.get("plan_s_mean")
        lo, hi = r["success_ci95"]
        lines.append(f"  {name:<20s}{r['success_rate']:>9.2f}{f'[{lo:.2f}, {hi:.2f}]':>15s}{r['mean_pos_error']:>14.1f}"
                     f"{r['mean_angle_error']:>17.1f}{(f'{t:.3f}' if t is not None else '-'):>10s}"
                     f"{r['reached_at_some_step']:>14.2f}")
    return "\n".join(lines)
