"""Restoring a trained model for inference: a training workdir's checkpoint or a `wam-export` directory.

Only what inference needs is built and read: the model and target encoder are traced abstractly
(`nnx.eval_shape`, shardings from the logical-axis rules) and only the `params`, `model_state` and
`target` items are restored: loading builds no optimizer state and imports no training code but
the checkpoint reader (not the train step, the loss or the optimizer module).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
from etils import epath

from data_pipelines import paths
from wam_jax import sharding
from wam_jax.inference import artifacts

MODEL_ITEMS = ("params", "model_state", "target")


@dataclasses.dataclass
class Restored:
    """A restored model with what it was trained with. `model` is None for an encoder-only export."""

    config: Any  # ml_collections.ConfigDict, in today's layout (`config_utils.restore_config`)
    info: dict[str, Any]  # `loader.mixture_info` of the training data: sources, statistics, names
    step: int | None
    path: str
    kind: str  # 'checkpoint' | 'export'
    mesh: Any
    model: Any | None
    target: Any
    abstract: AbstractModel


def inference_mesh(devices: Sequence[jax.Device] | None = None):
    """All devices on the axis parameters shard over (FSDP); batches and planning samples split
    over the same devices through their own rules."""
    return sharding.mesh_along("embed", devices)


def checkpoint_dir(workdir: str) -> str:
    """`WORKDIR/checkpoints` (a training workdir) or WORKDIR itself if it holds Orbax steps."""
    sub = os.path.join(workdir, "checkpoints")
    return sub if epath.Path(sub).is_dir() else workdir


def read_checkpoint_meta(workdir: str, step: int | None = None) -> tuple[int, dict[str, Any], dict[str, Any], str]:
    """(step, config dict, stats dict, step directory) of a training workdir; latest step by default."""
    import orbax.checkpoint as ocp

    from wam_jax.training import checkpointing

    if not epath.Path(workdir).is_dir():
        raise FileNotFoundError(f"{workdir} does not exist (expected a training workdir or an export directory)")
    ckpt_dir = checkpoint_dir(workdir)
    ck = checkpointing.Checkpointer(ckpt_dir, async_save=False)
    try:
        steps = ck.all_steps()
        if not steps:
            raise FileNotFoundError(
                f"no checkpoint in {ckpt_dir}: expected WORKDIR/checkpoints/<step>/ written by wam-train, "
                f"or an export directory (with export.json) written by wam-export")
        if step is None:
            step = steps[-1]
        elif int(step) not in steps:
            raise FileNotFoundError(f"{ckpt_dir} has no checkpoint for step {step}; available steps: {steps}")
        step = int(step)
        out = ck.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore(),
                                                               stats=ocp.args.JsonRestore()))
    finally:
        ck.close()
    return step, dict(out["config"] or {}), dict(out["stats"] or {}), os.path.join(ckpt_dir, str(step))


# ----------------------------------------------------------------------------------------------
# The model, abstract then restored


@dataclasses.dataclass(frozen=True)
class AbstractModel:
    """The static halves of the model and target encoder, and their arrays as ShapeDtypeStructs
    carrying shardings (`MODEL_ITEMS` -> pure dict): the Orbax restore target."""

    graphdef: Any
    target_graphdef: Any
    arrays: dict[str, Any]

    def merge(self, arrays: Mapping[str, Any]) -> tuple[Any | None, Any]:
        """(model or None without `params`, target encoder) from restored arrays."""
        from flax import nnx

        model = nnx.merge(self.graphdef, arrays["params"], arrays["model_state"]) if "params" in arrays else None
        return model, nnx.merge(self.target_graphdef, arrays["target"])

    def module(self) -> Any:
        """The model with ShapeDtypeStruct leaves. What reads no trained array works on it (`spec`,
        `encode` given an encoder): an encoder-only export encodes through the model's own path."""
        from flax import nnx

        return nnx.merge(self.graphdef, self.arrays["params"], self.arrays["model_state"])


