"""PushT planning recipe: an encoder trained end to end with SIGReg, pooled latents, AdaLN-zero
action conditioning (LeWM's recipe, sized for CPU).

Run (from the repository root):

    wam-convert pusht --output=data/pusht_mix --labeled_episodes=600 --video_episodes=300 \
        --test_episodes=60 --random_fraction=0.5 --workers=2
    wam-train --config=configs/pusht_plan.py --workdir=runs/pusht_plan
    wam-eval --workdir=runs/pusht_plan --data=data/pusht_mix/converted/pusht_test --probe=pusht
    wam-plan pusht --workdir=runs/pusht_plan --episodes=50

Hardware: 2 CPU cores (no accelerator): 2000 steps in about 20 min (0.55-0.65 s per step, batch 32
clips of 4 frames at 64x64); the same file runs unchanged on a GPU or TPU host. `./wam demo` trains
it with 16 px patches for 1000 steps on a smaller set, then its predictor for 600 more on the
frozen encoder (`model.init_scope=all`, `model.target=frozen`: this recipe's second stage in
small; BENCHMARKS.md §6.1).

Expected (BENCHMARKS.md §11.8, held-out episodes, one seed): latent L1 0.45 / 0.38 / 0.41x
copy-last at horizons 1-3, rollout error 1.09-1.19x higher under shuffled actions, normalized
action rank 0.20, inverse dynamics R^2 0.98, linear probes of agent / block position R^2 0.996 /
0.66 (pixels 0.57 / 0.62); PushT planning (`wam-plan` defaults, 50 tasks) 3/50, as random
actions, with the jointly trained policy head at 8/50.

**The planning recipe: two stages** (BENCHMARKS.md §11.12-11.13; 40 + 19 min on 2 cores):

    # 1. encoder, predictor and a full-frame decoder end to end (recon 10 puts the block in the latent)
    wam-train --config=configs/pusht_plan.py:encoder --workdir=runs/pusht_enc
    # 2. the predictor and heads trained on, on stage 1's frozen encoder (~4x cheaper per step)
    wam-train --config=configs/pusht_plan.py:predictor --workdir=runs/pusht_pred \
        --config.model.init_from=runs/pusht_enc/export
    wam-plan pusht --workdir=runs/pusht_pred --episodes=50 --actions=walk

Expected (§11.14, 2 seeds): planning 12/50 and 5/50 held-out goals, 17/100 [0.11, 0.26] (hold
still 1/50, random 3/50), final block error 26-30 px / 15 deg, 0.38-0.40x copy-last at h = 1,
normalized action rank 0.03-0.06; with `--warm_start=policy` 15/50 and 11/50, 26/100 [0.18, 0.35].
With stage 2 at 6000 steps (33 min), seed 0: 13/50. With `--config.model.stem=conv` on both
stages (a convolutional stem: §11.17; 64 + 20 min): 17/50 [0.22, 0.48], 0.365x copy-last,
action rank 0.044, block probe 0.852 on 300 fresh episodes (pixels 0.817); its stage 1
continued to 4000 steps (§11.18): 0.297x copy-last, rank 0.035, the same probes and 16/50. Left:
the block's angle is in no latent (§11.13, §11.18; not at the native 96 px either, which plans
worse: §11.15), though a supervised CNN reads it from these frames (R^2 0.82 from 900 episodes)
and this encoder carries it when asked (0.66 from 300); the recipe's decoder learns to draw it,
even from the true state, only after some 6000 steps of 64 frames, too late to ask the encoder
for it (§11.19); neither a reconstruction-only stage 0 nor 3000 episodes in place of 600 put it
in the latent (§11.20). In half the tasks the planner never pushes the block.

Stage 0 (`:autoencoder`, §11.20; 40 min): the encoder and the decoder on reconstruction and
SIGReg alone, over every labeled and action-free frame, 6000 steps of 64 frames:

    wam-train --config=configs/pusht_plan.py:autoencoder --workdir=runs/pusht_ae \
        --config.model.stem=conv

Expected: reconstruction error 0.021 (normalized pixels), the block drawn in place as a
three-armed shape, the agent not drawn; linear probes block position / angle / agent 0.76 / 0.07 /
0.59 on 300 fresh episodes (stage 1: 0.85 / 0.13 / 0.99): not a planning latent by itself. Its
export starts stage 1 with `--config.model.init_from=runs/pusht_ae/export
--config.model.init_scope=all`.

The block's pose as a training target (`privileged`, §11.21-11.22; 62 + 26 min): every stage reads
the simulator's block pose (x, y, cos, sin: recorded by `wam-convert pusht` beside the frames, never
a model input) out of each frame's latent (`loss.privileged`, weight 3 from the first step), which
puts the pose in the latent beside the agent. Not self-supervised: it needs the simulator's state
at training time; planning uses images only:

    wam-train --config=configs/pusht_plan.py:encoder,privileged --workdir=runs/priv_enc --config.model.stem=conv
    wam-train --config=configs/pusht_plan.py:predictor,privileged --workdir=runs/priv_pred \
        --config.model.stem=conv --config.model.init_from=runs/priv_enc/export
    wam-plan pusht --workdir=runs/priv_pred --episodes=50 --actions=walk --warm_start=policy

Expected (§11.22, one seed): probes block position / angle / agent 0.990 / 0.954 / 0.986 on 300
fresh episodes (without the target 0.852 / 0.13 / 0.994; pixels 0.817 / 0.060 / 0.783); stage 2
0.515x copy-last, 1.20x error under shuffled actions, action rank 0.081; planning 20/50 [0.28,
0.54], level with the best models without the target (the failures left are the block's position,
not its angle). Weight 10 (after 1271 steps at 1, §11.21) gave the block 70 % of the latent, a
predictor that hardly used the action and 9/50; weight 1 left the angle out.

Better dynamics, same file (BENCHMARKS.md §11.11, 43 min): train what the planner uses, 5-step
rollouts from one frame on 6-frame clips, with the stride's 5 recorded targets as the action:

    wam-train --config=configs/pusht_plan.py --workdir=runs/pusht_plan_e \
        --config.data.stride_actions=chunk --config.model.action_dim=10 \
        --config.data.num_frames=6 --config.loss.rollout_k=5 --config.train.num_steps=3000
    wam-plan pusht --workdir=runs/pusht_plan_e --episodes=50 --actions=walk

0.28 / 0.25x copy-last at horizons 1 / 5, planning 5/50 [0.04, 0.21] with `--actions=walk`
(1/50 over the action box), as many as the policy head.

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
- `loss.encoder_from_heads=1`: the action heads' gradient (inverse dynamics above all) reaches
  the encoder and keeps the agent's motion in the latents; the prediction loss alone lets the
  encoder drop what the predictor does not yet explain (BENCHMARKS.md §11.7-11.8). It collapsed
  the patch-grid encoder (§10.2), not this pooled one: SIGReg and the BatchNorm projector hold
  its rank.
- Half of the episodes pushed at random (`--random_fraction=0.5`): an expert's action is nearly a
  function of the frames, and on expert-only data the predictor learns to ignore it.
- Frames 5 control steps apart (`data.target_fps=2`), no crops or colour jitter (fixed camera,
  absolute actions), as in `configs/pusht_small.py`.

Arguments (`--config=configs/pusht_plan.py:ARG`): comma-separated, a model preset name (default
`small`), a stage: none (this recipe), `encoder` or `predictor` (the two-stage recipe above;
`predictor` needs `--config.model.init_from=` stage 1's export), and `privileged` (below).
"""

