"""The train step `torch_peer.py` times, built twice from the same sizes: wam_jax's (`build_jax`,
through the library's train step builder) and `transformers`' V-JEPA 2 (`build_torch`).

Both take the same fixed context/target token split (`make_masks`) and the same uint8 video;
each returns a `step()` closure plus what the tables report (FLOPs, parameters, compile time).
Framework imports stay inside the builders: a worker process sets up its host before JAX loads.
"""

from __future__ import annotations

import time
from typing import Any

import common

# name: (encoder width, depth, heads, predictor width, depth, heads, batch)
SIZES: dict[str, tuple[int, int, int, int, int, int, int]] = {
    "S": (384, 12, 6, 384, 6, 6, 8),
    "B": (768, 12, 12, 384, 12, 6, 4),
    "tiny": (64, 2, 2, 64, 2, 2, 2),  # --quick
}
IMAGE, PATCH, TUBELET, FRAMES, MLP_RATIO = 128, 16, 2, 8, 4.0
LR, BETAS, EPS, WD, CLIP, EMA = 1e-4, (0.9, 0.95), 1e-8, 0.05, 1.0, 0.998


def geometry(frames: int = FRAMES) -> tuple[int, int, int]:
    g = IMAGE // PATCH
    return frames // TUBELET, g, g


def make_masks(batch: int, num_tokens: int, mask_ratio: float, seed: int = 0):
    """(context idx [B, K], target idx [B, M]) int32, sorted, a random split per example."""
    import numpy as np

    m = int(round(num_tokens * mask_ratio))
    rng = np.random.default_rng(seed)
    ctx, tgt = [], []
    for _ in range(batch):
        perm = rng.permutation(num_tokens)
        tgt.append(np.sort(perm[:m]))
        ctx.append(np.sort(perm[m:]))
    return np.stack(ctx).astype(np.int32), np.stack(tgt).astype(np.int32)


# ---------------------------------------------------------------------------------------------
# JAX side
# ---------------------------------------------------------------------------------------------


def jax_config(size: str) -> Any:
    from configs import base

    ew, ed, eh, pw, pd, ph, batch = SIZES[size]
    c = base.get_config("tiny")
    m = c.model
    m.image_size, m.patch_size, m.tubelet, m.pos_emb = IMAGE, PATCH, TUBELET, "rope"
    m.encoder.width, m.encoder.depth, m.encoder.heads, m.encoder.mlp_ratio = ew, ed, eh, MLP_RATIO
    m.predictor.width, m.predictor.depth, m.predictor.heads, m.predictor.mlp_ratio = pw, pd, ph, MLP_RATIO
    m.dtype = m.param_dtype = "float32"
    m.target = "ema"
    m.ema.start = m.ema.end = EMA
    c.data.num_frames = FRAMES
    c.data.global_batch_size = batch
    o = c.optim
    o.optimizer, o.lr, o.b1, o.b2, o.eps, o.weight_decay = "adamw", LR, BETAS[0], BETAS[1], EPS, WD
    o.schedule, o.warmup_steps, o.grad_clip, o.grad_accum = "constant", 0, CLIP, 1
    c.mesh.ici_data, c.mesh.ici_fsdp, c.mesh.ici_tensor = 1, 1, 1
    return c


def peer_model_factory(model_cfg: Any, rngs: Any) -> Any:
    """V-JEPA 2 encoder + masked-token predictor from wam_jax's layers."""
    from flax import nnx

    from wam_jax.models.encoder import VideoEncoder
    from wam_jax.models.predictor import MaskedPredictor

    class VJepaPeer(nnx.Module):
        def __init__(self, cfg: Any, rngs: nnx.Rngs):
            self.encoder = VideoEncoder(cfg, rngs=rngs)
            p = cfg.predictor
            self.predictor = MaskedPredictor(
                latent_dim=int(cfg.encoder.width), width=int(p.width), depth=int(p.depth),
                heads=int(p.heads), mlp_ratio=float(p.mlp_ratio), rngs=rngs,
                scan=bool(cfg.scan_layers), scan_unroll=int(cfg.get("scan_unroll", 1)),
                remat=str(cfg.remat), dtype=jax_dtype(cfg.dtype),
                param_dtype=jax_dtype(cfg.param_dtype), attention_impl=str(cfg.attention),
            )

        def make_target_encoder(self) -> nnx.Module:
            return nnx.clone(self.encoder, arrays=True)

    from wam_jax.models.ops import use_matmul_dtype

    return use_matmul_dtype(VJepaPeer(model_cfg, rngs), model_cfg.get("matmul_dtype", ""))


def jax_dtype(name: str) -> Any:
    import jax.numpy as jnp

    return jnp.dtype(name)


def peer_loss_fn(context_idx, target_idx, grid):
    """The V-JEPA L1 loss with the fixed context/target split (constants of the program)."""
    import jax
    import jax.numpy as jnp

    from wam_jax.models.encoder import normalize_video

    ctx_np, tgt_np = context_idx, target_idx

    def loss_fn(model, target, batch, key, loss_cfg, step):
        del target, key, loss_cfg, step
        ctx, tgt = jnp.asarray(ctx_np), jnp.asarray(tgt_np)
        z = model.encoder(normalize_video(batch["video"]))  # [B, L, D], all tokens
        context = jnp.take_along_axis(z, ctx[..., None], axis=1)
        pred = model.predictor(context, ctx, tgt, grid)
        targets = jax.lax.stop_gradient(jnp.take_along_axis(z, tgt[..., None], axis=1))
        loss = jnp.mean(jnp.abs(pred - targets))
        return loss, {}

    return loss_fn


