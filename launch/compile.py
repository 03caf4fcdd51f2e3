"""`wam-compile`: ahead-of-time fit check, compiling the train step for a topology without the hardware.

    wam-compile --config=configs/pretrain.py:variant=L --topology=v5p-64 [--config.a.b=value ...]
    python -m launch.compile --config=configs/pusht_small.py --topology=cpu:8

Prints per-device memory (arguments, outputs, temporaries), FLOPs per step, and whether the
program fits the device. TPU targets (`v4-N`, `v5p-N`, `v5e-N`, `v6e-N`, optional `xS` slices,
e.g. `v5p-256x2`) need libtpu (`pip install 'jax[tpu]==0.10.2'`), which provides compile-only TPU
devices on any machine; an oversize TPU program fails to compile with RESOURCE_EXHAUSTED.
`cpu:N` compiles for N simulated CPU devices (any machine) and compares against host memory.

Exit codes: 0 fits, 1 does not fit, 2 bad input (config, topology, mesh).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wam_jax import config_utils

GIB = 1024**3


@dataclasses.dataclass(frozen=True)
class Target:
    """A named compile target."""

    name: str
    platform: str  # 'tpu' | 'cpu'
    num_devices: int
    topology: str = ""  # get_topology_desc name, e.g. 'v5:2x2x2'
    chips_per_host_bounds: tuple[int, int, int] = (2, 2, 1)
    num_slices: int = 1
    hbm_bytes: int | None = None  # per device


# generation -> (topology prefix, dims, cores per chip in the public name, HBM bytes per chip)
_TPU = {
    "v4": ("v4", 3, 2, 32 * GIB),
    "v5p": ("v5", 3, 2, 95 * GIB),
    "v5e": ("v5e", 2, 1, 16 * GIB),
    "v5litepod": ("v5e", 2, 1, 16 * GIB),
    "v6e": ("v6e", 2, 1, 32 * GIB),
}


def _grid(chips: int, dims: int) -> tuple[int, ...]:
    """Chip grid of a slice as Cloud TPU builds them: 4 -> 2x2x1, 8 -> 2x2x2, 16 -> 2x2x4,
    32 -> 2x4x4, 64 -> 4x4x4 (3D, v4/v5p); 4 -> 2x2, 8 -> 2x4, 16 -> 4x4, 32 -> 4x8 (2D, v5e/v6e)."""
    if chips < 1 or chips & (chips - 1):
        raise ValueError(f"{chips} chips: TPU slice sizes are powers of two")
    if chips < 4:
        return (1, chips, 1)[:dims] if dims == 3 else (1, chips)
    if dims == 3 and chips == 4:
        return (2, 2, 1)
    shape = [2, 2, 2] if dims == 3 else [2, 2]
    order = [2, 1, 0] if dims == 3 else [1, 0]
    i = 0
    while math.prod(shape) < chips:
        shape[order[i % dims]] *= 2
        i += 1
    return tuple(shape)


def parse_target(name: str) -> Target:
    """'v5p-8' -> v5:2x2x1 (4 chips); 'v6e-8' -> v6e:2x4; 'v5p-256x2' -> 2 slices; 'cpu:8'."""
    m = re.fullmatch(r"cpu:(\d+)", name)
    if m:
        return Target(name=name, platform="cpu", num_devices=int(m.group(1)))
    m = re.fullmatch(r"(v4|v5p|v5e|v5litepod|v6e)-(\d+)(?:x(\d+))?", name)
    if not m:
        raise ValueError(
            f"--topology={name!r}: expected cpu:N or a TPU slice name like v4-8, v5p-64, v5e-16, "
            f"v6e-8 (optionally xS for S slices, e.g. v5p-256x2)"
        )
    gen, count, slices = m.group(1), int(m.group(2)), int(m.group(3) or 1)
    prefix, dims, cores, hbm = _TPU[gen]
    chips = count // cores
    if chips * cores != count or chips < 1:
        raise ValueError(f"--topology={name!r}: {gen} slice sizes count {cores} cores per chip")
    grid = _grid(chips, dims)
    topology = f"{prefix}:" + "x".join(str(g) for g in grid)
    host = (min(grid[0], 2), min(grid[1], 2), 1)  # 4 chips per host (2x2); fewer on tiny slices
    return Target(
        name=name, platform="tpu", num_devices=chips * slices, topology=topology,
        chips_per_host_bounds=host, num_slices=slices, hbm_bytes=hbm,
    )


def target_devices(target: Target) -> list[Any]:
    """Compile-only devices of the target (TPU via libtpu's topology description; CPU: local)."""
    import jax

    if target.platform == "cpu":
        devices = jax.devices("cpu")
        if len(devices) < target.num_devices:
            raise RuntimeError(
                f"--topology={target.name}: only {len(devices)} CPU devices; wam-compile sets "
                f"XLA_FLAGS=--xla_force_host_platform_device_count before JAX starts, so run it as a "
                f"fresh process (or set XLA_FLAGS yourself)"
            )
        return devices[: target.num_devices]
    from jax.experimental import topologies

    try:
        topo = topologies.get_topology_desc(
            topology_name=target.topology,
            platform="tpu",
            chip_config_name="default",
            chips_per_host_bounds=target.chips_per_host_bounds,
            num_slices=target.num_slices,
            wrap=(False, False, False),
        )
    except Exception as e:
        raise RuntimeError(
            f"--topology={target.name}: could not create the TPU topology {target.topology!r} "
            f"({type(e).__name__}: {e}). TPU targets need libtpu: pip install 'jax[tpu]==0.10.2'"
        ) from e
    return list(topo.devices)


def compile_train_step(config: Any, devices: Sequence[Any], *, model_factory=None, loss_fn=None) -> dict[str, Any]:
    """Lowers and compiles the real train step for `devices`; returns memory / FLOPs numbers."""
    import jax

    from wam_jax import config_utils, sharding
    from wam_jax.training import metrics
    from wam_jax.training import train_step as ts

    config_utils.validate(config, needs_data=False)
    mesh = sharding.make_mesh(config.mesh, devices)
    global_batch = int(config.data.global_batch_size)
    sharding.check_global_batch(global_batch, mesh, int(config.optim.grad_accum))
    kw = {"model_factory": model_factory} if model_factory is not None else {}
    built = ts.build(config, mesh, loss_fn=loss_fn, **kw)
    compiled = built.compile()
    hlo = compiled.as_text() or ""
    abstract = built.abstract
    mem = metrics.compiled_memory(compiled)
    n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(abstract.params))
    state_bytes = sum(
        math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(abstract)
    )
    return {
        "mesh": dict(mesh.shape),
        "num_devices": len(devices),
        "device_kind": devices[0].device_kind,
        "params": int(n_params),
        "state_bytes_per_device": int(state_bytes),
        "flops_per_device": metrics.compiled_flops(compiled),
        "attention_kernels": attention_kernels(hlo),
        **mem,
    }


