"""Pretraining on a pod: the OXE robot mixture plus Ego4D video, variants S / B / L / H / g.

Run (the same command on every host; see launch/tpu_pod.sh and launch/slurm_gpu.sbatch):

    wam-train --config=configs/pretrain.py:variant=L --workdir=gs://BUCKET/wam/pretrain_L \\
        --config.data.mixture=gs://BUCKET/oxe/bridge:0.3,gs://BUCKET/oxe/fractal:0.3,gs://BUCKET/ego4d:0.4

Argument: `variant=S|B|L|H|g` (default `L`), optionally `,steps=N` and `,batch=N`.

Hardware it is meant for (trained parameters counted from the model: encoder + latent predictor +
V-JEPA mask predictor + heads; check the fit with `wam-compile` before renting):

    variant  trained params            meant for                      mesh
    S        63M  (22 + 11 + 22 + 8)   1 GPU / v5e-8                  fsdp over all devices
    B        139M (86 + 22 + 22 + 9)   8x H100 / v5p-8                fsdp over all devices
    L        689M (304 + 304 + 22 + 59) v5p-64 / 32x H100             fsdp over all devices
    H        1.0B (632 + 305 + 22 + 60) v5p-128 / 64x H100            fsdp over all devices
    g        1.4B (1012 + 305 + 22 + 61) 2x v5p-256 over DCN          fsdp in-slice, data over DCN

bf16 compute with f32 parameters and optimizer state, full rematerialization of the scanned
blocks, global batch 1024 clips of 16 frames at 256x256 (per-frame latents of 256 tokens; the
V-JEPA 2 tubelet-2 patch embedding, so released checkpoints convert; the SSL path encodes
8 tubelets of 2 frames), WSD schedule (the stable phase can be extended from any checkpoint).

Expected result: not measured yet; this configuration has not been trained at scale. What to
look for in `metrics.jsonl`: `health/pred_to_copy` (predictor error / copy-last-frame error)
falling below 1, `health/target_eff_rank` staying well above 1 (no collapse), and `perf/mfu`
(MaxText reaches 64-70% on dense transformers on TPU v5p; this model's shorter sequences and
several small heads will land lower). Quote measured numbers, not these targets, once a run exists.
"""

from __future__ import annotations

import ml_collections as mlc

from configs import base

VARIANTS = ("S", "B", "L", "H", "g")


def _parse(arg: str | None) -> dict[str, str]:
    out = {"variant": "L"}
    for part in (arg or "").split(","):
        if not part:
            continue
        if "=" not in part:
            out["variant"] = part
            continue
        k, v = part.split("=", 1)
        out[k.strip()] = v.strip()
    unknown = set(out) - {"variant", "steps", "batch"}
    if unknown:
        raise ValueError(f"configs/pretrain.py: unknown argument(s) {sorted(unknown)}; expected variant=, steps=, batch=")
    if out["variant"] not in VARIANTS:
        raise ValueError(f"configs/pretrain.py: variant={out['variant']!r}; expected one of {VARIANTS}")
    return out


def get_config(arg: str | None = None) -> mlc.ConfigDict:
    args = _parse(arg)
    variant = args["variant"]
    c = base.get_config(variant)

    c.model.image_size = 256
    c.model.patch_size = 16
    c.model.tubelet = 2  # V-JEPA 2 tubelets, so released checkpoints convert
    c.model.dtype = "bfloat16"
    c.model.param_dtype = "float32"
    c.model.remat = "full"
    c.model.scan_layers = True
    c.model.attention = "auto"  # splash on TPU, cuDNN on GPU, head-major XLA elsewhere
    c.model.action_dim = 7  # OXE standardized: 6-d EEF delta + gripper
    c.model.proprio_dim = 8
    c.model.num_embodiments = 16
    c.model.ssl.enabled = True  # V-JEPA masked prediction keeps the encoder learning on Ego4D
    c.model.ssl.pred_width = 384  # V-JEPA 2's mask predictor: narrow and 12 deep
    c.model.ssl.pred_depth = 12
    c.model.ema = mlc.ConfigDict(dict(start=0.998, end=1.0))
    c.loss.ssl = 1.0

    # Placeholder mixture: override with your converted datasets (wam-convert output dirs).
    c.data.mixture = ""
    c.data.num_frames = 16
    c.data.target_fps = 4.0
    c.data.global_batch_size = int(args.get("batch", 1024))
    c.data.num_workers = 8
    c.data.prefetch = 2

    c.optim.lr = {"S": 1e-3, "B": 6e-4, "L": 4e-4, "H": 3e-4, "g": 2e-4}[variant]
    c.optim.weight_decay = 0.04
    c.optim.schedule = "wsd"
    c.optim.decay_shape = "1-sqrt"
    c.optim.decay_fraction = 0.15
    c.optim.warmup_steps = 2000
    c.optim.grad_clip = 1.0
    c.optim.grad_accum = 1

    # FSDP over every device of a slice; across slices (g on 2x v5p-128) data parallel over DCN.
    c.mesh = mlc.ConfigDict(dict(ici_data=1, ici_fsdp=-1, ici_tensor=1, dcn_data=-1, dcn_fsdp=1, dcn_tensor=1))

    c.train.num_steps = int(args.get("steps", 200_000))
    c.train.log_every = 50
    c.train.checkpoint_every = 2000
    c.train.max_to_keep = 3
    c.train.keep_period = 20_000
    c.train.profile_steps = 5
    return c
