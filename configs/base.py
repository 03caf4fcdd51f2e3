"""The full config tree with defaults; experiment files start from `base.get_config()`.

Not an experiment itself: see `configs/pusht_small.py` (the README demo) and `configs/pretrain.py`.
"""

from __future__ import annotations

import ml_collections as mlc


def model_config(preset: str = "tiny") -> mlc.ConfigDict:
    from wam_jax.models import presets

    c = mlc.ConfigDict()
    c.preset = preset
    c.image_size = 64
    c.patch_size = 8
    # Tokens from one matmul per patch ('patch', V-JEPA 2's, converts its checkpoints) or from
    # log2(patch_size) stride-2 3x3 convolutions ('conv': local shapes first; models/conv_stem.py).
    c.stem = "patch"
    c.tubelet = 1  # 1: per-frame patches; 2: V-JEPA 2 tubelets (each frame duplicated per step)
    c.in_channels = 3
    c.pos_emb = "rope"  # 'rope' (3D RoPE, V-JEPA 2) or 'sincos'
    c.encoder = presets.encoder_preset(preset)
    c.encoder.norm_eps = 1e-6  # V-JEPA 2 conversions set their checkpoint's values
    c.encoder.qkv_bias = True
    # Latents per frame: 'none' keeps the patch grid (N = (image_size / patch_size)^2 tokens of
    # encoder width); 'mean' pools them and projects to one vector of `dim` (LeWM): planning and
    # the predictor get ~N times cheaper; 'grid' average-pools `grid x grid` regions of the patch
    # grid and projects each (a few vectors per frame that keep where things are); 'attn' pools
    # with a learned attention query (models/attention_pool.py) and projects. hidden 0: 4x the
    # encoder width.
    c.pool = mlc.ConfigDict(dict(kind="none", dim=128, hidden=0, grid=2))
    # Pretrained encoder weights for a new run: a Hugging Face V-JEPA 2 directory, a V-JEPA 2
    # PyTorch checkpoint or a wam_jax export (wam_jax/training/init_from.py); '' = random init.
    # init_scope 'all': every variable the export has (encoder, predictor, heads) from a wam_jax
    # export written with its predictor, e.g. to go on training a run's predictor on its frozen
    # encoder (`--config.model.target=frozen`).
    c.init_from = ""
    c.init_scope = "encoder"
    c.predictor = presets.predictor_preset(preset)
    c.predictor.residual = True  # predict z_{t+1} - z_t (output starts at the copy baseline)
    # How the conditioning enters the predictor: 'token' | 'channels' (DINO-WM) | 'token_channels'
    # | 'adaln' (AdaLN-zero in every block, LeWM); models/predictor.py.
    c.predictor.action_cond = "token_channels"
    c.action_dim = 7  # A: padded maximum over embodiments
    c.proprio_dim = 8  # P
    # K: dims of a recorded privileged state (a simulator's, e.g. PushT's block pose) that the
    # model reads out of its latents for loss.privileged (0 = no readout; such data is ignored).
    c.privileged_dim = 0
    c.num_embodiments = 4
    c.latent_action = mlc.ConfigDict(
        dict(dim=8, bottleneck="fsq", fsq_levels=5, noise_std=0.1, width=0, depth=2)
    )
    # What conditions action-free (video) steps: 'latent' = the inferred latent action u_t (the
    # design); 'mask' = one learned token carrying no information (the naive baseline, ablations).
    c.latent_action.video_cond = "latent"
    c.action_head = mlc.ConfigDict(dict(width=0, depth=1))  # width 0: the predictor's width
    c.num_sources = 8  # static maximum of mixture sources for per-source metrics
    # A frame decoder from pooled latents (models/decoder.py) for loss.recon: size 0 = none, else
    # the side of the decoded frame (4 x a power of two dividing image_size); width: its first map;
    # kind: 'upsample' (a linear map to 4 x 4, then doublings) or 'broadcast' (the latent tiled
    # over a size/4 grid with coordinate channels: draws objects at their pose; models/decoder.py).
    c.decoder = mlc.ConfigDict(dict(size=0, width=64, kind="upsample"))
    c.policy_horizon = 4  # h: action chunk length
    # The flow-matching action stream (models/flow_head.py, trained by loss.flow): depth 0 = none;
    # width 0 = the action heads' width; chunks drawn in sample_steps 'euler' or 'midpoint' steps;
    # bridge (t, h, w): the predictor's imagined futures pooled to t x h x w tokens the stream
    # attends to (VAG's adaptive 3D pooling; models/vag.py), () = none.
    c.flow_head = mlc.ConfigDict(dict(depth=0, width=0, sample_steps=10, sampler="euler", bridge=()))
    # 'ema': the target encoder is an EMA of the encoder (stop-gradient targets); 'frozen': the
    # encoder is not trained; 'online': the encoder trains end to end through the prediction loss
    # (targets from the same encoder, with gradient, no EMA: LeWM) and needs an anti-collapse term
    # (loss.sigreg or loss.vic_var/vic_cov); the target encoder then mirrors it for inference.
    c.target = "ema"
    c.ema = mlc.ConfigDict(dict(start=0.996, end=1.0))
    c.ssl = mlc.ConfigDict(
        dict(enabled=False, mask_ratio=0.75, num_blocks=4, block_scale=0.15, pred_width=0, pred_depth=0)
    )  # pred_width / pred_depth 0: the predictor preset's
    c.dtype = "float32"  # compute dtype: 'bfloat16' on accelerators
    c.param_dtype = "float32"
    c.remat = "none"  # 'none' | 'full' | 'dots'
    c.scan_layers = True
    # Layers per scan-loop iteration (JAX's `scan(unroll=)`); 0 unrolls the stack and keeps the
    # stacked parameters: 8-14 % faster f32 steps on CPU at S, longer compiles (BENCHMARKS.md §2).
    c.scan_unroll = 1
    # The attention kernel: 'auto' = the platform's: Pallas splash on TPU (unmasked, lengths a
    # multiple of 128), cuDNN on GPU (jax.nn.dot_product_attention), the head-major XLA layout
    # elsewhere and for the rest; 'xla' | 'cudnn' | 'splash' force one (models/splash.py).
    c.attention = "auto"
    # Operand dtype of the projection / MLP matmuls ('' = the compute dtype). 'bfloat16' with
    # dtype='float32': bf16 operands, f32 accumulation and activations (CPU fast path, BENCHMARKS.md).
    c.matmul_dtype = ""
    return c


