"""Logical axes of parameters and activations, and building models with or without a mesh.

Every parameter is created with logical axis names (`nnx.with_partitioning`) and activations are
constrained to `ACT_AXES` at block boundaries; `wam_jax.sharding` alone maps these names to mesh
axes. NNX shards annotated variables eagerly, which fails when no mesh is set (one CPU, tests,
`eval_shape`): `mesh_optional` builds a module either way and keeps the metadata.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Sequence

import jax
from flax import nnx

# Token activations `[B, L, D]` between blocks.
ACT_AXES = ("batch", "tokens", "embed")


def eager_sharding_scope() -> contextlib.AbstractContextManager:
    """Eager sharding off unless a mesh (`jax.set_mesh`) is active; logical-axis metadata is kept
    either way, so a model built without a mesh can be sharded later."""
    if jax.sharding.get_abstract_mesh().empty:
        return nnx.use_eager_sharding(False)
    return contextlib.nullcontext()


def mesh_optional(init: Callable) -> Callable:
    """Decorates a Module `__init__` to run under `eager_sharding_scope()`."""

    @functools.wraps(init)
    def wrapper(*args, **kwargs):
        with eager_sharding_scope():
            return init(*args, **kwargs)

    return wrapper


def normal_init(axes: Sequence[str | None], stddev: float = 0.02) -> Callable:
    """Truncated normal of std `stddev` (V-JEPA 2 / timm ViT init at 0.02), or zeros when
    `stddev` is 0, with logical axes `axes`."""
    base = (nnx.initializers.truncated_normal(stddev=stddev) if stddev > 0
            else nnx.initializers.zeros_init())
    return nnx.with_partitioning(base, tuple(axes))


def zeros_init(axes: Sequence[str | None]) -> Callable:
    return nnx.with_partitioning(nnx.initializers.zeros_init(), tuple(axes))


def ones_init(axes: Sequence[str | None]) -> Callable:
    return nnx.with_partitioning(nnx.initializers.ones_init(), tuple(axes))
