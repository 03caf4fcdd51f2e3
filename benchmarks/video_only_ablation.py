"""Does action-free video train the dynamics? Labeled-only vs labeled + video-only on PushT.

    python benchmarks/video_only_ablation.py                 # the full sweep (BENCHMARKS.md)
    python benchmarks/video_only_ablation.py --smoke         # minutes: tiny model, 1 seed, few steps

Data: the PushT demo generator (`data_pipelines/convert/pusht.py`): labeled scripted episodes as an RLDS
builder directory, action-free rollouts as mp4s in the Ego4D layout, and held-out labeled test
episodes (disjoint seeds), all converted by the real converters. The labeled subsets are the first L
episodes of the labeled set (`wam-convert oxe --max_episodes=L`); the video set is fixed.

Arms (`configs/video_ablation.py`), same model, optimizer steps and labeled episodes:
  a  labeled only
  b  labeled + video, video steps conditioned on inferred latent actions (the design)
  c  labeled + video, video steps conditioned on one learned mask token (the naive alternative)

Every (L, arm, seed) run trains with `wam-train`, is evaluated on the held-out test episodes with
`wam_jax.inference.evaluation.evaluate` (action-conditioned latent prediction error at horizons 1..k next to
copy-last, inverse-dynamics R^2, action ranking) and, unless `--plan_episodes=0`, plans in the PushT
simulator with `wam-plan` (fixed budget, no early stop). Finished runs are skipped on a re-run, so an
interrupted sweep resumes. Prints a markdown table (mean ± std over seeds), writes the JSON and a
plot.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import common  # noqa: E402
import host  # noqa: E402

ARMS = {"a": "labeled only", "b": "+ video, latent actions", "c": "+ video, masked cond."}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/pusht", help="PushT demo data (generated on first use)")
    p.add_argument("--generate", default="",
                   help="sizes when --data must be generated: LABELED,VIDEO,TEST,STEPS[,RANDOM_FRACTION] "
                        "(default: the generator's)")
    p.add_argument("--runs", default="runs/video_ablation", help="workdirs of the sweep")
    p.add_argument("--labeled", default="2,8", help="L values: labeled episodes per run")
    p.add_argument("--arms", default="a,b,c")
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--preset", default="small", help="model preset (configs/video_ablation.py)")
    p.add_argument("--recipe", default="small", choices=["small", "plan"],
                   help="the arms' recipe (configs/video_ablation.py): the frozen-encoder demo recipe or the planning one")
    p.add_argument("--steps", type=int, default=600, help="optimizer steps per run (every arm)")
    p.add_argument("--labeled_batch", type=int, default=8,
                   help="labeled clips per batch in every arm; the video arms add as many video clips")
    p.add_argument("--overrides", default="", help="extra config overrides for every run, space separated")
    p.add_argument("--eval_clips", type=int, default=256, help="held-out clips to evaluate (0 = all)")
    p.add_argument("--plan_episodes", type=int, default=3, help="PushT planning tasks per run (0 = skip)")
    p.add_argument("--plan_budget", type=int, default=30, help="env steps per planning episode (each action is held for the frame stride)")
    p.add_argument("--plan_args", default="--samples=64 --elites=8 --iterations=3 --horizon=2 --execute=2",
                   help="wam-plan planner overrides (CPU-sized)")
    p.add_argument("--smoke", action="store_true", help="tiny model, one seed, few steps (minutes)")
    p.add_argument("--json", default=None, help="results JSON (default benchmarks/results/video_only_ablation.json)")
    p.add_argument("--plot", default=None, help="plot PNG (default next to the JSON)")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    args = p.parse_args(argv)
    if args.smoke:
        args.preset, args.steps, args.labeled_batch, args.seeds = "tiny", 40, 4, "0"
        args.plan_episodes, args.plan_budget = min(args.plan_episodes, 2), min(args.plan_budget, 4)
        args.runs = args.runs.rstrip("/") + "_smoke"
    name = "video_only_ablation" + ("_smoke" if args.smoke else "")
    args.json = args.json or common.default_json_path(name, False)
    args.plot = args.plot or os.path.splitext(args.json)[0] + ".png"
    return args


# ---------------------------------------------------------------------------------------------
# Data


def prepare_data(data: str, labeled: Sequence[int], workers: int, sizes: str = "") -> dict[str, str]:
    """Demo data + one converted dataset per labeled subset; returns {name: converted dir}."""
    from data_pipelines.convert import oxe as convert_oxe
    from data_pipelines.convert import pusht

    demo = pusht.DemoSizes()
    if sizes:
        n = sizes.split(",")
        if len(n) not in (4, 5):
            raise SystemExit(f"--generate={sizes!r}: expected LABELED,VIDEO,TEST,STEPS[,RANDOM_FRACTION]")
        demo = pusht.DemoSizes(labeled_episodes=int(n[0]), video_episodes=int(n[1]), test_episodes=int(n[2]),
                               steps=int(n[3]), random_fraction=float(n[4]) if len(n) == 5 else 0.0)
    report = pusht.generate(data, demo, workers=workers, progress=False)
    n_labeled = int(report["sizes"]["labeled_episodes"])
    conv = os.path.join(data, "converted")
    dirs = {"video": os.path.join(conv, "pusht_video"), "test": os.path.join(conv, "pusht_test")}
    rlds_dir = os.path.join(data, report["labeled"]["rlds_dir"])
    for n in labeled:
        if n > n_labeled:
            raise ValueError(f"--labeled={n}: the PushT data in {data} has only {n_labeled} labeled episodes")
        out = os.path.join(data, "ablation", f"labeled_{n}")
        if not os.path.exists(os.path.join(out, "dataset.json")):
            convert_oxe.convert(rlds_dir, out, dataset="pusht", max_episodes=n, progress=False,
                                options=convert_oxe.OXEOptions(int(report["image_size"])))
        dirs[f"labeled_{n}"] = out
    return dirs


# ---------------------------------------------------------------------------------------------
# One run


def run_one(args: argparse.Namespace, dirs: dict[str, str], labeled: int, arm: str, seed: int
            ) -> dict[str, Any]:
    from configs import video_ablation

    workdir = os.path.join(args.runs, f"L{labeled}_{arm}_s{seed}")
    result_path = os.path.join(workdir, "ablation_result.json")
    if os.path.exists(result_path):
        with open(result_path) as f:
            return json.load(f)
    os.makedirs(workdir, exist_ok=True)
    mixture = video_ablation.mixture(arm, labeled, root=os.path.dirname(dirs[f"labeled_{labeled}"]),
                                     video=dirs["video"])
    cmd = [sys.executable, "-m", "launch.train",
           f"--config=configs/video_ablation.py:arm={arm},labeled={labeled},preset={args.preset},"
           f"batch={args.labeled_batch},recipe={args.recipe}",
           f"--workdir={workdir}", f"--config.seed={seed}", f"--config.data.mixture={mixture}",
           f"--config.train.num_steps={args.steps}",
           *args.overrides.split()]
    t0 = time.perf_counter()
    _run(cmd, os.path.join(workdir, "train.log"))
    train_s = time.perf_counter() - t0

    from wam_jax.inference import evaluation

    t0 = time.perf_counter()
    ev = evaluation.evaluate(workdir, data=dirs["test"], max_clips=args.eval_clips or None, plots=False, seed=seed)
    eval_s = time.perf_counter() - t0
    row: dict[str, Any] = {"labeled": labeled, "arm": arm, "seed": seed, "workdir": workdir,
                           "train_s": train_s, "eval_s": eval_s, **eval_summary(ev)}
    if args.plan_episodes > 0:
        t0 = time.perf_counter()
        plan_json = os.path.join(workdir, "plan.json")
        _run([sys.executable, "-m", "launch.plan", "pusht", f"--workdir={workdir}",
              f"--episodes={args.plan_episodes}", f"--budget={args.plan_budget}", "--baselines=random,policy",
              f"--output={plan_json}", *args.plan_args.split()], os.path.join(workdir, "plan.log"))
        with open(plan_json) as f:
            plan = json.load(f)["results"]
        for method, r in plan.items():
            method = method.split(" ")[0]  # 'planner (vjepa2_ac)' -> 'planner'
            row[f"plan/{method}/success"] = r["success_rate"]
            row[f"plan/{method}/pos_error"] = r["mean_pos_error"]
        row["plan_s"] = time.perf_counter() - t0
    with open(result_path + ".tmp", "w") as f:
        json.dump(row, f, indent=1)
    os.replace(result_path + ".tmp", result_path)
    return row


def compile_cache_env(runs: str) -> dict[str, str]:
    """Every run of the sweep has the same shapes: a persistent XLA cache compiles each program once."""
    return {"JAX_COMPILATION_CACHE_DIR": os.path.abspath(os.path.join(runs, ".xla_cache")),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "1"}


def _run(cmd: list[str], log_path: str) -> None:
    env = dict(os.environ, **host.HOST_TUNING)
    with open(log_path, "w") as log:
        proc = subprocess.run(cmd, cwd=host.REPO, stdout=log, stderr=subprocess.STDOUT, env=env, check=False)
    if proc.returncode != 0:
        with open(log_path) as f:
            tail = "".join(f.readlines()[-20:])
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}); log {log_path}:\n{tail}")


def eval_summary(ev: dict[str, Any]) -> dict[str, Any]:
    """The held-out numbers the table reports (labeled test episodes: one robot source)."""
    pred = ev["prediction"]
    out: dict[str, Any] = {"horizon": len(pred["l1"]), "pred_l1": pred["l1"], "copy_l1": pred["copy_l1"],
                           "l1_vs_copy": pred["l1_vs_copy"], "pred_cos": pred.get("cos"),
                           "latent_l1_vs_copy": pred.get("latent_l1_vs_copy"),
                           "num_clips": ev["num_clips"]}
    act = next(iter(ev.get("action", {}).values()), None)
    if act is not None:
        out["act_r2"], out["act_mae"] = act["r2_mean"], act["mae_mean"]
    if "ranking" in ev:
        out["rank_top1"] = ev["ranking"]["top1"]
        out["rank_normalized"] = ev["ranking"]["normalized_rank"]
    return out


# ---------------------------------------------------------------------------------------------
# Aggregation


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and std over seeds per (L, arm)."""
    groups: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["labeled"], r["arm"]), []).append(r)
    out = []
    for (labeled, arm), rs in sorted(groups.items()):
        agg: dict[str, Any] = {"labeled": labeled, "arm": arm, "arm_name": ARMS[arm], "seeds": len(rs)}
        h = rs[0]["horizon"]
        for i in range(h):
            for key in ("pred_l1", "copy_l1", "l1_vs_copy", "latent_l1_vs_copy"):
                vals = np.asarray([r[key][i] for r in rs if r.get(key)], np.float64)
                if not vals.size:
                    continue
                agg[f"{key}_h{i + 1}"], agg[f"{key}_h{i + 1}_std"] = float(vals.mean()), float(vals.std())
        for key in ("act_r2", "rank_top1", "rank_normalized", "plan/planner/success", "plan/policy/success",
                    "plan/random/success", "plan/planner/pos_error", "plan/policy/pos_error",
                    "plan/random/pos_error"):
            vals = np.asarray([r[key] for r in rs if key in r], np.float64)
            if vals.size:
                agg[key], agg[key + "_std"] = float(vals.mean()), float(vals.std())
        out.append(agg)
    return out


