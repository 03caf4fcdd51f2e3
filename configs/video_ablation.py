"""Does action-free video train the dynamics? One arm of the labeled-vs-video ablation on PushT.

Run the whole sweep (converts the labeled subsets first, then every arm x L x seed, table + plot):

    python benchmarks/video_only_ablation.py

or one arm, once the sweep's data preparation has written `data/pusht/ablation/labeled_<L>`:

    wam-train --config=configs/video_ablation.py:arm=b,labeled=2 --workdir=runs/ablation/L2_b_s0

Arms (same model, same optimizer steps, same labeled episodes; `labeled=L` picks the subset):
  a  labeled only: the first L labeled PushT episodes.
  b  labeled + the action-free videos, conditioned on inferred latent actions (the design).
  c  labeled + the same videos, their conditioning replaced by one learned mask token (the naive
     alternative: dynamics without any information about what happened).

Every arm sees the same labeled clips per step (`batch`, default 8); the video arms add as many
video clips on top (global batch 16). With a fixed batch split half/half instead, arm (a) sees
twice the labels per step and wins on that alone (BENCHMARKS.md §7).

`recipe=plan` runs the arms on the planning recipe instead (configs/pusht_plan.py: the encoder
trained end to end with SIGReg, pooled latents, AdaLN-zero; its learning rate), 16x16 patches as
below; on it the video arms train the encoder too:

    python benchmarks/video_only_ablation.py --recipe=plan --data=data/pusht_demo \
        --generate=300,40,20,100,0.5 --labeled=2 --arms=a,b --seeds=0,1,2 --steps=1000

Hardware: 2 CPU cores. Everything else comes from configs/pusht_small.py (the README demo: `small`
preset, frozen encoder, frames 5 control steps apart, 4-frame clips), with two changes that make a
run ~3x cheaper and the predictor learn within the sweep's 600 steps: 16x16 patches (16 tokens per
64x64 frame, 0.21 s per step instead of 0.65) and learning rate 3e-3 (1e-3 leaves every arm within
1-5 % of copy-last at 600 steps). The encoder is frozen in every arm, so the arms differ only in
what trains the dynamics (predictor, latent actions, action embedder): exactly the question.
Measured results: BENCHMARKS.md ("Action-free video").
"""

from __future__ import annotations

import ml_collections as mlc

from configs import pusht_plan, pusht_small

ABLATION_ROOT = "data/pusht/ablation"  # labeled_<L>: the first L labeled episodes, converted
VIDEO = f"{pusht_small.DATA_ROOT}/pusht_video"
TEST = f"{pusht_small.DATA_ROOT}/pusht_test"
ARMS = ("a", "b", "c")
RECIPES = {"small": pusht_small, "plan": pusht_plan}


def parse_arg(arg: str | None) -> dict[str, str]:
    out = {"arm": "b", "labeled": "4", "preset": "small", "batch": "8", "recipe": "small"}
    for part in (arg or "").split(","):
        if not part.strip():
            continue
        if "=" not in part:
            raise ValueError(f"configs/video_ablation.py: argument {part!r} is not KEY=VALUE "
                             "(keys: arm, labeled, preset, batch, recipe), e.g. ':arm=b,labeled=4'")
        k, v = part.split("=", 1)
        if k.strip() not in out:
            raise ValueError(
                f"configs/video_ablation.py: unknown argument {k!r} (keys: arm, labeled, preset, batch, recipe)")
        out[k.strip()] = v.strip()
    if out["arm"] not in ARMS:
        raise ValueError(f"configs/video_ablation.py: arm={out['arm']!r}, choose one of {ARMS}")
    if out["recipe"] not in RECIPES:
        raise ValueError(f"configs/video_ablation.py: recipe={out['recipe']!r}, choose one of {sorted(RECIPES)}")
    return out


def global_batch(arm: str, labeled_batch: int) -> int:
    """Every arm sees the same labeled clips per step; the video arms add as many video clips.

    A fixed batch split half/half would halve the labeled clips per step in the video arms, and at
    equal optimizer steps arm (a) would then win by seeing twice the labels (BENCHMARKS.md §7).
    """
    return labeled_batch if arm == "a" else 2 * labeled_batch


def mixture(arm: str, labeled: int, root: str = ABLATION_ROOT, video: str = VIDEO) -> str:
    lab = f"{root}/labeled_{labeled}"
    return lab if arm == "a" else f"{lab}:0.5,{video}:0.5"


def get_config(arg: str | None = None) -> mlc.ConfigDict:
    a = parse_arg(arg)
    c = RECIPES[a["recipe"]].get_config(a["preset"])
    c.data.mixture = mixture(a["arm"], int(a["labeled"]))
    c.data.global_batch_size = global_batch(a["arm"], int(a["batch"]))
    c.model.latent_action.video_cond = "mask" if a["arm"] == "c" else "latent"
    c.model.patch_size = 16
    if a["recipe"] == "small":
        c.optim.lr = 3e-3
    c.data.heldout_fraction = 0.0  # held-out evaluation uses the separate PushT test episodes
    c.train.num_steps = 600
    c.train.checkpoint_every = 0  # one checkpoint at the end
    c.train.max_to_keep = 1
    c.train.export_at_end = False
    c.ablation = mlc.ConfigDict(dict(arm=a["arm"], labeled=int(a["labeled"]), labeled_batch=int(a["batch"]),
                                     recipe=a["recipe"]))
    return c
