"""Shared benchmark plumbing: host set-up, load average, environment capture, timing, the measured
matmul peak, the FLOP count of a train step, markdown tables and JSON results.

Every benchmark script in this directory prints markdown tables (pasted into BENCHMARKS.md) and
writes one JSON file holding the same rows plus `environment()`: machine, versions, command line
and load average, so every number can be traced to how it was taken.

Shared machines: a wall-clock timing is only as good as the CPU share it got. `time_fn` logs
`os.getloadavg()` before and after every timed loop, and `wait_for_quiet` lets a script wait
(bounded) until the 1-minute load average falls below a threshold before it measures. It also
records the process CPU time of every repetition: CPU seconds / cores ("core-seconds") is the
wall time the work takes with the machine to itself, and stays put under load (a 2048² f32
matmul measured 190-200 ms of CPU time both alone and at load average 9.5 on 2 cores, where its
wall time went from ≈95 to ≈400 ms). Rates and MFU are reported both ways, each against the
matmul peak measured the same way.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join("benchmarks", "results")  # relative to the repository root

VERSIONED_PACKAGES = (
    "jax", "jaxlib", "flax", "optax", "numpy", "ml-collections", "grain", "torch", "transformers",
)


# ---------------------------------------------------------------------------------------------
# Host set-up (must run before JAX is imported)
# ---------------------------------------------------------------------------------------------


# Process environment that speeds up XLA:CPU training steps (measured in BENCHMARKS.md); it must be
# in place when the process starts (glibc reads its tunables, OpenBLAS its thread count, at load).
# - glibc.malloc.hugetlb=1: malloc madvises transparent huge pages for its mmap'd chunks. XLA:CPU
#   allocates the step's temporaries (GiBs) afresh every execution; with 4 KiB pages each step
#   pays ~590k page faults (1.3 s of system time for the S-size V-JEPA step), with THP ~1.5k.
# - OPENBLAS_NUM_THREADS=1: LAPACK calls inside the step (eigh of the health metrics) otherwise
#   start OpenBLAS threads that fight XLA's own thread pool for the same cores.
HOST_TUNING = {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1", "OPENBLAS_NUM_THREADS": "1"}


def apply_host_tuning(enabled: bool) -> None:
    """Re-executes this script with `HOST_TUNING` in its environment (once) when `enabled`."""
    if not enabled or all(os.environ.get(k) == v for k, v in HOST_TUNING.items()):
        return
    if "jax" in sys.modules:
        raise RuntimeError("apply_host_tuning must run before jax is imported")
    env = dict(os.environ)
    env.update(HOST_TUNING)
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


def host_env_label() -> str:
    """'tuned' when this process runs with `HOST_TUNING`, else 'default' (or the partial set)."""
    have = {k for k, v in HOST_TUNING.items() if os.environ.get(k) == v}
    return "tuned" if have == set(HOST_TUNING) else ("default" if not have else "+".join(sorted(have)))


def setup_host(num_devices: int | None = None) -> None:
    """CPU platform and (optionally) `num_devices` simulated host devices; call before importing jax.

    Simulated devices share the host's cores, so single-device timings must run with one device:
    `num_devices=None` strips any inherited `--xla_force_host_platform_device_count`.
    """
    if "jax" in sys.modules:
        import jax

        have = len(jax.devices())
        want = num_devices or 1
        if have != want:
            raise RuntimeError(
                f"setup_host({num_devices}) must run before jax is imported (jax already has {have} devices)"
            )
        return
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
    if num_devices and num_devices > 1:
        flags.append(f"--xla_force_host_platform_device_count={num_devices}")
    os.environ["XLA_FLAGS"] = " ".join(flags)
    if REPO not in sys.path:
        sys.path.insert(0, REPO)


# ---------------------------------------------------------------------------------------------
# Load average and the environment of a run
# ---------------------------------------------------------------------------------------------


def load_average() -> tuple[float, float, float]:
    """(1, 5, 15)-minute load averages, rounded for the tables."""
    return tuple(round(x, 2) for x in os.getloadavg())  # type: ignore[return-value]


def wait_for_quiet(max_load: float, timeout_s: float, poll_s: float = 10.0) -> dict[str, Any]:
    """Waits until the 1-minute load average is below `max_load`, at most `timeout_s` seconds.

    Returns what happened (`waited_s`, `load`, `quiet`), recorded with the timing: a measurement
    taken after a timed-out wait is kept but marked `quiet=False`.
    """
    t0 = time.monotonic()
    while True:
        load = load_average()
        if load[0] < max_load or max_load <= 0:
            return {"waited_s": round(time.monotonic() - t0, 1), "load": load, "quiet": True}
        if time.monotonic() - t0 >= timeout_s:
            return {"waited_s": round(time.monotonic() - t0, 1), "load": load, "quiet": False}
        time.sleep(poll_s)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mem_total_gib() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3, 1)
    except (ValueError, OSError):
        return None


def _git_revision() -> str | None:
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=12"], cwd=REPO, capture_output=True,
            text=True, timeout=10, check=False,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def command_line() -> str:
    """The command that produced a result, relative to the repository root."""
    script = os.path.relpath(os.path.abspath(sys.argv[0]), REPO) if sys.argv and sys.argv[0] else "?"
    return " ".join(["python", shlex.quote(script), *map(shlex.quote, sys.argv[1:])])


def environment() -> dict[str, Any]:
    """Machine, versions, devices, flags, revision and command of this run."""
    env: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "mem_total_gib": _mem_total_gib(),
        "os": platform.platform(terse=True),
        "versions": versions(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "process_env": {k: os.environ[k] for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                                   "GLIBC_TUNABLES", "MALLOC_ARENA_MAX") if k in os.environ},
        "jax_platforms": os.environ.get("JAX_PLATFORMS", ""),
        "git": _git_revision(),
        "command": command_line(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_average": load_average(),
    }
    if "jax" in sys.modules:
        import jax

        devs = jax.devices()
        env["backend"] = jax.default_backend()
        env["devices"] = f"{len(devs)} x {devs[0].device_kind}"
    return env


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Timing:
    """Wall-clock seconds per repetition (all of them) with the load average around the loop."""

    samples: list[float]
    cpu_samples: list[float]
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def best(self) -> float:
        return min(self.samples)

    def quantile(self, q: float) -> float:
        s = sorted(self.samples)
        if len(s) == 1:
            return s[0]
        pos = q * (len(s) - 1)
        lo, hi = math.floor(pos), math.ceil(pos)
        return s[lo] + (s[hi] - s[lo]) * (pos - lo)

    @property
    def spread(self) -> float:
        """Inter-quartile range relative to the median."""
        return (self.quantile(0.75) - self.quantile(0.25)) / self.median

    @property
    def cpu_per_rep(self) -> float:
        """Process CPU seconds (all threads) per repetition: with 2 cores, ≈ 2 × wall when the
        process had the machine to itself."""
        return statistics.median(self.cpu_samples)

    @property
    def core_seconds(self) -> float:
        """Median CPU seconds per repetition divided by the cores this process may use: the wall
        time the repetition would take with every core to itself (see `num_cores`)."""
        return self.cpu_per_rep / num_cores()

    @property
    def best_core_seconds(self) -> float:
        return min(self.cpu_samples) / num_cores()

    def summary(self) -> dict[str, Any]:
        return {
            "median_s": self.median,
            "best_s": self.best,
            "p25_s": self.quantile(0.25),
            "p75_s": self.quantile(0.75),
            "iqr_rel": self.spread,
            "reps": len(self.samples),
            "cpu_s_per_rep": self.cpu_per_rep,
            "core_s_per_rep": self.core_seconds,
            "load_before": self.load_before,
            "load_after": self.load_after,
            "samples_s": [round(x, 6) for x in self.samples],
        }


def num_cores() -> int:
    """Cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def time_fn(fn: Callable[[], Any], *, warmup: int, reps: int, max_seconds: float | None = None) -> Timing:
    """Times `fn()` (which must block until its result is ready) `reps` times after `warmup` calls.

    `max_seconds` stops early (after at least 3 repetitions) so a slow configuration cannot run
    away on a shared machine.
    """
    for _ in range(warmup):
        fn()
    load_before = load_average()
    samples, cpu = [], []
    t_start = time.perf_counter()
    for i in range(reps):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        if max_seconds is not None and i >= 2 and time.perf_counter() - t_start > max_seconds:
            break
    return Timing(samples, cpu, load_before, load_average())