def pm(row: dict[str, Any], key: str, fmt: str = ".3f") -> str:
    if key not in row:
        return "—"
    return f"{format(row[key], fmt)} ± {format(row[key + '_std'], fmt)}"


def horizons(row: dict[str, Any]) -> list[int]:
    """The prediction horizons an aggregate row holds (its `l1_vs_copy_h<i>` keys)."""
    return sorted(int(k.split("_h")[1]) for k in row if k.startswith("l1_vs_copy_h") and not k.endswith("std"))


# Table columns after L, arm, seeds and pred/copy per horizon: (header, aggregate key, format).
COLUMNS = (("pred L1 h=1", "pred_l1_h1", ".4f"), ("copy L1 h=1", "copy_l1_h1", ".4f"),
           ("latent-action cond. pred/copy h=1", "latent_l1_vs_copy_h1", ".3f"), ("inv-dyn R²", "act_r2", ".3f"),
           ("rank top-1", "rank_top1", ".2f"), ("norm. rank", "rank_normalized", ".3f"),
           ("plan success", "plan/planner/success", ".2f"), ("plan error (px)", "plan/planner/pos_error", ".1f"),
           ("policy success", "plan/policy/success", ".2f"), ("policy error (px)", "plan/policy/pos_error", ".1f"),
           ("random error (px)", "plan/random/pos_error", ".1f"))