def abstract_model(config: Any, mesh: Any) -> AbstractModel:
    """Traces the model of `config.model` without allocating it; shardings from the logical axes.

    Split as the train state is (trained parameters, every other variable, target encoder), so
    the pure trees match the checkpoint's `params`, `model_state` and `target` items.
    """
    from flax import nnx

    from wam_jax.models.world_model import build_model

    def build():
        with nnx.use_eager_sharding(False):
            model = build_model(config.model, nnx.Rngs(config.seed))
            return model, model.make_target_encoder()

    model, target = nnx.eval_shape(build)
    graphdef, params, rest = nnx.split(model, model.trainable_filter, ...)
    target_graphdef, target_state = nnx.split(target)
    arrays = {}
    for name, state in zip(MODEL_ITEMS, (params, rest, target_state), strict=True):
        shardings = sharding.named(mesh, sharding.state_specs(state, mesh))
        arrays[name] = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                    nnx.to_pure_dict(state), shardings)
    return AbstractModel(graphdef, target_graphdef, arrays)


def restore_arrays(state_dir: str, abstract: Mapping[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    """Restores only `keys` of an Orbax pytree (no optimizer state) onto `abstract`'s shardings."""
    import orbax.checkpoint as ocp

    sub = {k: abstract[k] for k in keys}
    restore_args = jax.tree.map(lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding), sub)
    with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as ck:
        return ck.restore(state_dir, args=ocp.args.PyTreeRestore(item=sub, restore_args=restore_args,
                                                                  partial_restore=True))


def restore(path: str, step: int | None = None, *, mesh: Any = None) -> Restored:
    """A training workdir (latest checkpoint, or `step`) or a `wam-export` directory."""
    path = paths.absolute(path)
    if not epath.Path(path).exists():
        raise FileNotFoundError(f"{path} does not exist (expected a training workdir or an export directory)")
    mesh = mesh if mesh is not None else inference_mesh()
    if artifacts.is_export(path):
        if step is not None:
            raise ValueError(f"{path} is an export directory (one fixed step); do not pass step={step}")
        return _restore_export(path, mesh)
    artifacts.check_not_partial_export(path)
    return _restore_checkpoint(path, step, mesh)


def _restore_checkpoint(workdir: str, step: int | None, mesh: Any) -> Restored:
    from wam_jax import config_utils

    step, cfg_dict, info, step_dir = read_checkpoint_meta(workdir, step)
    if not info:
        raise artifacts.MissingStatisticsError(
            f"checkpoint {step_dir} has no dataset statistics (its 'stats' item is empty); actions "
            f"cannot be converted to robot units. It was saved without `loader.mixture_info(config)`")
    config = config_utils.restore_config(cfg_dict)
    abstract = abstract_model(config, mesh)
    model, target = abstract.merge(restore_arrays(os.path.join(step_dir, "state"), abstract.arrays, MODEL_ITEMS))
    return Restored(config=config, info=info, step=step, path=workdir, kind="checkpoint", mesh=mesh,
                    model=model, target=target, abstract=abstract)


def _restore_export(export_dir: str, mesh: Any) -> Restored:
    from wam_jax import config_utils

    manifest = artifacts.read_manifest(export_dir)
    config = config_utils.restore_config(artifacts.read_json(export_dir, artifacts.CONFIG_JSON))
    info = artifacts.read_json(export_dir, artifacts.STATS_JSON)
    abstract = abstract_model(config, mesh)
    keys = MODEL_ITEMS if manifest["with_predictor"] else ("target",)
    model, target = abstract.merge(
        restore_arrays(os.path.join(export_dir, artifacts.PARAMS_DIR), abstract.arrays, keys))
    return Restored(config=config, info=info, step=manifest.get("step"), path=export_dir, kind="export",
                    mesh=mesh, model=model, target=target, abstract=abstract)
