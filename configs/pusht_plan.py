"""PushT planning recipe: an encoder trained end to end with SIGReg, pooled latents, AdaLN-zero
action conditioning (LeWM's recipe, sized for CPU).

Run (from the repository root, after generating the larger PushT set):

    wam-convert pusht --output=data/pusht_600 --labeled_episodes=600 --video_episodes=300 \\
        --test_episodes=60 --workers=2
    wam-train --config=configs/pusht_plan.py --workdir=runs/pusht_plan
    wam-eval --workdir=runs/pusht_plan --data=data/pusht_600/converted/pusht_test
    wam-plan pusht --workdir=runs/pusht_plan --episodes=50

Hardware: 2 CPU cores (no accelerator); the same file runs unchanged on a GPU or TPU host.

Recipe, and why:
- `model.target='online'`: the encoder trains through the prediction loss, targets from the same
  encoder with gradient (no EMA, no stop-gradient), kept from collapsing by SIGReg
  (`loss.sigreg=0.09`, LeWM's weight). A frozen random encoder does not carry the block well
  enough to plan (BENCHMARKS.md §6), and EMA / stop-gradient training collapsed on this data.
- `model.pool.kind='mean'`: one 64-d vector per frame. Prediction, SIGReg and planning work on
  it; the predictor and the planner's rollouts get ~64x cheaper than on the 8x8 patch grid.
- `loss.collapse_samples='all'`: SIGReg tests every frame of the batch at once (32 clips x 4
  frames), not 32 samples per time step.
- `model.predictor.action_cond='adaln'`: the action modulates every predictor block.
- `loss.encoder_from_heads=0`: the action heads read stop-gradient latents; regressing two
  action dims from the encoder collapses it to them.
- Frames 5 control steps apart (`data.target_fps=2`), no crops or colour jitter (fixed camera,
  absolute actions), as in `configs/pusht_small.py`.

Measured: see BENCHMARKS.md §11 (the command, time per step and the held-out numbers).

Arguments (`--config=configs/pusht_plan.py:ARG`): a model preset name (default `small`).
"""

from __future__ import annotations

import ml_collections as mlc

from configs import pusht_small

DATA_ROOT = "data/pusht_mix/converted"


def get_config(arg: str | None = None) -> mlc.ConfigDict:
    c = pusht_small.get_config(arg)
    c.model.target = "online"
    c.model.pool.kind = "mean"
    c.model.pool.dim = 64
    c.model.predictor.action_cond = "adaln"
    c.loss.sigreg = 0.09
    c.loss.collapse_samples = "all"
    c.loss.encoder_from_heads = 0.0

    c.data.mixture = f"{DATA_ROOT}/pusht_labeled"
    c.data.global_batch_size = 32
    c.optim.lr = 5e-4
    c.train.num_steps = 600
    c.train.checkpoint_every = 200
    return c
