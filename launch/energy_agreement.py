"""Does the planning energy rank action sequences as the simulator does? (`wam-eval --probe=pusht`)

A planner can only be as good as the order its energy puts candidate action sequences in. For
each of a few PushT planning tasks (`wam-plan pusht`'s, same seeds) this draws `candidates`
action sequences of `horizon` model steps (`candidates`: uniform in the dataset's q01..q99 box,
as CEM samples first; random walks of targets from the agent, which often push the block; and the
task's demonstration, which reaches the goal, with noise: the neighbourhood CEM's last iterations
search, scored also on its own), executes each in the simulator from the task's start state (each action
held for the frame stride, as `wam-plan` does), and scores the outcome by the success rule's
quantities: block position error (px) + block angle error (degrees), both 20 at the tolerance.

Then, per task, the Spearman rank correlation between that outcome cost and
  model energy    the planner's energy: L1 from the predicted last latent to the goal's
  latent energy   the same L1 on the *encoded real outcome* (the energy with a perfect predictor)
  pixels          L1 between the real outcome frame and the goal image
and, given the directions the agent's position explains (`wam-plan --cost=scene`), the model and
latent energies without them ("scene"); and between the model and latent energies (does the
predictor track its own cost?), and the
outcome cost of each energy's best candidate next to the best and the median candidate; and the
predictor's error on the final latent next to how far the goal's latent moves when its block
moves 20 px (the success tolerance: what the energy must resolve). A low
latent-energy correlation means the representation's distance does not measure what success
needs, whatever the predictor; a low model-vs-latent one means the predictor is the problem.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from wam_jax.inference.probes import spearman

ENERGIES = ("model energy", "latent energy", "scene model energy", "scene latent energy", "pixels", "decoded energy")


def score_task(cost: np.ndarray, energies: Mapping[str, np.ndarray]) -> dict[str, float]:
    """One task's numbers: `cost [K]` (outcome, lower is better) against each energy `[K]`."""
    out = {"best": float(cost.min()), "median": float(np.median(cost))}
    for name, e in energies.items():
        out[f"rho/{name}"] = spearman(e, cost)
        out[f"chosen/{name}"] = float(cost[int(np.argmin(e))])
    if {"model energy", "latent energy"} <= set(energies):
        out["rho/model vs latent energy"] = spearman(energies["model energy"], energies["latent energy"])
    return out


FAMILIES = ("uniform", "walk", "near demo")
MAX_DEMO_NOISE_PX = 60.0