# ---------------------------------------------------------------------------------------------
# Peak matmul rate (the MFU denominator on CPU)
# ---------------------------------------------------------------------------------------------


def matmul_peak(dtype: str = "float32", n: int = 2048, reps: int = 20, warmup: int = 3) -> dict[str, Any]:
    """FLOP/s of one `n x n` matmul on the default device, in `dtype` with float32 accumulation
    (`preferred_element_type=float32`: for bf16 inputs that is the fast path on CPU and the only
    accurate one). Best and median over `reps`; the best is the MFU denominator ("measured peak")."""
    import jax
    import jax.numpy as jnp

    dt = jnp.dtype(dtype)
    ka, kb = jax.random.split(jax.random.key(0))
    a = jax.random.normal(ka, (n, n), jnp.float32).astype(dt)
    b = jax.random.normal(kb, (n, n), jnp.float32).astype(dt)
    f = jax.jit(lambda x, y: jnp.matmul(x, y, preferred_element_type=jnp.float32))
    t = time_fn(lambda: f(a, b).block_until_ready(), warmup=warmup, reps=reps)
    flops = 2.0 * n**3
    return {
        "dtype": str(dt), "n": n, "accumulation": "float32",
        "best_flops": flops / t.best, "median_flops": flops / t.median,
        "best_flops_cpu": flops / t.best_core_seconds, "median_flops_cpu": flops / t.core_seconds,
        "timing": t.summary(),
    }


