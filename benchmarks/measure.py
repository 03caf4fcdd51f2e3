"""Measuring: wall-clock and CPU time of repeated calls, and the measured matmul peak (the MFU
denominator on CPU).

`time_fn` records the process CPU time of every repetition next to its wall time: CPU seconds /
cores ("core-seconds") is the wall time the work takes with the machine to itself, and stays put
under load (a 2048² f32 matmul measured 190-200 ms of CPU time both alone and at load average 9.5
on 2 cores, where its wall time went from ≈95 to ≈400 ms). Rates and MFU are reported both ways,
each against the matmul peak measured the same way.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

from host import load_average, num_cores


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
