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
from wam_jax.training import metrics

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


def test_periodic_eval_and_export_at_end(tmp_path, session_mixture):
    """train.eval_every logs held-out `eval/*` scalars of the in-memory model (and writes
    eval/step_N/metrics.json) at those steps, compiling the eval step once; train.export_at_end
    leaves a loadable export in WORKDIR/export. Both are the callables passed in."""
    from wam_jax.inference import export, periodic_eval
    from wam_jax.training import trainer

    cfg = rf.tiny_config(session_mixture, **{"train.eval_every": 4, "train.eval_max_clips": 8,
                                             "train.export_at_end": True, "data.heldout_fraction": 0.3})
    workdir = str(tmp_path / "run")
    hook = periodic_eval.PeriodicEval(cfg, workdir)
    result = trainer.train(cfg, workdir, periodic_eval=hook, export=export.export)
    assert result.step == STEPS and result.export_dir == os.path.join(workdir, "export")
    (step_fn,) = hook.evaluator._fns.values()
    assert step_fn._cache_size() == 1  # both evaluations ran one compiled step
    assert _checkpoints(workdir) == [3, 6, 8]  # evaluated from memory: no save (nor read) at step 4
    records = metrics.read_jsonl(os.path.join(workdir, metrics.METRICS_JSONL))
    evals = {r["step"]: r for r in records if "eval/pred_l1/1" in r}
    assert sorted(evals) == [4, 8]
    for r in evals.values():
        for key in ("eval/copy_l1/1", "eval/l1_vs_copy/3", "eval/health/effective_rank"):
            assert np.isfinite(r[key]), key
    assert result.eval_metrics["eval/pred_l1/1"] == evals[8]["eval/pred_l1/1"]
    assert os.path.exists(os.path.join(workdir, "eval", "step_4", "metrics.json"))
    manifest = export.read_manifest(result.export_dir)
    assert manifest["step"] == STEPS
    # Training records and eval records share steps but not keys: losses are still complete.
    assert [r["step"] for r in records if "loss" in r] == list(range(1, STEPS + 1))


@pytest.mark.slow  # 3 training processes: ~1.5-2 min on a busy 2-core machine with a warm XLA cache
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


@pytest.mark.slow  # 3 training processes: ~1.5 min on a busy 2-core machine with a warm XLA cache
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


# -- metrics -------------------------------------------------------------------------------------


class _FakeDevice:
    def __init__(self, kind: str):
        self.device_kind = kind


@pytest.mark.parametrize(
    "kind, dtype, expected",
    [("TPU v5", "bfloat16", 459e12), ("TPU v5 lite", "bfloat16", 197e12), ("TPU v6 lite", "bfloat16", 918e12),
     ("TPU v4", "bfloat16", 275e12), ("NVIDIA H100 80GB HBM3", "bfloat16", 989e12),
     ("NVIDIA A100-SXM4-80GB", "float32", 19.5e12)],
)
def test_peak_flops_table(kind, dtype, expected):
    peak, source = metrics.peak_flops_per_device(_FakeDevice(kind), dtype)
    assert peak == expected and source.startswith("table:")


def test_cpu_peak_is_measured_and_split_over_simulated_devices():
    import jax

    peak, source = metrics.peak_flops_per_device(jax.devices()[0], "float32")
    assert source == "measured-matmul"
    assert 1e7 < peak * len(jax.local_devices()) < 1e13


def test_compiled_cost_and_memory():
    import jax
    import jax.numpy as jnp

    compiled = jax.jit(lambda a, b: a @ b).lower(
        jax.ShapeDtypeStruct((64, 32), jnp.float32), jax.ShapeDtypeStruct((32, 16), jnp.float32)).compile()
    assert metrics.compiled_flops(compiled) == 2 * 64 * 32 * 16
    mem = metrics.compiled_memory(compiled)
    assert mem["argument_bytes"] == (64 * 32 + 32 * 16) * 4 and mem["output_bytes"] == 64 * 16 * 4
    assert "memory/compiled_total_gib" in metrics.device_memory(mem)  # CPU: no allocator stats


def test_step_timer_reports_throughput_and_mfu():
    t = metrics.StepTimer()
    t.t0 -= 2.0  # pretend 2 s passed
    for _ in range(4):
        t.tick()
        t.add_data_wait(0.1)
    out = t.summary(global_batch=8, flops_per_device=1e9, peak=1e10)
    assert abs(out["perf/step_time_s"] - 0.5) < 0.05
    assert abs(out["perf/data_wait_s"] - 0.1) < 1e-9
    assert abs(out["perf/examples_per_s"] - 16) < 2
    assert abs(out["perf/mfu"] - 1e9 / 0.5 / 1e10) < 0.02


