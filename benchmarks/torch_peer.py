"""wam_jax against the same V-JEPA 2 model in PyTorch (`transformers.VJEPA2Model`), same run, same CPU.

    python benchmarks/torch_peer.py --sizes S,B

The step, identical on both sides (float32):

    z    = encoder(video)                          # every token: T/2 * (H/16)^2 = 256
    pred = predictor(z[context], context, target)  # context tokens + mask tokens at the targets
    loss = mean |pred - stop_grad(z[target])|      # L1, as V-JEPA
    backward; clip grad norm 1.0; AdamW; EMA of the encoder into a target copy

This is `transformers`' token layout: its encoder runs over all tokens and the mask applies
inside the predictor (`context_mask` / `target_mask`), with the targets read from the same
encoder output (`predictor_output.target_hidden_state`). The JAX side is built from wam_jax's
`VideoEncoder` and `MaskedPredictor` (a `BlockStack` predictor) and runs through the real train
step builder (`wam_jax.training.train_step.build`: donation, pinned shardings, clip + AdamW, EMA).
The mask is the same for both: per example a random `--mask_ratio` of the tokens are targets,
the rest context.

Sizes (patch 16, tubelet 2, 128x128, 8 frames, MLP ratio 4, predictor heads 6):
  S: encoder 384 x 12 layers, 6 heads; predictor 384 x 6;  batch 8
  B: encoder 768 x 12 layers, 12 heads; predictor 384 x 12; batch 4

JAX variants (`--variants`): the library defaults (float32, no remat) and the tuned CPU setting
(`model.matmul_dtype='bfloat16'`: bf16 operands with f32 accumulation for every projection and
MLP matmul, `model.remat='dots'`), each against the same torch model.

Timing: `--rounds` rounds, each `--steps` torch steps then `--steps` steps of every JAX variant,
so all see the same machine load. Each framework (and each JAX variant) runs in its own worker
process, driven in turn by this one, as a user would run it (`--in_process`: everything in this
process, as earlier tables were measured). Each turn starts with `--settle` untimed steps
(default 1): on the VM these numbers come from, a process that sat idle for a few seconds ran
its next float32 JAX step up to 2x slower, whatever ran meanwhile (likely freed memory handed
back to the host and faulted in again; BENCHMARKS.md §2.1). A training loop never idles between
steps, so that first step measures the interleaving, not the framework. Wall time and
core-seconds (process CPU time / cores, which stays put on a loaded machine) are both reported;
ratios from the medians and as the median of per-round core-second ratios.
FLOP/s use one FLOP count for both (XLA's cost analysis of the unrolled JAX step; the torch
`FlopCounterMode` count of matmuls/attention is listed as a cross-check).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

# name: (encoder width, depth, heads, predictor width, depth, heads, batch)
SIZES: dict[str, tuple[int, int, int, int, int, int, int]] = {
    "S": (384, 12, 6, 384, 6, 6, 8),
    "B": (768, 12, 12, 384, 12, 6, 4),
    "tiny": (64, 2, 2, 64, 2, 2, 2),  # --quick
}
IMAGE, PATCH, TUBELET, FRAMES, MLP_RATIO = 128, 16, 2, 8, 4.0
LR, BETAS, EPS, WD, CLIP, EMA = 1e-4, (0.9, 0.95), 1e-8, 0.05, 1.0, 0.998


def parse_args(argv: list[str] | None = None):
    p = common.base_parser(__doc__, "torch_peer")
    p.add_argument("--sizes", default="S,B")
    p.add_argument("--mask_ratio", type=float, default=0.75, help="fraction of tokens that are targets")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=3, help="steps per framework per round")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: all cores)")
    p.add_argument("--variants", default="f32=;bf16-matmuls=matmul_dtype:bfloat16;"
                   "bf16-matmuls+dots=matmul_dtype:bfloat16,remat:dots",
                   help="JAX variants, NAME=KEY:VALUE,... separated by ';' (keys: matmul_dtype, remat, "
                        "scan_layers, scan_unroll, attention); each is timed against the same torch model")
    p.add_argument("--attention_impl", default="sdpa", help="transformers attention (sdpa | eager)")
    p.add_argument("--settle", type=int, default=1,
                   help="untimed steps of each framework at the start of its turn in every round")
    p.add_argument("--in_process", action="store_true",
                   help="run torch and every JAX variant in this one process (default: one worker each)")
    p.add_argument("--tag", default="")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes = "tiny" if args.sizes == "S,B" else args.sizes
        args.rounds, args.steps, args.warmup = 2, 1, 1
        if args.variants == p.get_default("variants"):
            args.variants = "bf16-matmuls+dots=matmul_dtype:bfloat16,remat:dots"
    return args


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

    from wam_jax.models import layers

    return layers.use_matmul_dtype(VJepaPeer(model_cfg, rngs), model_cfg.get("matmul_dtype", ""))


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


# ---------------------------------------------------------------------------------------------


def timed(fn, n: int) -> list[tuple[float, float]]:
    """(wall seconds, core-seconds) of `n` calls; core-seconds = process CPU time / cores."""
    out = []
    for _ in range(n):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0, (time.process_time() - c0) / common.num_cores()))
    return out


def _build(kind: str, size: str, overrides: dict[str, Any], args, ctx, tgt, video) -> dict[str, Any]:
    if kind == "torch":
        import torch

        torch.set_num_threads(args.threads or common.num_cores())
        return build_torch(size, args, ctx, tgt, video)
    return build_jax(size, overrides, ctx, tgt)


class _Local:
    """A framework's step in this process (`--in_process`, and inside each worker)."""

    def __init__(self, kind: str, size: str, overrides: dict[str, Any], args, ctx, tgt, video):
        self.info = _build(kind, size, overrides, args, ctx, tgt, video)
        self._step = self.info.pop("step")

    def step_n(self, n: int) -> list[tuple[float, float]]:
        return timed(self._step, n)

    def close(self) -> None:
        pass


