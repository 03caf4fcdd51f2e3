"""Per-device memory of the train step per preset and mesh, from AOT compilation (no allocation).

    python benchmarks/memory_scaling.py --presets tiny,small,S,B,L,H,g --devices 1,2,4,8

Each (preset, N devices, mode) runs in its own subprocess with N simulated CPU devices
(`--xla_force_host_platform_device_count=N`, which must be set before JAX starts). The real
train step (`wam_jax.training.train_step.build`) is lowered and compiled for the abstract state
(ShapeDtypeStructs with shardings): nothing is allocated, so L / H / g compile on a laptop.

Reported per device:
- parameter, optimizer and target-encoder bytes, from the state's shardings (exactly what a run
  allocates; `shard_shape` of every leaf);
- arguments, outputs (aliased with the donated state), temporaries and generated code, from the
  compiled program's `memory_analysis()` (`wam_jax.training.metrics.compiled_memory`).

Modes: `fsdp` (mesh fsdp=N: parameters and optimizer sharded, batch split over N) and `data`
(mesh data=N: parameters replicated). The scaling table divides the per-device parameter +
optimizer bytes at N by the 1-device bytes / N: 1.00 is perfect 1/N scaling under FSDP; under
`data` it is N (replication), listed as the reference.

The global batch is fixed (`--batch`, default 8, divisible by every N), so temporaries (mostly
activations) fall with N too (strong scaling).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import host  # noqa: E402

GIB = 1024**3
MIB = 1024**2


def parse_args(argv: list[str] | None = None):
    p = common.base_parser(__doc__, "memory_scaling")
    p.add_argument("--presets", default="tiny,small,S,B,L,H,g")
    p.add_argument("--devices", default="1,2,4,8")
    p.add_argument("--modes", default="fsdp,data")
    p.add_argument("--data_devices", default="", help="device counts for mode=data (default: --devices)")
    p.add_argument("--batch", type=int, default=8, help="global batch (divisible by every device count)")
    p.add_argument("--image_size", type=int, default=0, help="0: configs/base.py's (64)")
    p.add_argument("--patch_size", type=int, default=0)
    p.add_argument("--num_frames", type=int, default=0)
    p.add_argument("--dtype", default="", help="compute dtype; '': the config's (float32)")
    p.add_argument("--remat", default="", help="none | full | dots; '': the config's")
    p.add_argument("--timeout", type=float, default=1800.0, help="per compile subprocess, seconds")
    p.add_argument("--compile_cache", default="", help="persistent XLA cache dir (smoke tests only)")
    p.add_argument("--worker", action="store_true", help=argparse_hidden())
    p.add_argument("--preset", default="", help=argparse_hidden())
    p.add_argument("--mode", default="fsdp", help=argparse_hidden())
    p.add_argument("--num_devices", type=int, default=1, help=argparse_hidden())
    args = p.parse_args(argv)
    if args.quick and not args.worker:
        args.presets = "tiny" if args.presets == "tiny,small,S,B,L,H,g" else args.presets
        args.devices = "1,2" if args.devices == "1,2,4,8" else args.devices
        args.image_size = args.image_size or 32
        args.batch = 2
    return args


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


def config_for(args, preset: str, n: int, mode: str) -> Any:
    c = common.load_config(None, preset, args)
    c.data.global_batch_size = args.batch
    if mode == "fsdp":
        c.mesh.ici_data, c.mesh.ici_fsdp, c.mesh.ici_tensor = 1, n, 1
    elif mode == "data":
        c.mesh.ici_data, c.mesh.ici_fsdp, c.mesh.ici_tensor = n, 1, 1
    else:
        raise ValueError(f"--modes: unknown mode {mode!r}; expected fsdp or data")
    return c


def _tree_bytes(tree: Any) -> tuple[int, int]:
    """(bytes per device, bytes global) of a tree of sharded ShapeDtypeStructs."""
    import math

    import jax

    per_dev = total = 0
    for x in jax.tree.leaves(tree):
        size = x.dtype.itemsize
        total += math.prod(x.shape) * size
        per_dev += math.prod(x.sharding.shard_shape(x.shape)) * size
    return per_dev, total


def worker(args) -> dict[str, Any]:
    """One (preset, N, mode) compile, in a process that owns exactly N simulated devices."""
    host.setup_host(args.num_devices)
    import jax

    if args.compile_cache:
        jax.config.update("jax_compilation_cache_dir", args.compile_cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    from wam_jax import sharding
    from wam_jax.training import metrics
    from wam_jax.training import train_step as ts

    n = args.num_devices
    devices = jax.devices()[:n]
    if len(devices) != n:
        raise RuntimeError(f"asked for {n} simulated devices, JAX has {len(jax.devices())}")
    config = config_for(args, args.preset, n, args.mode)
    mesh = sharding.make_mesh(config.mesh, devices)
    t0 = time.perf_counter()
    built = ts.build(config, mesh)
    compiled = built.lower().compile()
    compile_s = time.perf_counter() - t0
    a = built.abstract
    params_dev, params_total = _tree_bytes(a.params)
    opt_dev, opt_total = _tree_bytes(a.opt_state)
    target_dev, _ = _tree_bytes(a.target)
    state_dev, state_total = _tree_bytes(a)
    n_params = sum(x.size for x in jax.tree.leaves(a.params))
    return {
        "preset": args.preset, "mode": args.mode, "devices": n, "mesh": dict(mesh.shape),
        "batch": args.batch, "image_size": int(config.model.image_size),
        "patch_size": int(config.model.patch_size), "frames": int(config.data.num_frames),
        "dtype": str(config.model.dtype), "remat": str(config.model.remat),
        "params": int(n_params), "param_bytes": params_dev, "opt_bytes": opt_dev,
        "target_bytes": target_dev, "state_bytes": state_dev,
        "param_opt_bytes": params_dev + opt_dev, "param_opt_bytes_global": params_total + opt_total,
        "state_bytes_global": state_total, "compile_s": compile_s,
        "load": host.load_average()[0],
        **metrics.compiled_memory(compiled),
    }


def scaling_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per preset and mode: per-device param+opt bytes at N / (bytes at 1 device / N)."""
    base = {(r["preset"]): r for r in rows if r["devices"] == 1}
    out = []
    for r in rows:
        b = base.get(r["preset"])
        if b is None:
            continue
        ideal = b["param_opt_bytes"] / r["devices"]
        out.append({
            "preset": r["preset"], "mode": r["mode"], "devices": r["devices"],
            "param_opt_mib": r["param_opt_bytes"] / MIB, "ideal_mib": ideal / MIB,
            "ratio": r["param_opt_bytes"] / ideal,
            "args_ratio": (r.get("argument_bytes", 0) * r["devices"] / b["argument_bytes"]
                           if b.get("argument_bytes") else None),
            "temp_ratio": (r.get("temp_bytes", 0) * r["devices"] / b["temp_bytes"]
                           if b.get("temp_bytes") else None),
        })
    return out


