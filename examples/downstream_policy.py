"""Behaviour cloning on frozen exported world-model features vs. the same policy from pixels.

    python examples/downstream_policy.py --export=workdirs/pusht_plan/export \\
        --data=data/pusht/converted/pusht_labeled [--test_data=data/pusht/converted/pusht_test] \\
        [--task=goal --episodes=50 --budget=50]

Takes the encoder exported by `wam-export` (loaded with `wam_jax.load_encoder`: plain JAX, no Flax,
no wam_jax model code) into a policy of your own, here written in plain JAX + optax:

- `features`: frozen exported encoder -> per-token linear -> flatten -> MLP -> action;
- `pixels`:   a small CNN trained from scratch -> the same per-cell linear -> flatten -> MLP -> action,

the per-cell linear sized so both flattened grids are `FLAT` wide (a pooled latent's one token gets
all of it, an 8 x 8 grid 8 channels per cell),

both fed the agent position (proprio; `--proprio=off` withholds it), trained on the same PushT
demonstrations with the same budget (steps, batch, optimizer, learning rate), then rolled out in
the simulator from the same initial states. Two tasks:

- `--task=full` (default): PushT's own fixed goal from the env's random initial states; the
  scripted demonstrator on the same states is the reference.
- `--task=goal`: `wam-plan pusht`'s tasks (the same seeds: a goal 25 steps ahead on a held-out
  demonstration, the goal frame given), so a policy's success sits beside the planner's. The
  policies are goal-conditioned: the goal's features (or the CNN's grid of the goal frame) are
  concatenated to the current frame's on every cell, trained with hindsight goals (the frame
  1..`--goal_offset` steps later in the same episode). References: holding still and replaying the
  demonstration's own actions open loop; features and pixels are paired on the tasks (McNemar).

`--synthetic=DIR[:WEIGHT]` (with `--task=goal`, the features policy, `--proprio=off`) adds VAG's
generated pairs: a `wam-synth --latents` dataset of the export's own model, whose imagined latents
train the features policy beside the demonstrations' (a WEIGHT share of every batch, default 0.5);
the labels then follow the synthetic episodes' stride (`--label_stride`, `policy_data.py`).

Reported per policy: held-out action MAE (robot units, px), success by the DINO-WM rule at the end
of a fixed step budget (no early stop) with its 95 % interval, how often the goal was reached at
some step, and wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the example's data module beside it
from policy_data import goal_batch, hindsight_spans, load_demos, load_synthetic, sample_hindsight  # noqa: E402

EVAL_SEED_BASE = 950_000  # disjoint from the demo's data seeds and from wam-plan's tasks
FLAT = 512  # width of the flattened per-cell projection, for every policy


# ----------------------------------------------------------------------------------------------
# Policies in plain JAX


def _dense(key: jax.Array, n_in: int, n_out: int) -> dict[str, jax.Array]:
    return {"w": jax.random.normal(key, (n_in, n_out)) * np.sqrt(2.0 / n_in), "b": jnp.zeros((n_out,))}


def init_head(key: jax.Array, cells: int, channels: int, proprio_dim: int, width: int = 256) -> dict[str, Any]:
    k = jax.random.split(key, 4)
    per_cell = max(8, FLAT // cells)  # the same MLP input width for one pooled token and a grid
    return {"cell": _dense(k[0], channels, per_cell), "fc1": _dense(k[1], cells * per_cell + proprio_dim, width),
            "fc2": _dense(k[2], width, width), "out": _dense(k[3], width, 2)}


def apply_head(p: dict[str, Any], grid: jax.Array, proprio: jax.Array) -> jax.Array:
    """grid [B, cells, C] + proprio [B, P] -> normalized action [B, 2]."""
    h = jax.nn.gelu(grid @ p["cell"]["w"] + p["cell"]["b"]).reshape(grid.shape[0], -1)
    h = jnp.concatenate([h, proprio], axis=-1)
    h = jax.nn.gelu(h @ p["fc1"]["w"] + p["fc1"]["b"])
    h = jax.nn.gelu(h @ p["fc2"]["w"] + p["fc2"]["b"])
    return h @ p["out"]["w"] + p["out"]["b"]


def init_cnn(key: jax.Array, channels: Sequence[int] = (16, 32, 64)) -> list[dict[str, jax.Array]]:
    layers, c_in = [], 3
    for k, c in zip(jax.random.split(key, len(channels)), channels, strict=True):
        layers.append({"w": jax.random.normal(k, (4, 4, c_in, c)) * np.sqrt(2.0 / (16 * c_in)), "b": jnp.zeros((c,))})
        c_in = c
    return layers


def apply_cnn(layers: list[dict[str, jax.Array]], frames: jax.Array) -> jax.Array:
    """uint8 [B, S, S, 3] -> grid [B, (S/8)^2, C] (three stride-2 convolutions)."""
    x = frames.astype(jnp.float32) / 255.0 - 0.5
    for layer in layers:
        x = jax.lax.conv_general_dilated(x, layer["w"], (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        x = jax.nn.gelu(x + layer["b"])
    return x.reshape(x.shape[0], -1, x.shape[-1])


class Normalizer:
    """Standardizes with the training set's statistics; `off` feeds zeros of the same shape (the
    input withheld, the network unchanged)."""

    def __init__(self, x: np.ndarray, *, off: bool = False):
        self.mean = x.mean(0)
        self.std = np.maximum(x.std(0), 1e-6)
        self.off = off

    def __call__(self, x):
        y = (x - self.mean) / self.std
        return y * 0.0 if self.off else y

    def inverse(self, x):
        return x * self.std + self.mean


def train(loss_fn, params: Any, sample_batch, *, steps: int, lr: float, seed: int) -> tuple[Any, list[float]]:
    """`steps` AdamW steps on `loss_fn(params, batch)`; returns params and the loss curve."""
    tx = optax.adamw(optax.cosine_decay_schedule(lr, steps), weight_decay=1e-4)
    opt = tx.init(params)

    @jax.jit
    def step(params, opt, batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt, loss

    rng = np.random.default_rng(seed)
    losses = []
    for _ in range(steps):
        params, opt, loss = step(params, opt, sample_batch(rng))
        losses.append(float(loss))
    return params, losses


# ----------------------------------------------------------------------------------------------
# Rollouts


def _full_task_episodes(new_actor, *, episodes: int, budget: int, seed: int) -> dict[str, Any]:
    """Episodes from the env's random initial states (seeds EVAL_SEED_BASE + seed * 1000 + i), each
    exactly `budget` steps of `new_actor()`'s `(env, goal pose) -> action (px)`; DINO-WM success at
    the end, summarized as `wam-plan`'s harness does."""
    from launch.pusht_tasks import step_env, summarize
    from sim import pusht
    from sim.success import is_success, pose_error

    env = pusht.make_env(pusht.RENDER_SIZE, obs_type="state")
    out = []
    try:
        for i in range(episodes):
            env.reset(seed=EVAL_SEED_BASE + seed * 1000 + i)
            actor, goal, reached = new_actor(), pusht.goal_pose(env), False
            for _ in range(budget):
                step_env(env, np.asarray(actor(env, goal), np.float64))
                reached = reached or is_success(pusht.block_pose(env), goal)
            pos, ang = pose_error(pusht.block_pose(env), goal)
            out.append({"success": is_success(pusht.block_pose(env), goal), "reached_at_some_step": reached,
                        "pos_error": pos, "angle_error": ang})
    finally:
        env.close()
    return summarize(out)