from __future__ import annotations

import ml_collections as mlc

from configs import pusht_small

DATA_ROOT = "data/pusht_mix/converted"


STAGES = ("autoencoder", "encoder", "predictor")
PRIVILEGED = "privileged"  # the option that reads the simulator's block pose out of the latent
# The terms the autoencoder stage turns off: every one but recon and SIGReg that the base weights.
_HEAD_TERMS = ("tf", "roll", "align", "align_u", "bottleneck", "act", "act_pred", "policy")


def get_config(arg: str | None = None) -> mlc.ConfigDict:
    parts = [p for p in (arg or "").split(",") if p]
    stage = next((p for p in parts if p in STAGES), None)
    presets = [p for p in parts if p not in (*STAGES, PRIVILEGED)]
    if len(presets) > 1:
        raise ValueError(f"configs/pusht_plan.py:{arg}: at most one preset name and one stage of {STAGES}")
    c = pusht_small.get_config(presets[0] if presets else None)
    c.model.target = "online"
    c.model.pool.kind = "mean"
    c.model.pool.dim = 64
    c.model.predictor.action_cond = "adaln"
    c.loss.sigreg = 0.09
    c.loss.collapse_samples = "all"

    c.data.mixture = f"{DATA_ROOT}/pusht_labeled"
    c.data.global_batch_size = 32
    c.optim.lr = 5e-4
    c.train.num_steps = 2000
    c.train.checkpoint_every = 500
    if stage is not None:  # the two-stage planning recipe
        c.data.stride_actions = "chunk"  # the stride's 5 recorded targets, 10 dims
        c.model.action_dim = 10
        c.data.num_frames = 6
        c.loss.rollout_k = 5  # 5-step rollouts from one frame: what the planner uses
        c.model.decoder.size = 64
        c.loss.recon = 10.0
    if stage == "autoencoder":  # stage 0: encoder and decoder on reconstruction alone
        c.data.mixture = f"{DATA_ROOT}/pusht_labeled:0.67,{DATA_ROOT}/pusht_video:0.33"  # every frame
        c.data.num_frames = 2  # the fewest a clip holds; nothing here looks across frames
        for term in _HEAD_TERMS:
            setattr(c.loss, term, 0.0)
        c.optim.lr = 1e-3
        c.train.num_steps = 6000  # the decoder draws the block's pose only after ~6000 x 64 frames
        c.train.checkpoint_every = 1000
    if stage == "predictor":  # every variable from stage 1's export; the encoder frozen
        c.model.init_scope = "all"
        c.model.target = "frozen"
        c.loss.recon = 0.0
        c.train.num_steps = 4000  # 19 min on 2 cores: the two stages fit an hour (6000: no better)
        c.train.checkpoint_every = 1000
    if PRIVILEGED in parts:  # every stage, so stage 2 loads stage 1's readout and keeps it fitted
        c.model.privileged_dim = 4  # block x, y, cos, sin (data/pusht_mix as `wam-convert pusht` writes it)
        c.loss.privileged = 3.0  # 1 leaves the angle out beside recon 10; 10 swamps the agent (§11.21-11.22)
    return c
