"""`WorldModel`: a trained world action model for use outside training (evaluate, plan, embed).

    wm = WorldModel.load("runs/pusht_small")            # latest checkpoint of a training workdir
    wm = WorldModel.load("runs/pusht_small", step=400)  # a given step
    wm = WorldModel.load("exports/pusht")               # a `wam-export` directory

    z = wm.encode(frames)                      # uint8 [T, H, W, 3] -> latents [T, N, D]
    z_next = wm.predict(z[-1], action)         # one step;   action [A] in robot units
    z_roll = wm.predict(z[-1], actions)        # k steps;    actions [k, A] -> [k, N, D]
    a_hat = wm.infer_actions(z)                # inverse dynamics: [T, N, D] -> [T-1, A]
    chunk = wm.policy(z[-1], z_goal)           # goal-conditioned policy head -> [h, A]
    plan = wm.plan(frame, goal_frame)          # CEM/MPPI in latent space -> plan.actions [H, A]

Units: every action going in or out is in the robot's own units (the converted dataset's), for one
embodiment's own action dimensions; the model's internal normalization (dataset mean/std, stride
summing of delta dims, padding to `model.action_dim`) is applied here, from the statistics saved
with the checkpoint. Planning bounds are the dataset's q01/q99.

Latent space: everything uses the *target* encoder (EMA of the online encoder, or the frozen
encoder), layer-normed: the space the predictor was trained to predict into, so observations, goals
and predictions are directly comparable. Shapes: a leading batch dimension is optional everywhere.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from wam_jax.inference import planning

log = logging.getLogger(__name__)

ArrayLike = Any


class MissingStatisticsError(ValueError):
    """The checkpoint has no dataset statistics, so actions cannot be mapped to robot units."""


class IncompleteExportError(ValueError):
    """An export directory is missing files (interrupted export, or copied partially)."""


# ----------------------------------------------------------------------------------------------
# Action spaces (per embodiment): normalization exactly as the loader applies it.


@dataclasses.dataclass(frozen=True)
class ActionSpace:
    """One embodiment's action (and proprio) units, from a training source's `stats.json`.

    The loader feeds the model `(a - mean * s) / (std * s)` per transition for delta dims summed over
    the frame stride `s` (absolute dims: `(a - mean) / std`), clipped to ±5, zero-padded to
    `model.action_dim` with a mask. `normalize`/`denormalize` reproduce and invert exactly that.
    """

    embodiment: str
    embodiment_id: int
    source: str
    dim: int
    model_dim: int
    mean: np.ndarray
    std: np.ndarray
    q01: np.ndarray | None
    q99: np.ndarray | None
    is_delta: np.ndarray
    stride: int
    proprio_dim: int = 0
    proprio_mean: np.ndarray | None = None
    proprio_std: np.ndarray | None = None

    def normalize(self, actions: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        """Robot-unit actions `[..., dim]` -> (normalized `[..., model_dim]`, mask `[..., model_dim]`)."""
        from data_pipelines import transforms

        a = np.asarray(actions, np.float32)
        if a.shape[-1] != self.dim:
            raise ValueError(
                f"actions have shape {a.shape}: expected [..., {self.dim}] (the action dims of "
                f"embodiment {self.embodiment!r}, in its own units)")
        x = transforms.normalize_actions(a, self.mean, self.std, self.is_delta, self.stride)
        pad = [(0, 0)] * (a.ndim - 1) + [(0, self.model_dim - self.dim)]
        mask = np.zeros(a.shape[:-1] + (self.model_dim,), bool)
        mask[..., : self.dim] = True
        return np.pad(x, pad), mask

    def denormalize(self, x: ArrayLike) -> np.ndarray:
        """Normalized model actions `[..., model_dim]` (or `[..., dim]`) -> robot units `[..., dim]`."""
        from data_pipelines import transforms

        return transforms.denormalize_actions(np.asarray(x, np.float32)[..., : self.dim], self.mean,
                                              self.std, self.is_delta, self.stride)

    def normalize_proprio(self, proprio: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        from data_pipelines import transforms

        if not self.proprio_dim or self.proprio_mean is None:
            raise ValueError(f"embodiment {self.embodiment!r} has no proprio statistics; pass proprio=None")
        p = np.asarray(proprio, np.float32)
        if p.shape[-1] != self.proprio_dim:
            raise ValueError(f"proprio has shape {p.shape}: expected [..., {self.proprio_dim}]")
        return transforms.normalize(p, self.proprio_mean, self.proprio_std), np.ones(p.shape, bool)

    def bounds(self) -> planning.ActionBounds:
        """Planner box in normalized units: the dataset's q01/q99 (mean ± 3 std without quantiles)."""
        if self.q01 is None or self.q99 is None:
            lo, hi = self.mean - 3 * self.std, self.mean + 3 * self.std
        else:
            lo, hi = self.q01, self.q99
        return planning.ActionBounds.from_quantiles(lo, hi, mean=self.mean, std=np.maximum(self.std, 1e-6))


