"""Faults injected into training: each one is survived or stopped with a clear error, and nothing
already saved is lost (docs/RELIABILITY.md lists them with these tests)."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import runtime_fixtures as rf
from wam_jax import sharding
from wam_jax.training import train_step as ts

rf.enable_compile_cache()
session_mixture = rf.session_mixture
session_config_file = rf.session_config_file


def nan_loss(bad_steps):
    """The real loss, made NaN (loss and gradients) where `bad_steps(step)` holds."""
    from wam_jax.training import objectives

    def loss_fn(model, target, batch, key, loss_cfg, step):
        loss, metrics = objectives.loss_fn(model, target, batch, key, loss_cfg, step)
        poison = jnp.where(bad_steps(step), jnp.nan, 1.0)
        return loss * poison, {**metrics, "loss/injected": poison}

    return loss_fn


def same(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def test_a_non_finite_step_changes_nothing_but_the_step(session_mixture):
    cfg = rf.tiny_config(session_mixture, **{"mesh.ici_data": 1, "mesh.ici_fsdp": 1})
    mesh = sharding.make_mesh(cfg.mesh, jax.devices()[:1])
    built = ts.build(cfg, mesh, loss_fn=nan_loss(lambda s: s == 2))
    state = built.init(cfg)
    it = rf.loader_batches(cfg, 4)
    before, flags = [], []
    for b in it:
        before.append(jax.device_get(state.to_dict()))
        state, m = built.step_fn(state, sharding.local_to_global(b, mesh, cfg.data.global_batch_size))
        flags.append(float(m["nonfinite"]))
    after = jax.device_get(state.to_dict())
    assert flags == [0.0, 0.0, 1.0, 0.0]
    for key in ("params", "opt_state", "target", "model_state"):
        assert same(before[2][key], before[3][key]), f"the non-finite step changed {key}"
    assert not same(before[1]["params"], before[2]["params"])  # finite steps still train
    assert not same(before[3]["params"], after["params"])
    assert int(after["step"]) == 4
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(after["params"]))


_NAN_AFTER_STEP_4 = """
import sys
import jax.numpy as jnp
from wam_jax import config_utils
from wam_jax.training import objectives, trainer
def loss_fn(model, target, batch, key, loss_cfg, step):
    loss, metrics = objectives.loss_fn(model, target, batch, key, loss_cfg, step)
    poison = jnp.where(step >= 4, jnp.nan, 1.0)
    return loss * poison, {**metrics, "loss/injected": poison}
cfg = config_utils.load_config(sys.argv[1], sys.argv[3:])
try:
    trainer.train(cfg, sys.argv[2], loss_fn=loss_fn)
except trainer.NonFiniteError as e:
    print("NonFiniteError:", e)
