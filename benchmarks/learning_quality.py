"""What a PushT recipe learns, over seeds, with a 95 % interval: held-out prediction against
copy-last, action use, probes, the planning energy against the simulator, and planning success.

    python benchmarks/learning_quality.py --seeds=0,1,2                       # configs/pusht_plan.py
    python benchmarks/learning_quality.py --seeds=0,1,2 --name=chunk \\
        --overrides="--config.data.stride_actions=chunk --config.model.action_dim=10"
    python benchmarks/learning_quality.py --smoke                             # minutes: tiny, 2 seeds

Data: a converted PushT set (`wam-convert pusht`, default `data/pusht_mix`): trains on
`converted/pusht_labeled`, evaluates on `converted/pusht_test` (episodes training never saw).
Every seed trains with `wam-train --config.seed=S`, then is evaluated in-process
(`wam_jax.inference.evaluation`, `launch/probe.py`, `launch/energy_agreement.py`) and plans with
`wam-plan pusht` next to holding still, random actions and the policy head. Finished seeds are
skipped on a re-run. Prints one row per metric: each seed's value, the mean and a 95 % t-interval
over seeds; planning success is also pooled over seeds with a Wilson interval. Writes the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import common  # noqa: E402
import host  # noqa: E402
from video_only_ablation import _run, compile_cache_env  # noqa: E402

PLAN_METHODS = ("planner", "policy", "random", "hold")
# (row label, key in a seed's record, format); the prediction horizons are added per run.
METRICS = (("shuffled / true actions L1, h = 1", "shuffled_h1", ".3f"),
           ("normalized action rank (0.5 = chance)", "rank", ".3f"),
           ("inverse dynamics R²", "idm_r2", ".3f"),
           ("effective rank", "eff_rank", ".1f"),
           ("probe R², agent position", "probe_agent", ".3f"),
           ("probe R², block position", "probe_block", ".3f"),
           ("probe R², block position, pixels", "probe_block_pixels", ".3f"),
           ("latent variance explained by the agent", "var_agent", ".3f"),
           ("latent variance explained by the block", "var_block", ".3f"),
           ("latent distance rank vs block distance", "dist_rank_block", ".3f"),
           ("energy Spearman, model, all candidates", "energy_model_all", ".2f"),
           ("energy Spearman, model, near the demonstration", "energy_model_near", ".2f"),
           ("energy Spearman, real-outcome latent, all candidates", "energy_latent_all", ".2f"),
           ("energy Spearman, real-outcome latent, near the demonstration", "energy_latent_near", ".2f"),
           ("5-step prediction error / 20-px block change", "pred_err_ratio", ".2f"),
           *((f"PushT success, {m}", f"plan_{m}", ".2f") for m in PLAN_METHODS))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/pusht_plan.py")
    p.add_argument("--data", default="data/pusht_mix", help="converted PushT data (wam-convert pusht --output)")
    p.add_argument("--generate", default="",
                   help="generate --data first with LABELED,VIDEO,TEST,STEPS episodes (half random pushes)")
    p.add_argument("--name", default="recipe", help="names the runs directory and the JSON")
    p.add_argument("--runs", default="runs/learning_quality")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=None, help="override train.num_steps")
    p.add_argument("--overrides", default="", help="config overrides for every seed, space separated")
    p.add_argument("--eval_clips", type=int, default=0, help="held-out clips to evaluate (0 = all)")
    p.add_argument("--probe_episodes", type=int, default=45)
    p.add_argument("--energy_tasks", type=int, default=10)
    p.add_argument("--energy_candidates", type=int, default=66)
    p.add_argument("--plan_episodes", type=int, default=50, help="wam-plan tasks per seed (0 = skip)")
    p.add_argument("--plan_args", default="", help="wam-plan overrides (default: its protocol)")
    p.add_argument("--smoke", action="store_true", help="tiny model and data, two seeds, few steps")
    p.add_argument("--json", default=None, help="default benchmarks/results/learning_quality_NAME.json")
    args = p.parse_args(argv)
    if args.smoke:
        args.config, args.seeds, args.steps = "configs/pusht_plan.py:tiny", "0,1", 20
        args.generate = args.generate or "4,2,2,30"
        args.probe_episodes, args.energy_tasks, args.energy_candidates = 4, 2, 6
        args.plan_episodes = min(args.plan_episodes, 1)
        args.plan_args = args.plan_args or "--samples=8 --iterations=1 --horizon=2 --budget=5"
        args.eval_clips = args.eval_clips or 16
        args.name = args.name + "_smoke"
        args.overrides = (args.overrides + " --config.data.global_batch_size=8").strip()
    args.json = args.json or common.default_json_path(f"learning_quality_{args.name}", False)
    return args


def prepare_data(args: argparse.Namespace) -> tuple[str, str]:
    """(training mixture, test set) of `--data`, generated first when `--generate` is given."""
    if args.generate:
        from data_pipelines.convert import pusht

        n = [int(x) for x in args.generate.split(",")]
        if len(n) != 4:
            raise SystemExit(f"--generate={args.generate!r}: expected LABELED,VIDEO,TEST,STEPS")
        pusht.generate(args.data, pusht.DemoSizes(labeled_episodes=n[0], video_episodes=n[1], test_episodes=n[2],
                                                  steps=n[3], random_fraction=0.5), progress=False)
    conv = os.path.join(args.data, "converted")
    return os.path.join(conv, "pusht_labeled"), os.path.join(conv, "pusht_test")


def run_seed(args: argparse.Namespace, train: str, test: str, seed: int) -> dict[str, Any]:
    """Train, evaluate, probe and plan one seed; the record is kept in its workdir."""
    workdir = os.path.join(args.runs, args.name, f"seed_{seed}")
    path = os.path.join(workdir, "learning_quality.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    os.makedirs(workdir, exist_ok=True)
    steps = [f"--config.train.num_steps={args.steps}"] if args.steps else []
    t0 = time.perf_counter()
    _run([sys.executable, "-m", "launch.train", f"--config={args.config}", f"--workdir={workdir}",
          f"--config.seed={seed}", f"--config.data.mixture={train}", *steps, *args.overrides.split()],
         os.path.join(workdir, "train.log"))
    rec: dict[str, Any] = {"seed": seed, "workdir": workdir, "train_s": time.perf_counter() - t0}

    from launch import energy_agreement, probe
    from wam_jax import WorldModel
    from wam_jax.inference import evaluation, load

    t0 = time.perf_counter()
    ev = evaluation.evaluate(workdir, data=test, max_clips=args.eval_clips or None, plots=False, seed=seed)
    pred = ev["prediction"]
    for i, v in enumerate(pred["l1_vs_copy"]):
        rec[f"l1_vs_copy_h{i + 1}"] = v
    rec["shuffled_h1"] = pred["shuffled_vs_true"][0]
    rec["rank"] = ev["ranking"]["normalized_rank"]
    rec["idm_r2"] = next(iter(ev["action"].values()))["r2_mean"]
    rec["eff_rank"] = ev["health"]["effective_rank"]
    pr = probe.probe_pusht(load.restore(workdir), episodes=args.probe_episodes, seed=seed)["probes"]
    rec["probe_agent"] = pr["trained encoder"]["agent_pos_r2"]
    rec["probe_block"] = pr["trained encoder"]["block_pos_r2"]
    rec["probe_block_pixels"] = pr["pixels"]["block_pos_r2"]
    rec["var_agent"] = pr["trained encoder"]["variance_explained"]["agent"]
    rec["var_block"] = pr["trained encoder"]["variance_explained"]["block"]
    rec["dist_rank_block"] = pr["trained encoder"]["distance_rank"]["block"]
    en = energy_agreement.energy_agreement(WorldModel.load(workdir), tasks=args.energy_tasks,
                                           num_candidates=args.energy_candidates)["summary"]
    for kind in ("model", "latent"):
        rec[f"energy_{kind}_all"] = en[f"rho/{kind} energy"]["mean"]
        rec[f"energy_{kind}_near"] = en.get(f"near demo/rho/{kind} energy", en[f"rho/{kind} energy"])["mean"]
    rec["pred_err_ratio"] = en["prediction error"]["mean"] / max(en["block 20 px"]["mean"], 1e-9)
    rec["eval_s"] = time.perf_counter() - t0
    if args.plan_episodes > 0:
        t0 = time.perf_counter()
        out = os.path.join(workdir, "plan.json")
        _run([sys.executable, "-m", "launch.plan", "pusht", f"--workdir={workdir}", f"--episodes={args.plan_episodes}",
              f"--seed={seed}", f"--output={out}", *args.plan_args.split()], os.path.join(workdir, "plan.log"))
        with open(out) as f:
            plan = json.load(f)["results"]
        for method, r in plan.items():
            key = method.split(" ")[0]
            rec[f"plan_{key}"] = r["success_rate"]
            rec[f"plan_{key}_wins"] = sum(bool(e["success"]) for e in r["episode_records"])
            rec[f"plan_{key}_episodes"] = len(r["episode_records"])
        rec["plan_s"] = time.perf_counter() - t0
    with open(path + ".tmp", "w") as f:
        json.dump(rec, f, indent=1)
    os.replace(path + ".tmp", path)
    return rec


def interval(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean and 95 % t-interval over seeds (nan half-width for one seed)."""
    from scipy import stats

    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], np.float64)
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    if v.size == 1:
        return float(v[0]), float("nan"), float("nan")
    half = float(stats.t.ppf(0.975, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size))
    return float(v.mean()), float(v.mean() - half), float(v.mean() + half)