def rollout_success(act_fn, *, episodes: int, budget: int, image_size: int, seed: int = 0) -> dict[str, Any]:
    """`act_fn(frame uint8, agent_pos) -> action (px)` on the full task."""
    from launch.pusht_tasks import observe
    from sim import pusht

    def actor(env, goal):
        return act_fn(observe(env, image_size), pusht.get_state(env)[:2])

    return _full_task_episodes(lambda: actor, episodes=episodes, budget=budget, seed=seed)


def scripted_reference(*, episodes: int, budget: int, seed: int = 0) -> dict[str, Any]:
    """The demonstrator itself on the same initial states (an upper reference for BC)."""
    from sim import pusht
    from sim.scripted_policy import PolicyParams, ScriptedPushPolicy

    rng = np.random.default_rng(seed)

    def new_actor():
        policy = ScriptedPushPolicy(rng, PolicyParams.sample(rng))  # reads the true state
        return lambda env, goal: policy.act(pusht.get_state(env), goal)

    return _full_task_episodes(new_actor, episodes=episodes, budget=budget, seed=seed)


# ----------------------------------------------------------------------------------------------
# Goal-conditioned policies on wam-plan's tasks


def with_goal(grid: jax.Array, goal_grid: jax.Array | None) -> jax.Array:
    """The goal's grid concatenated to the current one on every cell's channels."""
    return grid if goal_grid is None else jnp.concatenate([grid, goal_grid], axis=-1)


