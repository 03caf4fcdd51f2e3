"""Train-step throughput per preset: step time, examples/s, achieved FLOP/s and MFU.

    python benchmarks/train_step.py --presets tiny,small,S,B --batch tiny=8,small=16,S=8,B=4
    python benchmarks/train_step.py --config configs/pusht_small.py --presets small \\
        --data data/pusht/converted/pusht_test      # the README demo config on real batches

For each preset: the real jitted train step (`wam_jax.training.train_step.build`: loss, grads, AdamW,
EMA target) on one device, compiled ahead of time; `--warmup` steps, then `--reps` timed steps
(median, best, inter-quartile spread, process CPU time). FLOPs per step come from XLA's cost
analysis of the same step with the layer loops unrolled (`wam_jax.training.train_step.step_flops`; a scanned loop is
counted once by XLA). MFU divides the achieved FLOP/s by the device's peak measured in the same
run: a 2048² matmul in float32, and in bfloat16 with float32 accumulation (second row); on
accelerators the datasheet peak (`wam_jax.training.metrics.PEAK_FLOPS`) is reported too. Memory per
device: the compiled step's requirement (XLA's memory analysis) and, on GPU/TPU, the allocator's
peak after the timed steps (`mem_peak_mib`); to find the largest batch, raise `--batch` until
compilation fails for memory.

Batches: with `--data DIR[,DIR]` real batches from converted datasets (`data_pipelines.loader`,
`--prefetch_batches` of them loaded before timing, so the loader is not timed), else synthetic
arrays of the batch schema (`data_pipelines.schema.batch_spec`).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import host  # noqa: E402
import measure  # noqa: E402

DEFAULT_BATCH = {"tiny": 8, "small": 16, "S": 8, "B": 4, "L": 2, "H": 1, "g": 1}


def parse_args(argv: list[str] | None = None):
    p = common.base_parser(__doc__, "train_step")
    p.add_argument("--presets", default="tiny,small,S,B")
    p.add_argument("--batch", default="", help="per-preset global batch, e.g. 'S=8,B=4' "
                   f"(default {DEFAULT_BATCH}; a plain number applies to all)")
    p.add_argument("--config", default="", help="config file with get_config(preset) (default configs/base.py)")
    p.add_argument("--image_size", type=int, default=0, help="0: the config's")
    p.add_argument("--patch_size", type=int, default=0, help="0: the config's")
    p.add_argument("--num_frames", type=int, default=0, help="0: the config's")
    p.add_argument("--dtype", default="", help="compute dtype (float32 | bfloat16); '': the config's")
    p.add_argument("--remat", default="", help="none | full | dots; '': the config's")
    p.add_argument("--scan", default="", choices=["", "on", "off"], help="scanned layers; '': the config's")
    p.add_argument("--scan_unroll", type=int, default=-1,
                   help="model.scan_unroll (layers per scan iteration, 0: all); -1: the config's")
    p.add_argument("--attention", default="", help="xla | cudnn | auto; '': the config's")
    p.add_argument("--matmul_dtype", default=None, help="model.matmul_dtype ('' | bfloat16); default: the config's")
    p.add_argument("--data", default="", help="converted dataset dir(s) for real batches (else synthetic)")
    p.add_argument("--prefetch_batches", type=int, default=4)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--max_seconds", type=float, default=240.0, help="stop timing a preset after this long")
    p.add_argument("--peak_n", type=int, default=2048, help="matmul size of the measured peak")
    p.add_argument("--tag", default="", help="label of this run (goes into the table and JSON name)")
    p.add_argument("--accuracy_steps", type=int, default=0,
                   help="instead of timing: train each preset this many steps with float32 matmuls and "
                        "with --accuracy_matmul_dtype from the same init on the same batches; compare losses")
    p.add_argument("--accuracy_matmul_dtype", default="bfloat16")
    args = p.parse_args(argv)
    if args.quick:
        args.presets = args.presets if args.presets != "tiny,small,S,B" else "tiny"
        args.batch = args.batch or "2"
        args.image_size = args.image_size or 32
        args.warmup, args.reps, args.peak_n = 1, 3, 256
    return args


def batch_sizes(spec: str, presets: list[str]) -> dict[str, int]:
    if spec and "=" not in spec:
        return {p: int(spec) for p in presets}
    out = {p: DEFAULT_BATCH.get(p, 1) for p in presets}
    out.update(common.parse_mapping(spec) if spec else {})
    return out


def load_config(args, preset: str, batch: int) -> Any:
    c = common.load_config(args.config, preset, args)
    c.data.global_batch_size = batch
    if args.scan:
        c.model.scan_layers = args.scan == "on"
    if args.scan_unroll >= 0:
        c.model.scan_unroll = args.scan_unroll
    if args.attention:
        c.model.attention = args.attention
    if args.matmul_dtype is not None:
        c.model.matmul_dtype = args.matmul_dtype
    if args.data:
        c.data.mixture = args.data
        c.data.heldout_fraction = 0.0
    c.mesh.ici_data, c.mesh.ici_fsdp, c.mesh.ici_tensor = 1, 1, 1
    return c


def real_batches(config: Any, n: int) -> list[dict[str, Any]]:
    from data_pipelines import loader

    it = loader.make_iterator(config, seed=0)
    try:
        return [next(it) for _ in range(n)]
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()


def memory_row(compiled: Any) -> dict[str, Any]:
    """Per-device memory of the step: the compiled program's needs (arguments, temporaries, total
    with donated buffers counted once) and, on GPU/TPU, the allocator's peak after the timed steps."""
    from wam_jax.training import metrics

    mib = 1024.0**2
    mem = metrics.compiled_memory(compiled)
    out: dict[str, Any] = {f"mem_{k.removesuffix('_bytes')}_mib": v / mib for k, v in mem.items()}
    live = metrics.device_memory()
    if "memory/peak_gib" in live:
        out["mem_peak_mib"] = live["memory/peak_gib"] * 1024.0
    return out