def aggregate(recs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per metric: per-seed values, mean, 95 % interval (and pooled planning success)."""
    from launch.pusht_tasks import wilson_interval

    horizons = sorted(int(k.rsplit("_h", 1)[1]) for k in recs[0] if k.startswith("l1_vs_copy_h"))
    metrics = [(f"latent L1 / copy-last, h = {h}", f"l1_vs_copy_h{h}", ".3f") for h in horizons] + list(METRICS)
    rows = []
    for label, key, fmt in metrics:
        values = [r.get(key) for r in recs]
        if all(v is None for v in values):
            continue
        mean, lo, hi = interval(values)
        row = {"metric": label, "key": key, "fmt": fmt, "seeds": values, "mean": mean, "ci95": [lo, hi]}
        if key.startswith("plan_"):
            wins = sum(int(r.get(key + "_wins", 0)) for r in recs)
            n = sum(int(r.get(key + "_episodes", 0)) for r in recs)
            row["pooled"] = {"wins": wins, "episodes": n, "wilson95": list(wilson_interval(wins, n))}
        rows.append(row)
    return rows


def table(rows: Sequence[dict[str, Any]], seeds: Sequence[int]) -> str:
    head = ["metric", *(f"seed {s}" for s in seeds), "mean [95 % interval]", "pooled"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for r in rows:
        fmt = r["fmt"]
        cells = [r["metric"], *("—" if v is None else format(v, fmt) for v in r["seeds"])]
        lo, hi = r["ci95"]
        cells.append(f"{format(r['mean'], fmt)} [{format(lo, fmt)}, {format(hi, fmt)}]")
        p = r.get("pooled")
        cells.append(f"{p['wins']}/{p['episodes']} [{p['wilson95'][0]:.2f}, {p['wilson95'][1]:.2f}]" if p else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    os.chdir(host.REPO)
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    os.environ.update(compile_cache_env(args.runs))  # before jax is imported (in-process eval)
    seeds = [int(x) for x in common.parse_list(args.seeds)]
    t0 = time.perf_counter()
    train, test = prepare_data(args)
    recs = []
    for seed in seeds:
        t1 = time.perf_counter()
        recs.append(run_seed(args, train, test, seed))
        r = recs[-1]
        print(f"[learning quality] seed {seed}: pred/copy h1 {r['l1_vs_copy_h1']:.3f}, rank {r['rank']:.3f}, "
              f"block probe {r['probe_block']:.3f}, planner {r.get('plan_planner', float('nan')):.2f} "
              f"({time.perf_counter() - t1:.0f}s)", flush=True)
    rows = aggregate(recs)
    print()
    print(table(rows, seeds))
    payload = {"benchmark": "learning_quality", "name": args.name, "environment": host.environment(),
               "args": vars(args), "seeds": recs, "rows": rows, "seconds": time.perf_counter() - t0}
    common.write_json(args.json, payload)
    print(f"\nwrote {args.json} ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
