"""The machine a benchmark runs on: set-up before JAX loads, the load average, and the record of
the run's environment (machine, versions, flags, revision, command) stored with every result.

Shared machines: a wall-clock timing is only as good as the CPU share it got. `wait_for_quiet`
lets a script wait (bounded) until the 1-minute load average falls below a threshold before it
measures, and `load_average` is logged around every timed loop (`measure.time_fn`).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shlex
import subprocess
import sys
import time
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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


def num_cores() -> int:
    """Cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