def loss_config() -> mlc.ConfigDict:
    return mlc.ConfigDict(
        dict(
            ssl=0.0,
            tf=1.0,
            roll=1.0,
            align=1.0,  # g(a) -> sg(u) on labeled steps
            align_u=0.0,  # u -> sg(g(a)) on labeled steps (latent actions learn the action space)
            bottleneck=1.0,
            act=1.0,
            act_pred=0.5,  # inverse dynamics applied to predicted latents
            policy=1.0,
            kl_weight=1e-3,  # the Gaussian bottleneck's KL inside the bottleneck term
            # Fraction of labeled steps conditioned on u_t instead of g(a_t), so the latent-action
            # model also learns from fully labeled data (0 = only action-free steps use u_t).
            label_dropout=0.0,
            rollout_k=2,  # steps of the autoregressive rollout term (roll)
            # Scale of the action heads' gradient into the online encoder (0 = the heads train on
            # stop-gradient latents and the encoder learns from SSL only; see objectives.py).
            encoder_from_heads=1.0,
            # Anti-collapse terms on the online encoder's latents, per time step across the batch
            # (0 = off). sigreg: LeWM's Epps-Pulley test of random 1-D projections against N(0, 1)
            # (~0.09 there); vic_var / vic_cov: VICReg's variance hinge and covariance (PLDM).
            sigreg=0.0,
            sigreg_projections=256,
            sigreg_knots=17,
            vic_var=0.0,
            vic_cov=0.0,
            # The samples of those terms: 'step' = the batch at each time step; 'all' = every
            # frame of the batch at once (more samples for pooled latents on small batches).
            collapse_samples="step",
            # Decoding each frame from its online latents (model.decoder), the gradient into the
            # encoder: keeps what the frame shows in the latent, not only what is easy to predict.
            recon=0.0,
            # Extra weight of the reconstruction on foreground pixels: those that differ from the
            # batch's per-pixel median frame (the static background of a fixed camera), e.g. the
            # block and the agent, a few % of a PushT frame (0 = every pixel alike).
            recon_fg=0.0,
            # Conditional flow matching of the action chunk by model.flow_head (the velocity's
            # squared error on labeled steps, the goal the clip's last frame, as for `policy`).
            flow=0.0,
            # A linear readout of the recorded privileged state (model.privileged_dim) from each
            # frame's online latents, squared error on normalized values, full gradient into the
            # encoder: asks the latent for what the robot does not sense (PushT: the block's pose).
            privileged=0.0,
        )
    )


