"""2 processes x 4 CPU devices over 127.0.0.1 (jax.distributed + gloo) == 1 process x 8 devices.

Every subprocess runs under a timeout: a peer that never joins `jax.distributed` aborts (or
hangs) the process instead of raising a Python error.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest

from tests import runtime_fixtures as rf

rf.enable_compile_cache()
session_mixture = rf.session_mixture  # shared session fixtures
session_config_file = rf.session_config_file
reference_run = rf.reference_run

TIMEOUT = 600


def _launch(config_file: str, workdir: str, port: int, process_id: int, num_processes: int = 2,
            extra: tuple[str, ...] = ()) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "launch.train", f"--config={config_file}", f"--workdir={workdir}",
         f"--coordinator=127.0.0.1:{port}", f"--num_processes={num_processes}", f"--process_id={process_id}",
         *extra],
        cwd=rf.REPO, env=rf.cli_env(4), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def _wait_all(procs: list[subprocess.Popen], timeout: float) -> list[str]:
    deadline = time.monotonic() + timeout
    outs = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            outs.append(out)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    return outs


@pytest.mark.slow  # two processes compile and train on 2 cores: minutes with a cold XLA cache
def test_two_processes_match_one_process(tmp_path, session_config_file, reference_run):
    workdir = str(tmp_path / "w")
    port = rf.free_port()
    procs = [_launch(session_config_file, workdir, port, i) for i in range(2)]
    outs = _wait_all(procs, TIMEOUT)
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-4000:]
    assert "over 8 devices (2 processes" in outs[0]
    # each process loaded its own half of every batch and saved its own data-iterator state
    data = os.path.join(workdir, "checkpoints", "8", "data")
    assert sorted(n for n in os.listdir(data) if n.endswith(".json")) == [
        "process_0-of-2.json", "process_1-of-2.json"]
    got = rf.losses(workdir)
    want = rf.losses(reference_run[0])
    assert sorted(got) == sorted(want) == list(range(1, 9))
    rel = max(abs(got[s] - want[s]) / abs(want[s]) for s in want)
    print(f"\n1x8 losses {[round(want[s], 6) for s in sorted(want)]}\n2x4 losses "
          f"{[round(got[s], 6) for s in sorted(got)]}\nmax relative difference {rel:.3e}")
    assert rel <= 1e-5
    assert np.isfinite(list(got.values())).all()


def test_a_peer_that_never_joins_ends_the_process(tmp_path, session_config_file):
    """Only process 0 of 2 starts: it must give up (non-zero exit) instead of hanging forever."""
    proc = _launch(session_config_file, str(tmp_path / "w"), rf.free_port(), 0, extra=("--init_timeout=5",))
    try:
        out, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("process 0 kept waiting for a peer that never joined")
    assert proc.returncode != 0, out[-3000:]


@pytest.mark.slow  # two processes compile a 2000-step schedule and are stopped mid-run: minutes
def test_sigterm_to_one_process_stops_both_at_the_same_saved_step_and_both_resume(tmp_path, session_config_file):
    """A preemption notice to one host (SIGTERM to process 1 only) reaches the other through JAX's
    preemption sync point: both save the same step and exit 0; re-running both resumes there."""
    import json
    import signal

    workdir = str(tmp_path / "w")
    long_run = ("--config.train.num_steps=2000", "--config.train.checkpoint_every=0")
    port = rf.free_port()
    procs = [_launch(session_config_file, workdir, port, i, extra=long_run) for i in range(2)]
    jsonl = os.path.join(workdir, "metrics.jsonl")

    def trained() -> int:
        if not os.path.exists(jsonl):
            return 0
        with open(jsonl) as f:
            return sum(1 for line in f if '"loss"' in line)

    ok = rf.wait_for(lambda: trained() >= 3 or any(p.poll() is not None for p in procs), timeout=TIMEOUT)
    assert ok and all(p.poll() is None for p in procs), "the run ended or never started training"
    procs[1].send_signal(signal.SIGTERM)
    outs = _wait_all(procs, TIMEOUT)
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-4000:]
    stopped = [int(out.split("stopping at step ")[1].split()[0]) for out in outs if "stopping at step " in out]
    assert len(stopped) == 2 and stopped[0] == stopped[1], [o[-2000:] for o in outs]
    step = stopped[0]
    assert 3 <= step < 2000
    data = os.path.join(workdir, "checkpoints", str(step), "data")
    assert sorted(n for n in os.listdir(data) if n.endswith(".json")) == [
        "process_0-of-2.json", "process_1-of-2.json"]
    before = {json.loads(line)["step"] for line in open(jsonl) if '"loss"' in line}

    resume = (f"--config.train.num_steps={step + 2}", "--config.train.checkpoint_every=0")
    port = rf.free_port()
    procs = [_launch(session_config_file, workdir, port, i, extra=resume) for i in range(2)]
    outs = _wait_all(procs, TIMEOUT)
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-4000:]
        assert f"resumed from step {step}" in out, out[-3000:]
    after = {json.loads(line)["step"] for line in open(jsonl) if '"loss"' in line}
    assert after == before | {step + 1, step + 2}