"""


def test_consecutive_non_finite_steps_stop_with_the_step_terms_and_last_good_checkpoint(tmp_path, session_config_file):
    """Through the trainer, in a process of its own on one device (the NaN loss is a new program:
    one device compiles it in seconds)."""
    import subprocess
    import sys

    import orbax.checkpoint as ocp

    from wam_jax.training import metrics

    workdir = str(tmp_path / "run")
    out = subprocess.run(
        [sys.executable, "-c", _NAN_AFTER_STEP_4, session_config_file, workdir, "--config.mesh.ici_data=1",
         "--config.mesh.ici_fsdp=1", "--config.train.max_nonfinite_steps=2"],
        cwd=rf.REPO, env=rf.cli_env(1), capture_output=True, text=True, timeout=600)
    msg = next((ln for ln in out.stdout.splitlines() if ln.startswith("NonFiniteError:")), out.stderr[-3000:])
    assert "stopped at step 6" in msg and "2 consecutive" in msg, msg
    assert "loss/injected" in msg and "last good checkpoint is step 6" in msg, msg
    saved = ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", "6", "state"))
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(saved["params"]))
    records = {r["step"]: r for r in metrics.read_jsonl(os.path.join(workdir, metrics.METRICS_JSONL))}
    assert records[4]["train/skipped_steps"] == 0 and records[5]["train/skipped_steps"] == 1


# ---------------------------------------------------------------------------------------------
# A second trainer on the same workdir


def _dead_pid() -> int:
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _write_lock(workdir, **fields) -> None:
    import json
    import socket
    import time

    from wam_jax.training import workdir_lock

    now = time.time()
    info = {"host": socket.gethostname(), "pid": os.getpid(), "started": now - 60, "heartbeat": now,
            "run_id": "other", **fields}
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, workdir_lock.LOCK_NAME), "w") as f:
        json.dump(info, f)


def test_a_live_holder_is_named_and_a_released_lock_is_free(tmp_path):
    from wam_jax.training import workdir_lock

    lock = workdir_lock.acquire(str(tmp_path))
    with pytest.raises(workdir_lock.WorkdirLockError) as e:
        workdir_lock.acquire(str(tmp_path))
    assert f"pid {os.getpid()}" in str(e.value) and "in use by another trainer" in str(e.value)
    lock.release()
    assert not (tmp_path / workdir_lock.LOCK_NAME).exists()
    workdir_lock.acquire(str(tmp_path)).release()


def test_the_heartbeat_moves_and_release_leaves_someone_elses_lock(tmp_path):
    import json

    from wam_jax.training import workdir_lock

    lock = workdir_lock.acquire(str(tmp_path), heartbeat_s=0.05)
    path = tmp_path / workdir_lock.LOCK_NAME
    first = json.loads(path.read_text())["heartbeat"]
    assert rf.wait_for(lambda: json.loads(path.read_text())["heartbeat"] > first, timeout=10, interval=0.05)
    lock._stop.set()
    lock._thread.join()
    _write_lock(str(tmp_path), run_id="someone else")
    lock.release()
    assert json.loads(path.read_text())["run_id"] == "someone else"


@pytest.mark.parametrize("fields, stale", [
    ({"pid": None}, True),  # this host, dead process (pid filled in below)
    ({"host": "elsewhere", "heartbeat": 0.0}, True),  # another host, heartbeat long ago
    ({"host": "elsewhere"}, False),  # another host, fresh heartbeat: may be running
])
def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path, caplog, fields, stale):
    from wam_jax.training import workdir_lock

    if "pid" in fields:
        fields = {"pid": _dead_pid()}
    _write_lock(str(tmp_path), **fields)
    if not stale:
        with pytest.raises(workdir_lock.WorkdirLockError, match="host 'elsewhere'"):
            workdir_lock.acquire(str(tmp_path))
        return
    with caplog.at_level("WARNING"):
        lock = workdir_lock.acquire(str(tmp_path))
    assert "taking over the workdir lock" in caplog.text
    lock.release()


def test_wam_train_refuses_a_workdir_another_trainer_holds(tmp_path, session_config_file):
    import subprocess
    import sys

    from wam_jax.training import workdir_lock

    workdir = str(tmp_path / "run")
    lock = workdir_lock.acquire(workdir)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "launch.train", f"--config={session_config_file}", f"--workdir={workdir}"],
            cwd=rf.REPO, env=rf.cli_env(8), capture_output=True, text=True, timeout=300)
    finally:
        lock.release()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "in use by another trainer" in proc.stderr and f"pid {os.getpid()}" in proc.stderr
    assert not os.path.exists(os.path.join(workdir, "checkpoints"))


# ---------------------------------------------------------------------------------------------
# Bad records in the middle of training


def _dataset_with_bad_frame(root: str, bad_episode: int = 2) -> str:
    """A robot dataset (one shard) whose episode `bad_episode` has one undecodable JPEG frame."""
    from data_pipelines import records

    path = rf.write_dataset(os.path.join(root, "robot"), num_episodes=6, num_shards=1)
    (shard,) = records.shard_paths(path)
    episodes = list(records.iter_episodes([shard]))
    episodes[bad_episode].frames[5] = b"\xff\xd8 not a jpeg"
    w = records.ShardWriter(shard)
    for ep in episodes:
        w.write(ep)
    w.close()
    return path


def _batches(it, n):
    return [next(it) for _ in range(n)]


def test_a_corrupt_jpeg_is_skipped_logged_and_the_iterator_still_resumes_exactly(tmp_path, caplog):
    from data_pipelines import loader

    cfg = rf.tiny_config(_dataset_with_bad_frame(str(tmp_path)), **{"data.heldout_fraction": 0.0})
    with caplog.at_level("WARNING"):
        it = loader.make_iterator(cfg, split="train", seed=0)
        _batches(it, 3)
        state = it.get_state()
        after = _batches(it, 6)
        it.close()
    assert "skipping an unreadable record" in caplog.text
    assert "episodes-00000-of-00001.array_record record 2" in caplog.text and "robot-0002" in caplog.text
    it = loader.make_iterator(cfg, split="train", seed=0)
    it.set_state(state)
    again = _batches(it, 6)
    it.close()
    for a, b in zip(after, again, strict=True):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def test_past_max_bad_records_the_run_stops_with_the_list(tmp_path):
    from data_pipelines import loader, transforms

    cfg = rf.tiny_config(_dataset_with_bad_frame(str(tmp_path)), **{"data.max_bad_records": 0, "data.heldout_fraction": 0.0})
    it = loader.make_iterator(cfg, split="train", seed=0)
    with pytest.raises(transforms.BadRecordsError, match=r"max_bad_records=0\): .*record 2 \('robot-0002'\)"):
        _batches(it, 20)
    it.close()


def test_a_corrupt_chunk_is_skipped_and_a_truncated_shard_is_named(tmp_path):
    from data_pipelines import loader, records

    path = rf.write_dataset(str(tmp_path / "robot"), num_episodes=6, num_shards=1)
    (shard,) = records.shard_paths(path)
    frames = records.frames_shard_name(shard)
    size = os.path.getsize(frames)
    with open(frames, "r+b") as f:  # zero a stretch inside the first 64 KiB block, past its header:
        f.seek(min(20000, size // 2))  # the frame records there fail their hash, the file still opens
        f.write(b"\0" * 256)
    cfg = rf.tiny_config(path, **{"data.heldout_fraction": 0.0})
    it = loader.make_iterator(cfg, split="train", seed=0)
    batches = _batches(it, 4)  # served from the other records
    it.close()
    assert all(b["video"].shape[0] == 8 for b in batches)
    sources = loader.make_dataset(cfg, split="eval", data=path)  # eval: masked stand-ins, same count
    assert sum(int(b["timestep_mask"].any(-1).sum()) for b in sources) < sum(
        len(b["timestep_mask"]) for b in loader.make_dataset(cfg, split="eval", data=path))
    with open(shard, "r+b") as f:
        f.truncate(os.path.getsize(shard) // 2)
    with pytest.raises(records.DatasetFormatError, match="episodes-00000-of-00001.array_record: this shard cannot be opened"):
        loader.make_iterator(cfg, split="train", seed=0)


# ---------------------------------------------------------------------------------------------
# Write failures


def _mount_tmpfs(path: str, size_mb: int, remount: bool = False) -> bool:
    import subprocess

    os.makedirs(path, exist_ok=True)
    opts = f"{'remount,' if remount else ''}size={size_mb}m"
    return subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", path], capture_output=True).returncode == 0


# Orbax's save fails inside TensorStore: where no small filesystem can be mounted, the same error
# is raised from `CheckpointManager.save` at the second save, in the training process itself.
_INJECT_ENOSPC = """
import sys
import orbax.checkpoint as ocp
real, calls = ocp.CheckpointManager.save, []
def save(self, step, *a, **k):
    calls.append(step)
    if len(calls) >= 2:
        raise ValueError("RESOURCE_EXHAUSTED: Failed writing: No space left on device [os_error_code='28']")
    return real(self, step, *a, **k)