def candidates(rng: np.random.Generator, agent: np.ndarray, low: np.ndarray, high: np.ndarray, num: int,
               steps: int, demo: np.ndarray | None = None, *, stride: int = 1, step_px: float = 25.0
               ) -> np.ndarray:
    """`[num, steps, 2]` absolute targets, one per env step, changing every `stride` steps, by row
    index mod 3: uniform in the box; random walks from the agent (`step_px` per change); and,
    given `demo` (`[steps, 2]`, the demonstration's own actions, which reach the goal), the
    demonstration plus Gaussian offsets (one per stride) of a std spread evenly over
    0..`MAX_DEMO_NOISE_PX`: the neighbourhood CEM's last iterations search (without `demo`, more
    walks). Clipped to the box."""
    held = -(-steps // stride)
    out = rng.uniform(low, high, size=(num, held, 2))
    walks = agent + np.cumsum(rng.normal(0.0, step_px, size=(num, held, 2)), axis=1)
    out[1::3] = walks[1::3]
    near = np.arange(2, num, 3)
    out[near] = walks[near]
    out = np.repeat(out, stride, axis=1)[:, :steps]
    if demo is not None:
        scale = np.linspace(0.0, MAX_DEMO_NOISE_PX, len(near))[:, None, None]
        noise = np.repeat(rng.normal(size=(len(near), held, 2)), stride, axis=1)[:, :steps]
        out[near] = demo + scale * noise
    return np.clip(out, low, high).astype(np.float32)


def _block_sensitivity(wm: Any, env: Any, task: Any, goal_z: np.ndarray, size: int, px: float = 20.0) -> float:
    """Latent L1 between the goal and the goal with the block moved `px` (the success tolerance),
    averaged over four directions: the smallest change the planner's energy must resolve."""
    from launch.pusht_tasks import observe
    from sim import pusht

    out = []
    for dx, dy in ((px, 0.0), (-px, 0.0), (0.0, px), (0.0, -px)):
        state = task.goal_state + np.array([0.0, 0.0, dx, dy, 0.0])
        pusht.reset_to_state(env, state, seed=task.seed)
        out.append(np.abs(np.asarray(wm.encode(observe(env, size))) - goal_z).mean())
    return float(np.mean(out))


def energy_agreement(wm: Any, *, tasks: int = 10, num_candidates: int = 66, horizon: int = 5,
                     seed: int = 0, scene_basis: np.ndarray | None = None) -> dict[str, Any]:
    """The table's numbers for a loaded `WorldModel` (mean and sd over tasks) plus per-task rows;
    the scene energies too, given `scene_basis` (`WorldModel.state_subspace`)."""
    from launch.pusht_tasks import make_tasks, observe
    from sim import pusht
    from sim.success import pose_error
    from wam_jax.inference.state_subspace import remove_subspace

    t0 = time.perf_counter()
    size, space = wm.image_size, wm.action_space()
    raw, stride = space.dim // space.chunk, space.frame_stride  # one recorded action; steps per model step
    low, high = space.step_box()
    use_proprio = space.proprio_dim > 0 and space.proprio_mean is not None
    env = pusht.make_env(pusht.RENDER_SIZE, obs_type="state")
    rows = []
    try:
        for task in make_tasks(tasks, image_size=size, seed=seed, env=env):
            rng = np.random.default_rng([seed, task.seed])
            goal_z = np.asarray(wm.encode(task.goal_image))
            goal_px = task.goal_image.astype(np.float32)
            pusht.reset_to_state(env, task.start_state, seed=task.seed)
            z0 = np.asarray(wm.encode(observe(env, size)))
            agent = task.start_state[:2].astype(np.float32)
            demo = None
            if task.demo_actions is not None and len(task.demo_actions) >= horizon * stride:
                demo = task.demo_actions[: horizon * stride]
            steps = candidates(rng, agent, low, high, num_candidates, horizon * stride, demo, stride=stride)
            k = len(steps)
            # What the model is given: the chunk of recorded actions, or (reduced) the last of each stride.
            acts = (steps.reshape(k, horizon, stride * raw) if space.chunk > 1
                    else steps[:, stride - 1::stride])
            proprio = np.broadcast_to(agent, (k, 1, agent.shape[0])) if use_proprio else None
            pred = np.asarray(wm.predict(np.broadcast_to(z0, (k, 1) + z0.shape), acts, proprio=proprio))
            model_e = np.abs(pred[:, -1] - goal_z).mean(axis=(-2, -1))
            latent_e, pixel_e, cost, pred_err = np.zeros(k), np.zeros(k), np.zeros(k), np.zeros(k)
            real = np.zeros((k, goal_z.size), np.float32)
            for i, seq in enumerate(steps):
                pusht.reset_to_state(env, task.start_state, seed=task.seed)
                for a in seq:
                    env.step(a)
                frame = observe(env, size)
                real_z = np.asarray(wm.encode(frame))
                real[i] = real_z.reshape(-1)
                latent_e[i] = np.abs(real_z - goal_z).mean()
                pred_err[i] = np.abs(pred[i, -1] - real_z).mean()
                pixel_e[i] = np.abs(frame.astype(np.float32) - goal_px).mean()
                pos, ang = pose_error(pusht.block_pose(env), task.goal_pose)
                cost[i] = pos + ang
            energies = {"model energy": model_e, "latent energy": latent_e, "pixels": pixel_e}
            if scene_basis is not None:
                goal_s = remove_subspace(goal_z.reshape(1, -1), scene_basis)
                for name, z in (("scene model energy", pred[:, -1].reshape(k, -1)), ("scene latent energy", real)):
                    energies[name] = np.abs(remove_subspace(z, scene_basis) - goal_s).mean(axis=1)
            if wm.has_decoder:  # the planner's --cost=decoded: frames drawn from prediction and goal
                drawn = wm.decode(np.concatenate([pred[:, -1], goal_z[None]])).astype(np.float32)
                energies["decoded energy"] = np.abs(drawn[:-1] - drawn[-1]).mean(axis=(-3, -2, -1))
            row = {"seed": task.seed, **score_task(cost, energies), "prediction error": float(pred_err.mean()),
                   "block 20 px": _block_sensitivity(wm, env, task, goal_z, size)}
            if demo is not None:  # the same numbers inside the demonstration's neighbourhood
                near = np.arange(2, k, 3)
                row.update({f"near demo/{key}": v for key, v in
                            score_task(cost[near], {n: e[near] for n, e in energies.items()}).items()})
            rows.append(row)
    finally:
        env.close()
    summary = {}
    for key in rows[0]:
        if key != "seed":
            v = np.asarray([r[key] for r in rows], np.float64)
            finite = v[np.isfinite(v)]  # Spearman is nan where a task's energies or outcomes are constant
            summary[key] = ({"mean": float(finite.mean()), "sd": float(finite.std())} if finite.size
                            else {"mean": float("nan"), "sd": float("nan")})
    return {"tasks": len(rows), "candidates": num_candidates, "horizon": horizon, "stride": int(space.stride),
            "cost": "block position error (px) + block angle error (deg) after executing the sequence",
            "summary": summary, "per_task": rows, "seconds": time.perf_counter() - t0}


def format_agreement(res: dict[str, Any]) -> str:
    s = res["summary"]
    lines = [f"Planning energy vs the simulator ({res['tasks']} wam-plan tasks x {res['candidates']} "
             f"sequences of {res['horizon']} model steps; outcome cost = block px + deg error)",
             f"  {'energy':<20s}{'Spearman with cost':>20s}{'cost of its best':>18s}"]
    names = [n for n in ENERGIES if f"rho/{n}" in s]
    for name in names:
        r, c = s[f"rho/{name}"], s[f"chosen/{name}"]
        lines.append(f"  {name:<20s}{r['mean']:>12.2f} ± {r['sd']:.2f}{c['mean']:>14.1f}")
    lines.append(f"  {'(best / median candidate)':<40s}{s['best']['mean']:>14.1f} / {s['median']['mean']:.1f}")
    if "near demo/best" in s:
        lines.append("  near the demonstration (its actions + noise of std 0..60 px):")
        for name in names:
            r, c = s[f"near demo/rho/{name}"], s[f"near demo/chosen/{name}"]
            lines.append(f"  {name:<20s}{r['mean']:>12.2f} ± {r['sd']:.2f}{c['mean']:>14.1f}")
        lines.append(f"  {'(best / median candidate)':<40s}{s['near demo/best']['mean']:>14.1f} / "
                     f"{s['near demo/median']['mean']:.1f}")
    if "rho/model vs latent energy" in s:
        r = s["rho/model vs latent energy"]
        lines.append(f"  model energy vs latent energy: Spearman {r['mean']:.2f} ± {r['sd']:.2f}")
    if "prediction error" in s:
        lines.append(f"  predicted vs real final latent, L1: {s['prediction error']['mean']:.3f}; the goal's latent "
                     f"moves {s['block 20 px']['mean']:.3f} when its block moves 20 px")
    return "\n".join(lines)
