"""Attention alone: JAX's `dot_product_attention('xla')` against wam_jax's `head_major_attention`.

    python benchmarks/attention.py --host_tuning

Both compute the same softmax attention on `[B, L, heads, Dh]` inputs (float32); the table gives
forward and forward + backward (`jax.vjp`) time per call and the FLOP/s of the two products
(`4 B H L^2 Dh` forward, 3x that with the backward). The default shape is the S peer's encoder
attention (8 clips x 256 tokens, 6 heads of 64); `--shapes` takes more, `B:L:H:D` each.
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
    p = common.base_parser(__doc__, "attention")
    p.add_argument("--shapes", default="8:256:6:64,4:256:12:64", help="B:L:heads:head_dim, comma separated")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--reps", type=int, default=20)
    args = p.parse_args(argv)
    if args.quick:
        args.shapes, args.warmup, args.reps = "2:32:2:16", 1, 3
    return args


def bench_shape(shape: tuple[int, int, int, int], args) -> list[dict[str, Any]]:
    import jax

    from wam_jax.models.attention import head_major_attention

    b, length, h, d = shape
    ks = jax.random.split(jax.random.key(0), 4)
    q, k, v, g = (jax.random.normal(key, (b, length, h, d)) for key in ks)
    impls = {
        "jax dot_product_attention (xla)": lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="xla"),
        "head_major_attention": head_major_attention,
    }
    flops = 4.0 * b * h * length * length * d
    rows = []
    for name, fn in impls.items():
        fwd = jax.jit(fn)
        bwd = jax.jit(lambda q, k, v, g, fn=fn: jax.vjp(fn, q, k, v)[1](g))
        t_f = measure.time_fn(lambda fwd=fwd: jax.block_until_ready(fwd(q, k, v)), warmup=args.warmup, reps=args.reps)
        t_b = measure.time_fn(lambda bwd=bwd: jax.block_until_ready(bwd(q, k, v, g)), warmup=args.warmup,
                             reps=args.reps)
        rows.append({"shape": f"{b}x{length}x{h}x{d}", "impl": name,
                     "fwd_ms": 1e3 * t_f.median, "fwd_bwd_ms": 1e3 * t_b.median,
                     "fwd_gflops": flops / t_f.median / 1e9, "fwd_bwd_gflops": 3 * flops / t_b.median / 1e9,
                     "fwd": t_f.summary(), "fwd_bwd": t_b.summary(), "load": host.load_average()[0]})
    base = rows[0]["fwd_bwd_ms"]
    for r in rows:
        r["speedup_fwd_bwd"] = base / r["fwd_bwd_ms"]
    return rows


COLUMNS: list[common.Column] = [
    ("shape", "B x L x heads x Dh", ""), ("impl", "attention", ""),
    ("fwd_ms", "forward (ms)", ".2f"), ("fwd_gflops", "forward GFLOP/s", ".1f"),
    ("fwd_bwd_ms", "forward + backward (ms)", ".2f"), ("fwd_bwd_gflops", "fwd + bwd GFLOP/s", ".1f"),
    ("speedup_fwd_bwd", "speed-up (fwd + bwd)", ".2f"), ("load", "load 1m", ".2f"),
]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if argv is None:
        host.apply_host_tuning(args.host_tuning)
    host.setup_host()
    shapes = common.parse_shapes(args.shapes, "B:L:heads:head_dim")
    env = host.environment()
    rows = [r for s in shapes for r in bench_shape(s, args)]
    print(f"\n## Attention, float32 ({env['cpu']}, jax {env['versions']['jax']})\n")
    print(common.format_table(rows, COLUMNS))
    result = {"benchmark": "attention", "environment": env, "rows": rows, "args": vars(args)}
    common.save_result(args, "attention", result)
    return result


if __name__ == "__main__":
    main()