def _vec(stats: Mapping[str, Any] | None, key: str) -> np.ndarray | None:
    if not stats or stats.get(key) is None:
        return None
    return np.asarray(stats[key], np.float32)


def action_spaces_from_info(info: Mapping[str, Any], model_action_dim: int, where: str
                            ) -> dict[str, ActionSpace]:
    """Embodiment name -> ActionSpace, from `loader.mixture_info` (the checkpoint's `stats` item)."""
    if not info or "sources" not in info or "stats" not in info:
        raise MissingStatisticsError(
            f"{where} has no dataset statistics (expected the `loader.mixture_info` dict with "
            f"'sources' and 'stats'); actions cannot be converted to robot units. Re-save the "
            f"checkpoint with `Checkpointer.save(..., stats=loader.mixture_info(config))`")
    spaces: dict[str, ActionSpace] = {}
    for src, stats in zip(info["sources"], info["stats"], strict=True):
        dim = int(src.get("action_dim") or 0)
        if src.get("kind") != "robot" or dim == 0 or src["embodiment"] in spaces:
            continue
        a = (stats or {}).get("action")
        mean, std = _vec(a, "mean"), _vec(a, "std")
        if mean is None or std is None:
            raise MissingStatisticsError(
                f"{where}: source {src.get('name')!r} ({src.get('path')}) has {dim} action dims but "
                f"no action mean/std in its statistics (expected stats.action.mean/std of length {dim})")
        p = (stats or {}).get("proprio")
        spaces[src["embodiment"]] = ActionSpace(
            embodiment=src["embodiment"], embodiment_id=int(src["embodiment_id"]),
            source=str(src.get("name")), dim=dim, model_dim=int(model_action_dim), mean=mean, std=std,
            q01=_vec(a, "q01"), q99=_vec(a, "q99"),
            is_delta=np.asarray(src.get("action_is_delta") or [False] * dim, bool),
            stride=int(src.get("stride") or 1), proprio_dim=int(src.get("proprio_dim") or 0),
            proprio_mean=_vec(p, "mean"), proprio_std=_vec(p, "std"))
    return spaces


# ----------------------------------------------------------------------------------------------
# Locating and reading checkpoints / exports


def checkpoint_dir(workdir: str) -> str:
    """`WORKDIR/checkpoints` (a training workdir) or WORKDIR itself if it holds Orbax steps."""
    sub = os.path.join(workdir, "checkpoints")
    return sub if os.path.isdir(sub) else workdir


def _is_export(path: str) -> bool:
    from wam_jax.inference import export

    return os.path.exists(os.path.join(path, export.EXPORT_JSON))


def _checkpointer(ckpt_dir: str):
    from wam_jax.training import checkpointing

    return checkpointing.Checkpointer(ckpt_dir, async_save=False)