ocp.CheckpointManager.save = save
from launch.train import run
run(sys.argv)
"""


def test_disk_full_while_saving_keeps_the_last_checkpoint_and_the_rerun_resumes(tmp_path, session_config_file):
    """A 9 MiB filesystem: the first tiny checkpoint (~6 MiB) fits, the second does not. wam-train
    exits with status 2 naming the directory, the OS error and the kept checkpoint; with space
    again, the same command resumes from it. One device (a save failing mid-step must not leave
    simulated-device collectives waiting on each other)."""
    import subprocess
    import sys

    root = str(tmp_path / "disk")
    mounted = _mount_tmpfs(root, 9)
    workdir = os.path.join(root, "run")
    args = [f"--config={session_config_file}", f"--workdir={workdir}", "--config.mesh.ici_data=1",
            "--config.mesh.ici_fsdp=1", "--config.train.checkpoint_every=2", "--config.train.max_to_keep=1"]
    first = ["-m", "launch.train"] if mounted else ["-c", _INJECT_ENOSPC]
    try:
        out = subprocess.run([sys.executable, *first, *args], cwd=rf.REPO, env=rf.cli_env(1),
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 2, out.stderr[-3000:]
        err = next((ln for ln in out.stderr.splitlines() if ln.startswith("wam-train: error:")), out.stderr[-3000:])
        assert err.startswith("wam-train: error: could not write a checkpoint"), err
        assert os.path.join(workdir, "checkpoints") in err and "No space left on device" in err, err
        assert "the last complete checkpoint, step 2, is kept" in err, err
        assert "Event loop is closed" not in out.stderr, out.stderr[-3000:]  # Orbax's after-failure noise
        assert sorted(n for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.isdigit()) == ["2"]
        if mounted:
            assert _mount_tmpfs(root, 64, remount=True)
        again = subprocess.run([sys.executable, "-m", "launch.train", *args], cwd=rf.REPO, env=rf.cli_env(1),
                               capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, again.stderr[-3000:]
        assert "resumed from step 2" in again.stderr and "done at step 8" in again.stderr
    finally:
        if mounted:
            subprocess.run(["umount", "-l", root], capture_output=True)


_INJECT_METRICS_ENOSPC = """
import errno, sys
from wam_jax.training import metrics
real = metrics.JsonlWriter.write
def write(self, step, scalars):
    if step == 5:
        raise OSError(errno.ENOSPC, "No space left on device", "metrics.jsonl")
    return real(self, step, scalars)
metrics.JsonlWriter.write = write
from launch.train import run
run(sys.argv)
"""


def test_a_metrics_write_failure_stops_the_run_and_names_the_last_checkpoint(tmp_path, session_config_file):
    import subprocess
    import sys

    workdir = str(tmp_path / "run")
    out = subprocess.run(
        [sys.executable, "-c", _INJECT_METRICS_ENOSPC, f"--config={session_config_file}",
         f"--workdir={workdir}", "--config.mesh.ici_data=1", "--config.mesh.ici_fsdp=1"],
        cwd=rf.REPO, env=rf.cli_env(1), capture_output=True, text=True, timeout=600)
    assert out.returncode == 2, out.stderr[-3000:]
    err = next((ln for ln in out.stderr.splitlines() if ln.startswith("wam-train: error:")), out.stderr[-3000:])
    assert "could not write the metrics of step 5" in err and "No space left on device" in err, err
    assert "the last complete checkpoint is step 3" in err, err
    assert sorted(n for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.isdigit()) == ["3"]
