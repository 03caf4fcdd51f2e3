"""Metrics: clu writers (TensorBoard + logging; `tb_writer` without TensorFlow), `WORKDIR/metrics.jsonl`,
MFU and memory.

The step loop never blocks on the device to log: the trainer hands over step k's metrics (still
device arrays) after step k+1 has been dispatched, and `device_get` here waits only for step k.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from data_pipelines import paths
from wam_jax.training import tb_writer

log = logging.getLogger(__name__)

METRICS_JSONL = "metrics.jsonl"

# Dense peak FLOP/s per device (chip / GPU) by device_kind substring, (bf16, f32).
# Public numbers: Google Cloud TPU docs, NVIDIA datasheets (dense, no sparsity).
PEAK_FLOPS: tuple[tuple[str, float, float], ...] = (
    ("TPU v6", 918e12, 918e12 / 4),  # v6e (Trillium): reported as "TPU v6 lite"
    ("TPU v5 lite", 197e12, 197e12 / 4),  # v5e
    ("TPU v5e", 197e12, 197e12 / 4),
    ("TPU v5p", 459e12, 459e12 / 4),
    ("TPU v5", 459e12, 459e12 / 4),  # v5p reports "TPU v5"
    ("TPU v4", 275e12, 275e12 / 4),
    ("TPU v3", 123e12, 123e12 / 4),
    ("TPU v2", 45e12, 45e12 / 4),
    ("GB200", 2.5e15, 80e12),
    ("B200", 2.25e15, 80e12),
    ("H200", 989e12, 67e12),
    ("H100 PCIe", 756e12, 51e12),
    ("H100", 989e12, 67e12),
    ("H800", 989e12, 67e12),
    ("A100", 312e12, 19.5e12),
    ("L40S", 362e12, 91.6e12),
    ("L4", 121e12, 30.3e12),
    ("A10", 125e12, 31.2e12),
    ("V100", 125e12, 15.7e12),
)

_MEASURED_PEAK: dict[tuple[str, str], float] = {}


def peak_flops_per_device(device: jax.Device | None = None, dtype: str = "float32") -> tuple[float, str]:
    """(peak FLOP/s of one device, where the number comes from).

    Known accelerators come from the table; anything else (CPU) is measured once with a jitted
    matmul. Simulated CPU devices share the host's cores, so the host rate is split among them.
    """
    device = device or jax.devices()[0]
    kind = device.device_kind
    bf16 = dtype in ("bfloat16", "bf16")
    for key, p_bf16, p_f32 in PEAK_FLOPS:
        if key.lower() in kind.lower():
            return (p_bf16 if bf16 else p_f32), f"table:{key}"
    cache_key = (kind, dtype)
    if cache_key not in _MEASURED_PEAK:
        _MEASURED_PEAK[cache_key] = _measure_matmul_flops(device, jnp.bfloat16 if bf16 else jnp.float32)
    share = max(1, sum(1 for d in jax.local_devices() if d.device_kind == kind))
    return _MEASURED_PEAK[cache_key] / share, "measured-matmul"


def _measure_matmul_flops(device: jax.Device, dtype, n: int = 1024, reps: int = 5) -> float:
    a = jax.device_put(jnp.ones((n, n), dtype), device)
    f = jax.jit(lambda x, y: jnp.matmul(x, y, preferred_element_type=jnp.float32))
    f(a, a).block_until_ready()
    best = math.inf
    for _ in range(reps):
        t = time.perf_counter()
        f(a, a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def compiled_flops(compiled: Any) -> float | None:
    """FLOPs of one execution per device, from XLA's cost analysis of the compiled step."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - some backends do not implement it
        return None
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return None
    flops = float(cost["flops"])
    return flops if flops > 0 else None