def read_checkpoint_meta(workdir: str, step: int | None = None) -> tuple[int, dict[str, Any], dict[str, Any], str]:
    """(step, config dict, stats dict, step directory) of a training workdir; latest step by default."""
    import orbax.checkpoint as ocp

    if not os.path.isdir(workdir):
        raise FileNotFoundError(f"{workdir} does not exist (expected a training workdir or an export directory)")
    ckpt_dir = checkpoint_dir(workdir)
    ck = _checkpointer(ckpt_dir)
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


def config_from_json(d: Mapping[str, Any]):
    """JSON config dict -> ConfigDict (lists back to tuples where the base config has tuples)."""
    import ml_collections as mlc

    def fix(x):
        if isinstance(x, Mapping):
            return {k: fix(v) for k, v in x.items()}
        if isinstance(x, list):
            return tuple(fix(v) for v in x)
        return x

    if "model" not in d:
        raise ValueError("the saved config has no 'model' section; cannot rebuild the model")
    return mlc.ConfigDict(fix(dict(d)))


def inference_mesh(devices: Sequence[jax.Device] | None = None):
    """All devices on the fsdp axis: parameters sharded (FSDP), planning samples split over them."""
    import ml_collections as mlc

    from wam_jax import sharding

    cfg = mlc.ConfigDict(dict(ici_data=1, ici_fsdp=-1, ici_tensor=1, dcn_data=1, dcn_fsdp=1, dcn_tensor=1))
    return sharding.make_mesh(cfg, devices)


