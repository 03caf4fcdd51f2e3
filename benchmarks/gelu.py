"""Exact GELU alone: `jax.nn.gelu(approximate=False)` (erfc form) against wam_jax's `ops.gelu`
(erf form, as PyTorch writes it), with the tanh approximation for reference.

    python benchmarks/gelu.py --host_tuning

The table gives forward and forward + backward (`jax.vjp`) time per call on float32 activations
of the MLP hidden layer (default: 8 clips x 256 tokens x 1536, the S peer's), and each form's
largest absolute difference from the erfc form, values and gradients, over the same inputs.
"""

from __future__ import annotations

import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import host  # noqa: E402
import measure  # noqa: E402


def parse_args(argv: list[str] | None = None):
    p = common.base_parser(__doc__, "gelu")
    p.add_argument("--shapes", default="2048:1536,1024:3072", help="rows:features, comma separated")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--reps", type=int, default=30)
    args = p.parse_args(argv)
    if args.quick:
        args.shapes, args.warmup, args.reps = "64:128", 1, 3
    return args


def bench_shape(shape: tuple[int, int], args) -> list[dict[str, Any]]:
    import jax
    import jax.numpy as jnp

    from wam_jax.models import ops

    x = 3.0 * jax.random.normal(jax.random.key(0), shape, jnp.float32)
    g = jax.random.normal(jax.random.key(1), shape, jnp.float32)
    impls = {
        "jax.nn.gelu exact (erfc)": lambda x: jax.nn.gelu(x, approximate=False),
        "ops.gelu (erf)": ops.gelu,
        "jax.nn.gelu tanh approx.": lambda x: jax.nn.gelu(x, approximate=True),
    }
    ref = impls["jax.nn.gelu exact (erfc)"]
    ref_y, ref_dx = jax.jit(ref)(x), jax.jit(lambda x: jax.vjp(ref, x)[1](g)[0])(x)
    rows = []
    for name, fn in impls.items():
        fwd = jax.jit(fn)
        bwd = jax.jit(lambda x, fn=fn: jax.vjp(fn, x)[1](g)[0])
        t_f = measure.time_fn(lambda fwd=fwd: jax.block_until_ready(fwd(x)), warmup=args.warmup, reps=args.reps)
        t_b = measure.time_fn(lambda bwd=bwd: jax.block_until_ready(bwd(x)), warmup=args.warmup, reps=args.reps)
        rows.append({"shape": f"{shape[0]}x{shape[1]}", "impl": name,
                     "fwd_ms": 1e3 * t_f.median, "fwd_bwd_ms": 1e3 * t_b.median,
                     "max_abs_diff": float(jnp.max(jnp.abs(fwd(x) - ref_y))),
                     "max_abs_diff_grad": float(jnp.max(jnp.abs(bwd(x) - ref_dx))),
                     "fwd": t_f.summary(), "fwd_bwd": t_b.summary(), "load": host.load_average()[0]})
    for r in rows:
        r["speedup_fwd"] = rows[0]["fwd_ms"] / r["fwd_ms"]
        r["speedup_fwd_bwd"] = rows[0]["fwd_bwd_ms"] / r["fwd_bwd_ms"]
    return rows


COLUMNS: list[common.Column] = [
    ("shape", "rows x features", ""), ("impl", "GELU", ""),
    ("fwd_ms", "forward (ms)", ".2f"), ("speedup_fwd", "speed-up (fwd)", ".2f"),
    ("fwd_bwd_ms", "forward + backward (ms)", ".2f"), ("speedup_fwd_bwd", "speed-up (fwd + bwd)", ".2f"),
    ("max_abs_diff", "max |diff| value", ".1e"), ("max_abs_diff_grad", "max |diff| grad", ".1e"),
    ("load", "load 1m", ".2f"),
]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if argv is None:
        host.apply_host_tuning(args.host_tuning)
    host.setup_host()
    shapes = common.parse_shapes(args.shapes, "rows:features")
    env = host.environment()
    rows = [r for s in shapes for r in bench_shape(s, args)]
    print(f"\n## Exact GELU, float32 ({env['cpu']}, jax {env['versions']['jax']})\n")
    print(common.format_table(rows, COLUMNS))
    result = {"benchmark": "gelu", "environment": env, "rows": rows, "args": vars(args)}
    common.save_result(args, "gelu", result)
    return result


if __name__ == "__main__":
    main()