def _worker(conn, kind: str, size: str, overrides: dict[str, Any], args, ctx, tgt, video) -> None:
    """One framework in its own process: builds its step, then runs `("run", n)` requests
    (answering with `timed` samples of this process alone) until `("stop",)`."""
    common.setup_host()
    try:
        local = _Local(kind, size, overrides, args, ctx, tgt, video)
        if "video" in local.info:
            import numpy as np

            local.info["video"] = np.asarray(local.info["video"])
        conn.send(("ok", local.info))
    except BaseException as e:  # report, do not hang the parent
        import traceback

        conn.send(("error", f"{kind} {size} {overrides}: {e!r}\n{traceback.format_exc()}"))
        return
    while True:
        msg = conn.recv()
        if msg[0] == "stop":
            return
        conn.send(local.step_n(msg[1]))


class _Remote:
    """A framework's step in a worker process; `step_n(n)` returns its `timed` samples."""

    def __init__(self, ctx_mp, kind: str, size: str, overrides: dict[str, Any], args, ctx, tgt, video):
        self.conn, child = ctx_mp.Pipe()
        self.proc = ctx_mp.Process(target=_worker, args=(child, kind, size, overrides, args, ctx, tgt, video),
                                   daemon=True)
        self.proc.start()
        status, self.info = self.conn.recv()
        if status != "ok":
            self.close()
            raise RuntimeError(f"benchmark worker failed: {self.info}")

    def step_n(self, n: int) -> list[tuple[float, float]]:
        self.conn.send(("run", n))
        return self.conn.recv()

    def close(self) -> None:
        if self.proc.is_alive():
            try:
                self.conn.send(("stop",))
            except (BrokenPipeError, OSError):
                pass
            self.proc.join(timeout=30)
        if self.proc.is_alive():
            self.proc.kill()


def bench_size(size: str, args) -> list[dict[str, Any]]:
    """Every JAX variant and the torch model on one size, timed in interleaved rounds."""
    import multiprocessing

    t, g1, g2 = geometry()
    num_tokens = t * g1 * g2
    batch = SIZES[size][-1]
    ctx, tgt = make_masks(batch, num_tokens, args.mask_ratio)
    variants = parse_variants(args.variants)
    ctx_mp = multiprocessing.get_context("spawn")

    def make(kind: str, overrides: dict[str, Any], video=None):
        if args.in_process:
            return _Local(kind, size, overrides, args, ctx, tgt, video)
        return _Remote(ctx_mp, kind, size, overrides, args, ctx, tgt, video)

    runners: list = []
    try:
        jaxs = {}
        for name, ov in variants:
            jaxs[name] = make("jax", ov)
            runners.append(jaxs[name])
        th = make("torch", {}, next(iter(jaxs.values())).info["video"])
        runners.append(th)
        return _bench_rounds(size, args, batch, num_tokens, ctx, tgt, jaxs, th)
    finally:
        for r in runners:
            r.close()


