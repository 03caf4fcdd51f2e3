"""How planning runs fail, and whether two runs on the same tasks differ (`wam-plan pusht` JSONs,
or `examples/downstream_policy.py --task=goal`'s).

    python benchmarks/plan_outcomes.py RUN.json [RUN2.json ...] [--pool=N] [--reference=CONTROLLER]
        [--output=OUT.json]

One row per controller of each record: success with its 95 % Wilson interval, the final block
error, and the failures split the ways that point at different fixes: the block never pushed
(it ends within 1 px and 1 degree of where it started: the planner did not go for it), angle
only (within 20 px, not 20 degrees), position only, both. Then every further record's first
controller against the first record's, paired on the tasks both ran: tasks reached by both, by
one only, and the exact McNemar test of the discordant tasks (two runs on 50 tasks that differ by
5 against 2 discordant tasks are not told apart).

`--pool=N`: every N consecutive records are one run over several seeds (the same tasks, each seed's
its own units: `downstream_policy.py --seed=0,1,2`), their episodes pooled per controller.
`--reference=CONTROLLER`: every other row is paired with that controller (of the first record that
has it) instead of first controllers with the first record's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import common  # noqa: E402

from launch.pusht_tasks import paired, wilson_interval  # noqa: E402
from sim.success import SUCCESS_ANGLE_TOL_DEG, SUCCESS_POS_TOL  # noqa: E402

UNMOVED_PX, UNMOVED_DEG = 1.0, 1.0


def outcomes(episodes: list[dict[str, Any]]) -> dict[str, Any]:
    """The row of one controller's `episode_records`."""
    n, wins = len(episodes), sum(bool(e["success"]) for e in episodes)
    fails = [e for e in episodes if not e["success"]]
    angle_only = sum(e["pos_error"] < SUCCESS_POS_TOL for e in fails)
    position_only = sum(e["pos_error"] >= SUCCESS_POS_TOL and e["angle_error"] < SUCCESS_ANGLE_TOL_DEG for e in fails)
    low, high = wilson_interval(wins, n)
    return {"tasks": n, "success": wins, "interval": [low, high],
            "block_px": float(sum(e["pos_error"] for e in episodes) / max(n, 1)),
            "block_deg": float(sum(e["angle_error"] for e in episodes) / max(n, 1)),
            "never_pushed": sum(abs(e["pos_error"] - e["start_pos_error"]) < UNMOVED_PX
                                and abs(e["angle_error"] - e["start_angle_error"]) < UNMOVED_DEG for e in episodes),
            "fail_angle_only": angle_only, "fail_position_only": position_only,
            "fail_both": len(fails) - angle_only - position_only}


def load_records(paths: list[str], pool: int) -> list[tuple[str, dict[str, list[dict[str, Any]]]]]:
    """(name, controller -> episode records) per record, or per group of `pool` consecutive records
    with each episode's task keyed by (position in the group, task seed)."""
    if pool < 1 or len(paths) % pool:
        raise SystemExit(f"--pool={pool}: the {len(paths)} records do not split into groups of {pool}")
    # Records named by their file, or by their run's directory where the file names repeat
    # (`workdirs/RUN/plan/policy50.json` -> `RUN/policy50.json`).
    names = [os.path.basename(p) for p in paths]
    if len(set(names)) < len(names):
        names = [f"{os.path.basename(os.path.dirname(os.path.dirname(os.path.abspath(p))))}/{n}"
                 for p, n in zip(paths, names, strict=True)]
    records = []
    for g in range(0, len(paths), pool):
        merged: dict[str, list[dict[str, Any]]] = {}
        for k, path in enumerate(paths[g:g + pool]):
            with open(path) as f:
                results = json.load(f)["results"]
            for name, res in results.items():
                if "episode_records" in res:  # not a summary such as "features vs pixels"
                    merged.setdefault(name, []).extend(
                        {**e, "seed": (k, e["seed"]) if pool > 1 else e["seed"]} for e in res["episode_records"])
        records.append((names[g] if pool == 1 else f"{names[g]} (+{pool - 1} pooled)", merged))
    return records


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("records", nargs="+", help="wam-plan pusht JSON records")
    p.add_argument("--pool", type=int, default=1, help="pool every N consecutive records (seeds of one run)")
    p.add_argument("--reference", default=None, help="pair every row with this controller")
    p.add_argument("--output", default=None, help="write the table's numbers here (JSON)")
    args = p.parse_args(argv)
    rows, firsts = [], []
    records = load_records(args.records, args.pool)
    reference = None
    if args.reference:
        reference = next((c[args.reference] for _, c in records if args.reference in c), None)
        if reference is None:
            raise SystemExit(f"--reference={args.reference!r}: no record has that controller")
    for record, controllers in records:
        for i, (name, episodes) in enumerate(controllers.items()):
            row = {"record": record, "controller": name, **outcomes(episodes)}
            if reference is not None:
                if episodes is not reference:
                    row["paired_with_reference"] = paired(reference, episodes)
            elif i == 0:
                firsts.append(episodes)
                if len(firsts) > 1:
                    row["paired_with_reference"] = paired(firsts[0], episodes)
            rows.append(row)
    table = []
    for r in rows:
        lo, hi = r["interval"]
        pair = r.get("paired_with_reference")
        table.append({**r, "run": f"{r['record']}: {r['controller']}",
                      "rate": f"{r['success']}/{r['tasks']} [{lo:.2f}, {hi:.2f}]",
                      "error": f"{r['block_px']:.1f} / {r['block_deg']:.1f}",
                      "paired": (f"{pair['both']} / {pair['only_first']} / {pair['only_this']}, p = "
                                 f"{pair['mcnemar_p']:.2f}" if pair else None)})
    print(common.format_table(table, [
        ("run", "record: controller", ""), ("rate", "success [95 %]", ""), ("error", "block px / deg", ""),
        ("never_pushed", "never pushed", "d"), ("fail_angle_only", "fail: angle only", "d"),
        ("fail_position_only", "position only", "d"), ("fail_both", "both", "d"),
        ("paired", f"vs {args.reference or 'first'}: both / only that / only this, McNemar", "")]))
    out = {"benchmark": "plan_outcomes", "rows": rows}
    if args.output:
        print(f"\nwritten: {common.write_json(args.output, out)}")
    return out


if __name__ == "__main__":
    main()