def attention_kernels(hlo: str) -> dict[str, int]:
    """Fused attention kernels in a compiled program's HLO: Pallas TPU calls named for splash
    attention (forward and backward), cuDNN's fused attention; none means XLA's own ops."""
    import re

    splash = re.findall(r"^\s*%splash_mha_[\w.]+ = .*custom-call\(", hlo, flags=re.MULTILINE)
    return {"splash (Pallas, TPU)": len(splash),
            "cuDNN fused attention": len(re.findall(r'custom_call_target="__cudnn\$fmha', hlo))}


def _host_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def format_report(target: Target, report: dict[str, Any]) -> tuple[str, bool]:
    if target.platform == "cpu":
        capacity = _host_memory_bytes() // max(target.num_devices, 1)
        where = f"host RAM / {target.num_devices} devices"
    else:
        capacity = target.hbm_bytes
        where = f"{report['device_kind']} HBM"
    total = report.get("total_bytes", 0)
    fits = total <= capacity
    lines = [
        f"target           {target.name}" + (f" ({target.topology}, {target.num_slices} slice(s))" if target.topology else ""),
        f"mesh             {report['mesh']}",
        f"parameters       {report['params'] / 1e6:.1f}M trained",
        f"state/device     {report['state_bytes_per_device'] / GIB:.3f} GiB (params, target, optimizer)",
        f"arguments        {report.get('argument_bytes', 0) / GIB:.3f} GiB",
        f"outputs          {report.get('output_bytes', 0) / GIB:.3f} GiB (aliased with donated inputs: {report.get('alias_bytes', 0) / GIB:.3f})",
        f"temporaries      {report.get('temp_bytes', 0) / GIB:.3f} GiB",
        f"total/device     {total / GIB:.3f} GiB of {capacity / GIB:.1f} GiB ({where})",
        f"FLOPs/step/dev   {report['flops_per_device'] or 0:.3e}",
        "attention        " + (", ".join(f"{k}: {n} calls" for k, n in report.get("attention_kernels", {}).items() if n)
                               or "XLA ops (no fused kernel)"),
        f"fits             {'yes' if fits else 'NO'}",
    ]
    return "\n".join(lines), fits


def build_parser() -> config_utils.FlagParser:
    """The fit check's flags; `--config.a.b=value` overrides are split off before it parses."""
    from wam_jax.config_utils import FlagParser

    p = FlagParser("wam-compile", __doc__, "Config values can be overridden as for wam-train: --config.a.b=VALUE.")
    p.add_argument("--topology", metavar="NAME", help="compile target: cpu:N, v5p-64, v6e-8, v5p-256x2, ... (required)")
    return p


def main(argv: Sequence[str]) -> int:
    """argv: the program name, then the flags. 0: fits, 1: does not fit, 2: bad input."""
    from wam_jax import config_utils

    overrides, args = build_parser().parse(argv)
    if args.topology is None:
        raise config_utils.ConfigError("--topology=NAME is required (cpu:N, v5p-64, v6e-8, ...)")
    target = parse_target(args.topology)
    if target.platform == "cpu":
        # Must happen before JAX creates its CPU client.
        flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
        os.environ["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={target.num_devices}"])
        os.environ.setdefault("JAX_PLATFORMS", "cpu")

    config = config_utils.load_config(args.config, overrides)
    devices = target_devices(target)
    try:
        report = compile_train_step(config, devices)
    except Exception as e:  # an oversize TPU program fails here
        if "RESOURCE_EXHAUSTED" in str(e) or "exceeds" in str(e).lower():
            print(f"{target.name}: does NOT fit: {str(e).splitlines()[0]}")
            return 1
        raise
    text, fits = format_report(target, report)
    print(text)
    return 0 if fits else 1


def run(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point (`wam-compile`): bad input prints one line and exits with status 2."""
    from launch.train import _user_errors

    argv = list(sys.argv if argv is None else argv)
    try:
        code = main(argv)
    except (*_user_errors(), ValueError, RuntimeError) as e:
        print(f"wam-compile: error: {e}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code)


if __name__ == "__main__":
    run()
