"""What trained PushT encoders spend their latents on: probes, explained variance, distance rank.

    python benchmarks/latent_content.py --workdirs=workdirs/pusht_plan_d,workdirs/pusht_plan_e \
        [--episodes=300] [--output=benchmarks/results/latent_content.json]

For each workdir, on fresh simulator episodes (`launch/probe.py`): ridge-probe R^2 of the block
position and of the agent position, the share of the latent's variance that a cubic in the agent
position / in the block pose explains on held-out episodes, and the Spearman rank correlation of
latent distance with agent / block distance over random frame pairs (what a planner's latent
cost measures); pixels beside them. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import common  # noqa: E402
import host  # noqa: E402

from launch import probe  # noqa: E402


def measure(workdir: str, episodes: int) -> dict[str, Any]:
    from wam_jax.inference import load

    res = probe.probe_pusht(load.restore(workdir), episodes=episodes)
    return {name: {"block_pos_r2": r["block_pos_r2"], "agent_pos_r2": r["agent_pos_r2"],
                   "variance_explained": r["variance_explained"], "distance_rank": r["distance_rank"]}
            for name, r in res["probes"].items() if name != "random-init encoder"}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdirs", required=True, help="comma list of training workdirs")
    p.add_argument("--episodes", type=int, default=probe.PROBE_EPISODES)
    p.add_argument("--output", default="benchmarks/results/latent_content.json")
    args = p.parse_args(argv)
    os.chdir(host.REPO)
    t0 = time.perf_counter()
    rows = {w: measure(w, args.episodes) for w in args.workdirs.split(",") if w}
    print(f"{'workdir':<28s}{'features':<18s}{'probe block':>12s}{'agent':>7s}{'var agent':>11s}{'block':>7s}"
          f"{'dist rank agent':>17s}{'block':>7s}")
    for w, feats in rows.items():
        for name, r in feats.items():
            ve, dr = r["variance_explained"], r["distance_rank"]
            print(f"{os.path.basename(w.rstrip('/')):<28s}{name:<18s}{r['block_pos_r2']:>12.3f}"
                  f"{r['agent_pos_r2']:>7.3f}{ve['agent']:>11.3f}{ve['block']:>7.3f}{dr['agent']:>17.3f}"
                  f"{dr['block']:>7.3f}")
    record = {"benchmark": "latent_content", "environment": host.environment(), "episodes": args.episodes,
              "seconds": time.perf_counter() - t0, "workdirs": rows}
    print(f"\nwritten: {common.write_json(args.output, record)}")
    return record


if __name__ == "__main__":
    main()
