"""Mesh construction and the logical-axis rules: the one place that names mesh axes.

Layers speak only logical names (`batch`, `embed`, `mlp`, ...); this table maps them onto the
mesh axes `('data', 'fsdp', 'tensor')`, so the same model runs on 1 CPU, 8 simulated devices, a
GPU node or a TPU pod by changing the config only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axis (or tuple of mesh axes, or None = replicated)
LOGICAL_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),  # activations: batch over every data-parallel axis
    ("time", None),
    ("tokens", None),
    ("act", None),
    ("embed", "fsdp"),  # parameters: FSDP shards the model dimension
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("qkv", None),
    ("layers", None),
    ("latent_action", None),
    ("norm", None),
    ("vocab", None),
    ("conv_in", None),
    ("patch", None),
    ("samples", ("data", "fsdp")),  # planning candidates
)


def logical_to_spec(logical_axes: Sequence[str | None], rules=LOGICAL_RULES) -> P:
    """Maps logical axis names to a PartitionSpec; a mesh axis is used at most once per spec."""
    table = dict(rules)
    used: set[str] = set()
    out = []
    for name in logical_axes:
        target = table.get(name) if name is not None else None
        if target is None:
            out.append(None)
            continue
        axes = (target,) if isinstance(target, str) else tuple(target)
        axes = tuple(a for a in axes if a not in used)
        used.update(axes)
        out.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return P(*out)


def _current_mesh():
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        return None
    return mesh


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
    """`with_sharding_constraint` by logical names; a no-op when no mesh is set (single device)."""
    mesh = _current_mesh()
    if mesh is None or mesh.size == 1:
        return x
    # Mesh axes the current mesh lacks (e.g. a 1-axis planning mesh) and axes that do not divide
    # the dimension (a broadcast batch of 1) are dropped: padding a size-1 dim 8 ways would force
    # a full rematerialization in the SPMD partitioner.
    return jax.lax.with_sharding_constraint(x, spec_for(x.shape, logical_axes, mesh))


def _keep_axes(entry, names):
    if entry is None:
        return None
    if isinstance(entry, str):
        return entry if entry in names else None
    kept = tuple(a for a in entry if a in names)
    return None if not kept else kept[0] if len(kept) == 1 else kept


# ---------------------------------------------------------------------------------------------
# Mesh from config
# ---------------------------------------------------------------------------------------------


class MeshConfigError(ValueError):
    """The mesh sizes in `config.mesh` do not fit the devices; the message names the flags."""


class BatchSizeError(MeshConfigError):
    """The global batch does not split over the data-parallel devices / micro-steps / hosts."""


def _resolve_axes(sizes: Sequence[int], total: int, prefix: str) -> tuple[int, ...]:
    """Fills at most one -1 so that the sizes multiply to `total`; errors name the config flags."""
    flags = ", ".join(f"--config.mesh.{prefix}_{a}={s}" for a, s in zip(MESH_AXES, sizes, strict=True))
    for a, s in zip(MESH_AXES, sizes, strict=True):
        if s == 0 or s < -1:
            raise MeshConfigError(f"--config.mesh.{prefix}_{a}={s}: mesh sizes must be positive or -1 (fill)")
    fill = [i for i, s in enumerate(sizes) if s == -1]
    if len(fill) > 1:
        raise MeshConfigError(f"at most one of {flags} may be -1 (fill), got {len(fill)}")
    known = math.prod(s for s in sizes if s != -1)
    if fill:
        if total % known:
            raise MeshConfigError(
                f"mesh sizes {flags} cannot fill {total} {'devices per slice' if prefix == 'ici' else 'slices'}: "
                f"{total} is not divisible by {known}"
            )
        out = list(sizes)
        out[fill[0]] = total // known
        return tuple(out)
    if known != total:
        what = ("device" if total == 1 else "devices") + " per slice" if prefix == "ici" else (
            "slice" if total == 1 else "slices")
        raise MeshConfigError(
            f"mesh sizes {flags} multiply to {known}, but there are {total} {what}; "
            f"make the product equal {total} or set one of them to -1"
        )
    return tuple(sizes)


def num_slices(devices: Sequence[jax.Device]) -> int:
    """Number of TPU slices (multi-slice over DCN); 1 on CPU, GPU and single-slice TPU."""
    return len({getattr(d, "slice_index", 0) for d in devices})


def mesh_shape(mesh_cfg, num_devices: int, slices: int = 1) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(ici_shape, dcn_shape) per mesh axis from `config.mesh` (`ici_*` within a slice, `dcn_*` across)."""
    dcn = _resolve_axes([int(mesh_cfg[f"dcn_{a}"]) for a in MESH_AXES], slices, "dcn")
    if num_devices % slices:
        raise MeshConfigError(f"{num_devices} devices do not split evenly into {slices} slices")
    ici = _resolve_axes([int(mesh_cfg[f"ici_{a}"]) for a in MESH_AXES], num_devices // slices, "ici")
    return ici, dcn


def make_mesh(mesh_cfg, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The ('data', 'fsdp', 'tensor') mesh sized from `config.mesh`.

    Axes are `Auto` (GSPMD propagation from pinned in/out shardings plus `constrain()` hints):
    `jax.make_mesh` would default to `Explicit`, which changes matmul typing rules for every
    layer. Across slices (dcn > 1) the device order comes from `create_hybrid_device_mesh`, so the
    slow DCN links carry only the outer (data-parallel) collectives.
    """
    devices = list(jax.devices() if devices is None else devices)
    slices = num_slices(devices)
    ici, dcn = mesh_shape(mesh_cfg, len(devices), slices)
    if slices > 1 or math.prod(dcn) > 1:
        grid = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices, allow_split_physical_axes=True)
    else:
        shape = tuple(i * d for i, d in zip(ici, dcn, strict=True))
        try:
            grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
        except (ValueError, NotImplementedError, AssertionError):
            # Topology-unaware fallback (e.g. CPU device subsets, unusual GPU layouts).
            grid = np.asarray(devices).reshape(shape)
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def mesh_along(logical: str, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Every device on the (first) mesh axis the rules map `logical` to; the other axes size 1.

    Inference uses `mesh_along('embed')`: parameters FSDP-sharded, and batches and planning samples,
    whose rules include that axis, split over the same devices. A bare planner: `mesh_along('samples')`.
    """
    axes = _axes_of(logical)
    if not axes:
        raise ValueError(f"the rules replicate logical axis {logical!r}: no mesh axis to put devices on")
    sizes = {a: -1 if a == axes[0] else 1 for a in MESH_AXES}
    return make_mesh({f"{level}_{a}": s for level in ("ici", "dcn") for a, s in sizes.items()}, devices)


def data_parallel_size(mesh: Mesh) -> int:
    """How many ways the batch is split: the product of the mesh axes `batch` maps to."""
    return math.prod(mesh.shape[a] for a in _axes_of("batch") if a in mesh.shape)


def check_global_batch(global_batch: int, mesh: Mesh, grad_accum: int = 1) -> None:
    """Raises a clear error when the global batch cannot be split over devices and micro-steps.

    `grad_accum >= 1` is `config_utils.validate`'s check; the split over processes the loader's
    (`loader.per_process_batch_size`)."""
    dp = data_parallel_size(mesh)
    if global_batch % (dp * grad_accum):
        raise BatchSizeError(
            f"--config.data.global_batch_size={global_batch} is not divisible by the data-parallel "
            f"size {dp} (mesh data×fsdp = {mesh.shape['data']}×{mesh.shape['fsdp']})"
            + (f" × --config.optim.grad_accum={grad_accum}" if grad_accum > 1 else "")
            + f"; use a multiple of {dp * grad_accum}"
        )


def _axes_of(logical: str) -> tuple[str, ...]:
    target = dict(LOGICAL_RULES).get(logical)
    if target is None:
        return ()
    return (target,) if isinstance(target, str) else tuple(target)


# ---------------------------------------------------------------------------------------------
# Shardings of parameters and batches
# ---------------------------------------------------------------------------------------------


_METADATA_KEYS = ("out_sharding", "sharding_names", "sharding")


def logical_axes_of(variable: Any) -> tuple[str | None, ...] | None:
    """The logical axis names an NNX Variable was annotated with (`nnx.with_partitioning`)."""
    meta = variable.get_metadata() if hasattr(variable, "get_metadata") else {}
    for key in _METADATA_KEYS:
        names = meta.get(key)
        if names is not None and not isinstance(names, jax.sharding.Sharding):
            return tuple(names)
    return None


def spec_for(shape: Sequence[int], logical_axes: Sequence[str | None] | None, mesh: Mesh,
             rules=LOGICAL_RULES) -> P:
    """PartitionSpec for one array: logical names through the rules, restricted to mesh axes that
    exist and evenly divide the dimension (a 3-channel patch input stays replicated on 8-way fsdp)."""
    if not logical_axes:
        return P()
    if len(logical_axes) != len(shape):
        raise ValueError(
            f"logical axes {tuple(logical_axes)} do not match the array rank {len(shape)} (shape {tuple(shape)})"
        )
    spec = logical_to_spec(logical_axes, rules)
    out = []
    for dim, entry in zip(shape, spec, strict=True):
        entry = _keep_axes(entry, mesh.axis_names)
        if entry is None:
            out.append(None)
            continue
        axes = (entry,) if isinstance(entry, str) else tuple(entry)
        axes = tuple(a for a in axes if mesh.shape[a] > 1)
        while axes and dim % math.prod(mesh.shape[a] for a in axes):
            axes = axes[:-1]
        out.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    while out and out[-1] is None:  # canonical form: P('fsdp', None) == P('fsdp') would recompile
        out.pop()
    return P(*out)


def is_variable(x: Any) -> bool:
    from flax import nnx

    return isinstance(x, nnx.Variable)


def state_specs(abstract_state: Any, mesh: Mesh) -> Any:
    """PartitionSpecs (same tree as `nnx.to_pure_dict(state)`) from the Variables' logical metadata."""
    from flax import nnx

    def one(v):
        value = v.get_value() if hasattr(v, "get_value") else v[...]
        return spec_for(value.shape, logical_axes_of(v), mesh)

    return nnx.to_pure_dict(jax.tree.map(one, abstract_state, is_leaf=is_variable))


def named(mesh: Mesh, specs: Any) -> Any:
    """PartitionSpec tree -> NamedSharding tree."""
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, P))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, ndim: int = 1, *, micro_batches: bool = False) -> NamedSharding:
    """Batch arrays: leading dim over every data-parallel axis, the rest replicated.

    `micro_batches`: a `[n, B/n, ...]` stack of gradient-accumulation micro-batches, split along
    its second dim, so every device holds its rows of every micro-batch.
    """
    axes = tuple(a for a in _axes_of("batch") if a in mesh.axis_names)
    if micro_batches:
        return NamedSharding(mesh, P(None, axes))
    return NamedSharding(mesh, P(axes) if ndim else P())


def local_to_global(batch: dict[str, np.ndarray], mesh: Mesh, global_batch: int) -> dict[str, jax.Array]:
    """Builds global arrays from this process's slice of the batch (multi-host feeding)."""
    out = {}
    for k, x in batch.items():
        x = np.asarray(x)
        sharding = batch_sharding(mesh, x.ndim)
        out[k] = jax.make_array_from_process_local_data(sharding, x, (global_batch, *x.shape[1:]))
    return out


def bytes_per_device(tree: Any) -> int:
    """Bytes one device holds of `tree` (its first addressable device): what FSDP should shrink."""
    dev = None
    total = 0
    for x in jax.tree.leaves(tree):
        if not isinstance(x, jax.Array):
            continue
        shards = x.addressable_shards
        if dev is None:
            dev = shards[0].device
        total += sum(s.data.nbytes for s in shards if s.device == dev)
    return total
