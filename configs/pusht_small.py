"""PushT demo: the `small` preset on the converted PushT data, trained on a laptop-class CPU.

Run (from the repository root, after `./wam demo` or the PushT conversion has written the data):

    wam-train --config=configs/pusht_small.py --workdir=runs/pusht_small

Hardware: sized for 2 CPU cores (no accelerator): 1.74M trained parameters (encoder frozen),
6.3e10 FLOPs per step (batch 16 clips of 4 frames at 64x64), bf16 matmul operands with f32
accumulation (`model.matmul_dtype`, the CPU fast path in BENCHMARKS.md). The same file runs
unchanged on a GPU or TPU host.

Recipe, and why:
- Frames 5 control steps apart (`data.target_fps=2` on the 10 Hz data: DINO-WM's PushT frameskip),
  so consecutive latents differ by more than the pusher's few pixels.
- `model.target='frozen'`: the predictor, latent actions and heads train on a fixed encoder, as
  V-JEPA 2-AC trains its predictor on a frozen encoder. Training the encoder jointly on this little
  data collapses it within ~50 steps whether the action heads (`loss.encoder_from_heads=1`) or
  V-JEPA SSL (`model.ssl.enabled`) drive it: target effective rank 12 -> 4, online 9 -> 2, copy-last
  error shrinking as frames become indistinguishable. Pretraining configs (configs/pretrain.py)
  train the encoder with SSL at scale.
- No random crop or colour jitter: the camera is fixed and the action is an absolute target
  position in the image frame, so a crop would move the scene under an unchanged action.
- `loss.align=0, loss.align_u=1`: the latent actions are pulled towards the embedded real actions,
  not the reverse; pulling g(a) towards an early-collapsed code book erases the action.

Measured (BENCHMARKS.md §6, 2-core VM): the predictor crosses the copy-last baseline on training
batches after ~500 steps; 600 steps (~0.7 s each) is the README demo. The same recipe at 2000 steps
(`--config.train.num_steps=2000`, 24 min) reaches 0.84-0.86x copy-last on the held-out test
episodes at horizons 1-3 and inverse-dynamics R^2 0.84.
Re-running the command after an interruption resumes from the last checkpoint (every 200 steps).

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
    c.model.dtype = "float32"  # activations and accumulation in f32
    c.model.matmul_dtype = "bfloat16"  # bf16 matmul operands: ~1.3x faster steps on CPU
    c.model.target = "frozen"  # see the module docstring
    c.model.ema = mlc.ConfigDict(dict(start=0.99, end=1.0))  # used with --config.model.target=ema
    c.data.target_fps = 2.0  # frames 5 control steps apart on the 10 Hz PushT data
    # Fixed camera and absolute actions (the pusher's target in image coordinates): a random crop
    # would move the scene under an unchanged action, and colour jitter adds nothing to learn.
    c.data.crop_scale = (1.0, 1.0)
    c.data.color_jitter = 0.0

    # Labeled episodes (frames + actions) and action-free videos of the same task: the latent
    # actions learn from both, the action head from the labeled part only.
    c.data.mixture = f"{DATA_ROOT}/pusht_labeled:0.5,{DATA_ROOT}/pusht_video:0.5"
    c.data.num_frames = 4
    c.data.global_batch_size = 16
    c.data.num_workers = 0
    c.data.read_threads = 2
    c.data.prefetch = 2

    # Latent actions learn the action embedder's space (u -> sg(g(a))), not the reverse: pulling
    # g(a) towards codes that collapse early erases the action from the conditioning (action
    # ranking at chance; BENCHMARKS.md §6).
    c.loss.align = 0.0
    c.loss.align_u = 1.0

    c.optim.lr = 1e-3
    c.optim.weight_decay = 0.05
    c.optim.warmup_steps = 30
    c.optim.schedule = "warmup_cosine"

    c.mesh.ici_fsdp = -1  # one CPU device: a 1x1x1 mesh; more devices shard automatically

    c.train.num_steps = 600
    c.train.log_every = 10
    c.train.checkpoint_every = 200
    c.train.max_to_keep = 2
    return c
