"""End to end through `python -m launch.train`: metrics, SIGTERM, kill -9 and exact resume."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest

from tests import runtime_fixtures as rf
from wam_jax import metrics

rf.enable_compile_cache()
session_mixture = rf.session_mixture  # shared session fixtures
session_config_file = rf.session_config_file
reference_run = rf.reference_run

STEPS = 8  # tiny_config's num_steps (shared compiled step); checkpoints every 3 steps


@pytest.fixture
def config_file(session_config_file):
    return session_config_file


@pytest.fixture
def uninterrupted(reference_run):
    return reference_run


def _start(config_file: str, workdir: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "launch.train", f"--config={config_file}", f"--workdir={workdir}"],
        cwd=rf.REPO, env=rf.cli_env(8), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def _wait_for_progress(proc: subprocess.Popen, predicate, what: str) -> None:
    """Waits (cold XLA caches compile for minutes on a busy 2-core machine) unless the run died."""
    ok = rf.wait_for(lambda: predicate() or proc.poll() is not None, timeout=900, interval=0.02)
    if not ok or proc.poll() is not None:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"{what}: the run {'exited' if ok else 'timed out'} first:\n{out[-4000:]}")


def _logged_steps(workdir: str) -> list[int]:
    path = os.path.join(workdir, metrics.METRICS_JSONL)
    if not os.path.exists(path):
        return []
    out = []
    with open(path) as f:
        for line in f:
            try:
                out.append(int(json.loads(line)["step"]))
            except (json.JSONDecodeError, KeyError):
                pass
    return out


def _checkpoints(workdir: str) -> list[int]:
    d = os.path.join(workdir, "checkpoints")
    return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def test_run_writes_metrics_checkpoints_and_tensorboard(uninterrupted):
    workdir, out = uninterrupted
    records = metrics.read_jsonl(os.path.join(workdir, metrics.METRICS_JSONL))
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    first = records[0]
    for key in ("loss", "grad_norm", "lr", "ema_momentum", "perf/step_time_s", "perf/data_wait_s",
                "perf/examples_per_s", "perf/mfu", "perf/tflops_per_device", "memory/compiled_total_gib"):
        assert key in first, key
    assert any(k.startswith("health/") for k in first), "the model's health metrics are logged"
    assert all(np.isfinite(r["loss"]) for r in records)
    assert 0 < first["perf/mfu"] < 1 and first["perf/step_time_s"] > 0
    assert any(n.startswith("events.out.tfevents") for n in os.listdir(workdir))
    assert _checkpoints(workdir) == [3, 6, 8]
    ckpt = os.path.join(workdir, "checkpoints", str(STEPS))
    assert sorted(n for n in os.listdir(ckpt) if not n.startswith("_") and "." not in n) == [
        "config", "data", "state", "stats"]
    assert "compiled the train step" in out.stderr


def test_rerun_of_a_finished_run_is_a_noop(uninterrupted, config_file):
    workdir, _ = uninterrupted
    before = open(os.path.join(workdir, metrics.METRICS_JSONL)).read()
    out = rf.run_cli([f"--config={config_file}", f"--workdir={workdir}"], timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "nothing to train" in out.stderr
    assert open(os.path.join(workdir, metrics.METRICS_JSONL)).read() == before


def test_sigterm_saves_and_the_same_command_resumes(tmp_path, config_file, uninterrupted):
    workdir = str(tmp_path / "w")
    proc = _start(config_file, workdir)
    try:
        _wait_for_progress(proc, lambda: len(_logged_steps(workdir)) >= 2, "waiting for 2 logged steps")
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, output[-3000:]
    assert "SIGTERM" in output
    m = re.search(r"preempted at step (\d+)", output)
    assert m, output[-3000:]
    stopped = int(m.group(1))
    assert 2 <= stopped < STEPS
    assert _checkpoints(workdir)[-1] == stopped  # saved exactly where it stopped
    out = rf.run_cli([f"--config={config_file}", f"--workdir={workdir}"], timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"resumed from step {stopped}" in out.stderr
    assert _logged_steps(workdir) == list(range(1, STEPS + 1))
    np.testing.assert_allclose(
        [rf.losses(workdir)[s] for s in range(1, STEPS + 1)],
        [rf.losses(uninterrupted[0])[s] for s in range(1, STEPS + 1)],
        rtol=1e-6,
    )


def test_kill_9_then_same_command_reproduces_the_uninterrupted_losses(tmp_path, config_file, uninterrupted):
    workdir = str(tmp_path / "w")
    proc = _start(config_file, workdir)
    try:
        # kill once a checkpoint exists and training has moved past it (a save may be in flight)
        _wait_for_progress(proc, lambda: bool(_checkpoints(workdir)) and max(_logged_steps(workdir), default=0) >= 4,
                           "waiting for a checkpoint and 4 logged steps")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    killed_at = max(_logged_steps(workdir))
    assert killed_at < STEPS, "the run finished before it could be killed"
    resumed_from = _checkpoints(workdir)[-1]
    out = rf.run_cli([f"--config={config_file}", f"--workdir={workdir}"], timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"resumed from step {resumed_from}" in out.stderr
    assert _logged_steps(workdir) == list(range(1, STEPS + 1))
    got = rf.losses(workdir)
    want = rf.losses(uninterrupted[0])
    diff = max(abs(got[s] - want[s]) / abs(want[s]) for s in range(1, STEPS + 1))
    print(f"\nkilled at step {killed_at}, resumed from {resumed_from}; max relative loss difference {diff:.2e}")
    assert diff <= 1e-6