def get_config(arg: str | None = None) -> mlc.ConfigDict:
    c = mlc.ConfigDict()
    c.seed = 0
    c.model = model_config(arg or "tiny")
    c.loss = loss_config()

    c.data = mlc.ConfigDict()
    c.data.mixture = ""  # "DIR[:weight],DIR[:weight]" of converted datasets
    c.data.num_frames = 4  # T: frames per clip
    c.data.target_fps = 10.0  # per-source frame stride = round(source_fps / target_fps)
    # The action of a transition that spans `stride` recorded steps: 'reduce' = one action (delta
    # dims summed, absolute dims the last); 'chunk' = the `stride` recorded actions concatenated
    # (stride x A dims, model.action_dim must hold them; DINO-WM / LeWM feed PushT so).
    c.data.stride_actions = "reduce"
    c.data.global_batch_size = 8
    c.data.num_workers = 0  # grain multiprocess workers (0 = in-process)
    c.data.read_threads = 16  # grain threads per process reading and decoding clips
    c.data.prefetch = 2  # device prefetch depth
    c.data.crop_scale = (0.8, 1.0)
    c.data.color_jitter = 0.1
    # Where the training view (crop, resize, jitter) is rendered: 'host' (the loader, in Pillow) or
    # 'device' (the loader decodes only; the accelerator renders it: for hosts whose few cores feed
    # many devices, BENCHMARKS.md §5.3). Evaluation's center crop is always the host's.
    c.data.augment_on = "host"
    # Unreadable records (corrupt chunk, bad JPEG) skipped and logged before the run stops (0 = the first stops it).
    c.data.max_bad_records = 100
    c.data.heldout_fraction = 0.1  # episodes held out for evaluation (by episode hash)

    c.optim = mlc.ConfigDict()
    c.optim.optimizer = "adamw"
    c.optim.lr = 3e-4
    c.optim.weight_decay = 0.05
    c.optim.b1 = 0.9
    c.optim.b2 = 0.95
    c.optim.schedule = "warmup_cosine"  # 'warmup_cosine' | 'wsd' | 'constant'
    c.optim.warmup_steps = 50
    c.optim.decay_fraction = 0.2  # WSD: final fraction of steps spent decaying
    c.optim.decay_shape = "linear"  # WSD decay: 'linear' | '1-sqrt'
    c.optim.end_lr_ratio = 0.0  # final lr as a fraction of the peak (cosine and WSD)
    c.optim.eps = 1e-8
    c.optim.grad_clip = 1.0
    c.optim.grad_accum = 1

    c.mesh = mlc.ConfigDict()
    c.mesh.ici_data = 1
    c.mesh.ici_fsdp = -1
    c.mesh.ici_tensor = 1
    c.mesh.dcn_data = 1
    c.mesh.dcn_fsdp = 1
    c.mesh.dcn_tensor = 1

    c.train = mlc.ConfigDict()
    c.train.num_steps = 1000
    c.train.log_every = 10
    c.train.checkpoint_every = 200
    c.train.max_to_keep = 3
    c.train.keep_period = 0  # keep every N-th step's checkpoint forever (0 = off)
    c.train.eval_every = 0  # held-out eval (wam-eval metrics as eval/* scalars) every N steps (0 = off)
    c.train.eval_max_clips = 0  # clips per periodic eval (0 = the whole held-out split)
    c.train.profile_steps = 0  # capture a profile of this many steps after warm-up (0 = off)
    c.train.export_at_end = True
    # Stop after this many consecutive non-finite steps (each is skipped; checked at log steps).
    c.train.max_nonfinite_steps = 20
    c.train.compilation_cache_dir = ""  # persistent XLA cache: a resumed run skips compiling ("" = off)
    return c