def pixel_grid(cnn: list[dict[str, jax.Array]], frames: jax.Array, goals: jax.Array | None) -> jax.Array:
    """The CNN's grid of the frames, with the same CNN's grid of the goal frames beside it."""
    if goals is None:
        return apply_cnn(cnn, frames)
    both = apply_cnn(cnn, jnp.concatenate([frames, goals]))
    return with_goal(*jnp.split(both, 2))


class PolicyController:
    """A trained policy as a `launch.pusht_tasks` controller: each action held `repeat` env steps."""

    def __init__(self, name: str, act, embed_goal, repeat: int = 1):
        self.name, self.act_fn, self.embed_goal, self.goal, self.repeat = name, act, embed_goal, None, repeat

    def reset(self, task: Any) -> None:
        self.goal = self.embed_goal(task.goal_image)

    def act(self, frame: np.ndarray, step: int, agent: np.ndarray) -> np.ndarray:
        return self.act_fn(frame, agent, self.goal)[None]


class DemoReplayController:
    """The demonstration's own actions, open loop (its last action held after them): the
    reference every task is reachable by."""

    name, repeat = "demonstration replay", 1

    def reset(self, task: Any) -> None:
        self.task = task

    def act(self, frame: np.ndarray, step: int, agent: np.ndarray) -> np.ndarray:
        return self.task.demo_ahead(step, 1)


# ----------------------------------------------------------------------------------------------
# Main


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--export", required=True, help="wam-export output directory")
    p.add_argument("--data", default="data/pusht/converted/pusht_labeled", help="converted PushT demonstrations")
    p.add_argument("--test_data", default=None, help="held-out converted demonstrations (action MAE)")
    p.add_argument("--task", choices=("full", "goal"), default="full",
                   help="full: PushT's fixed goal from random starts; goal: wam-plan's goal-reaching tasks")
    p.add_argument("--goal_offset", type=int, default=25,
                   help="--task=goal: steps from start to goal on the tasks, and the largest hindsight offset")
    p.add_argument("--task_seed", type=int, default=0, help="--task=goal: the tasks of `wam-plan --seed`")
    p.add_argument("--policies", default="features,pixels",
                   help="which policies to train (comma list); the pixel policy does not depend on --export")
    p.add_argument("--proprio", choices=("on", "off"), default="on",
                   help="off: the policies get no agent position (what the frames, or features, carry of it)")
    p.add_argument("--loss", choices=("l1", "l2"), default="l1",
                   help="regression loss on the normalized action (l2 averages the modes of mixed demonstrations)")
    p.add_argument("--act_every", type=int, default=1,
                   help="--task=goal: env steps each action is held (5: the planner's and the policy head's rate)")
    p.add_argument("--max_episodes", type=int, default=None)
    p.add_argument("--label_stride", type=int, default=1,
                   help="each frame's action reduced over this many recorded steps from it (the loader's rule)")
    p.add_argument("--synthetic", default=None,
                   help="--task=goal: DIR[:WEIGHT], a `wam-synth --latents` dataset mixed into the features "
                        "policy's batches at WEIGHT (default 0.5)")
    p.add_argument("--steps", type=int, default=1500, help="gradient steps for each policy (the shared budget)")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--episodes", type=int, default=10, help="simulator episodes (tasks) per policy")
    p.add_argument("--budget", type=int, default=100, help="env steps per episode (no early stop)")
    p.add_argument("--seed", type=int, default=0, help="training seed (and --task=full's initial states)")
    p.add_argument("--output", default=None, help="JSON with the results")
    args = p.parse_args(list(argv))
    if args.goal_offset < 1:
        p.error(f"--goal_offset={args.goal_offset}: must be at least 1")
    if args.act_every < 1:
        p.error(f"--act_every={args.act_every}: must be at least 1")
    if args.label_stride < 1:
        p.error(f"--label_stride={args.label_stride}: must be at least 1")
    args.policies = [x.strip() for x in args.policies.split(",") if x.strip()]
    if not args.policies or set(args.policies) - {"features", "pixels"}:
        p.error(f"--policies={','.join(args.policies)!r}: expected a comma list of 'features' and 'pixels'")
    args.synthetic_weight = 0.0
    if args.synthetic:
        path, _, weight = args.synthetic.partition(":")
        try:
            args.synthetic_weight = float(weight or 0.5)
        except ValueError:
            args.synthetic_weight = -1.0
        if not 0.0 < args.synthetic_weight < 1.0:
            p.error(f"--synthetic={args.synthetic}: WEIGHT must be a number between 0 and 1")
        args.synthetic = path
        for flag, ok in (("--task=goal", args.task == "goal"), ("--policies=features", args.policies == ["features"]),
                         ("--proprio=off", args.proprio == "off")):
            if not ok:  # latents of action-free starts: goal-conditioned, features only, no proprio
                p.error(f"--synthetic needs {flag}")
    return args


