"""Checkpoints: restore onto other device counts, data iterator state, fall-backs, mismatches."""

from __future__ import annotations

import logging
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data_pipelines import loader
from tests import runtime_fixtures as rf
from wam_jax import sharding
from wam_jax.training import checkpointing, trainer
from wam_jax.training import train_step as ts

rf.enable_compile_cache()


@pytest.fixture(scope="module")
def mixture(tmp_path_factory):
    return rf.write_mixture(str(tmp_path_factory.mktemp("data")))


def _perturbed_state(built: ts.CompiledStep, config) -> ts.TrainState:
    """The initial state with every float leaf moved by distinct noise (non-zero Adam moments)."""
    state = built.init(config)

    def perturb(s):
        leaves, treedef = jax.tree.flatten(s)
        out = []
        for i, x in enumerate(leaves):
            if jnp.issubdtype(x.dtype, jnp.floating):
                x = x + 0.01 * jax.random.normal(jax.random.key(i), x.shape, x.dtype)
            out.append(x)
        s = jax.tree.unflatten(treedef, out)
        return s.replace(step=jnp.asarray(7, jnp.int32))

    with jax.set_mesh(built.shardings.step.mesh):
        return jax.jit(perturb, out_shardings=built.shardings)(state)


def _prefetch(config, mesh):
    it = loader.make_iterator(config, split="train", process_index=0, process_count=1, seed=int(config.seed))
    return loader.device_prefetch(it, lambda b: sharding.local_to_global(b, mesh, config.data.global_batch_size), 2)