def datasheet_peak(dtype: str = "float32") -> tuple[float | None, str]:
    """The table peak of the default device (accelerators only; `wam_jax.training.metrics.PEAK_FLOPS`)."""
    import jax

    from wam_jax.training import metrics

    kind = jax.devices()[0].device_kind.lower()
    bf16 = dtype in ("bfloat16", "bf16")
    for key, p_bf16, p_f32 in metrics.PEAK_FLOPS:
        if key.lower() in kind:
            return (p_bf16 if bf16 else p_f32), f"datasheet:{key}"
    return None, "no datasheet (CPU)"


# ---------------------------------------------------------------------------------------------
# FLOPs of a train step
# ---------------------------------------------------------------------------------------------


def synthetic_batch(config: Any, global_batch: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Random arrays of the batch schema (`data_pipelines.schema.batch_spec`): uint8 noise video,
    unit-normal actions/proprio, every mask true, embodiment/source ids in range."""
    import numpy as np

    from data_pipelines import schema

    spec = schema.batch_spec(
        global_batch or int(config.data.global_batch_size), int(config.data.num_frames),
        int(config.model.image_size), int(config.model.action_dim), int(config.model.proprio_dim),
    )
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {}
    for k, (shape, dtype) in spec.items():
        if dtype == np.uint8:
            out[k] = rng.integers(0, 256, shape, dtype=np.uint8)
        elif dtype == np.bool_:
            out[k] = np.ones(shape, np.bool_)
        elif k == "embodiment_id":
            out[k] = rng.integers(0, int(config.model.num_embodiments), shape).astype(dtype)
        elif k == "source_id":
            out[k] = rng.integers(0, int(config.model.get("num_sources", 8)), shape).astype(dtype)
        elif k == "dt":
            out[k] = np.full(shape, 0.1, dtype)
        else:
            out[k] = rng.standard_normal(shape).astype(dtype)
    return out


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------

Column = tuple[str, str, str]  # (key, header, format spec or "" for str())


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column]) -> str:
    """A markdown table; missing values print as an em dash."""

    def cell(row: Mapping[str, Any], key: str, fmt: str) -> str:
        v = row.get(key)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "—"
        if fmt:
            try:
                return format(v, fmt)
            except (TypeError, ValueError):
                return str(v)
        return str(v)

    head = "| " + " | ".join(h for _, h, _ in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(cell(r, k, f) for k, _, f in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def write_json(path: str, payload: Mapping[str, Any]) -> str:
    """Writes `payload` (plus nothing else) as indented JSON, creating the directory."""
    d = os.path.dirname(path)
    if d:
        os.makedirs(d, exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=1, default=_json_default)
        f.write("\n")
    return path


def _json_default(x: Any) -> Any:
    try:
        import numpy as np

        if isinstance(x, np.generic):
            return x.item()
        if isinstance(x, np.ndarray):
            return x.tolist()
    except ImportError:
        pass
    if dataclasses.is_dataclass(x):
        return dataclasses.asdict(x)
    return str(x)


def default_json_path(name: str, quick: bool) -> str:
    return os.path.join(RESULTS_DIR, f"{name}{'_quick' if quick else ''}.json")


def save_result(args: argparse.Namespace, name: str, result: Mapping[str, Any]) -> str:
    """Writes `result` to `--json` (default `benchmarks/results/NAME[_TAG][_quick].json`) and says
    where; the tag is `--tag` when the script has one."""
    tag = getattr(args, "tag", "")
    path = write_json(args.json or default_json_path(name + (f"_{tag}" if tag else ""), args.quick), result)
    print(f"\nwrote {path}")
    return path


# Model / data flags the train-step scripts share, applied when set: flag -> config key.
MODEL_OVERRIDES = {"image_size": "model.image_size", "patch_size": "model.patch_size",
                   "num_frames": "data.num_frames", "dtype": "model.dtype", "remat": "model.remat"}


def load_config(config_path: str | None, preset: str, args: argparse.Namespace) -> Any:
    """`get_config(preset)` of a config file (`--config`) or of `configs/base.py`, with the
    `MODEL_OVERRIDES` flags of `args` that are set (flags a script lacks count as unset)."""
    if config_path:
        import importlib.util

        spec = importlib.util.spec_from_file_location("bench_config", config_path)
        if spec is None or spec.loader is None:
            raise FileNotFoundError(f"--config={config_path}: not a Python config file")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        c = mod.get_config(preset)
    else:
        from configs import base

        c = base.get_config(preset)
    for flag, key in MODEL_OVERRIDES.items():
        value = getattr(args, flag, None)
        if value:
            section, field = key.split(".")
            c[section][field] = value
    return c


def base_parser(description: str, name: str) -> argparse.ArgumentParser:
    """Flags every script shares: --quick, --json, --max_load, --wait."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes and few repetitions (smoke test)")
    p.add_argument("--json", default=None, help=f"result file (default {RESULTS_DIR}/{name}.json)")
    p.add_argument("--max_load", type=float, default=0.0,
                   help="wait until the 1-min load average is below this before each timing (0: don't wait)")
    p.add_argument("--wait", type=float, default=300.0, help="longest wait for --max_load, seconds")
    p.add_argument("--host_tuning", action="store_true",
                   help=f"re-run with {HOST_TUNING} in the environment (huge pages, one BLAS thread)")
    return p


