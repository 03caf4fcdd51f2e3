"""Mesh from config, the logical-axis rules, sharded init and batch feeding."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

from tests import runtime_fixtures as rf
from wam_jax import sharding
from wam_jax.training import train_step as ts

rf.enable_compile_cache()


def _mesh_cfg(**kw) -> mlc.ConfigDict:
    c = mlc.ConfigDict(dict(ici_data=1, ici_fsdp=-1, ici_tensor=1, dcn_data=1, dcn_fsdp=1, dcn_tensor=1))
    c.update(kw)
    return c


def test_mesh_shape_fills_one_axis():
    assert sharding.mesh_shape(_mesh_cfg(), 8) == ((1, 8, 1), (1, 1, 1))
    assert sharding.mesh_shape(_mesh_cfg(ici_data=2), 8) == ((2, 4, 1), (1, 1, 1))
    assert sharding.mesh_shape(_mesh_cfg(ici_data=-1, ici_fsdp=2, ici_tensor=2), 8) == ((2, 2, 2), (1, 1, 1))
    # two slices over DCN: data parallel across slices, fsdp within each slice
    assert sharding.mesh_shape(_mesh_cfg(dcn_data=-1), 16, slices=2) == ((1, 8, 1), (2, 1, 1))


@pytest.mark.parametrize(
    "kw, devices, pattern",
    [
        (dict(ici_data=3, ici_fsdp=1), 8, r"--config.mesh.ici_data=3, --config.mesh.ici_fsdp=1, "
                                          r"--config.mesh.ici_tensor=1 multiply to 3, but there are 8 devices"),
        (dict(ici_data=3), 8, r"cannot fill 8 devices per slice: 8 is not divisible by 3"),
        (dict(ici_data=-1), 8, r"at most one of .* may be -1"),
        (dict(ici_tensor=0), 8, r"--config.mesh.ici_tensor=0: mesh sizes must be positive"),
        (dict(dcn_data=2), 8, r"--config.mesh.dcn_data=2,.* multiply to 2, but there are 1 slice;"),
    ],
)
def test_mesh_errors_name_the_flags(kw, devices, pattern):
    with pytest.raises(sharding.MeshConfigError, match=pattern):
        sharding.mesh_shape(_mesh_cfg(**kw), devices)


def test_make_mesh_uses_auto_axes_over_all_devices():
    mesh = sharding.make_mesh(_mesh_cfg(ici_data=2))
    assert mesh.axis_names == ("data", "fsdp", "tensor")
    assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
    assert mesh.axis_types == (AxisType.Auto,) * 3
    assert sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in jax.devices())
    one = sharding.make_mesh(_mesh_cfg(), jax.devices()[:1])
    assert one.size == 1


def test_logical_rules_map_to_mesh_axes():
    mesh = sharding.make_mesh(_mesh_cfg(ici_data=2, ici_fsdp=2, ici_tensor=2))
    assert sharding.spec_for((64, 256), ("embed", "mlp"), mesh) == P("fsdp", "tensor")
    assert sharding.spec_for((8, 4, 64), ("batch", "time", "embed"), mesh) == P(("data", "fsdp"))
    # a mesh axis is used at most once per spec: batch takes data+fsdp, embed gets nothing left
    assert sharding.logical_to_spec(("batch", "embed")) == P(("data", "fsdp"), None)
    assert sharding.spec_for((8, 64), ("batch", "embed"), mesh) == P(("data", "fsdp"))
    # unknown / replicated logical names and unannotated arrays stay replicated
    assert sharding.spec_for((4, 64), ("layers", "norm"), mesh) == P()
    assert sharding.spec_for((3, 3), None, mesh) == P()


def test_axes_that_do_not_divide_a_dimension_are_dropped():
    mesh = sharding.make_mesh(_mesh_cfg())  # fsdp = 8
    assert sharding.spec_for((3, 64), ("patch", "embed"), mesh) == P(None, "fsdp")
    assert sharding.spec_for((12, 5), ("embed", "mlp"), mesh) == P()  # 12 % 8 != 0
    mesh2 = sharding.make_mesh(_mesh_cfg(ici_data=2))
    # batch of 2 over data(2) x fsdp(4): keeps what divides
    assert sharding.spec_for((2, 16), ("batch", None), mesh2) == P("data")
    # canonical form: no trailing None (P('fsdp', None) != P('fsdp') would recompile)
    assert sharding.spec_for((64, 3), ("embed", "act"), mesh) == P("fsdp")
    with pytest.raises(ValueError, match="do not match the array rank"):
        sharding.spec_for((4,), ("embed", "mlp"), mesh)


def test_constrain_is_a_noop_without_a_mesh_and_shards_with_one():
    x = jnp.ones((8, 16))
    assert sharding.constrain(x, ("batch", "embed")) is x
    mesh = sharding.make_mesh(_mesh_cfg(ici_data=2))

    @jax.jit
    def f(x):
        return sharding.constrain(x * 2, ("batch", "embed"))

    with jax.set_mesh(mesh):
        y = f(x)
        z = jax.jit(lambda a: sharding.constrain(a + 1, ("batch", "embed")))(jnp.ones((1, 16)))
    assert y.sharding.spec == P(("data", "fsdp"))
    assert z.sharding.spec == P()  # a batch of 1 is not padded over 8 devices


def test_every_model_parameter_has_logical_axes():
    """The model contract: every nnx.Param is annotated, so the rules table shards it."""
    cfg = rf.tiny_config("unused")
    model, target = nnx.eval_shape(lambda: ts._build(cfg.model, 0, ts.default_model_factory))
    for module in (model, target):
        missing = [
            "/".join(map(str, path))
            for path, v in nnx.to_flat_state(nnx.state(module, nnx.Param))
            if sharding.logical_axes_of(v) is None
        ]
        assert not missing, missing


def test_sharded_init_never_materializes_a_full_replica():
    cfg = rf.tiny_config("unused", **{"mesh.ici_data": 1, "mesh.ici_fsdp": 8})
    mesh = sharding.make_mesh(cfg.mesh)
    built = ts.build(cfg, mesh)
    state = built.init(cfg)
    leaves = jax.tree.leaves(state.params)
    biggest = max(leaves, key=lambda x: x.size)
    assert biggest.addressable_shards[0].data.nbytes * 8 == biggest.nbytes
    total = sum(x.nbytes for x in leaves)
    assert sharding.bytes_per_device(state.params) < total / 4
    # the abstract state (restore target) carries exactly these shardings
    same = jax.tree.map(lambda x, a: x.sharding == a.sharding and x.shape == a.shape, state, built.abstract)
    assert all(jax.tree.leaves(same))


def test_global_batch_checks():
    mesh = sharding.make_mesh(_mesh_cfg(ici_data=2))
    sharding.check_global_batch(16, mesh, grad_accum=2)
    with pytest.raises(sharding.BatchSizeError, match=r"global_batch_size=12 is not divisible by the data-parallel size 8"):
        sharding.check_global_batch(12, mesh)


def test_batch_and_micro_batch_shardings_follow_the_rules_table():
    mesh = sharding.make_mesh(_mesh_cfg(ici_data=2))
    batch_axes = sharding.logical_to_spec(("batch",))[0]
    assert sharding.batch_sharding(mesh, 4).spec == P(batch_axes)
    assert sharding.batch_sharding(mesh, 0).spec == P()
    micro = sharding.batch_sharding(mesh, micro_batches=True)
    assert micro.spec == P(None, batch_axes) and micro.mesh is mesh


def test_local_batches_become_global_sharded_arrays():
    mesh = sharding.make_mesh(_mesh_cfg(ici_data=2))
    local = {"video": np.arange(8 * 2 * 3, dtype=np.uint8).reshape(8, 2, 3), "dt": np.ones((8,), np.float32)}
    out = sharding.local_to_global(local, mesh, 8)
    assert out["video"].shape == (8, 2, 3) and out["video"].sharding.spec == P(("data", "fsdp"))
    np.testing.assert_array_equal(np.asarray(out["video"]), local["video"])
    assert out["dt"].addressable_shards[0].data.shape == (1,)