def bench_preset(args, preset: str, batch: int) -> dict[str, Any]:
    import jax

    from wam_jax import sharding
    from wam_jax.training import train_step as ts

    config = load_config(args, preset, batch)
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
    row: dict[str, Any] = {
        "preset": preset, "batch": batch, "tag": args.tag,
        "image_size": int(config.model.image_size), "patch_size": int(config.model.patch_size),
        "frames": int(config.data.num_frames), "dtype": str(config.model.dtype),
        "remat": str(config.model.remat), "scan": bool(config.model.scan_layers),
        "scan_unroll": int(config.model.get("scan_unroll", 1)),
        "attention": str(config.model.attention),
        "matmul_dtype": str(config.model.get("matmul_dtype", "")) or str(config.model.dtype),
        "batches": "real:" + args.data if args.data else "synthetic",
        "host_env": host.host_env_label(),
    }
    t0 = time.perf_counter()
    built = ts.build(config, mesh)
    lowered = built.lower()
    t1 = time.perf_counter()
    built.compiled = lowered.compile()
    t2 = time.perf_counter()
    row["lower_s"], row["compile_s"] = t1 - t0, t2 - t1
    row["load_compile"] = host.load_average()
    row["flops"] = ts.step_flops(config, mesh)
    n_params = sum(x.size for x in jax.tree.leaves(built.abstract.params))
    row["params_m"] = n_params / 1e6

    state = built.init(config)
    host_batches = (real_batches(config, args.prefetch_batches) if args.data
                    else [common.synthetic_batch(config, batch, seed=i) for i in range(2)])
    batches = [jax.device_put(b, built.batch_shardings) for b in host_batches]
    compiled = built.compiled
    box = {"state": state, "i": 0}

    def step() -> None:
        b = batches[box["i"] % len(batches)]
        box["i"] += 1
        box["state"], out = compiled(box["state"], b)
        out["loss"].block_until_ready()
        box["loss"] = out["loss"]

    if args.max_load > 0:
        row["wait"] = host.wait_for_quiet(args.max_load, args.wait)
    timing = measure.time_fn(step, warmup=args.warmup, reps=args.reps, max_seconds=args.max_seconds)
    row["timing"] = timing.summary()
    row["step_ms"] = 1e3 * timing.median
    row["best_ms"] = 1e3 * timing.best
    row["iqr_pct"] = 100 * timing.spread
    row["cpu_util"] = timing.cpu_per_rep / timing.median  # cores busy on average
    row["examples_per_s"] = batch / timing.median
    row["load"] = timing.load_before[0]
    row["loss"] = float(box["loss"])
    row.update(memory_row(compiled))
    box.clear()  # free the state before the next preset compiles
    batches.clear()
    return row


