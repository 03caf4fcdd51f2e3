"""Compile time of the train step per preset, with and without scanned layers.

    python benchmarks/compile_time.py --presets tiny,small,S,B --scan on,off,unrolled
    python benchmarks/compile_time.py --config configs/pusht_small.py --presets small   # the demo

Each measurement runs in a fresh subprocess (no tracing or compilation caches carried over, no
persistent cache): build the abstract state, trace and lower the real train step
(`wam_jax.training.train_step.build`), then compile it for one CPU device. `trace+lower` and `compile` are
timed separately; the compiled program's generated-code size is reported too.

`--scan on` (`model.scan_layers=True`) compiles one block per stack whatever the depth; `off`
(`scan_layers=False`) unrolls every layer, so its compile time grows with depth; `unrolled`
(`scan_layers=True, scan_unroll=0`) keeps the stacked parameters and unrolls the loop.
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

# --scan mode -> (model.scan_layers, model.scan_unroll)
SCAN_MODES = {"on": (True, 1), "off": (False, 1), "unrolled": (True, 0)}


def parse_args(argv: list[str] | None = None):
    import argparse

    p = common.base_parser(__doc__, "compile_time")
    p.add_argument("--presets", default="tiny,small,S,B")
    p.add_argument("--scan", default="on,off", help=f"which of {','.join(SCAN_MODES)} to measure")
    p.add_argument("--config", default="", help="config file with get_config(preset) (default configs/base.py)")
    p.add_argument("--batch", type=int, default=0, help="global batch (0: the config's)")
    p.add_argument("--image_size", type=int, default=0)
    p.add_argument("--remat", default="")
    p.add_argument("--repeats", type=int, default=1, help="subprocesses per configuration (median)")
    p.add_argument("--timeout", type=float, default=1800.0)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--preset", default="", help=argparse.SUPPRESS)
    p.add_argument("--scan_layers", default="on", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick and not args.worker:
        args.presets = "tiny" if args.presets == "tiny,small,S,B" else args.presets
        args.image_size = args.image_size or 32
        args.batch = args.batch or 2
        args.scan = "on" if args.scan == "on,off" else args.scan
    return args


def load_config(args, preset: str) -> Any:
    c = common.load_config(args.config, preset, args)
    if args.batch:
        c.data.global_batch_size = args.batch
    if args.scan_layers not in SCAN_MODES:
        raise ValueError(f"--scan: expected some of {','.join(SCAN_MODES)}, got {args.scan_layers!r}")
    c.model.scan_layers, c.model.scan_unroll = SCAN_MODES[args.scan_layers]
    c.mesh.ici_data, c.mesh.ici_fsdp, c.mesh.ici_tensor = 1, 1, 1
    return c


def worker(args) -> dict[str, Any]:
    host.setup_host()
    import jax

    from wam_jax import sharding
    from wam_jax.training import metrics
    from wam_jax.training import train_step as ts

    config = load_config(args, args.preset)
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
    load_before = host.load_average()
    t0 = time.perf_counter()
    built = ts.build(config, mesh)
    lowered = built.lower()
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    mem = metrics.compiled_memory(compiled)
    return {
        "preset": args.preset, "scan": config.model.scan_layers, "scan_mode": args.scan_layers,
        "scan_unroll": int(config.model.scan_unroll), "config": args.config or "configs/base.py",
        "batch": int(config.data.global_batch_size), "image_size": int(config.model.image_size),
        "encoder_depth": int(config.model.encoder.depth), "predictor_depth": int(config.model.predictor.depth),
        "lower_s": t1 - t0, "compile_s": t2 - t1, "total_s": t2 - t0,
        "code_mib": mem.get("code_bytes", 0) / 1024**2,
        "load_before": load_before, "load_after": host.load_average(),
    }


COLUMNS: list[common.Column] = [
    ("preset", "preset", ""), ("scan_mode", "layers (--scan)", ""), ("depths", "enc/pred depth", ""),
    ("lower_s", "trace+lower (s)", ".1f"), ("compile_s", "compile (s)", ".1f"), ("total_s", "total (s)", ".1f"),
    ("code_mib", "code (MiB)", ".2f"), ("load", "load 1m", ".2f"),
]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import statistics

    args = parse_args(argv)
    if argv is None:
        host.apply_host_tuning(args.host_tuning)
    if args.worker:
        print(json.dumps(worker(args)))
        return {}
    host.setup_host()
    env = host.environment()
    passthrough = []
    for flag in ("config", "batch", "image_size", "remat"):
        if getattr(args, flag):
            passthrough.append(f"--{flag}={getattr(args, flag)}")
    rows = []
    for preset in common.parse_list(args.presets):
        for scan in common.parse_list(args.scan):
            runs = []
            for _ in range(args.repeats):
                if args.max_load > 0:
                    host.wait_for_quiet(args.max_load, args.wait)
                cmd = [os.path.join("benchmarks", "compile_time.py"), "--worker", f"--preset={preset}",
                       f"--scan_layers={scan}", *passthrough]
                runs.append(common.run_json_subprocess(cmd, timeout=args.timeout))
            r = dict(runs[0])
            for k in ("lower_s", "compile_s", "total_s"):
                r[k] = statistics.median(x[k] for x in runs)
                r[k + "_all"] = [x[k] for x in runs]
            r["depths"] = f"{r['encoder_depth']}/{r['predictor_depth']}"
            r["load"] = r["load_before"][0]
            rows.append(r)
            print(f"{preset} scan={scan}: lower {r['lower_s']:.1f} s, compile {r['compile_s']:.1f} s "
                  f"(load {r['load']})", flush=True)
    print(f"\n## Train-step compile time (1 x CPU, {env['cpu']}, jax {env['versions']['jax']})\n")
    print(common.format_table(rows, COLUMNS))
    result = {"benchmark": "compile_time", "environment": env, "rows": rows, "args": vars(args)}
    common.save_result(args, "compile_time", result)
    return result


if __name__ == "__main__":
    main()
