"""The tiny model on an 8-device (data=2, fsdp=4) CPU mesh: parameters really sharded by their
logical axes, forward + backward compile and run, and agree with the single-device result."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from tests.test_model import random_batch, tiny_config
from tests.test_objectives import loss_and_grads
from wam_jax import sharding
from wam_jax.models.world_model import WorldActionModel


def _mesh():
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices (tests/conftest.py forces 8 CPU devices)")
    return jax.make_mesh((2, 4, 1), ("data", "fsdp", "tensor"), devices=jax.devices()[:8],
                         axis_types=(AxisType.Auto,) * 3)


def _spec(x) -> tuple:
    """A spec with trailing Nones dropped, so P('fsdp', None) and P('fsdp') compare equal."""
    s = list(x.sharding.spec)
    while s and s[-1] is None:
        s.pop()
    return tuple(s)


def _sharded_model(cfg, mesh):
    # NNX shards variables eagerly at creation: build under the mesh and the logical-axis rules.
    with jax.set_mesh(mesh), nnx.logical_axis_rules(sharding.LOGICAL_RULES):
        model = WorldActionModel(cfg.model, rngs=nnx.Rngs(0))
        return model, model.make_target_encoder()


def _sharded_step(cfg, mesh, model, target):
    batch = random_batch(cfg, batch_size=8, labeled=4)
    placed = {k: jax.device_put(v, NamedSharding(mesh, P(("data", "fsdp")))) for k, v in batch.items()}
    with jax.set_mesh(mesh), nnx.logical_axis_rules(sharding.LOGICAL_RULES):
        return batch, loss_and_grads(cfg.loss)(model, target, placed, jax.random.key(0))


def test_tiny_model_params_sharded_and_forward_backward_runs_on_8_devices():
    cfg = tiny_config()
    mesh = _mesh()
    model, target = _sharded_model(cfg, mesh)

    # Parameters are sharded as their logical axes say ('embed' -> fsdp, 'mlp' -> tensor).
    k = model.predictor.latent_in.kernel[...]  # ('embed', 'mlp') [D, W]
    assert _spec(k) == ("fsdp", "tensor")
    assert k.addressable_shards[0].data.shape == (k.shape[0] // 4, k.shape[1])
    qkv = model.encoder.blocks.blocks.attn.qkv.kernel[...]  # scanned: ('layers', 'embed', ...)
    assert _spec(qkv)[:2] == (None, "fsdp")
    assert qkv.addressable_shards[0].data.shape[1] == qkv.shape[1] // 4
    assert _spec(model.inverse_head.out.kernel[...]) == (None, "fsdp")  # (None, 'embed', 'act')
    assert "fsdp" not in _spec(model.action_embedder.action_in.kernel[...])  # (None, 'act', 'mlp')
    assert _spec(target.blocks.blocks.mlp.fc1.kernel[...])[:2] == (None, "fsdp")
    n_sharded = sum("fsdp" in _spec(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert n_sharded >= 20

    _, (loss, metrics, grads) = _sharded_step(cfg, mesh, model, target)
    assert np.isfinite(float(loss))
    assert all(np.isfinite(float(v)) for v in metrics.values())
    for name in ("encoder", "predictor", "latent_actions", "inverse_head", "action_embedder"):
        assert max(float(np.abs(np.asarray(x)).max()) for x in jax.tree.leaves(grads[name])) > 0


@pytest.mark.slow
def test_sharded_step_matches_single_device():
    cfg = tiny_config()
    mesh = _mesh()
    model, target = _sharded_model(cfg, mesh)
    batch, (loss, metrics, grads) = _sharded_step(cfg, mesh, model, target)
    ref_model = WorldActionModel(cfg.model, rngs=nnx.Rngs(0))  # same seed -> same initial values
    np.testing.assert_array_equal(np.asarray(ref_model.predictor.latent_in.kernel[...]),
                                  np.asarray(model.predictor.latent_in.kernel[...]))
    ref_loss, ref_metrics, ref_grads = loss_and_grads(cfg.loss)(
        ref_model, ref_model.make_target_encoder(), batch, jax.random.key(0))
    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=2e-4)
    for name in ("loss/tf", "loss/act", "health/pred_to_copy", "la/code_usage"):
        np.testing.assert_allclose(float(metrics[name]), float(ref_metrics[name]), rtol=2e-3,
                                   atol=1e-5, err_msg=name)
    for path in (("predictor", "latent_out", "kernel"), ("inverse_head", "out", "kernel")):
        a, b = grads, ref_grads
        for p in path:
            a, b = a[p], b[p]
        np.testing.assert_allclose(np.asarray(a[...]), np.asarray(b[...]), rtol=2e-2, atol=2e-5)
