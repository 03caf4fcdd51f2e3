"""PushT demo: the `small` preset on the converted PushT data, trained on a laptop-class CPU.

Run (from the repository root, after `./wam demo` or the PushT conversion has written the data):

    wam-train --config=configs/pusht_small.py --workdir=runs/pusht_small

Hardware: sized for 2 CPU cores (no accelerator): 2.6M trained parameters, 3.9e10 FLOPs per
step (batch 16 clips of 4 frames at 64x64), ~1.1 GiB of XLA temporaries. The same file runs
unchanged on a GPU or TPU host.

Measured (before the predictor moved to the target latent space; 300 steps, one shared 2-core VM whose load average was ~9 from other jobs, so slower
than an idle machine): compile 84 s, then 4.4-6 s per step (`perf/step_time_s`), 45 min in all
(the last 100 steps ran next to a test suite). Over the run `loss/tf` fell 0.158 -> 0.012,
`act/r2` (inverse-dynamics actions, held-in batches) rose -0.15 -> +0.35 and the total loss
3.8 -> 2.9 (noisy, batch 16). `health/pred_to_copy` fell 13 -> 5.3: after 300 steps the predictor
does not yet beat copying the last frame on PushT, whose frames barely change between steps.
Re-running the command after an interruption resumes from the last checkpoint (every 100 steps).

Arguments (`--config=configs/pusht_small.py:ARG`): a model preset name (default `small`), e.g.
`:tiny` for a smoke test.
"""

from __future__ import annotations

import ml_collections as mlc

from configs import base

DATA_ROOT = "data/pusht/converted"


def get_config(arg: str | None = None) -> mlc.ConfigDict:
    preset = arg or "small"
    c = base.get_config(preset)
    c.seed = 0

    c.model.image_size = 64
    c.model.patch_size = 8
    c.model.action_dim = 2  # PushT: target (x, y) of the pusher
    c.model.proprio_dim = 2  # pusher position
    c.model.num_embodiments = 2
    c.model.dtype = "float32"  # CPU: f32 is the fast path
    c.model.ema = mlc.ConfigDict(dict(start=0.99, end=1.0))

    # Labeled episodes (frames + actions) and action-free videos of the same task: the latent
    # actions learn from both, the action head from the labeled part only.
    c.data.mixture = f"{DATA_ROOT}/pusht_labeled:0.5,{DATA_ROOT}/pusht_video:0.5"
    c.data.num_frames = 4
    c.data.global_batch_size = 16
    c.data.num_workers = 0
    c.data.read_threads = 2
    c.data.prefetch = 2

    c.optim.lr = 1e-3
    c.optim.weight_decay = 0.05
    c.optim.warmup_steps = 30
    c.optim.schedule = "warmup_cosine"

    c.mesh.ici_fsdp = -1  # one CPU device: a 1x1x1 mesh; more devices shard automatically

    c.train.num_steps = 300
    c.train.log_every = 10
    c.train.checkpoint_every = 100
    c.train.max_to_keep = 2
    return c