def compiled_memory(compiled: Any) -> dict[str, int]:
    """Per-device bytes the compiled program needs: arguments, outputs, temporaries, code."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001
        return {}
    if m is None:
        return {}
    out = {
        "argument_bytes": int(m.argument_size_in_bytes),
        "output_bytes": int(m.output_size_in_bytes),
        "temp_bytes": int(m.temp_size_in_bytes),
        "alias_bytes": int(m.alias_size_in_bytes),
        "code_bytes": int(m.generated_code_size_in_bytes),
    }
    # Donated (aliased) outputs reuse argument buffers.
    out["total_bytes"] = out["argument_bytes"] + out["output_bytes"] - out["alias_bytes"] + out["temp_bytes"] + out["code_bytes"]
    return out


def device_memory(compiled_mem: Mapping[str, int] | None = None) -> dict[str, float]:
    """Per-device memory in GiB: live allocator stats where the backend has them (GPU/TPU),
    else the compiled program's requirement."""
    stats = {}
    try:
        stats = jax.local_devices()[0].memory_stats() or {}
    except Exception:  # noqa: BLE001
        stats = {}
    gib = 1024.0**3
    if stats:
        out = {"memory/bytes_in_use_gib": stats.get("bytes_in_use", 0) / gib}
        if "peak_bytes_in_use" in stats:
            out["memory/peak_gib"] = stats["peak_bytes_in_use"] / gib
        if "bytes_limit" in stats:
            out["memory/limit_gib"] = stats["bytes_limit"] / gib
        return out
    if compiled_mem:
        return {
            "memory/compiled_total_gib": compiled_mem["total_bytes"] / gib,
            "memory/compiled_temp_gib": compiled_mem["temp_bytes"] / gib,
            "memory/compiled_argument_gib": compiled_mem["argument_bytes"] / gib,
        }
    return {}


class JsonlWriter:
    """`WORKDIR/metrics.jsonl`: one JSON object per log step, `step` plus every scalar.

    Local files are appended to and flushed per record. Object stores (gs://) cannot append, so
    there the records are kept and the file is rewritten every `rewrite_every` records and on close.
    """

    def __init__(self, workdir: str, rewrite_every: int = 20):
        self.path = epath.Path(workdir) / METRICS_JSONL
        self.local = not paths.is_url(workdir)
        self.rewrite_every = rewrite_every
        self._lines: list[str] = []
        self._pending = 0
        if self.local:
            self._f = open(self.path, "a")  # noqa: SIM115 - kept open for the run
        else:
            self._lines = self.path.read_text().splitlines(keepends=True) if self.path.exists() else []

    def write(self, step: int, scalars: Mapping[str, Any]) -> None:
        rec = {"step": int(step)}
        rec.update({k: _to_float(v) for k, v in scalars.items()})
        line = json.dumps(rec) + "\n"
        if self.local:
            self._f.write(line)
            self._f.flush()
            return
        self._lines.append(line)
        self._pending += 1
        if self._pending >= self.rewrite_every:
            self.flush()

    def flush(self) -> None:
        if not self.local and self._pending:
            self.path.write_text("".join(self._lines))
            self._pending = 0

    def close(self) -> None:
        if self.local:
            self._f.close()
        else:
            self.flush()


def truncate_jsonl(workdir: str, last_step: int) -> None:
    """Drops records after `last_step` (written after the checkpoint a resumed run starts from),
    so `metrics.jsonl` reads as one uninterrupted curve."""
    path = epath.Path(workdir) / METRICS_JSONL
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a hard kill
        if int(rec.get("step", -1)) <= last_step:
            keep.append(line + "\n")
    paths.write_atomic(path, "".join(keep))


def read_jsonl(path: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in epath.Path(path).read_text().splitlines() if line.strip()]


def _to_float(v: Any) -> float:
    return float(np.asarray(v))


