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


def test_consecutive_non_finite_steps_stop_with_the_step_terms_and_last_good_checkpoint(tmp_path, session_mixture):
    import orbax.checkpoint as ocp

    from wam_jax.training import metrics, trainer

    cfg = rf.tiny_config(session_mixture, **{"train.max_nonfinite_steps": 2})
    workdir = str(tmp_path / "run")
    with pytest.raises(trainer.NonFiniteError) as e:
        trainer.train(cfg, workdir, loss_fn=nan_loss(lambda s: s >= 4))
    msg = str(e.value)
    assert "stopped at step 6" in msg and "2 consecutive" in msg, msg
    assert "loss/injected" in msg and "last good checkpoint is step 6" in msg, msg
    ckpt = os.path.join(workdir, "checkpoints", "6", "state")
    saved = ocp.StandardCheckpointer().restore(os.path.abspath(ckpt))
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
    size = os.path.getsize(shard)
    with open(shard, "r+b") as f:  # zero a stretch inside the first 64 KiB block, past its header:
        f.seek(min(20000, size // 2))  # the record chunk there fails its hash, the file still opens
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
        f.truncate(size // 2)
    with pytest.raises(records.DatasetFormatError, match="episodes-00000-of-00001.array_record: this shard cannot be opened"):
        loader.make_iterator(cfg, split="train", seed=0)
