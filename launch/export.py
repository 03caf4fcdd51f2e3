"""`wam-export --workdir=DIR --output=OUT [--with_predictor] [--step=N] [--overwrite]`

Exports the trained encoder (target encoder + latent normalization) as a `jax.export` artifact with
symbolic batch and time dimensions, its parameters (safetensors and Orbax), a preprocessing spec,
the config, the dataset statistics and an example input with its expected output; optionally the
predictor too. Load the result with `wam_jax.load_encoder(OUT)` (no Flax needed) or
`wam_jax.WorldModel.load(OUT)`. See wam_jax/inference/export.py for the layout.

Exit codes: 0 done, 2 bad input (missing workdir / checkpoint, existing output, statistics absent).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="wam-export", description=__doc__, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, help="training workdir (wam-train --workdir)")
    p.add_argument("--output", required=True, help="export directory to create")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--with_predictor", action="store_true", help="also export the predictor + action embedder")
    p.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    p.add_argument("--platforms", default="cpu,cuda,tpu", help="platforms to lower the artifacts for")
    p.add_argument("--log_level", default="INFO")
    return p.parse_args(list(argv))


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s] %(message)s")
    for noisy in ("absl", "jax._src", "orbax"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from wam_jax.inference import export

    platforms = tuple(p.strip() for p in args.platforms.split(",") if p.strip())
    manifest = export.export_model(args.workdir, args.output, step=args.step, with_predictor=args.with_predictor,
                                   overwrite=args.overwrite, platforms=platforms)
    enc = manifest["encoder"]
    print(f"exported step {manifest['step']} of {args.workdir} to {args.output}")
    print(f"  encoder: uint8 [b, t, {enc['image_size']}, {enc['image_size']}, 3] -> f32 [b, t, "
          f"{enc['latent_shape'][0]}, {enc['latent_shape'][1]}], {enc['num_params']} params, "
          f"platforms {enc['platforms']}")
    if manifest["predictor"]:
        print(f"  predictor: {manifest['predictor']['output']}")
    print(f"  load with: wam_jax.load_encoder({args.output!r})")
    return 0


def _user_errors() -> tuple[type[BaseException], ...]:
    from wam_jax.inference.artifacts import IncompleteExportError, MissingStatisticsError

    return (FileNotFoundError, FileExistsError, MissingStatisticsError, IncompleteExportError)


def run(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point: user errors print one clear line and exit with status 2."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        code = main(argv)
    except _user_errors() as e:
        print(f"wam-export: error: {e}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code)


if __name__ == "__main__":
    run()
