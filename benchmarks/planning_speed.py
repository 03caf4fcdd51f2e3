"""Time per planning step: CEM with the V-JEPA 2-AC preset through `WorldModel.plan_latents`.

    python benchmarks/planning_speed.py --presets small,L --geometry small=64/8,L=64/16

One planning step = one call of `WorldModel.plan_latents(context, goal, preset='vjepa2_ac')`
(CEM: 400 candidate action sequences, top-10 elites, 10 iterations, horizon 2; each iteration
rolls the action-conditioned predictor 2 steps for all 400 candidates): one jitted program, plus
the host-side normalization of the result, which is what a robot loop pays per action.

The model is a randomly initialised `WorldActionModel` (speed does not depend on the weights)
wrapped in `WorldModel` with one 2-D action space, planning from one context frame to one goal
(random unit-variance latents of the right shape). FLOPs per planning step come from XLA's cost
analysis of the same planner with unrolled layers and one CEM iteration, times the iteration
count (XLA counts a loop body once).

`L` is the V-JEPA 2-AC-sized predictor (1024 wide, 24 layers) on latents of the L encoder
width; "reduced" means a smaller token grid than V-JEPA 2-AC's 16x16 (e.g. `L=64/16`: 4x4
tokens per frame). A preset whose estimated time per call exceeds `--max_call_s` is reported
from its FLOP count and the achieved FLOP/s of the presets that were timed, marked `estimated`.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import host  # noqa: E402
import measure  # noqa: E402


def parse_args(argv: list[str] | None = None):
    p = common.base_parser(__doc__, "planning_speed")
    p.add_argument("--presets", default="small,L")
    p.add_argument("--geometry", default="small=64/8,L=64/16",
                   help="per preset IMAGE/PATCH, e.g. 'small=64/8,L=256/16' (default: configs/base.py)")
    p.add_argument("--planner", default="vjepa2_ac", help="planner preset (wam_jax.inference.planning.PRESETS)")
    p.add_argument("--context_frames", type=int, default=1)
    p.add_argument("--matmul_dtype", default="", choices=["", "float32", "bfloat16"],
                   help="model.matmul_dtype ('': the compute dtype; bfloat16: bf16 operands, f32 accumulation)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--max_call_s", type=float, default=120.0, help="time a preset only below this estimate")
    p.add_argument("--max_seconds", type=float, default=300.0)
    args = p.parse_args(argv)
    if args.quick:
        args.presets = "tiny" if args.presets == "small,L" else args.presets
        args.geometry = "tiny=32/8" if args.geometry == "small=64/8,L=64/16" else args.geometry
        args.reps, args.warmup = 2, 1
    return args


def synthetic_info(action_dim: int, proprio_dim: int) -> dict[str, Any]:
    """A `loader.mixture_info`-shaped dict with one labeled source (identity normalization)."""
    ones, zeros = [1.0] * action_dim, [0.0] * action_dim
    return {
        "sources": [{"name": "bench", "path": "synthetic", "kind": "robot", "embodiment": "bench",
                     "embodiment_id": 0, "action_dim": action_dim, "proprio_dim": proprio_dim,
                     "action_is_delta": [False] * action_dim, "stride": 1}],
        "stats": [{"action": {"mean": zeros, "std": ones, "q01": [-1.0] * action_dim, "q99": ones},
                   "proprio": None}],
    }


def make_world_model(preset: str, image: int, patch: int, scan: bool = True, matmul_dtype: str = ""):
    import jax
    from flax import nnx

    from configs import base
    from wam_jax.inference import world_model_api
    from wam_jax.training.train_step import default_model_factory

    c = base.get_config(preset)
    c.model.image_size, c.model.patch_size = image, patch
    c.model.action_dim, c.model.proprio_dim = 2, 2
    c.model.scan_layers = scan
    c.model.matmul_dtype = matmul_dtype
    with nnx.use_eager_sharding(False):
        model = default_model_factory(c.model, nnx.Rngs(0))  # applies model.matmul_dtype
        target = model.make_target_encoder()
    mesh = world_model_api.inference_mesh(jax.devices()[:1])
    wm = world_model_api.WorldModel(
        config=c, info=synthetic_info(2, 2), step=None, path=f"random-init {preset}", kind="checkpoint",
        mesh=mesh, model=model, target=target)
    return c, wm


def planning_flops(preset: str, image: int, patch: int, planner: Any, context: Any, goal: Any,
                   matmul_dtype: str = "") -> float | None:
    """FLOPs of one planning call: unrolled layers, one iteration's cost times the iteration count."""
    import jax

    _, wm = make_world_model(preset, image, patch, scan=False, matmul_dtype=matmul_dtype)
    space = wm.action_space()
    one = planner.replace(num_iterations=1)
    plan = wm._build_planner(one, space, "last")
    bounds = space.bounds()
    ctx = (wm._model_state, context, goal, jax.numpy.int32(space.embodiment_id), None, None, None)
    with jax.set_mesh(wm.mesh):
        lowered = plan.lower(ctx, jax.random.key(0), bounds.lower, bounds.upper, None)
    cost = lowered.cost_analysis()
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return None
    return float(cost["flops"]) * planner.num_iterations


