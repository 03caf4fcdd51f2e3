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