COLUMNS: list[common.Column] = [
    ("preset", "preset", ""), ("batch", "batch", "d"), ("dtype", "dtype", ""),
    ("matmul_dtype", "matmuls", ""), ("remat", "remat", ""), ("host_env", "host env", ""), ("scan", "scan", ""), ("scan_unroll", "unroll", "d"), ("params_m", "params (M)", ".1f"),
    ("gflop_step", "GFLOP/step", ".1f"), ("compile_s", "compile (s)", ".1f"),
    ("step_ms", "step (ms, median)", ".1f"), ("iqr_pct", "IQR %", ".0f"), ("best_ms", "best (ms)", ".1f"),
    ("examples_per_s", "examples/s", ".2f"), ("gflops", "GFLOP/s", ".1f"), ("mfu", "MFU", ".1%"),
    ("mfu_bf16peak", "MFU vs bf16 peak", ".1%"), ("step_core_ms", "core-s/step (ms)", ".0f"),
    ("gflops_cpu", "GFLOP/core-s", ".1f"), ("mfu_cpu", "MFU (core-s)", ".1%"),
    ("cpu_util", "cores busy", ".2f"), ("mem_total_mib", "compiled memory (MiB)", ".0f"),
    ("mem_peak_mib", "allocator peak (MiB)", ".0f"), ("load", "load 1m", ".2f"),
]
PEAK_COLUMNS: list[common.Column] = [
    ("dtype", "matmul dtype (f32 accumulation)", ""), ("n", "n", "d"), ("best_gflops", "best GFLOP/s", ".1f"),
    ("median_gflops", "median GFLOP/s", ".1f"), ("median_gflops_cpu", "median GFLOP/core-s", ".1f"),
    ("load", "load 1m", ".2f"),
]


def add_rates(row: dict[str, Any], peaks: dict[str, dict[str, Any]]) -> None:
    """Achieved FLOP/s and MFU of a timed row against the measured (and datasheet) peaks."""
    if not row.get("flops"):
        return
    med, best = row["timing"]["median_s"], row["timing"]["best_s"]
    dtype_peak = peaks["bfloat16" if "bfloat16" in row["dtype"] else "float32"]["best_flops"]
    row["gflop_step"] = row["flops"] / 1e9
    row["gflops"] = row["flops"] / med / 1e9
    row["gflops_best"] = row["flops"] / best / 1e9
    core = row["timing"]["core_s_per_rep"]
    # CPU time is sampled by the kernel with ms granularity: the median of the ≈100 ms matmuls is
    # the stable denominator for core-second rates (their best is biased upward).
    dtype_peak_cpu = peaks["bfloat16" if "bfloat16" in row["dtype"] else "float32"]["median_flops_cpu"]
    row["gflops_cpu"] = row["flops"] / core / 1e9
    row["mfu_cpu"] = row["flops"] / core / dtype_peak_cpu
    row["mfu_cpu_f32peak"] = row["flops"] / core / peaks["float32"]["median_flops_cpu"]
    row["step_core_ms"] = 1e3 * core
    row["peak_gflops"] = dtype_peak / 1e9
    row["mfu"] = row["flops"] / med / dtype_peak
    row["mfu_best"] = row["flops"] / best / dtype_peak
    row["mfu_f32peak"] = row["flops"] / med / peaks["float32"]["best_flops"]
    row["mfu_bf16peak"] = row["flops"] / med / peaks["bfloat16"]["best_flops"]
    sheet, src = measure.datasheet_peak(row["dtype"])
    if sheet:
        row["mfu_datasheet"] = row["flops"] / med / sheet
        row["datasheet"] = src