MEM_COLUMNS: list[common.Column] = [
    ("preset", "preset", ""), ("mode", "mode", ""), ("devices", "N", "d"), ("params_m", "params (M)", ".1f"),
    ("param_mib", "params/dev (MiB)", ".1f"), ("opt_mib", "opt/dev (MiB)", ".1f"),
    ("target_mib", "target/dev (MiB)", ".1f"), ("arg_mib", "arguments (MiB)", ".1f"),
    ("out_mib", "outputs (MiB)", ".1f"), ("alias_mib", "aliased (MiB)", ".1f"),
    ("temp_mib", "temporaries (MiB)", ".1f"), ("total_gib", "total/dev (GiB)", ".3f"),
    ("compile_s", "compile (s)", ".0f"),
]
SCALING_COLUMNS: list[common.Column] = [
    ("preset", "preset", ""), ("mode", "mode", ""), ("devices", "N", "d"),
    ("param_opt_mib", "params+opt/dev (MiB)", ".1f"), ("ideal_mib", "1-device / N (MiB)", ".1f"),
    ("ratio", "ratio to ideal 1/N", ".3f"), ("args_ratio", "arguments × N / 1-dev", ".3f"),
    ("temp_ratio", "temporaries × N / 1-dev", ".3f"),
]


def _display(r: dict[str, Any]) -> dict[str, Any]:
    d = dict(r)
    d["params_m"] = r["params"] / 1e6
    for k, name in (("param_bytes", "param_mib"), ("opt_bytes", "opt_mib"), ("target_bytes", "target_mib"),
                    ("argument_bytes", "arg_mib"), ("output_bytes", "out_mib"), ("alias_bytes", "alias_mib"),
                    ("temp_bytes", "temp_mib")):
        if k in r:
            d[name] = r[k] / MIB
    if "total_bytes" in r:
        d["total_gib"] = r["total_bytes"] / GIB
    return d


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if argv is None:
        host.apply_host_tuning(args.host_tuning)
    if args.worker:
        print(json.dumps(worker(args)))
        return {}
    presets = common.parse_list(args.presets)
    counts = [int(x) for x in common.parse_list(args.devices)]
    modes = common.parse_list(args.modes)
    for n in counts:
        if args.batch % n:
            raise ValueError(f"--batch={args.batch} is not divisible by {n} devices")
    passthrough = [f"--batch={args.batch}"]
    for flag in ("image_size", "patch_size", "num_frames"):
        if getattr(args, flag):
            passthrough.append(f"--{flag}={getattr(args, flag)}")
    for flag in ("dtype", "remat", "compile_cache"):
        if getattr(args, flag):
            passthrough.append(f"--{flag}={getattr(args, flag)}")
    host.setup_host()
    env = host.environment()
    rows, failures = [], []
    data_counts = [int(x) for x in common.parse_list(args.data_devices)] if args.data_devices else counts
    for preset in presets:
        for n in counts:
            for mode in (modes if n > 1 else modes[:1]):
                if mode == "data" and n not in data_counts:
                    continue
                cmd = [os.path.join("benchmarks", "memory_scaling.py"), "--worker", f"--preset={preset}",
                       f"--mode={mode}", f"--num_devices={n}", *passthrough]
                try:
                    r = common.run_json_subprocess(cmd, timeout=args.timeout)
                except Exception as e:  # noqa: BLE001 - a failed compile is a result too
                    failures.append({"preset": preset, "mode": mode, "devices": n, "error": str(e)[-2000:]})
                    print(f"{preset} {mode} N={n}: FAILED {str(e).splitlines()[0]}", flush=True)
                    continue
                if n == 1:
                    for m in modes[1:]:
                        rows.append({**r, "mode": m})
                rows.append(r)
                print(f"{preset} {mode} N={n}: params+opt {r['param_opt_bytes'] / MIB:.1f} MiB/dev, "
                      f"temp {r.get('temp_bytes', 0) / MIB:.1f} MiB, compile {r['compile_s']:.0f} s "
                      f"(load {r['load']})", flush=True)
    rows.sort(key=lambda r: (presets.index(r["preset"]), modes.index(r["mode"]), r["devices"]))
    scaling = scaling_rows(rows)
    print(f"\n## Per-device memory (AOT, {env['cpu']}, jax {env['versions']['jax']}, global batch {args.batch})\n")
    print(common.format_table([_display(r) for r in rows], MEM_COLUMNS))
    print("\n## Scaling of parameter + optimizer bytes per device\n")
    print(common.format_table(scaling, SCALING_COLUMNS))
    if failures:
        print("\nfailed:", *[f"{f['preset']} {f['mode']} N={f['devices']}" for f in failures], sep="\n  ")
    result = {"benchmark": "memory_scaling", "environment": env, "rows": rows, "scaling": scaling,
              "failures": failures, "args": vars(args)}
    common.save_result(args, "memory_scaling", result)
    return result


if __name__ == "__main__":
    main()