def table(agg: list[dict[str, Any]]) -> str:
    h = max((max(horizons(r), default=0) for r in agg), default=0)
    head = (["L", "arm", "seeds"] + [f"pred/copy h={i}" for i in range(1, h + 1)]
            + [name for name, _, _ in COLUMNS])
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in agg:
        cells = [str(r["labeled"]), f"({r['arm']}) {r['arm_name']}", str(r["seeds"])]
        cells += [pm(r, f"l1_vs_copy_h{i}") for i in range(1, h + 1)]
        cells += [pm(r, key, fmt) for _, key, fmt in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(agg: list[dict[str, Any]], path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labeled = sorted({r["labeled"] for r in agg})
    fig, axes = plt.subplots(1, len(labeled) + 1, figsize=(4.2 * (len(labeled) + 1), 3.6))
    axes = np.atleast_1d(axes)
    for ax, n in zip(axes, labeled, strict=False):
        for r in (r for r in agg if r["labeled"] == n):
            hs = horizons(r)
            ys = [r[f"l1_vs_copy_h{i}"] for i in hs]
            es = [r[f"l1_vs_copy_h{i}_std"] for i in hs]
            ax.errorbar(hs, ys, yerr=es, marker="o", capsize=3, label=f"({r['arm']}) {r['arm_name']}")
        ax.axhline(1.0, color="gray", lw=0.8, ls="--")
        ax.set_xticks(sorted({h for r in agg for h in horizons(r)}))
        ax.set_title(f"L = {n} labeled episodes")
        ax.set_xlabel("horizon")
        ax.set_ylabel("held-out latent L1 / copy-last")
        ax.legend(fontsize=7)
    ax = axes[-1]
    arms = sorted({r["arm"] for r in agg})
    width = 0.8 / max(len(arms), 1)
    for j, arm in enumerate(arms):
        rs = [next((r for r in agg if r["labeled"] == n and r["arm"] == arm), None) for n in labeled]
        ax.bar(np.arange(len(labeled)) + j * width, [r.get("act_r2", np.nan) if r else np.nan for r in rs], width,
               yerr=[r.get("act_r2_std", 0) if r else 0 for r in rs], capsize=3, label=f"({arm})")
    ax.set_xticks(np.arange(len(labeled)) + width * (len(arms) - 1) / 2, [f"L={n}" for n in labeled])
    ax.set_ylabel("held-out inverse-dynamics R²")
    ax.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    os.chdir(host.REPO)
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    os.environ.update(compile_cache_env(args.runs))  # before jax is imported (in-process eval, runs)
    labeled = [int(x) for x in common.parse_list(args.labeled)]
    arms = common.parse_list(args.arms)
    seeds = [int(x) for x in common.parse_list(args.seeds)]
    for a in arms:
        if a not in ARMS:
            raise SystemExit(f"--arms: unknown arm {a!r}; choose from {sorted(ARMS)}")
    t0 = time.perf_counter()
    dirs = prepare_data(args.data, labeled, args.workers, args.generate)
    rows = []
    for seed in seeds:  # seeds outermost: an interrupted sweep already covers every arm
        for n in labeled:
            for arm in arms:
                t1 = time.perf_counter()
                row = run_one(args, dirs, n, arm, seed)
                rows.append(row)
                print(f"[ablation] L={n} arm={arm} seed={seed}: pred/copy h1 {row['l1_vs_copy'][0]:.3f}, "
                      f"R2 {row.get('act_r2', float('nan')):.3f}, top1 {row.get('rank_top1', float('nan')):.2f}, "
                      f"plan {row.get('plan/planner/success', float('nan')):.2f} "
                      f"({time.perf_counter() - t1:.0f}s)", flush=True)
    agg = aggregate(rows)
    print()
    print(table(agg))
    run_s = sum(r.get("train_s", 0.0) + r.get("eval_s", 0.0) + r.get("plan_s", 0.0) for r in rows)
    payload = {"benchmark": "video_only_ablation", "environment": host.environment(), "args": vars(args),
               "rows": rows, "aggregate": agg, "seconds": time.perf_counter() - t0,
               "run_seconds": run_s}  # every run's own time, also when resumed or cached
    common.write_json(args.json, payload)
    print(f"\nwrote {args.json} and {plot(agg, args.plot)} ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
