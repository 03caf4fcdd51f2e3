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
import host  # noqa: E402
import measure  # noqa: E402
from peer_steps import SIZES, build_jax, build_torch, geometry, make_masks, parse_variants  # noqa: E402


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


# ---------------------------------------------------------------------------------------------
# One process per framework, driven in interleaved rounds
# ---------------------------------------------------------------------------------------------


def timed(fn, n: int) -> list[tuple[float, float]]:
    """(wall seconds, core-seconds) of `n` calls; core-seconds = process CPU time / cores."""
    out = []
    for _ in range(n):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0, (time.process_time() - c0) / host.num_cores()))
    return out


def _build(kind: str, size: str, overrides: dict[str, Any], args, ctx, tgt, video) -> dict[str, Any]:
    if kind == "torch":
        import torch

        torch.set_num_threads(args.threads or host.num_cores())
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
    host.setup_host()
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
        host.wait_for_quiet(args.max_load, args.wait)
    load_before = host.load_average()
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
    load_after = host.load_average()
    t_wall = statistics.median(x[0] for x in tt)
    t_core = statistics.median(x[1] for x in tt)
    # The matmul peak of the same run (in this process while the workers wait), for the MFU target.
    peaks = {dt: measure.matmul_peak(dt, reps=3 if args.quick else 10) for dt in ("float32", "bfloat16")}
    rows = []
    th = th.info  # from here on: what each runner's build returned (flops, params, ...)
    for name, runner in jaxs.items():
        jx = runner.info
        j_wall = statistics.median(x[0] for x in jt[name])
        j_core = statistics.median(x[1] for x in jt[name])
        flops = jx["flops"]
        rows.append({
            "size": size, "variant": name, "jax_config": jx["config"], "host_env": host.host_env_label(),
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
        host.apply_host_tuning(args.host_tuning)
    host.setup_host()
    import jax

    jax.devices()
    env = host.environment()
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