def test_save_on_8_devices_restore_on_4_and_1(mixture, tmp_path):
    cfg8 = rf.tiny_config(mixture, **{"mesh.ici_data": 1, "mesh.ici_fsdp": 8})
    mesh8 = sharding.make_mesh(cfg8.mesh, jax.devices()[:8])
    built8 = ts.build(cfg8, mesh8)
    state8 = _perturbed_state(built8, cfg8)
    saved = jax.device_get(state8.to_dict())
    batches = _prefetch(cfg8, mesh8)
    for _ in range(3):  # consume 3 batches; 2 more are in flight
        next(batches)
    expected_next = jax.device_get(next(_prefetch_after(cfg8, mesh8, 3)))

    ckpt = checkpointing.Checkpointer(str(tmp_path / "ckpt"))
    ckpt.save(7, state8.to_dict(), batches, cfg8, loader.mixture_info(cfg8))
    ckpt.close()
    batches.close()

    per_device = {8: sharding.bytes_per_device(state8.params)}
    for n in (4, 1):
        cfg = rf.tiny_config(mixture, **{"mesh.ici_data": 1, "mesh.ici_fsdp": -1})
        mesh = sharding.make_mesh(cfg.mesh, jax.devices()[:n])
        built = ts.build(cfg, mesh)
        restored_batches = _prefetch(cfg, mesh)
        ckpt = checkpointing.Checkpointer(str(tmp_path / "ckpt"))
        step, state_dict, stats, data_restored = ckpt.restore_latest(built.abstract.to_dict(), restored_batches, cfg)
        ckpt.close()
        assert step == 7 and data_restored
        assert stats["sources"][0]["path"] == loader.mixture_info(cfg)["sources"][0]["path"]
        state = ts.TrainState.from_dict(state_dict)
        # every leaf, optimizer moments included, lands with the new mesh's sharding and the saved values
        same_sharding = jax.tree.map(lambda x, s: x.sharding == s, state, built.shardings)
        assert all(jax.tree.leaves(same_sharding))
        for a, b in zip(jax.tree.leaves(saved), jax.tree.leaves(jax.device_get(state.to_dict())), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        per_device[n] = sharding.bytes_per_device(state.params)
        # the data stream continues right after the last consumed batch (not after the prefetched ones)
        got = jax.device_get(next(restored_batches))
        for k in expected_next:
            np.testing.assert_array_equal(got[k], expected_next[k], err_msg=k)
        restored_batches.close()
    assert per_device[8] < per_device[4] < per_device[1]


def _prefetch_after(config, mesh, n):
    it = _prefetch(config, mesh)
    for _ in range(n):
        next(it)
    return it


def _small_state(seed: int = 0, width: int = 4) -> dict:
    r = np.random.default_rng(seed)
    return {
        "step": jnp.asarray(seed, jnp.int32),
        "params": {"encoder": {"kernel": jnp.asarray(r.normal(size=(width, 3)), jnp.float32)}},
        "model_state": {},
        "target": {"kernel": jnp.asarray(r.normal(size=(width, 3)), jnp.float32)},
    }


def _abstract(state: dict) -> dict:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def test_interrupted_and_damaged_checkpoints_fall_back(tmp_path, caplog, mixture):
    cfg = rf.tiny_config(mixture)
    ckpt = checkpointing.Checkpointer(str(tmp_path))
    for step in (2, 4):
        ckpt.save(step, _small_state(step), None, cfg, {})
    ckpt.close()
    # an interrupted save (kill -9 during the write): Orbax's temporary directory
    tmp = tmp_path / "6.orbax-checkpoint-tmp"
    shutil.copytree(tmp_path / "4", tmp)
    shutil.rmtree(tmp / "state" / "d", ignore_errors=True)
    # a damaged "complete" checkpoint: its array data is gone
    for root, _, files in os.walk(tmp_path / "4" / "state"):
        for f in files:
            if "ocdbt" in root or root.endswith("/d"):
                os.remove(os.path.join(root, f))

    ckpt = checkpointing.Checkpointer(str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="wam_jax.training.checkpointing"):
        step, state, _, data_restored = ckpt.restore_latest(_abstract(_small_state(0)), None, cfg)
    assert step == 2 and not data_restored
    np.testing.assert_array_equal(state["params"]["encoder"]["kernel"], _small_state(2)["params"]["encoder"]["kernel"])
    text = caplog.text
    assert "step 6" in text and "not completely written" in text
    assert "checkpoint step 4" in text and "falling back to step 2" in text
    assert "resuming from step 2" in text
    # saving step 4 again moves the damaged one aside instead of failing
    ckpt.save(4, _small_state(40), None, cfg, {})
    ckpt.wait()
    assert any(n.startswith("4.damaged-") for n in os.listdir(tmp_path))
    ckpt.close()
    ckpt = checkpointing.Checkpointer(str(tmp_path))
    step, state, _, _ = ckpt.restore_latest(_abstract(_small_state(0)), None, cfg)
    ckpt.close()
    assert step == 4
    np.testing.assert_array_equal(state["target"]["kernel"], _small_state(40)["target"]["kernel"])


def test_every_checkpoint_unreadable_is_an_error(tmp_path, mixture):
    cfg = rf.tiny_config(mixture)
    ckpt = checkpointing.Checkpointer(str(tmp_path))
    ckpt.save(3, _small_state(3), None, cfg, {})
    ckpt.close()
    shutil.rmtree(tmp_path / "3" / "state")
    ckpt = checkpointing.Checkpointer(str(tmp_path))
    with pytest.raises(OSError, match="no checkpoint in .* could be restored: step 3"):
        ckpt.restore_latest(_abstract(_small_state(0)), None, cfg)
    ckpt.close()


def test_incompatible_model_names_parameter_paths(tmp_path, mixture):
    small = rf.tiny_config(mixture)
    wide = rf.tiny_config(mixture, **{"model.encoder.width": 96})
    mesh = sharding.make_mesh(small.mesh)
    built = ts.build(small, mesh)
    ckpt = checkpointing.Checkpointer(str(tmp_path))
    ckpt.save(1, built.init(small).to_dict(), None, small, {})
    ckpt.close()
    _, _, abstract_wide = ts.abstract_train_state(wide, mesh)
    ckpt = checkpointing.Checkpointer(str(tmp_path))
    with pytest.raises(checkpointing.CheckpointMismatchError) as err:
        ckpt.restore_latest(abstract_wide.to_dict(), None, wide)
    ckpt.close()
    msg = str(err.value)
    assert "different model" in msg and str(tmp_path) in msg
    assert "params/encoder/" in msg and "checkpoint [" in msg and "model [" in msg
    assert "encoder.width: checkpoint 64, now 96" in msg


def test_mismatch_lists_changed_values_not_keys_added_since(tmp_path, mixture):
    """A checkpoint whose saved config predates newer keys: only real differences are listed."""
    old = checkpointing.config_to_json(rf.tiny_config(mixture))
    del old["model"]["scan_unroll"], old["model"]["latent_action"]["video_cond"]
    ckpt = checkpointing.Checkpointer(str(tmp_path))
    ckpt.save(1, _small_state(1, width=4), None, old, {})
    ckpt.close()
    wide = rf.tiny_config(mixture, **{"model.encoder.width": 96})
    ckpt = checkpointing.Checkpointer(str(tmp_path))
    with pytest.raises(checkpointing.CheckpointMismatchError) as err:
        ckpt.restore_latest(_abstract(_small_state(0, width=8)), None, wide)
    ckpt.close()
    msg = str(err.value)
    assert "Model config differences: encoder.width: checkpoint 64, now 96." in msg


def test_retention_max_to_keep_and_keep_period(tmp_path, mixture):
    cfg = rf.tiny_config(mixture)
    ckpt = checkpointing.Checkpointer(str(tmp_path), max_to_keep=2, keep_period=4)
    for step in range(1, 10):
        ckpt.save(step, _small_state(step), None, cfg, {})
    ckpt.wait()
    assert ckpt.all_steps() == [4, 8, 9]
    ckpt.close()


def test_checkpoint_holds_config_and_dataset_stats(tmp_path, mixture):
    cfg = rf.tiny_config(mixture)
    stats = loader.mixture_info(cfg)
    ckpt = checkpointing.Checkpointer(str(tmp_path))
    ckpt.save(5, _small_state(5), None, cfg, stats)
    ckpt.wait()
    saved = ckpt.saved_config(5)
    assert saved["model"]["encoder"]["width"] == cfg.model.encoder.width
    assert saved["data"]["mixture"] == mixture
    _, restored_stats, _ = ckpt.restore(5, _abstract(_small_state(0)), None)
    assert restored_stats["embodiments"] == stats["embodiments"]
    assert restored_stats["stats"][0]["action"]["mean"] == pytest.approx(stats["stats"][0]["action"]["mean"])
    ckpt.close()


def test_process_count_change_restarts_data_at_the_saved_position(tmp_path, mixture, caplog):
    cfg = rf.tiny_config(mixture)
    mesh = sharding.make_mesh(cfg.mesh)
    batches = _prefetch(cfg, mesh)
    next(batches)
    ckpt = checkpointing.Checkpointer(str(tmp_path))
    ckpt.save(3, _small_state(3), batches, cfg, {})
    ckpt.wait()
    data_dir = tmp_path / "3" / "data"
    assert [n for n in os.listdir(data_dir) if n.endswith(".json")] == ["process_0-of-1.json"]
    # as if written by 2 processes: no state for this (single) process
    os.rename(data_dir / "process_0-of-1.json", data_dir / "process_0-of-2.json")
    fresh = _prefetch(cfg, mesh)
    _, _, data_restored = ckpt.restore(3, _abstract(_small_state(0)), fresh)
    assert not data_restored
    with caplog.at_level(logging.WARNING, logger="wam_jax.training.trainer"):
        trainer._restart_data(cfg, 3, fresh)
    assert "different process count" in caplog.text
    assert fresh.get_state() == {"next_index": 3 * cfg.data.global_batch_size}
    ckpt.close()
    batches.close()
    fresh.close()
