"""`wam-eval --workdir=DIR [--data=DIR[,DIR]] [--step=N]`: held-out evaluation of a trained model.

Writes DIR/eval/metrics.json (or --output) and prints the metrics table, then draws PNG plots there
(a plot that fails is a warning; the metrics are already written). The table: latent
prediction L1 / cosine per horizon next to the copy-last-frame baseline, action-head errors in robot
units, action ranking, representation health, everything also per source and per kind.

Without --data the held-out split of the training mixture is used (config.data.heldout_fraction);
with --data every episode of those converted datasets is.

Exit codes: 0 done, 2 bad input (missing workdir / checkpoint / data, statistics absent).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from launch import probe


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="wam-eval", description=__doc__, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, help="training workdir (wam-train --workdir)")
    p.add_argument("--data", default=None, help="converted dataset(s) 'DIR' or 'DIR[:w],DIR' (default: held-out split)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--output", default=None, help="output directory (default: WORKDIR/eval)")
    p.add_argument("--max_clips", type=int, default=None, help="evaluate at most this many clips")
    p.add_argument("--batch_size", type=int, default=None, help="clips per batch (default: training batch size)")
    p.add_argument("--num_frames", type=int, default=None, help="clip length T: horizons 1..T-1 (default: training T)")
    p.add_argument("--num_perturbations", type=int, default=16, help="perturbed actions per transition (ranking)")
    p.add_argument("--no_plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--probe", default=None, choices=["pusht"],
                   help="also fit linear probes to the simulator's ground truth on fresh episodes (launch/probe.py) "
                        "and check the planning energy against the simulator (launch/energy_agreement.py)")
    p.add_argument("--probe_episodes", type=int, default=probe.PROBE_EPISODES,
                   help="fresh episodes for --probe (few episodes are few block poses: launch/probe.py)")
    p.add_argument("--probe_tasks", type=int, default=10,
                   help="wam-plan tasks on which --probe also ranks candidate action sequences by the "
                        "planning energy against the simulator (launch/energy_agreement.py; 0: skip)")
    p.add_argument("--log_level", default="WARNING")
    return p.parse_args(list(argv))


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.WARNING),
                        format="%(asctime)s %(levelname)s %(name)s] %(message)s")
    from wam_jax.inference import eval_report, evaluation, load

    restored = load.restore(args.workdir, args.step)  # once, for the metrics, probes and energies
    # Results first: metrics.json is written and the table printed before any plot is drawn.
    results = evaluation.evaluate(args.workdir, data=args.data, max_clips=args.max_clips,
                                  batch_size=args.batch_size, num_frames=args.num_frames,
                                  num_perturbations=args.num_perturbations, output_dir=args.output,
                                  plots=False, progress=True, restored=restored)
    print(eval_report.format_table(results))
    print(f"\nmetrics: {results['metrics_path']}", flush=True)
    out_dir = os.path.dirname(results["metrics_path"])
    if args.probe:
        from launch.plan import scene_subspace
        from wam_jax import WorldModel

        wm = WorldModel.from_restored(restored)
        try:  # the latent directions the agent's position explains, fitted on the training data
            basis, scene = scene_subspace(wm, None, 2048, 0)
            print(f"scene:   {scene['rank']} of {scene['latent_dim']} latent directions explained by the proprio "
                  f"({100 * scene['variance_share']:.0f}% of the variance)")
        except (OSError, ValueError) as e:  # no training data here, or none with proprio
            basis = None
            print(f"scene:   skipped ({e})")
        res = probe.probe_pusht(restored, episodes=args.probe_episodes, scene_basis=basis)
        print("\n" + probe.format_probe(res))
        print(f"probe:   {evaluation.write_metrics(res, out_dir, name='probe_pusht.json')}", flush=True)
        if wm.has_decoder and not args.no_plots:  # what the latent keeps of fresh frames, drawn
            print(f"plot:    {probe.write_reconstructions(wm, os.path.join(out_dir, 'reconstructions_pusht.png'))}")
        if args.probe_tasks > 0:
            from launch import energy_agreement

            res = energy_agreement.energy_agreement(wm, tasks=args.probe_tasks, scene_basis=basis)
            print("\n" + energy_agreement.format_agreement(res))
            print(f"energy:  {evaluation.write_metrics(res, out_dir, name='energy_agreement_pusht.json')}",
                  flush=True)
    if not args.no_plots:
        for path in eval_report.write_plots(results, out_dir):
            print(f"plot:    {path}")
    return 0


def _user_errors() -> tuple[type[BaseException], ...]:
    from data_pipelines.paths import LocalPathRequired
    from data_pipelines.records import DatasetFormatError
    from wam_jax.inference.world_model_api import IncompleteExportError, MissingStatisticsError

    return (FileNotFoundError, FileExistsError, DatasetFormatError, LocalPathRequired, MissingStatisticsError,
            IncompleteExportError)


def run(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point: user errors print one clear line and exit with status 2."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        code = main(argv)
    except _user_errors() as e:
        print(f"wam-eval: error: {e}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code)


if __name__ == "__main__":
    run()
