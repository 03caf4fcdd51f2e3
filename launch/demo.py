"""The README's main job: PushT demo data -> real converters -> train -> eval -> plan -> export.

    ./wam demo                      # or: python -m launch.demo [--workdir=...] [--config=...]

1. Generates PushT episodes with the simulator (half pushed by the scripted expert, half by random
   pushes): labeled episodes as a genuine RLDS builder directory, action-free rollouts as mp4
   files in the Ego4D layout, a held-out labeled test set.
2. Converts them with `wam-convert oxe` / `wam-convert ego4d` (the same code users run on
   Open X-Embodiment and Ego4D).
3. Trains `configs/pusht_plan.py` (the encoder end to end with SIGReg, pooled latents, AdaLN
   action conditioning; 16 px patches) on the labeled episodes in `WORKDIR/encoder`, then trains its predictor
   and heads on, on that encoder frozen (a step costs a quarter: the planning recipe's second
   stage), in `WORKDIR`. Re-running resumes each stage from its last checkpoint.
   The action-free videos go through the Ego4D converter but not into training: whether they help
   this recipe is not measured yet (the comparison in BENCHMARKS.md §7 is the previous recipe's).
4. Evaluates on the held-out test episodes (prediction vs copy-last, shuffled actions, action
   heads, ranking) and probes the encoder against the simulator's state next to pixels.
5. Plans a few held-out PushT goals (`wam-plan pusht`) next to hold-still and random actions.
6. Exports the encoder for downstream policies and prints its path.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

# What fits the demo's 10 minutes on 2 cores (BENCHMARKS.md §6.1); the recipe config's docstring
# gives the larger set.
# Fresh episodes the probes see: fewer than wam-eval's 300 (launch/probe.PROBE_EPISODES) to fit
# the 10-minute budget, enough block poses for the block probe to mean something (at 30 it was
# starved: BENCHMARKS.md §11.17).
DEMO_PROBE_EPISODES = 100
DEMO_SIZES = dict(labeled_episodes=300, video_episodes=40, test_episodes=20, random_fraction=0.5)
DEMO_PLAN_EPISODES = 5
# Training steps of the two stages: the end-to-end recipe (of its 2000), then its predictor on the
# frozen encoder, where the predictor stops chasing a moving target (BENCHMARKS.md §6.1).
DEMO_STEPS = (1000, 600)
# 16 px patches (16 tokens per 64 px frame, the recipe has 64): a step costs ~0.35x, which buys
# the steps above inside the time budget (BENCHMARKS.md §6.1).
DEMO_MODEL = ("--config.model.patch_size=16",)
FROZEN_ENCODER = ("--config.model.init_scope=all", "--config.model.target=frozen")
# The settings that make a run's result: a saved run that differs in one is not resumed.
RECIPE = ("seed", "model.", "loss.", "data.", "optim.")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="wam demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="data/pusht_demo", help="where the PushT demo data is generated")
    p.add_argument("--workdir", default="workdirs/pusht_plan", help="training workdir")
    p.add_argument("--config", default="configs/pusht_plan.py", help="config file (ml-collections)")
    p.add_argument("--plan_episodes", type=int, default=DEMO_PLAN_EPISODES,
                   help="held-out PushT goals to plan (0 = skip planning)")
    p.add_argument("--export", default=None, help="export directory (default: WORKDIR/export)")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. --config.train.num_steps=100")
    args, rest = p.parse_known_args(argv)
    args.overrides = list(args.overrides) + rest
    return args


def recipe_changes(workdir: str, config: Any) -> list[str]:
    """The recipe settings (`RECIPE`) in which the run saved in `workdir` differs from `config`;
    empty without a saved run. Resuming a finished run of an older recipe would otherwise train
    nothing and print the old model's numbers as this recipe's."""
    from wam_jax import config_utils
    from wam_jax.inference import load

    try:
        _, saved, _, _ = load.read_checkpoint_meta(workdir)
    except FileNotFoundError:
        return []
    old = config_utils.flat_hparams(config_utils.restore_config(saved))
    new = config_utils.flat_hparams(config)
    return sorted(k for k in set(old) | set(new) if k.startswith(RECIPE) and old.get(k) != new.get(k))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    t_start = time.perf_counter()
    timings: dict[str, float] = {}

    from data_pipelines.convert import pusht

    t0 = time.perf_counter()
    sizes = pusht.DemoSizes(**DEMO_SIZES)
    report = pusht.generate(args.data, sizes, workers=args.workers, replace_stale=True)  # an older demo's data
    timings["data (generate + convert)"] = time.perf_counter() - t0
    converted = os.path.join(args.data, "converted")

    from launch import train as train_launch
    from wam_jax import config_utils

    t0 = time.perf_counter()
    encoder_dir = os.path.join(args.workdir, "encoder")
    common = [f"--config.data.mixture={converted}/pusht_labeled", *DEMO_MODEL, *args.overrides]
    stages = [(encoder_dir, [f"--config.train.num_steps={DEMO_STEPS[0]}", *common]),
              (args.workdir, [f"--config.train.num_steps={DEMO_STEPS[1]}", *FROZEN_ENCODER,
                              f"--config.model.init_from={encoder_dir}/export",
                              "--config.train.export_at_end=False",  # exported below, to --export
                              *common])]
    changed = [c for workdir, overrides in stages
               for c in recipe_changes(workdir, config_utils.load_config(args.config, overrides))]
    if changed:
        old = f"{args.workdir.rstrip('/')}.previous-{time.strftime('%Y%m%d-%H%M%S')}"
        os.replace(args.workdir, old)
        print(f"{args.workdir} holds a run of another recipe ({', '.join(changed[:5])}"
              f"{' ...' if len(changed) > 5 else ''}): moved to {old}; training afresh", flush=True)
    for workdir, overrides in stages:
        code = train_launch.main(["wam-train", f"--config={args.config}", f"--workdir={workdir}", *overrides])
        if code:
            return code
    timings["train"] = time.perf_counter() - t0

    from launch import plan, probe, pusht_tasks
    from wam_jax.inference import eval_report, evaluation, export, load

    t0 = time.perf_counter()
    restored = load.restore(args.workdir)
    results = evaluation.evaluate(args.workdir, data=os.path.join(converted, "pusht_test"), restored=restored)
    probed = probe.probe_pusht(restored, episodes=DEMO_PROBE_EPISODES)
    evaluation.write_metrics(probed, os.path.dirname(results["metrics_path"]), name="probe_pusht.json")
    timings["eval + probe"] = time.perf_counter() - t0
    planned = None
    if args.plan_episodes > 0:
        t0 = time.perf_counter()
        # The recipe's search (target walks, the policy head's warm start: BENCHMARKS.md §11.14) with
        # 10 CEM iterations (the protocol has 30), which keeps the demo near 10 minutes on slow CPUs.
        planned = plan.main(["pusht", f"--workdir={args.workdir}", f"--episodes={args.plan_episodes}",
                             "--actions=walk", "--warm_start=policy", "--iterations=10", "--baselines=hold,random"])
        timings["plan"] = time.perf_counter() - t0
    export_dir = args.export or os.path.join(args.workdir, "export")
    t0 = time.perf_counter()
    export.export(args.workdir, export_dir, with_predictor=True)
    timings["export"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start

    print()
    print(eval_report.format_table(results))
    print()
    print(probe.format_probe(probed))
    if planned is not None:
        print()
        print(pusht_tasks.format_results(planned["results"], f"PushT planning, {args.plan_episodes} held-out goals "
                                                      f"(budget {planned['budget']} steps, goal {planned['goal_offset']} "
                                                      "steps ahead)"))
    print()
    print("wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    print(f"PushT data: {args.data} ({report.get('timings_s', {}).get('total', 0):.0f} s when generated)")
    print(f"training workdir: {args.workdir} (metrics.jsonl, TensorBoard events, checkpoints)")
    print(f"exported encoder: {os.path.abspath(export_dir)}  (load with wam_jax.load_encoder)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
