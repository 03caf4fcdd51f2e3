"""Does action-free video train the dynamics? One arm of the labeled-vs-video ablation on PushT.

Run one arm (after `python benchmarks/video_only_ablation.py --prepare` has converted the labeled
subsets), or the whole sweep with the benchmark script:

    wam-train --config=configs/video_ablation.py:arm=b,labeled=4 --workdir=runs/ablation/b_L4_s0
    python benchmarks/video_only_ablation.py            # every arm x L x seed, table + plot

Arms (same model, same optimizer steps, same labeled episodes; `labeled=L` picks the subset):
  a  labeled only: the first L labeled PushT episodes.
  b  labeled + the action-free videos, conditioned on inferred latent actions (the design).
  c  labeled + the same videos, their conditioning replaced by one learned mask token (the naive
     alternative: dynamics without any information about what happened).

Hardware: 2 CPU cores. Everything but the arm comes from configs/pusht_small.py (the README demo:
`small` preset at 64x64, frozen encoder, frames 5 control steps apart, batch 16, 4-frame clips);
the sweep script runs 150 steps per arm. The encoder is frozen in every arm, so the arms differ only
in what trains the dynamics (predictor, latent actions, action embedder): exactly the question.
Measured results: BENCHMARKS.md ("Action-free video").
"""

from __future__ import annotations

import ml_collections as mlc

from configs import pusht_small

ABLATION_ROOT = "data/pusht/ablation"  # labeled_<L>: the first L labeled episodes, converted
VIDEO = f"{pusht_small.DATA_ROOT}/pusht_video"
TEST = f"{pusht_small.DATA_ROOT}/pusht_test"
ARMS = ("a", "b", "c")


def parse_arg(arg: str | None) -> dict[str, str]:
    out = {"arm": "b", "labeled": "4", "preset": "small"}
    for part in (arg or "").split(","):
        if not part.strip():
            continue
        if "=" not in part:
            raise ValueError(f"configs/video_ablation.py: argument {part!r} is not KEY=VALUE "
                             "(keys: arm, labeled, preset), e.g. ':arm=b,labeled=4'")
        k, v = part.split("=", 1)
        if k.strip() not in out:
            raise ValueError(f"configs/video_ablation.py: unknown argument {k!r} (keys: arm, labeled, preset)")
        out[k.strip()] = v.strip()
    if out["arm"] not in ARMS:
        raise ValueError(f"configs/video_ablation.py: arm={out['arm']!r}, choose one of {ARMS}")
    return out


def mixture(arm: str, labeled: int, root: str = ABLATION_ROOT, video: str = VIDEO) -> str:
    lab = f"{root}/labeled_{labeled}"
    return lab if arm == "a" else f"{lab}:0.5,{video}:0.5"


def get_config(arg: str | None = None) -> mlc.ConfigDict:
    a = parse_arg(arg)
    c = pusht_small.get_config(a["preset"])
    c.data.mixture = mixture(a["arm"], int(a["labeled"]))
    c.model.latent_action.video_cond = "mask" if a["arm"] == "c" else "latent"
    c.data.heldout_fraction = 0.0  # held-out evaluation uses the separate PushT test episodes
    c.train.num_steps = 300
    c.train.checkpoint_every = 0  # one checkpoint at the end
    c.train.max_to_keep = 1
    c.train.export_at_end = False
    c.ablation = mlc.ConfigDict(dict(arm=a["arm"], labeled=int(a["labeled"])))
    return c