def test_metrics_jsonl_truncation_after_a_hard_kill(tmp_path):
    w = metrics.JsonlWriter(str(tmp_path))
    for s in range(1, 6):
        w.write(s, {"loss": 1.0 / s})
    w.close()
    with open(tmp_path / metrics.METRICS_JSONL, "a") as f:
        f.write('{"step": 6, "lo')  # cut off mid-line by kill -9
    metrics.truncate_jsonl(str(tmp_path), 3)
    recs = metrics.read_jsonl(str(tmp_path / metrics.METRICS_JSONL))
    assert [r["step"] for r in recs] == [1, 2, 3] and recs[2]["loss"] == pytest.approx(1 / 3)


# -- AOT compile (launch/compile.py) -------------------------------------------------------------


@pytest.mark.parametrize(
    "name, topology, devices, slices",
    [("v5p-8", "v5:2x2x1", 4, 1), ("v5p-64", "v5:2x4x4", 32, 1), ("v5p-256x2", "v5:4x4x8", 256, 2),
     ("v4-32", "v4:2x2x4", 16, 1), ("v6e-8", "v6e:2x4", 8, 1), ("v5e-16", "v5e:4x4", 16, 1), ("cpu:8", "", 8, 1)],
)
def test_topology_names(name, topology, devices, slices):
    from launch import compile as aot

    t = aot.parse_target(name)
    assert (t.topology, t.num_devices, t.num_slices) == (topology, devices, slices)


def test_bad_topology_name():
    from launch import compile as aot

    with pytest.raises(ValueError, match="--topology='v5p-7'"):
        aot.parse_target("v5p-7")
    with pytest.raises(ValueError, match="expected cpu:N or a TPU slice name"):
        aot.parse_target("h100")


def test_aot_compile_for_simulated_cpu_devices(session_mixture):
    import jax

    from launch import compile as aot

    cfg = rf.tiny_config(session_mixture)
    report = aot.compile_train_step(cfg, jax.devices()[:8])
    assert report["mesh"] == {"data": 2, "fsdp": 4, "tensor": 1}
    assert report["flops_per_device"] > 0 and report["temp_bytes"] > 0
    text, fits = aot.format_report(aot.parse_target("cpu:8"), report)
    assert fits and "temporaries" in text and "fits             yes" in text


def test_aot_compile_for_a_tpu_topology_without_tpus(session_mixture):
    pytest.importorskip("libtpu", reason="TPU targets need libtpu (pip install 'jax[tpu]==0.10.2')")
    from launch import compile as aot

    cfg = rf.tiny_config(session_mixture, **{"mesh.ici_data": 1, "mesh.ici_fsdp": -1})
    target = aot.parse_target("v5p-8")
    report = aot.compile_train_step(cfg, aot.target_devices(target))
    text, fits = aot.format_report(target, report)
    assert fits and report["num_devices"] == 4


def test_compile_cli_reports_memory_and_fit(session_config_file):
    """`python -m launch.compile --topology=cpu:8` sets up the 8 devices itself (fresh process)."""
    env = rf.cli_env(1)  # deliberately the wrong device count: the script must set its own
    out = subprocess.run([sys.executable, "-m", "launch.compile", f"--config={session_config_file}",
                          "--topology=cpu:8"], cwd=rf.REPO, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    for field in ("arguments", "outputs", "temporaries", "total/device", "fits             yes"):
        assert field in out.stdout, out.stdout
    assert "{'data': 2, 'fsdp': 4, 'tensor': 1}" in out.stdout


def test_progress_line_shows_step_loss_speed_eta_and_data_wait():
    from wam_jax.training.metrics import progress_line

    line = progress_line(200, 2000, {"loss": 1.23456, "perf/step_time_s": 0.5, "perf/data_wait_s": 0.05})
    assert line == "step 200/2000 (10%) | loss 1.235 | 2.00 steps/s | ETA 15m00s | data wait 10%"
    assert "ETA 13h53m20s" in progress_line(0, 100_000, {"loss": 1.0, "perf/step_time_s": 0.5})
    assert progress_line(5, 10, {"loss": 2.0}) == "step 5/10 (50%) | loss 2"
