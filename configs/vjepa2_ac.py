"""Action-conditioned fine-tuning the V-JEPA 2-AC way: a frozen pretrained V-JEPA 2 encoder and a
predictor trained on robot episodes (Assran et al. 2025 trained theirs on DROID).

Run (a Hugging Face download of the encoder, e.g. `facebook/vjepa2-vitg-fpc64-256`, or Meta's
`.pt` checkpoint; the same command on every host of a pod):

    wam-train --config=configs/vjepa2_ac.py:g --workdir=gs://BUCKET/wam/vjepa2_ac_g \\
        --config.model.init_from=gs://BUCKET/weights/vjepa2-vitg-fpc64-256 \\
        --config.data.mixture=gs://BUCKET/oxe/droid

Argument: the encoder variant `L`, `H` or `g` (V-JEPA 2's ViT-L / ViT-H / ViT-g at 256 px, patch
16, tubelet 2; default `g`, what V-JEPA 2-AC used). `model.init_from` must point at that
variant's weights: the run checks the checkpoint's `config.json` against these sizes and every
tensor's shape, naming what differs.

Recipe (V-JEPA 2-AC): `model.target='frozen'` (the encoder is not trained, the latents are its
patch tokens, layer-normed), a 24-layer 1024-wide predictor (~300M) that reads actions and
proprio as tokens beside every frame under block-causal attention, teacher-forcing plus a 2-step
rollout loss (L1), 4 fps clips. The action heads train on the frozen latents.

Hardware: meant for 8x H100 or a v5p-16 and up (bf16 compute, full rematerialization; check the
fit with `wam-compile --config=configs/vjepa2_ac.py:g` before renting). Expected result: not
measured here (no accelerator has run it yet); watch `health/pred_to_copy` fall below 1 and the
action ranking in `wam-eval`.
"""

from __future__ import annotations

import ml_collections as mlc

from configs import base

VARIANTS = ("L", "H", "g")


def get_config(arg: str | None = None) -> mlc.ConfigDict:
    variant = (arg or "g").strip()
    if variant not in VARIANTS:
        raise ValueError(f"configs/vjepa2_ac.py: variant {variant!r}; expected one of {VARIANTS}")
    c = base.get_config(variant)
    c.model.init_from = "REQUIRED: V-JEPA 2 weights (a Hugging Face directory or a .pt checkpoint)"
    c.model.target = "frozen"
    c.model.pool.kind = "none"
    c.model.image_size = 256
    c.model.patch_size = 16
    c.model.tubelet = 2
    c.model.encoder.norm_eps = 1e-6
    c.model.predictor.action_cond = "token"
    c.model.dtype = "bfloat16"
    c.model.param_dtype = "float32"
    c.model.remat = "full"
    c.model.scan_layers = True
    c.model.action_dim = 7  # OXE standardized: 6-d EEF delta + gripper
    c.model.proprio_dim = 8

    c.loss.tf = 1.0
    c.loss.roll = 1.0
    c.loss.rollout_k = 2

    c.data.mixture = ""  # your converted robot datasets (wam-convert oxe output dirs)
    c.data.num_frames = 8
    c.data.target_fps = 4.0
    c.data.global_batch_size = 256
    c.data.num_workers = 8

    c.optim.lr = 4e-4
    c.optim.weight_decay = 0.04
    c.optim.schedule = "wsd"
    c.optim.warmup_steps = 1000
    c.optim.grad_clip = 1.0
    c.mesh = mlc.ConfigDict(dict(ici_data=1, ici_fsdp=-1, ici_tensor=1, dcn_data=-1, dcn_fsdp=1, dcn_tensor=1))

    c.train.num_steps = 100_000
    c.train.log_every = 50
    c.train.checkpoint_every = 2000
    return c