def parse_list(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def parse_shapes(s: str, fields: str) -> list[tuple[int, ...]]:
    """'8:256:6:64,4:256:12:64' -> [(8, 256, 6, 64), ...]; each shape must have `fields`'s parts
    (e.g. 'B:L:heads:head_dim'), else a ValueError naming --shapes."""
    want = len(fields.split(":"))
    shapes = [tuple(int(x) for x in part.split(":")) for part in parse_list(s)]
    for shape in shapes:
        if len(shape) != want:
            raise ValueError(f"--shapes: expected {fields}, got {':'.join(map(str, shape))!r}")
    return shapes


def parse_mapping(s: str, cast: Callable[[str], Any] = int) -> dict[str, Any]:
    """'tiny=8,S=4' -> {'tiny': 8, 'S': 4}."""
    out: dict[str, Any] = {}
    for part in parse_list(s):
        if "=" not in part:
            raise ValueError(f"expected NAME=VALUE pairs separated by commas, got {part!r} in {s!r}")
        k, v = part.split("=", 1)
        out[k.strip()] = cast(v.strip())
    return out


def run_json_subprocess(args: Sequence[str], *, env: Mapping[str, str] | None = None,
                        timeout: float = 1800) -> dict[str, Any]:
    """Runs `python ARGS` from the repository root; its last stdout line must be one JSON object."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, *args], cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout,
        check=False,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.splitlines()[-20:])
        raise RuntimeError(f"benchmark subprocess {' '.join(args)} failed (exit {proc.returncode}):\n{tail}")
    return json.loads(lines[-1])
