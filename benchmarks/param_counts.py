"""Parameter counts of the encoder and latent predictor for every size preset (no allocation).

    python benchmarks/param_counts.py [--image_size 256 --patch_size 16 --tubelet 2]

Models are built under `nnx.eval_shape`, so even `g` costs no memory. The default geometry is
V-JEPA 2's (256 px, patch 16, tubelet 2); with RoPE only the patch embedding depends on it.

Checks (exit status 1 when one fails), at V-JEPA 2's geometry only:
- `L`, `H`, `g` encoders equal the encoder parameter count of `transformers.VJEPA2Model` built from
  the configs of `facebook/vjepa2-vit{l,h,g}-fpc64-256` (hidden 1024/1280/1408, layers 24/32/40,
  heads 16/16/22, mlp_ratio 4/4/48/11; counted with torch on the meta device):
  303,885,312 / 631,648,000 / 1,012,173,952.
- `L` and `g` are within 2 % of the sizes the V-JEPA 2 paper names (ViT-L 300M, ViT-g 1B; its
  "ViT-H 600M" is nominal, the architecture has 632M, so H is listed but not held to 2 %).
"""

from __future__ import annotations

import argparse
import sys

import jax
from flax import nnx

from configs import base
from wam_jax.models import presets
from wam_jax.models.encoder import VideoEncoder
from wam_jax.models.predictor import LatentPredictor

# exact counts of transformers' VJEPA2Model(...).encoder for the released configs
TRANSFORMERS_ENCODER_PARAMS = {"L": 303_885_312, "H": 631_648_000, "g": 1_012_173_952}
# sizes named in the V-JEPA 2 paper
PAPER_ENCODER_PARAMS = {"L": 300e6, "H": 600e6, "g": 1e9}
TOLERANCE = 0.02
CHECKED_AGAINST_PAPER = ("L", "g")


def count(module_fn) -> int:
    abstract = nnx.eval_shape(module_fn)
    return sum(int(x.size) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))


def counts_for(preset: str, image_size: int, patch_size: int, tubelet: int) -> tuple[int, int]:
    cfg = base.model_config(preset)
    cfg.image_size, cfg.patch_size, cfg.tubelet = image_size, patch_size, tubelet
    enc = count(lambda: VideoEncoder(cfg, rngs=nnx.Rngs(0)))
    g = image_size // patch_size
    p = cfg.predictor
    pred = count(
        lambda: LatentPredictor(
            latent_dim=cfg.encoder.width,
            width=p.width,
            depth=p.depth,
            heads=p.heads,
            mlp_ratio=p.mlp_ratio,
            cond_dim=cfg.latent_action.dim,
            proprio_dim=cfg.proprio_dim,
            grid_hw=(g, g),
            rngs=nnx.Rngs(0),
        )
    )
    return enc, pred


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image_size", type=int, default=256)
    parser.add_argument("--patch_size", type=int, default=16)
    parser.add_argument("--tubelet", type=int, default=2)
    args = parser.parse_args(argv)
    vjepa2_geometry = (args.image_size, args.patch_size, args.tubelet) == (256, 16, 2)

    print(f"image {args.image_size}, patch {args.patch_size}, tubelet {args.tubelet}")
    header = (
        f"{'preset':>6} {'enc w/d/h/mlp':>18} {'encoder':>15} {'pred w/d/h':>12} "
        f"{'predictor':>15} {'total':>15} {'f32 GB':>7}"
    )
    print(header)
    print("-" * len(header))
    failures = []
    for name in presets.ENCODERS:
        w, d, h, r = presets.ENCODERS[name]
        pw, pd, ph, _ = presets.PREDICTORS[name]
        enc, pred = counts_for(name, args.image_size, args.patch_size, args.tubelet)
        total = enc + pred
        print(
            f"{name:>6} {f'{w}/{d}/{h}/{r:.3g}':>18} {enc:>15,} {f'{pw}/{pd}/{ph}':>12} "
            f"{pred:>15,} {total:>15,} {4 * total / 1e9:>7.2f}"
        )
        if not vjepa2_geometry:
            continue
        if name in TRANSFORMERS_ENCODER_PARAMS and enc != TRANSFORMERS_ENCODER_PARAMS[name]:
            failures.append(
                f"{name}: encoder {enc:,} != transformers VJEPA2 {TRANSFORMERS_ENCODER_PARAMS[name]:,}"
            )
        if name in CHECKED_AGAINST_PAPER:
            rel = enc / PAPER_ENCODER_PARAMS[name] - 1
            if abs(rel) > TOLERANCE:
                failures.append(f"{name}: encoder {enc:,} is {rel:+.1%} off the paper's size")
    if vjepa2_geometry:
        print()
        for name, ref in PAPER_ENCODER_PARAMS.items():
            enc = TRANSFORMERS_ENCODER_PARAMS[name]
            print(
                f"V-JEPA 2 ViT-{name}: paper {ref / 1e6:,.0f}M, transformers {enc:,} "
                f"({enc / ref - 1:+.1%})"
            )
    for f in failures:
        print("FAIL", f)
    if vjepa2_geometry and not failures:
        print(
            "OK: L/H/g encoders match transformers' V-JEPA 2 exactly; L and g within 2% of the paper"
        )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