def _bench_rounds(size, args, batch, num_tokens, ctx, tgt, jaxs, th) -> list[dict[str, Any]]:
    for _ in range(args.warmup):
        for jx in jaxs.values():
            jx.step_n(1)
        th.step_n(1)
    if args.max_load > 0:
        common.wait_for_quiet(args.max_load, args.wait)
    load_before = common.load_average()
    jt: dict[str, list] = {name: [] for name in jaxs}
    tt: list = []
    ratios: dict[str, list] = {name: [] for name in jaxs}
    for _ in range(args.rounds):
        th.step_n(args.settle)
        b = th.step_n(args.steps)
        tt += b
        for name, jx in jaxs.items():
            jx.step_n(args.settle)
            a = jx.step_n(args.steps)
            jt[name] += a
            ratios[name].append(statistics.median(x[1] for x in b) / statistics.median(x[1] for x in a))
    load_after = common.load_average()
    t_wall = statistics.median(x[0] for x in tt)
    t_core = statistics.median(x[1] for x in tt)
    # The matmul peak of the same run (in this process while the workers wait), for the MFU target.
    peaks = {dt: common.matmul_peak(dt, reps=3 if args.quick else 10) for dt in ("float32", "bfloat16")}
    rows = []
    th = th.info  # from here on: what each runner's build returned (flops, params, ...)
    for name, runner in jaxs.items():
        jx = runner.info
        j_wall = statistics.median(x[0] for x in jt[name])
        j_core = statistics.median(x[1] for x in jt[name])
        flops = jx["flops"]
        rows.append({
            "size": size, "variant": name, "jax_config": jx["config"], "host_env": common.host_env_label(),
            "processes": "one" if args.in_process else "per framework", "settle_steps": args.settle,
            "batch": batch, "tokens": num_tokens,
            "context": int(ctx.shape[1]), "targets": int(tgt.shape[1]),
            "encoder": SIZES[size][:3], "predictor": SIZES[size][3:6],
            "params_jax": jx["params"], "params_torch": th["params"], "torch_threads": th["threads"],
            "jax_compile_s": jx["compile_s"], "flops": flops, "gflop_step": flops / 1e9 if flops else None,
            "torch_flops_counted": th["flops_counted"], "torch_gflop_counted": th["flops_counted"] / 1e9,
            "jax_ms": 1e3 * j_wall, "torch_ms": 1e3 * t_wall,
            "jax_core_ms": 1e3 * j_core, "torch_core_ms": 1e3 * t_core,
            "jax_gflops": flops / j_wall / 1e9 if flops else None,
            "torch_gflops": flops / t_wall / 1e9 if flops else None,
            "jax_gflops_core": flops / j_core / 1e9 if flops else None,
            "torch_gflops_core": flops / t_core / 1e9 if flops else None,
            "torch_gflops_counted_core": th["flops_counted"] / t_core / 1e9,
            "speedup": t_wall / j_wall, "speedup_core": t_core / j_core,
            "f32_peak_gflops_core": peaks["float32"]["median_flops_cpu"] / 1e9,
            "bf16_peak_gflops_core": peaks["bfloat16"]["median_flops_cpu"] / 1e9,
            "jax_f32_peak_frac_core": flops / j_core / peaks["float32"]["median_flops_cpu"] if flops else None,
            "torch_f32_peak_frac_core": flops / t_core / peaks["float32"]["median_flops_cpu"] if flops else None,
            "speedup_paired": statistics.median(ratios[name]),
            "jax_samples": jt[name], "torch_samples": tt, "round_ratios": ratios[name],
            "load_before": load_before, "load_after": load_after, "load": load_before[0],
        })
    return rows


COLUMNS: list[common.Column] = [
    ("size", "size", ""), ("variant", "wam_jax variant", ""), ("host_env", "host env", ""),
    ("processes", "processes", ""), ("batch", "batch", "d"),
    ("gflop_step", "GFLOP/step (XLA)", ".1f"), ("torch_gflop_counted", "GFLOP/step (torch counter)", ".1f"),
    ("jax_ms", "wam_jax wall (ms)", ".0f"), ("torch_ms", "torch wall (ms)", ".0f"),
    ("jax_core_ms", "wam_jax core-s (ms)", ".0f"), ("torch_core_ms", "torch core-s (ms)", ".0f"),
    ("jax_gflops_core", "wam_jax GFLOP/core-s", ".1f"), ("torch_gflops_core", "torch GFLOP/core-s", ".1f"),
    ("speedup", "torch/wam_jax (wall)", ".2f"), ("speedup_core", "torch/wam_jax (core-s)", ".2f"),
    ("speedup_paired", "per-round ratio (median, core-s)", ".2f"),
    ("jax_f32_peak_frac_core", "wam_jax ÷ f32 matmul (core-s)", ".1%"),
    ("torch_f32_peak_frac_core", "torch ÷ f32 matmul (core-s)", ".1%"), ("load", "load 1m", ".2f"),
]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if argv is None:
        common.apply_host_tuning(args.host_tuning)
    common.setup_host()
    import jax

    jax.devices()
    env = common.environment()
    rows = []
    for size in common.parse_list(args.sizes):
        if size not in SIZES:
            raise ValueError(f"--sizes: unknown size {size!r}; expected some of {sorted(SIZES)}")
        for r in bench_size(size, args):
            rows.append(r)
            print(f"{size} {r['variant']}: wam_jax {r['jax_core_ms']:.0f} core-ms, torch {r['torch_core_ms']:.0f} "
                  f"core-ms, ratio {r['speedup_core']:.2f} (wall {r['speedup']:.2f}, load {r['load']})", flush=True)
    print(f"\n## wam_jax vs transformers VJEPA2Model ({env['cpu']}, jax {env['versions']['jax']}, "
          f"torch {env['versions']['torch']}, transformers {env['versions']['transformers']})\n")
    print(common.format_table(rows, COLUMNS))
    result = {"benchmark": "torch_peer", "environment": env, "rows": rows, "args": vars(args)}
    common.save_result(args, "torch_peer", result)
    return result


if __name__ == "__main__":
    main()