def encode(encoder: Any, frames: np.ndarray, chunk: int = 256) -> np.ndarray:
    return np.concatenate([encoder(frames[i:i + chunk]) for i in range(0, len(frames), chunk)])


def main(argv: Sequence[str]) -> dict[str, Any]:
    args = parse_args(argv)
    import wam_jax

    goal_task = args.task == "goal"
    encoder = wam_jax.load_encoder(args.export)  # the exported artifact: jax + safetensors only
    size = int(encoder.preprocessing["resize"]["size"][0])
    demos = load_demos(args.data, size, args.max_episodes, args.label_stride)
    test = load_demos(args.test_data, size, label_stride=args.label_stride) if args.test_data else None
    print(f"{len(demos['frames'])} demonstration frames from {args.data}; encoder {encoder}; task {args.task}")

    a_norm, p_norm = Normalizer(demos["action"]), Normalizer(demos["proprio"], off=args.proprio == "off")
    t0 = time.perf_counter()
    feats = encode(encoder, demos["frames"]) if "features" in args.policies else None
    t_feat = time.perf_counter() - t0
    n = len(demos["frames"])
    cells, dim = encoder(demos["frames"][0]).shape
    targets = a_norm(demos["action"]).astype(np.float32)
    prop = p_norm(demos["proprio"]).astype(np.float32)
    spans = hindsight_spans(demos["episode"], args.goal_offset)
    syn = mix = None
    if args.synthetic:
        syn = load_synthetic(args.synthetic, encoder, image_size=size, label_stride=args.label_stride,
                             demo_fps=demos["fps"], action_dim=demos["action"].shape[1])
        mix = (syn["latent"], a_norm(syn["action"]).astype(np.float32),
               hindsight_spans(syn["episode"], args.goal_offset // args.label_stride))
        print(f"{len(syn['latent'])} synthetic frames from {args.synthetic} (start latents re-encode "
              f"{syn['start_gap']:.3f} apart), {args.synthetic_weight:g} of every features batch")

    def batches(x_source, synthetic: tuple[np.ndarray, ...] | None = None):
        def sample(rng):
            if goal_task:
                return goal_batch(rng, args.batch_size, (x_source, prop, targets, spans), synthetic,
                                  args.synthetic_weight)
            idx = rng.integers(0, n, args.batch_size)
            return x_source[idx], None, prop[idx], targets[idx]
        return sample

    key = jax.random.key(args.seed)
    k_feat, k_pix_head, k_cnn = jax.random.split(key, 3)
    width = 2 if goal_task else 1  # the goal's channels beside the frame's

    # -- the policy on frozen exported features, and the same head on a CNN trained from pixels
    def feat_apply(p, z, zg, pr):
        return apply_head(p, with_goal(z, zg), pr)

    def pix_apply(p, x, xg, pr):
        return apply_head(p["head"], pixel_grid(p["cnn"], x, xg), pr)

    cnn_cells = (size // 8) ** 2
    setups = {  # flag -> (name, apply, initial params, training inputs, observation -> policy input, encode s)
        "features": ("features (frozen export)", feat_apply, init_head(k_feat, cells, width * dim, prop.shape[1]),
                     feats, encoder, t_feat),
        "pixels": ("pixels (CNN from scratch)", pix_apply,
                   {"cnn": init_cnn(k_cnn), "head": init_head(k_pix_head, cnn_cells, width * 64, prop.shape[1])},
                   demos["frames"], lambda f: f, 0.0),
    }
    policies = {}  # name -> (jitted apply, params, observation -> policy input, train curve, train s, encode s)
    for flag in args.policies:
        name, apply, params0, inputs, embed, t_embed = setups[flag]

        def loss(p, batch, apply=apply):
            x, g, pr, y = batch
            err = apply(p, x, g, pr) - y
            return jnp.mean(jnp.abs(err) if args.loss == "l1" else jnp.square(err))

        t0 = time.perf_counter()
        params, curve = train(loss, params0, batches(inputs, mix),  # --synthetic: features only
                              steps=args.steps, lr=args.lr, seed=args.seed)
        policies[name] = (jax.jit(apply), params, embed, curve, time.perf_counter() - t0, t_embed)
    results: dict[str, Any] = {}
    controllers = []
    for name, (apply, params, embed, curve, t_train, t_embed) in policies.items():
        r: dict[str, Any] = {"final_train_loss": float(np.mean(curve[-50:])), "train_s": t_train,
                             "feature_extraction_s": t_embed}
        if syn is not None and name.startswith("features"):
            r["synthetic"] = {"path": args.synthetic, "weight": args.synthetic_weight, "frames": len(syn["latent"]),
                              "start_gap": syn["start_gap"]}
        if test is not None:
            xt = encode(encoder, test["frames"]) if name.startswith("features") else test["frames"]
            if goal_task:  # one hindsight goal per frame, drawn the same way for every policy
                idx, goal = sample_hindsight(np.random.default_rng(0), hindsight_spans(test["episode"], args.goal_offset),
                                             len(xt))
            else:
                idx, goal = np.arange(len(xt)), None
            pt = p_norm(test["proprio"])
            pred = np.concatenate([np.asarray(apply(params, xt[idx[i:i + 256]],
                                                    None if goal is None else xt[goal[i:i + 256]], pt[idx[i:i + 256]]))
                                   for i in range(0, len(idx), 256)])
            r["heldout_action_mae_px"] = float(np.abs(a_norm.inverse(pred) - test["action"][idx]).mean())

        def act(frame, agent, goal, apply=apply, params=params, embed=embed):
            pr = p_norm(np.asarray(agent, np.float32))[None]
            g = None if goal is None else goal[None]
            return a_norm.inverse(np.asarray(apply(params, embed(frame)[None], g, pr))[0])

        if goal_task:
            controllers.append(PolicyController(name, act, embed, repeat=args.act_every))
        else:
            t0 = time.perf_counter()
            r.update(rollout_success(lambda f, a, act=act: act(f, a, None), episodes=args.episodes,
                                     budget=args.budget, image_size=size, seed=args.seed))
            r["rollout_s"] = time.perf_counter() - t0
        results[name] = r

    if goal_task:
        from launch.plan import HoldStillController
        from launch.pusht_tasks import evaluate_controllers, make_tasks, paired

        tasks = make_tasks(args.episodes, image_size=size, goal_offset=args.goal_offset, seed=args.task_seed)
        rolled = evaluate_controllers([*controllers, HoldStillController(), DemoReplayController()], tasks,
                                      budget=args.budget, image_size=size, progress=False)
        for name, r in rolled.items():
            results[name] = {**results.get(name, {}), **r}
        if len(policies) == 2:
            feat_eps, pix_eps = (results[k]["episode_records"] for k in policies)
            results["features vs pixels"] = paired(pix_eps, feat_eps)  # only_this: tasks only the features reach
    else:
        results["scripted demonstrator"] = scripted_reference(episodes=args.episodes, budget=args.budget,
                                                              seed=args.seed)

    print(f"\nBehaviour cloning on PushT ({args.task} task): {n} frames, {args.steps} steps x batch "
          f"{args.batch_size} per policy, {args.episodes} episodes x {args.budget} steps (no early stop), "
          f"DINO-WM success rule")
    print(f"  {'policy':<28s}{'train loss':>11s}{'test MAE px':>12s}{'success':>9s}{'95% interval':>15s}{'reached':>9s}"
          f"{'pos err':>9s}{'train s':>9s}")
    for name, r in results.items():
        if "success_rate" not in r:
            continue
        mae = r.get("heldout_action_mae_px")
        lo, hi = r.get("success_ci95", (float("nan"), float("nan")))
        print(f"  {name:<28s}{r.get('final_train_loss', float('nan')):>11.3f}"
              f"{(f'{mae:.1f}' if mae is not None else '-'):>12s}{r['success_rate']:>9.2f}{f'[{lo:.2f}, {hi:.2f}]':>15s}"
              f"{r['reached_at_some_step']:>9.2f}"
              f"{r['mean_pos_error']:>9.1f}{r.get('train_s', float('nan')):>9.1f}")
    if "features vs pixels" in results:
        pair = results["features vs pixels"]
        print(f"  paired on {pair['tasks']} tasks: both {pair['both']}, pixels only {pair['only_first']}, "
              f"features only {pair['only_this']}, McNemar p = {pair['mcnemar_p']:.3f}")
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=2)
    return results


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main(sys.argv[1:])