def bench_preset(args, preset: str, image: int, patch: int, rate_hint: float | None) -> dict[str, Any]:
    import jax
    import numpy as np

    from wam_jax.inference import planning

    planner = planning.preset(args.planner)
    config, wm = make_world_model(preset, image, patch, matmul_dtype=args.matmul_dtype)
    n, d = wm.latent_shape
    rng = np.random.default_rng(0)
    context = rng.standard_normal((args.context_frames, n, d)).astype(np.float32)
    goal = rng.standard_normal((n, d)).astype(np.float32)
    flops = planning_flops(preset, image, patch, planner, jax.numpy.asarray(context), jax.numpy.asarray(goal),
                           args.matmul_dtype)
    row: dict[str, Any] = {
        "preset": preset, "image_size": image, "patch_size": patch, "tokens_per_frame": n, "latent_dim": d,
        "predictor": f"{config.model.predictor.width}x{config.model.predictor.depth}",
        "matmul_dtype": args.matmul_dtype or "float32", "host_env": host.host_env_label(),
        "samples": planner.num_samples, "elites": planner.num_elites, "iterations": planner.num_iterations,
        "horizon": planner.horizon, "context_frames": args.context_frames,
        "flops": flops, "gflop_call": flops / 1e9 if flops else None,
    }
    if flops and rate_hint and flops / rate_hint > args.max_call_s:
        row["estimated"] = True
        row["plan_s"] = flops / rate_hint
        row["note"] = f"estimated from {rate_hint / 1e9:.0f} GFLOP/s (not timed: > --max_call_s)"
        return row

    def call() -> None:
        wm.plan_latents(context, goal, preset=args.planner, key=int(rng.integers(1 << 30)))

    t0 = time.perf_counter()
    call()
    row["first_call_s"] = time.perf_counter() - t0  # includes compilation
    if args.max_load > 0:
        row["wait"] = host.wait_for_quiet(args.max_load, args.wait)
    t = measure.time_fn(call, warmup=args.warmup, reps=args.reps, max_seconds=args.max_seconds)
    row["estimated"] = False
    row["timing"] = t.summary()
    row["plan_s"] = t.median
    row["best_s"] = t.best
    row["iqr_pct"] = 100 * t.spread
    row["gflops"] = flops / t.median / 1e9 if flops else None
    row["load"] = t.load_before[0]
    return row


COLUMNS: list[common.Column] = [
    ("preset", "preset", ""), ("predictor", "predictor", ""), ("geometry", "image/patch", ""),
    ("matmul_dtype", "matmuls", ""), ("host_env", "host env", ""),
    ("tokens_per_frame", "tokens/frame", "d"), ("gflop_call", "GFLOP/plan", ".1f"),
    ("first_call_s", "first call (s, compile)", ".1f"), ("plan_s", "plan step (s, median)", ".3f"),
    ("iqr_pct", "IQR %", ".0f"), ("gflops", "GFLOP/s", ".1f"), ("estimated", "estimated", ""),
    ("load", "load 1m", ".2f"),
]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if argv is None:
        host.apply_host_tuning(args.host_tuning)
    host.setup_host()
    import jax

    jax.devices()
    env = host.environment()
    geometry = {k: tuple(int(x) for x in v.split("/")) for k, v in common.parse_mapping(args.geometry, str).items()}
    rows: list[dict[str, Any]] = []
    rate = None
    for preset in common.parse_list(args.presets):
        image, patch = geometry.get(preset, (64, 8))
        row = bench_preset(args, preset, image, patch, rate)
        row["geometry"] = f"{image}/{patch}"
        rows.append(row)
        if not row["estimated"] and row.get("gflops"):
            rate = max(rate or 0.0, row["gflops"] * 1e9)
        print(f"{preset}: {row['plan_s']:.3f} s per planning step"
              f"{' (estimated)' if row['estimated'] else ''}", flush=True)
    print(f"\n## CEM planning step, preset {args.planner} ({env['devices']}, {env['cpu']}, jax {env['versions']['jax']})\n")
    print(common.format_table(rows, COLUMNS))
    result = {"benchmark": "planning_speed", "environment": env, "rows": rows, "args": vars(args)}
    common.save_result(args, "planning_speed", result)
    return result


if __name__ == "__main__":
    main()