def progress_line(step: int, num_steps: int, scalars: Mapping[str, float]) -> str:
    """`step 200/2000 (10%) | loss 1.234 | 2.17 steps/s | ETA 13m49s | data wait 3%`: what a
    person watching a run wants at each log step (the full scalars go to TensorBoard / jsonl)."""
    parts = [f"step {step}/{num_steps} ({100 * step / max(num_steps, 1):.0f}%)", f"loss {scalars['loss']:.4g}"]
    step_time = scalars.get("perf/step_time_s")
    if step_time:
        eta = int(round(max(num_steps - step, 0) * step_time))
        parts += [f"{1 / step_time:.2f} steps/s", f"ETA {eta // 3600}h{eta // 60 % 60:02d}m{eta % 60:02d}s"
                  if eta >= 3600 else f"ETA {eta // 60}m{eta % 60:02d}s"]
        wait = scalars.get("perf/data_wait_s")
        if wait is not None:
            parts.append(f"data wait {100 * wait / step_time:.0f}%")
    return " | ".join(parts)


class MetricsWriteError(OSError):
    """Metrics could not be written (disk full, permissions); names the workdir and last checkpoint."""


class MetricsLogger:
    """TensorBoard (clu's writers, or `tb_writer` without TensorFlow) + metrics.jsonl on process 0,
    plain logging elsewhere."""

    def __init__(self, workdir: str, *, num_steps: int, every_steps: int, profile_steps: int = 0,
                 first_profile_step: int = 10):
        self.primary = jax.process_index() == 0
        self.num_steps = int(num_steps)
        self.jsonl = JsonlWriter(workdir) if self.primary else None
        profile = bool(profile_steps and profile_steps > 0 and self.primary)
        clu = tb_writer.clu_writers()
        if clu is None:
            self.writer: Any = tb_writer.EventWriter(workdir) if self.primary else tb_writer.NullWriter()
            self.hooks: list[Any] = [tb_writer.Profile(workdir, profile_steps, first_profile_step)] if profile else []
            return
        metric_writers, periodic_actions = clu
        self.writer = metric_writers.create_default_writer(
            workdir if self.primary else None, just_logging=not self.primary, asynchronous=True
        )
        self.hooks = [
            periodic_actions.ReportProgress(num_train_steps=num_steps, writer=self.writer, every_steps=every_steps,
                                            every_secs=None)
        ]
        if profile:
            self.hooks.append(
                periodic_actions.Profile(
                    logdir=workdir, num_profile_steps=profile_steps, first_profile=first_profile_step,
                    every_secs=None, every_steps=None, profile_duration_ms=None,
                )
            )

    def step_hooks(self, step: int) -> None:
        for h in self.hooks:
            h(step)

    def write(self, step: int, scalars: Mapping[str, Any]) -> None:
        scalars = {k: _to_float(v) for k, v in scalars.items()}
        self.writer.write_scalars(step, scalars)
        if self.jsonl is not None:
            self.jsonl.write(step, scalars)
        if self.primary and "loss" in scalars:
            log.info("%s", progress_line(step, self.num_steps, scalars))

    def write_hparams(self, params: Mapping[str, Any]) -> None:
        if self.primary:
            self.writer.write_hparams(dict(params))

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()
        if self.jsonl is not None:
            self.jsonl.close()


class StepTimer:
    """Accumulates wall time and data-wait time between log steps (host-side, non-blocking)."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.t0 = time.perf_counter()
        self.data_wait = 0.0
        self.steps = 0

    def add_data_wait(self, seconds: float) -> None:
        self.data_wait += seconds

    def tick(self) -> None:
        self.steps += 1

    def summary(self, *, global_batch: int, flops_per_device: float | None, peak: float | None) -> dict[str, float]:
        elapsed = time.perf_counter() - self.t0
        n = max(self.steps, 1)
        step_time = elapsed / n
        out = {
            "perf/step_time_s": step_time,
            "perf/data_wait_s": self.data_wait / n,
            "perf/examples_per_s": global_batch * n / max(elapsed, 1e-9),
        }
        if flops_per_device and peak:
            out["perf/tflops_per_device"] = flops_per_device / step_time / 1e12
            out["perf/mfu"] = flops_per_device / step_time / peak
        return out