def _best_peak(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(max(a, b, key=lambda r: r["best_flops"]))
    out["median_flops_cpu"] = max(a["median_flops_cpu"], b["median_flops_cpu"])
    return out


def measure_peaks(args) -> dict[str, dict[str, Any]]:
    reps = 3 if args.quick else 20
    peaks = {}
    for dt in ("float32", "bfloat16"):
        if args.max_load > 0:
            host.wait_for_quiet(args.max_load, args.wait)
        r = measure.matmul_peak(dt, n=args.peak_n, reps=reps)
        r["best_gflops"], r["median_gflops"] = r["best_flops"] / 1e9, r["median_flops"] / 1e9
        r["median_gflops_cpu"] = r["median_flops_cpu"] / 1e9
        r["load"] = r["timing"]["load_before"][0]
        peaks[dt] = r
    return peaks


def accuracy_run(args, preset: str, batch: int) -> dict[str, Any]:
    """Loss curves of `args.accuracy_steps` steps with float32 and with mixed-precision matmuls."""
    import jax
    import numpy as np

    from wam_jax import sharding
    from wam_jax.training import train_step as ts

    curves, finals = {}, {}
    host_batches = None
    for mm in ("", args.accuracy_matmul_dtype):
        config = load_config(args, preset, batch)
        config.model.matmul_dtype = mm
        mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
        built = ts.build(config, mesh)
        built.compile()
        if host_batches is None:
            n = min(args.accuracy_steps, 16)
            host_batches = (real_batches(config, n) if args.data
                            else [common.synthetic_batch(config, batch, seed=i) for i in range(n)])
        batches = [jax.device_put(b, built.batch_shardings) for b in host_batches]
        state = built.init(config)
        losses = []
        for i in range(args.accuracy_steps):
            state, out = built.compiled(state, batches[i % len(batches)])
            losses.append(float(out["loss"]))
        curves[mm or "float32"] = losses
        finals[mm or "float32"] = jax.tree.map(np.asarray, state.params)
    a, b = (np.asarray(v) for v in curves.values())
    pa = np.concatenate([x.ravel() for x in jax.tree.leaves(finals["float32"])])
    pb = np.concatenate([x.ravel() for x in jax.tree.leaves(finals[args.accuracy_matmul_dtype])])
    return {
        "preset": preset, "batch": batch, "steps": args.accuracy_steps, "matmul_dtype": args.accuracy_matmul_dtype,
        "batches": "real:" + args.data if args.data else "synthetic (cycled)",
        "loss_first_f32": float(a[0]), "loss_first_mixed": float(b[0]),
        "loss_last_f32": float(a[-1]), "loss_last_mixed": float(b[-1]),
        "max_rel_loss_diff": float(np.max(np.abs(a - b) / np.abs(a))),
        "mean_last10_f32": float(a[-10:].mean()), "mean_last10_mixed": float(b[-10:].mean()),
        "param_rel_diff": float(np.linalg.norm(pa - pb) / np.linalg.norm(pa)),
        "curves": curves,
    }


ACCURACY_COLUMNS: list[common.Column] = [
    ("preset", "preset", ""), ("batch", "batch", "d"), ("steps", "steps", "d"), ("batches", "batches", ""),
    ("loss_first_f32", "loss step 0 (f32)", ".4f"), ("loss_first_mixed", "loss step 0 (bf16 matmuls)", ".4f"),
    ("mean_last10_f32", "mean loss last 10 (f32)", ".4f"), ("mean_last10_mixed", "mean loss last 10 (bf16)", ".4f"),
    ("max_rel_loss_diff", "max rel. loss diff", ".2%"), ("param_rel_diff", "param rel. diff at end", ".2e"),
]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if argv is None:
        host.apply_host_tuning(args.host_tuning)
    host.setup_host()
    import jax

    jax.devices()  # initialise the backend before recording the environment
    if args.accuracy_steps:
        return accuracy_main(args)
    presets = common.parse_list(args.presets)
    sizes = batch_sizes(args.batch, presets)
    env = host.environment()
    peaks = measure_peaks(args)
    print(f"## Measured matmul peak ({env['devices']}, {env['cpu']})\n")
    print(common.format_table(list(peaks.values()), PEAK_COLUMNS), "\n", flush=True)
    rows = []
    for preset in presets:
        row = bench_preset(args, preset, sizes[preset])
        add_rates(row, peaks)
        rows.append(row)
        print(f"{preset}: {row['step_ms']:.1f} ms/step, {row.get('gflops', 0):.1f} GFLOP/s, "
              f"MFU {row.get('mfu', 0):.1%} (load {row['load']})", flush=True)
    # Peaks again after the run; the denominator is the better of the two measurements, so a
    # peak taken while the machine was busy cannot inflate the MFU.
    peaks_after = measure_peaks(args)
    best_peaks = {dt: _best_peak(peaks[dt], peaks_after[dt]) for dt in peaks}
    for row in rows:
        add_rates(row, best_peaks)
    title = f"## Train step{' (' + args.tag + ')' if args.tag else ''}"
    print(f"\n{title}: {env['devices']}, {env['cpu']}, jax {env['versions']['jax']}\n")
    print(common.format_table(rows, COLUMNS))
    print("\nmatmul peak after the run:\n")
    print(common.format_table(list(peaks_after.values()), PEAK_COLUMNS))
    result = {"benchmark": "train_step", "environment": env, "peaks": peaks, "peaks_after": peaks_after,
              "rows": rows, "args": vars(args)}
    common.save_result(args, "train_step", result)
    return result


def accuracy_main(args) -> dict[str, Any]:
    presets = common.parse_list(args.presets)
    sizes = batch_sizes(args.batch, presets)
    env = host.environment()
    rows = [accuracy_run(args, p, sizes[p]) for p in presets]
    print(f"## float32 vs {args.accuracy_matmul_dtype} matmuls (f32 accumulation), same init and batches\n")
    print(common.format_table(rows, ACCURACY_COLUMNS))
    result = {"benchmark": "train_step_accuracy", "environment": env, "rows": rows, "args": vars(args)}
    common.save_result(args, "train_step_accuracy", result)
    return result


if __name__ == "__main__":
    main()