VARIANT_KEYS = {"matmul_dtype": str, "remat": str, "attention": str, "scan_unroll": int,
                "scan_layers": lambda v: v.lower() in ("1", "true", "on")}


def parse_variants(spec: str) -> list[tuple[str, dict[str, Any]]]:
    """'f32=;fast=matmul_dtype:bfloat16,remat:dots' -> [('f32', {}), ('fast', {...})]."""
    out = []
    for part in spec.split(";"):
        part = part.strip()
        if not part:
            continue
        name, _, body = part.partition("=")
        overrides: dict[str, Any] = {}
        for kv in common.parse_list(body):
            k, _, v = kv.partition(":")
            if k not in VARIANT_KEYS:
                raise ValueError(f"--variants: unknown key {k!r} in {part!r}; expected {sorted(VARIANT_KEYS)}")
            overrides[k] = VARIANT_KEYS[k](v)
        out.append((name.strip(), overrides))
    if not out:
        raise ValueError("--variants: no variant given")
    return out


def build_jax(size: str, overrides: dict[str, Any], ctx, tgt) -> dict[str, Any]:
    import jax

    from wam_jax import sharding
    from wam_jax.training import train_step as ts

    config = jax_config(size)
    for k, v in overrides.items():
        config.model[k] = v
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
    kw = dict(model_factory=peer_model_factory, loss_fn=peer_loss_fn(ctx, tgt, geometry()))
    t0 = time.perf_counter()
    built = ts.build(config, mesh, **kw)
    built.compile()
    compile_s = time.perf_counter() - t0
    flops = ts.step_flops(config, mesh, **kw)
    state = built.init(config, model_factory=peer_model_factory)
    batch = common.synthetic_batch(config, seed=1)
    batch = jax.device_put(batch, built.batch_shardings)
    box = {"state": state}
    compiled = built.compiled

    def step() -> float:
        box["state"], out = compiled(box["state"], batch)
        return float(out["loss"])

    n_params = sum(x.size for x in jax.tree.leaves(built.abstract.params))
    return {"step": step, "flops": flops, "compile_s": compile_s, "params": int(n_params),
            "video": batch["video"], "config": {k: config.model[k] for k in VARIANT_KEYS}}


# ---------------------------------------------------------------------------------------------
# PyTorch side
# ---------------------------------------------------------------------------------------------


def build_torch(size: str, args, ctx, tgt, video_uint8) -> dict[str, Any]:
    import numpy as np
    import torch
    import transformers
    from torch.utils.flop_counter import FlopCounterMode

    ew, ed, eh, pw, pd, ph, batch = SIZES[size]
    config = transformers.VJEPA2Config(
        hidden_size=ew, num_hidden_layers=ed, num_attention_heads=eh, mlp_ratio=MLP_RATIO,
        pred_hidden_size=pw, pred_num_hidden_layers=pd, pred_num_attention_heads=ph, pred_mlp_ratio=MLP_RATIO,
        patch_size=PATCH, tubelet_size=TUBELET, crop_size=IMAGE, frames_per_clip=FRAMES,
        attn_implementation=args.attention_impl,
    )
    torch.manual_seed(0)
    model = transformers.VJEPA2Model(config).train()
    params = [p for p in model.parameters() if p.requires_grad]
    target = [p.detach().clone() for p in model.encoder.parameters()]
    online = list(model.encoder.parameters())
    opt = torch.optim.AdamW(params, lr=LR, betas=BETAS, eps=EPS, weight_decay=WD)
    mean = np.asarray([0.485, 0.456, 0.406], np.float32)
    std = np.asarray([0.229, 0.224, 0.225], np.float32)
    video = (np.asarray(video_uint8, np.float32) / 255.0 - mean) / std  # [B, T, H, W, C]
    pixels = torch.from_numpy(np.ascontiguousarray(video.transpose(0, 1, 4, 2, 3)))  # [B, T, C, H, W]
    cm, tm = [torch.from_numpy(ctx).long()], [torch.from_numpy(tgt).long()]

    def loss_and_backward() -> torch.Tensor:
        out = model(pixel_values_videos=pixels, context_mask=cm, target_mask=tm)
        pred = out.predictor_output.last_hidden_state
        loss = (pred - out.predictor_output.target_hidden_state.detach()).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        return loss

    def step() -> float:
        loss = loss_and_backward()
        torch.nn.utils.clip_grad_norm_(params, CLIP)
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(target, [p.detach() for p in online], 1.0 - EMA)
        return float(loss.detach())

    counter = FlopCounterMode(display=False)
    with counter:
        loss_and_backward()
    return {"step": step, "flops_counted": float(counter.get_total_flops()),
            "params": sum(p.numel() for p in params), "threads": torch.get_num_threads()}