def restore_arrays(state_dir: str, abstract: Mapping[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    """Restores only `keys` of an Orbax pytree (no optimizer state) onto `abstract`'s shardings."""
    import orbax.checkpoint as ocp

    sub = {k: abstract[k] for k in keys}
    restore_args = jax.tree.map(lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding), sub)
    with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as ck:
        return ck.restore(state_dir, args=ocp.args.PyTreeRestore(item=sub, restore_args=restore_args,
                                                                  partial_restore=True))


# ----------------------------------------------------------------------------------------------
# Frames


def resize_frames(frames: ArrayLike, size: int) -> np.ndarray:
    """uint8 `[..., H, W, 3]` -> `[..., size, size, 3]` (bilinear with antialiasing)."""
    x = jnp.asarray(frames)
    shape = x.shape[:-3] + (size, size, x.shape[-1])
    y = jax.image.resize(x.astype(jnp.float32), shape, method="bilinear", antialias=True)
    return np.asarray(jnp.clip(jnp.round(y), 0, 255).astype(jnp.uint8))


def check_frames(frames: ArrayLike, image_size: int, *, name: str = "frames", resize: bool = False
                 ) -> tuple[np.ndarray, tuple[int, ...]]:
    """Validates uint8 RGB frames `[H, W, 3]`, `[T, H, W, 3]` or `[B, T, H, W, 3]`.

    Returns (`[B, T, S, S, 3]` frames, the leading dims to restore on outputs).
    """
    x = np.asarray(frames)
    expected = f"uint8 [T, {image_size}, {image_size}, 3] (or [{image_size}, {image_size}, 3], or batched [B, T, ...])"
    if x.ndim not in (3, 4, 5) or x.shape[-1] != 3:
        raise ValueError(f"{name} has shape {x.shape}; expected {expected}")
    if x.dtype != np.uint8:
        raise ValueError(f"{name} has dtype {x.dtype}; expected {expected}, RGB values 0..255")
    if x.shape[-3:-1] != (image_size, image_size):
        if not resize:
            raise ValueError(
                f"{name} are {x.shape[-3]}x{x.shape[-2]} pixels but the model expects "
                f"{image_size}x{image_size} (shape {expected}); resize them or pass resize=True")
        x = resize_frames(x, image_size)
    lead = x.shape[:-3]
    return _to5(x), lead


def _to5(x: np.ndarray) -> np.ndarray:
    if x.ndim == 3:
        return x[None, None]
    if x.ndim == 4:
        return x[None]
    return x


# ----------------------------------------------------------------------------------------------
# The model wrapper


class WorldModel:
    """A trained world action model with un-normalized (robot-unit) actions. See module docstring."""

    def __init__(self, *, config: Any, info: Mapping[str, Any], step: int | None, path: str, kind: str,
                 mesh: Any, model: Any | None, target: Any, embodiment: str | None = None):
        from flax import nnx

        self.config = config
        self.info = dict(info)
        self.step = step
        self.path = path
        self.kind = kind  # 'checkpoint' | 'export'
        self.mesh = mesh
        self.image_size = int(config.model.image_size)
        self.action_spaces = action_spaces_from_info(info, int(config.model.action_dim), path)
        self._default_embodiment = embodiment
        self._target_graph, self._target_state = nnx.split(target)
        self.latent_shape = (target.num_patches, target.width)
        if model is not None:
            self._model_graph, self._model_state = nnx.split(model)
            self.spec = model.spec
        else:
            self._model_graph = self._model_state = None
            self.spec = None
        self._fns: dict[Any, Any] = {}

    # -- loading --------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str, step: int | None = None, *, mesh: Any = None,
             embodiment: str | None = None) -> WorldModel:
        """A training workdir (latest checkpoint, or `step`) or a `wam-export` directory."""
        path = os.path.abspath(os.fspath(path))
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} does not exist (expected a training workdir or an export directory)")
        if _is_export(path):
            if step is not None:
                raise ValueError(f"{path} is an export directory (one fixed step); do not pass step={step}")
            return cls._load_export(path, mesh=mesh, embodiment=embodiment)
        from wam_jax.inference import export

        if os.path.isdir(path) and any(os.path.exists(os.path.join(path, f)) for f in export.REQUIRED_FILES):
            raise IncompleteExportError(
                f"{path} looks like an export directory but has no {export.EXPORT_JSON} (written last "
                f"by wam-export): the export was interrupted or copied partially; re-run wam-export")
        return cls._load_checkpoint(path, step, mesh=mesh, embodiment=embodiment)

    @classmethod
    def _build(cls, config: Any, mesh: Any):
        from wam_jax.training import train_step as ts

        return ts.abstract_train_state(config, mesh)

    @classmethod
    def _load_checkpoint(cls, workdir: str, step: int | None, *, mesh: Any, embodiment: str | None) -> WorldModel:
        step, cfg_dict, info, step_dir = read_checkpoint_meta(workdir, step)
        if not info:
            raise MissingStatisticsError(
                f"checkpoint {step_dir} has no dataset statistics (its 'stats' item is empty); actions "
                f"cannot be converted to robot units. It was saved without `loader.mixture_info(config)`")
        config = config_from_json(cfg_dict)
        mesh = mesh if mesh is not None else inference_mesh()
        defs, _, abstract = cls._build(config, mesh)
        arrays = restore_arrays(os.path.join(step_dir, "state"), abstract.to_dict(),
                                ("params", "model_state", "target"))
        model = defs.model(arrays["params"], arrays["model_state"])
        target = defs.target_encoder(arrays["target"])
        return cls(config=config, info=info, step=step, path=workdir, kind="checkpoint", mesh=mesh,
                   model=model, target=target, embodiment=embodiment)

    @classmethod
    def _load_export(cls, export_dir: str, *, mesh: Any, embodiment: str | None) -> WorldModel:
        from wam_jax.inference import export

        manifest = export.read_manifest(export_dir)
        with open(os.path.join(export_dir, export.CONFIG_JSON)) as f:
            config = config_from_json(json.load(f))
        with open(os.path.join(export_dir, export.STATS_JSON)) as f:
            info = json.load(f)
        mesh = mesh if mesh is not None else inference_mesh()
        defs, _, abstract = cls._build(config, mesh)
        keys = ("params", "model_state", "target") if manifest["with_predictor"] else ("target",)
        arrays = restore_arrays(os.path.join(export_dir, export.PARAMS_DIR), abstract.to_dict(), keys)
        model = defs.model(arrays["params"], arrays["model_state"]) if manifest["with_predictor"] else None
        target = defs.target_encoder(arrays["target"])
        return cls(config=config, info=info, step=manifest.get("step"), path=export_dir, kind="export",
                   mesh=mesh, model=model, target=target, embodiment=embodiment)

    # -- helpers --------------------------------------------------------------------------------

    def __repr__(self) -> str:
        return (f"WorldModel({self.kind} {self.path!r}, step={self.step}, image_size={self.image_size}, "
                f"latents={self.latent_shape}, embodiments={sorted(self.action_spaces)}, "
                f"predictor={'yes' if self._model_graph is not None else 'no'})")

    @property
    def has_predictor(self) -> bool:
        return self._model_graph is not None

    def _need_model(self, what: str) -> None:
        if self._model_graph is None:
            raise ValueError(
                f"WorldModel.{what} needs the predictor and action heads, but {self.path} is an "
                f"encoder-only export; re-export with `wam-export --with_predictor` or load the workdir")

    def action_space(self, embodiment: str | int | None = None) -> ActionSpace:
        """The embodiment whose units actions are in (default: the only one, or the load-time choice)."""
        embodiment = self._default_embodiment if embodiment is None else embodiment
        if not self.action_spaces:
            raise ValueError(
                f"{self.path}: the model was trained without labeled actions (no robot source with "
                f"action statistics), so it has no action space")
        if embodiment is None:
            if len(self.action_spaces) > 1:
                raise ValueError(
                    f"{self.path} has several embodiments {sorted(self.action_spaces)}; pass embodiment=NAME")
            return next(iter(self.action_spaces.values()))
        if isinstance(embodiment, int):
            for space in self.action_spaces.values():
                if space.embodiment_id == embodiment:
                    return space
        elif embodiment in self.action_spaces:
            return self.action_spaces[embodiment]
        raise ValueError(f"unknown embodiment {embodiment!r}; this model knows {sorted(self.action_spaces)}")

    def _latents(self, latents: ArrayLike, name: str, min_ndim: int, max_ndim: int) -> jax.Array:
        n, d = self.latent_shape
        z = jnp.asarray(latents, jnp.float32)
        if not (min_ndim <= z.ndim <= max_ndim) or z.shape[-2:] != (n, d):
            raise ValueError(f"{name} has shape {tuple(z.shape)}; expected [..., N, D] = [..., {n}, {d}] "
                             f"with {min_ndim}..{max_ndim} dims (from WorldModel.encode)")
        return z

    def _fn(self, key: Any, build):
        fn = self._fns.get(key)
        if fn is None:
            fn = self._fns[key] = build()
        return fn

    def _call(self, fn, *args):
        with jax.set_mesh(self.mesh):
            return fn(*args)

    # -- encoding -------------------------------------------------------------------------------

    def encode(self, frames: ArrayLike, *, resize: bool = False) -> jax.Array:
        """uint8 RGB `[H, W, 3]` / `[T, H, W, 3]` / `[B, T, H, W, 3]` -> latents `[..., N, D]`.

        Wrong-size frames raise (naming the expected size) unless `resize=True`.
        """
        from flax import nnx

        from wam_jax.models import encoder as encoder_lib
        from wam_jax.models.world_model import encode_latents

        video, lead = check_frames(frames, self.image_size, resize=resize)

        def build():
            graph = self._target_graph

            @jax.jit
            def f(state, v):
                enc = nnx.merge(graph, state)
                return encode_latents(enc, encoder_lib.normalize_video(v))
            return f

        z = self._call(self._fn("encode", build), self._target_state, jnp.asarray(video))
        return z.reshape(lead + z.shape[-2:])

    # -- prediction -----------------------------------------------------------------------------

    def _model(self):
        from flax import nnx

        return nnx.merge(self._model_graph, self._model_state)

    def predict(self, latents: ArrayLike, actions: ArrayLike, *, proprio: ArrayLike | None = None,
                embodiment: str | int | None = None) -> jax.Array:
        """Predicted latents after applying `actions` (robot units) from `latents`.

        latents: `[N, D]` (current state), `[C, N, D]` (C context frames, oldest first), or batched
          `[B, C, N, D]`. Context transitions are conditioned on their inferred latent actions.
        actions: `[A]` (one step -> `[N, D]`), `[k, A]` (k-step rollout -> `[k, N, D]`), or batched
          `[B, k, A]` -> `[B, k, N, D]`.
        proprio: optional robot-unit proprio of the context frames `[C, P]` / `[B, C, P]`.
        """
        self._need_model("predict")
        space = self.action_space(embodiment)
        z = self._latents(latents, "latents", 2, 4)
        a = np.asarray(actions, np.float32)
        if a.ndim not in (1, 2, 3):
            raise ValueError(f"actions has shape {a.shape}; expected [A], [k, A] or [B, k, A] with A={space.dim}")
        single_step = a.ndim == 1
        a = a[None] if single_step else a
        batched = a.ndim == 3 or z.ndim == 4
        if z.ndim == 2:
            z = z[None]
        if z.ndim == 3:
            z = z[None]
        if a.ndim == 2:
            a = a[None]
        if z.shape[0] != a.shape[0]:  # one side unbatched: shared by every batch element
            if z.shape[0] == 1:
                z = jnp.broadcast_to(z, (a.shape[0],) + z.shape[1:])
            elif a.shape[0] == 1:
                a = np.broadcast_to(a, (z.shape[0],) + a.shape[1:])
            else:
                raise ValueError(f"latents batch {z.shape[0]} and actions batch {a.shape[0]} differ")
        a_norm, a_mask = space.normalize(a)
        b, c = z.shape[:2]
        pp = pm = None
        if proprio is not None:
            p = np.asarray(proprio, np.float32)
            p = p[None] if p.ndim == 2 else p
            if p.shape[:2] != (b, c):
                raise ValueError(f"proprio has shape {np.shape(proprio)}; expected [C, P] or [B, C, P] with C={c}")
            pp, pm = space.normalize_proprio(p)
            pp = np.pad(pp, ((0, 0), (0, 0), (0, self.spec.proprio_dim - pp.shape[-1])))
            pm = np.pad(pm, ((0, 0), (0, 0), (0, self.spec.proprio_dim - pm.shape[-1])))
        emb = np.full((b,), space.embodiment_id, np.int32)
        fn = self._fn(("predict", proprio is not None), self._build_predict)
        out = self._call(fn, self._model_state, z, jnp.asarray(a_norm), jnp.asarray(a_mask),
                         jnp.asarray(emb), pp, pm)
        if not batched:
            out = out[0]
        return out[..., 0, :, :] if single_step else out

    def _build_predict(self):
        from flax import nnx

        graph = self._model_graph

        @jax.jit
        def f(state, z, a, mask, emb, proprio, pmask):
            model = nnx.merge(graph, state)
            cond = _context_and_action_conds(model, z, a, mask, emb)
            return model.rollout(z, cond, proprio, a.shape[1], proprio_mask=pmask)
        return f

    def latent_actions(self, latents: ArrayLike) -> jax.Array:
        """Latent actions of consecutive frames: `[T, N, D]` / `[B, T, N, D]` -> `[..., T-1, du]`."""
        self._need_model("latent_actions")
        z = self._latents(latents, "latents", 3, 4)
        squeeze = z.ndim == 3
        z = z[None] if squeeze else z
        if z.shape[1] < 2:
            raise ValueError(f"latents has shape {tuple(z.shape)}; expected T >= 2 frames")
        from flax import nnx

        graph = self._model_graph

        def build():
            return jax.jit(lambda s, x: nnx.merge(graph, s).infer_latent_actions(x))
        out = self._call(self._fn("latent_actions", build), self._model_state, z)
        return out[0] if squeeze else out

    def infer_actions(self, latents: ArrayLike, *, embodiment: str | int | None = None) -> np.ndarray:
        """Inverse dynamics: latents `[T, N, D]` / `[B, T, N, D]` -> actions `[..., T-1, A]` (robot units)."""
        self._need_model("infer_actions")
        space = self.action_space(embodiment)
        z = self._latents(latents, "latents", 3, 4)
        squeeze = z.ndim == 3
        z = z[None] if squeeze else z
        if z.shape[1] < 2:
            raise ValueError(f"latents has shape {tuple(z.shape)}; expected T >= 2 frames")
        from flax import nnx

        graph = self._model_graph

        def build():
            return jax.jit(lambda s, x, e: nnx.merge(graph, s).inverse_dynamics(x[:, :-1], x[:, 1:], e))
        emb = jnp.full((z.shape[0],), space.embodiment_id, jnp.int32)
        out = space.denormalize(np.asarray(self._call(self._fn("inverse", build), self._model_state, z, emb)))
        return out[0] if squeeze else out

    def policy(self, latents: ArrayLike, goal_latents: ArrayLike, *,
               embodiment: str | int | None = None) -> np.ndarray:
        """Goal-conditioned action chunk: `[N, D]` + goal `[N, D]` -> `[h, A]` (batched: `[B, h, A]`)."""
        self._need_model("policy")
        space = self.action_space(embodiment)
        z = self._latents(latents, "latents", 2, 3)
        g = self._latents(goal_latents, "goal_latents", 2, 3)
        squeeze = z.ndim == 2
        z = z[None] if z.ndim == 2 else z
        g = g[None] if g.ndim == 2 else g
        g = jnp.broadcast_to(g, z.shape)
        from flax import nnx

        graph = self._model_graph

        def build():
            return jax.jit(lambda s, x, y, e: nnx.merge(graph, s).policy(x[:, None], y, e)[:, 0])
        emb = jnp.full((z.shape[0],), space.embodiment_id, jnp.int32)
        out = space.denormalize(np.asarray(self._call(self._fn("policy", build), self._model_state, z, g, emb)))
        return out[0] if squeeze else out

    # -- planning -------------------------------------------------------------------------------

    def planner_config(self, preset: str | planning.PlannerConfig = "vjepa2_ac", **overrides: Any
                       ) -> planning.PlannerConfig:
        if isinstance(preset, planning.PlannerConfig):
            return preset.replace(**overrides) if overrides else preset
        return planning.preset(preset, **overrides)

    def plan(self, observation: ArrayLike, goal: ArrayLike, *, preset: str | planning.PlannerConfig = "vjepa2_ac",
             key: jax.Array | int = 0, init_mean: ArrayLike | None = None, embodiment: str | int | None = None,
             resize: bool = False, steps: str = "last") -> planning.PlanResult:
        """Plans `H` actions taking `observation` to `goal` (uint8 images) by latent-space CEM/MPPI.

        observation: `[H, W, 3]` (current frame) or `[C, H, W, 3]` (context, newest last).
        goal: `[H, W, 3]` goal image (same size rules as `encode`).
        Returns a PlanResult whose `actions`/`best_actions` are numpy `[H, A]` in robot units.
        """
        obs = np.asarray(observation)
        if obs.ndim not in (3, 4):
            raise ValueError(f"observation has shape {obs.shape}; expected [H, W, 3] or [C, H, W, 3] uint8")
        g = np.asarray(goal)
        if g.ndim != 3:
            raise ValueError(f"goal has shape {g.shape}; expected one uint8 image "
                             f"[{self.image_size}, {self.image_size}, 3]")
        check_frames(g, self.image_size, name="goal image", resize=resize)
        z_obs = self.encode(obs if obs.ndim == 4 else obs[None], resize=resize)
        z_goal = self.encode(g, resize=resize)
        return self.plan_latents(z_obs, z_goal, preset=preset, key=key, init_mean=init_mean,
                                 embodiment=embodiment, steps=steps)

    def plan_latents(self, context_latents: ArrayLike, goal_latents: ArrayLike, *,
                     preset: str | planning.PlannerConfig = "vjepa2_ac", key: jax.Array | int = 0,
                     init_mean: ArrayLike | None = None, embodiment: str | int | None = None,
                     steps: str = "last") -> planning.PlanResult:
        """`plan` on latents: context `[N, D]` / `[C, N, D]`, goal `[N, D]`; robot-unit results."""
        self._need_model("plan")
        space = self.action_space(embodiment)
        cfg = self.planner_config(preset)
        z = self._latents(context_latents, "context_latents", 2, 3)
        z = z[None] if z.ndim == 2 else z
        goal = self._latents(goal_latents, "goal_latents", 2, 2)
        planner = self._fn(("plan", cfg, z.shape[0], steps, space.embodiment), lambda: self._build_planner(cfg, space, steps))
        bounds = space.bounds()
        mean0 = None
        if init_mean is not None:
            m = np.asarray(init_mean, np.float32)
            if m.shape != (cfg.horizon, space.dim):
                raise ValueError(f"init_mean has shape {m.shape}; expected [H, A] = [{cfg.horizon}, {space.dim}]")
            mean0 = jnp.asarray(space.normalize(m)[0][..., : space.dim])
        if isinstance(key, int):
            key = jax.random.key(key)
        ctx = (self._model_state, z, goal, jnp.int32(space.embodiment_id))
        res = planner(ctx, key, bounds.lower, bounds.upper, mean0)
        scale = np.maximum(space.std, 1e-6) * np.where(space.is_delta, space.stride, 1)
        return planning.PlanResult(
            actions=space.denormalize(np.asarray(res.actions)),
            std=np.asarray(res.std) * scale,
            best_actions=space.denormalize(np.asarray(res.best_actions)),
            best_energy=np.asarray(res.best_energy),
            energy_trace=np.asarray(res.energy_trace),
        )

    def _build_planner(self, cfg: planning.PlannerConfig, space: ActionSpace, steps: str):
        from flax import nnx

        graph = self._model_graph
        pad = space.model_dim - space.dim

        def energy(actions, ctx):
            state, z_ctx, goal, emb_id = ctx
            model = nnx.merge(graph, state)
            s = actions.shape[0]
            a = jnp.pad(actions, ((0, 0), (0, 0), (0, pad)))
            mask = jnp.broadcast_to(jnp.arange(space.model_dim) < space.dim, a.shape)
            emb = jnp.full((s,), emb_id, jnp.int32)
            z = jnp.broadcast_to(z_ctx[None], (s,) + z_ctx.shape)
            cond = _context_and_action_conds(model, z, a, mask, emb)
            preds = model.rollout_raw(z, cond, None, None, actions.shape[1])
            return planning.latent_goal_energy(preds, goal, steps=steps)

        return planning.make_planner(energy, cfg, action_dim=space.dim, mesh=self.mesh)


def _context_and_action_conds(model: Any, z: jax.Array, a: jax.Array, mask: jax.Array, emb: jax.Array
                              ) -> jax.Array:
    """Conditioning for a rollout from C context frames: inferred latent actions for the C-1
    observed transitions, embedded real actions for the k future ones -> `[B, C-1+k, du]`."""
    cond = model.action_embedder(a, mask, emb)
    if z.shape[1] > 1:
        ctx = model.latent_actions(z[:, :-1], z[:, 1:]).mean
        cond = jnp.concatenate([ctx.astype(cond.dtype), cond], axis=1)
    return cond
