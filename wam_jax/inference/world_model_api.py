"""`WorldModel`: a trained world action model for use outside training (evaluate, plan, embed).

    wm = WorldModel.load("runs/pusht_small")            # latest checkpoint of a training workdir
    wm = WorldModel.load("runs/pusht_small", step=400)  # a given step
    wm = WorldModel.load("exports/pusht")               # a `wam-export` directory

    z = wm.encode(frames)                      # uint8 [T, H, W, 3] -> latents [T, N, D]
    z_next = wm.predict(z[-1], action)         # one step;   action [A] in robot units
    z_roll = wm.predict(z[-1], actions)        # k steps;    actions [k, A] -> [k, N, D]
    a_hat = wm.infer_actions(z)                # inverse dynamics: [T, N, D] -> [T-1, A]
    chunk = wm.policy(z[-1], z_goal)           # goal-conditioned policy head -> [h, A]
    z_h, chunk = wm.generate(z[-1], z_goal, sample=0)  # with a flow head: a chunk and its imagined future
    plan = wm.plan(frame, goal_frame)          # CEM/MPPI in latent space -> plan.actions [H, A]
    img = wm.decode(z_roll)                    # with a frame decoder: what the imagined future shows
    wm.action_space().action_names             # what each action dimension is

Units: every action going in or out is in the robot's own units (the converted dataset's), for one
embodiment's own action dimensions; the model's internal normalization (dataset mean/std, stride
summing of delta dims, padding to `model.action_dim`) is applied here, from the statistics saved
with the checkpoint (`action_space.ActionSpace`). Planning bounds are the dataset's q01/q99.

Latent space: everything uses the *target* encoder (EMA of the online encoder, or the frozen
encoder), layer-normed: the space the predictor was trained to predict into, so observations, goals
and predictions are directly comparable. Shapes: a leading batch dimension is optional everywhere.
Loading (`load.restore`) builds no optimizer state and imports no training step.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from wam_jax.inference import load, plan_energy, planning, state_subspace
from wam_jax.inference.action_space import ActionSpace, action_spaces_from_info
from wam_jax.inference.artifacts import (
    IncompleteExportError,
    MissingStatisticsError,
    check_frames,
    real_array,
)
from wam_jax.inference.load import inference_mesh

log = logging.getLogger(__name__)

ArrayLike = Any

# Errors and the default mesh of `WorldModel.load`, for callers that handle them.
__all__ = ["ActionSpace", "IncompleteExportError", "MissingStatisticsError", "WorldModel", "inference_mesh"]


# ----------------------------------------------------------------------------------------------
# The model wrapper


class WorldModel:
    """A trained world action model with un-normalized (robot-unit) actions. See module docstring."""

    def __init__(self, *, config: Any, info: Mapping[str, Any], step: int | None, path: str, kind: str,
                 mesh: Any, model: Any | None, target: Any, embodiment: str | None = None,
                 abstract_model: Any = None):
        """`model` None: an encoder-only model, which encodes through `abstract_model` (the model
        with ShapeDtypeStruct leaves, `load.AbstractModel.module()`; traced here when not given)."""
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
        self.latent_shape = target.latent_shape
        if model is not None:
            self._model_graph, self._model_state = nnx.split(model)
            self.spec = model.spec
            self._abstract_model = None
        else:
            self._model_graph = self._model_state = None
            self._abstract_model = (abstract_model if abstract_model is not None
                                    else load.abstract_model(config, mesh).module())
            self.spec = self._abstract_model.spec
        self._fns: dict[Any, Any] = {}

    # -- loading --------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str, step: int | None = None, *, mesh: Any = None,
             embodiment: str | None = None) -> WorldModel:
        """A training workdir (latest checkpoint, or `step`) or a `wam-export` directory.

        `mesh`: default all devices (`load.inference_mesh`); `embodiment`: the default action space.
        """
        return cls.from_restored(load.restore(path, step, mesh=mesh), embodiment=embodiment)

    @classmethod
    def from_restored(cls, r: load.Restored, *, embodiment: str | None = None) -> WorldModel:
        """The model of an already restored checkpoint or export (`load.restore`): one read serves
        several consumers (`wam-eval`'s metrics, probes and energies)."""
        return cls(config=r.config, info=r.info, step=r.step, path=r.path, kind=r.kind, mesh=r.mesh,
                   model=r.model, target=r.target, embodiment=embodiment,
                   abstract_model=None if r.model is not None else r.abstract.module())

    # -- helpers --------------------------------------------------------------------------------

    def __repr__(self) -> str:
        return (f"WorldModel({self.kind} {self.path!r}, step={self.step}, image_size={self.image_size}, "
                f"latents={self.latent_shape}, embodiments={sorted(self.action_spaces)}, "
                f"predictor={'yes' if self._model_graph is not None else 'no'})")

    @property
    def has_predictor(self) -> bool:
        return self._model_graph is not None

    @property
    def has_decoder(self) -> bool:
        """A frame decoder was trained with the model (`model.decoder`): `decode`, `cost='decoded'`."""
        return self.has_predictor and int(self.config.model.get("decoder", {}).get("size", 0)) > 0

    @property
    def has_flow_head(self) -> bool:
        """A flow-matching action head was trained with the model (`model.flow_head`): `policy(sample=)`."""
        return self.has_predictor and int(self.config.model.get("flow_head", {}).get("depth", 0)) > 0

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
        elif isinstance(embodiment, str) and embodiment in self.action_spaces:
            return self.action_spaces[embodiment]
        raise ValueError(f"unknown embodiment {embodiment!r}; this model knows {sorted(self.action_spaces)}")

    def _latents(self, latents: ArrayLike, name: str, min_ndim: int, max_ndim: int) -> jax.Array:
        n, d = self.latent_shape
        expected = f"[..., N, D] = [..., {n}, {d}] with {min_ndim}..{max_ndim} dims (from WorldModel.encode)"
        z = real_array(latents, name, expected)
        if not (min_ndim <= z.ndim <= max_ndim) or z.shape[-2:] != (n, d) or z.size == 0:
            raise ValueError(f"{name} has shape {tuple(z.shape)}; expected {expected}")
        return jnp.asarray(z)

    def _model_proprio(self, space: ActionSpace, proprio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Robot-unit proprio `[..., P]` -> (normalized, mask), zero-padded to `model.proprio_dim`."""
        pp, pm = space.normalize_proprio(proprio)
        pad = [(0, 0)] * (pp.ndim - 1) + [(0, self.spec.proprio_dim - pp.shape[-1])]
        return np.pad(pp, pad), np.pad(pm, pad)

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

        Wrong-size frames raise (naming the expected size) unless `resize=True`. The model's own
        `WorldActionModel.encode` with the target encoder, as in training.
        """
        from flax import nnx

        video, lead = check_frames(frames, self.image_size, resize=resize)

        def build():
            mgraph, tgraph, host = self._model_graph, self._target_graph, self._abstract_model

            @jax.jit
            def f(model_state, target_state, v):
                model = host if mgraph is None else nnx.merge(mgraph, model_state)
                return model.encode(v, encoder=nnx.merge(tgraph, target_state))
            return f

        z = self._call(self._fn("encode", build), self._model_state, self._target_state, jnp.asarray(video))
        return z.reshape(lead + z.shape[-2:])

    def state_subspace(self, frames: ArrayLike, proprio: ArrayLike, *, batch: int = 256, **fit: Any
                       ) -> np.ndarray:
        """Orthonormal basis `[N * D, r]` of the latent directions a polynomial of the robot's state
        explains, from frames `[n, H, W, 3]` and their proprio `[n, P]` (e.g. a sample of the
        training data: `data_pipelines.frame_sample`): `plan(..., cost='scene')` plans without
        them. `fit`: `state_subspace.fit_state_subspace`'s options."""
        video = np.asarray(frames)
        z = np.concatenate([np.asarray(self.encode(video[i:i + batch])) for i in range(0, len(video), batch)])
        return state_subspace.fit_state_subspace(z, np.asarray(proprio), **fit)

    def decode(self, latents: ArrayLike) -> np.ndarray:
        """Latents `[..., N, D]` (encoded or predicted) -> the frames the model's frame decoder
        draws from them, uint8 RGB `[..., s, s, 3]` at `model.decoder.size`: what an imagined
        future shows."""
        if not self.has_decoder:
            raise ValueError(f"WorldModel.decode: {self.path} has no frame decoder (train with "
                             f"--config.model.decoder.size=32 --config.loss.recon=1.0)")
        from flax import nnx

        from wam_jax.models.encoder import IMAGENET_MEAN, IMAGENET_STD

        z = self._latents(latents, "latents", 2, 6)
        graph = self._model_graph

        def build():
            return jax.jit(lambda state, x: nnx.merge(graph, state).frame_decoder(x))
        x = np.asarray(self._call(self._fn("decode", build), self._model_state, z))
        rgb = x * np.asarray(IMAGENET_STD, np.float32) + np.asarray(IMAGENET_MEAN, np.float32)
        return np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)

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
        expected = f"[A], [k, A] or [B, k, A] with A={space.dim}, k >= 1"
        a = real_array(actions, "actions", expected)
        if a.ndim not in (1, 2, 3) or a.size == 0:
            raise ValueError(f"actions has shape {a.shape}; expected {expected}")
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
                raise ValueError(f"latents batch {z.shape[0]} and actions batch {a.shape[0]} differ; expected "
                                 f"[B, C, N, D] latents with [B, k, A] actions (or one of them unbatched)")
        a_norm, a_mask = space.normalize(a)
        b, c = z.shape[:2]
        pp = pm = None
        if proprio is not None:
            p = real_array(proprio, "proprio", f"[C, P] or [B, C, P] with C={c}")
            p = p[None] if p.ndim == 2 else p
            if p.shape[:2] != (b, c):
                raise ValueError(f"proprio has shape {np.shape(proprio)}; expected [C, P] or [B, C, P] with C={c}")
            pp, pm = self._model_proprio(space, p)
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
            cond = plan_energy.context_and_action_conds(model, z, a, mask, emb)
            return model.rollout(z, cond, proprio, a.shape[1], proprio_mask=pmask)
        return f

    def _frame_pairs(self, latents: ArrayLike) -> tuple[jax.Array, bool]:
        """Latents `[T, N, D]` / `[B, T, N, D]` with T >= 2 as `[B, T, N, D]`, and whether a batch
        axis was added."""
        z = self._latents(latents, "latents", 3, 4)
        squeeze = z.ndim == 3
        z = z[None] if squeeze else z
        if z.shape[1] < 2:
            raise ValueError(f"latents has shape {tuple(z.shape)}; expected T >= 2 frames")
        return z, squeeze

    def latent_actions(self, latents: ArrayLike) -> jax.Array:
        """Latent actions of consecutive frames: `[T, N, D]` / `[B, T, N, D]` -> `[..., T-1, du]`."""
        self._need_model("latent_actions")
        z, squeeze = self._frame_pairs(latents)
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
        z, squeeze = self._frame_pairs(latents)
        from flax import nnx

        graph = self._model_graph

        def build():
            return jax.jit(lambda s, x, e: nnx.merge(graph, s).inverse_dynamics(x[:, :-1], x[:, 1:], e))
        emb = jnp.full((z.shape[0],), space.embodiment_id, jnp.int32)
        out = space.denormalize(np.asarray(self._call(self._fn("inverse", build), self._model_state, z, emb)))
        return out[0] if squeeze else out

    def _goal_batch(self, what: str, latents: ArrayLike, goal_latents: ArrayLike, embodiment: str | int | None
                    ) -> tuple[ActionSpace, jax.Array, jax.Array, jax.Array, bool]:
        """(space, latents `[B, N, D]`, goals broadcast to them, embodiment ids, whether unbatched)."""
        self._need_model(what)
        space = self.action_space(embodiment)
        z = self._latents(latents, "latents", 2, 3)
        g = self._latents(goal_latents, "goal_latents", 2, 3)
        squeeze = z.ndim == 2
        z = z[None] if z.ndim == 2 else z
        g = g[None] if g.ndim == 2 else g
        if g.shape[0] not in (1, z.shape[0]):
            raise ValueError(f"goal_latents has shape {np.shape(goal_latents)}; expected [N, D] or [B, N, D] "
                             f"with B={z.shape[0]} (the batch of latents)")
        return space, z, jnp.broadcast_to(g, z.shape), jnp.full((z.shape[0],), space.embodiment_id, jnp.int32), squeeze

    def policy(self, latents: ArrayLike, goal_latents: ArrayLike, *, embodiment: str | int | None = None,
               sample: int | None = None, proprio: ArrayLike | None = None) -> np.ndarray:
        """Goal-conditioned action chunk: `[N, D]` + goal `[N, D]` -> `[h, A]` (batched: `[B, h, A]`).
        `sample=SEED`: the chunk `generate` draws from the flow head instead of the regression head."""
        if sample is not None:
            return self.generate(latents, goal_latents, sample=sample, proprio=proprio, embodiment=embodiment)[1]
        from flax import nnx

        space, z, g, emb, squeeze = self._goal_batch("policy", latents, goal_latents, embodiment)
        graph = self._model_graph

        def build():
            return jax.jit(lambda s, x, y, e: nnx.merge(graph, s).policy(x[:, None], y, e)[:, 0])
        out = space.denormalize(np.asarray(self._call(self._fn("policy", build), self._model_state, z, g, emb)))
        return out[0] if squeeze else out

    def generate(self, latents: ArrayLike, goal_latents: ArrayLike, *, sample: int, proprio: ArrayLike | None = None,
                 embodiment: str | int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """VAG's paired generation, one jitted call (`models/vag.generate_paired`): `[N, D]` + goal
        `[N, D]` -> (imagined latents `[h, N, D]`, action chunk `[h, A]` in robot units), batched
        `[B, ...]`: the chunk drawn from the flow head with seed `sample`, the latents the predictor's
        rollout under it. `proprio`: the current frame's `[P]` / `[B, P]` (robot units) when known."""
        from flax import nnx

        from wam_jax.models import vag

        space, z, g, emb, squeeze = self._goal_batch("generate", latents, goal_latents, embodiment)
        pp = None
        if proprio is not None:
            p = real_array(proprio, "proprio", "[P] or [B, P] (robot units)")
            pp = self._model_proprio(space, p.reshape(-1, p.shape[-1]))[0]
            pp = jnp.asarray(np.broadcast_to(pp, (z.shape[0], *pp.shape[1:])))
        graph = self._model_graph

        def build():
            return jax.jit(lambda s, x, y, e, k, p: vag.generate_paired(nnx.merge(graph, s), x, y, k, p, e))
        lat, chunk = self._call(self._fn(("generate", pp is None), build), self._model_state, z, g, emb,
                                jax.random.key(sample), pp)
        lat, chunk = np.asarray(lat), space.denormalize(np.asarray(chunk))
        return (lat[0], chunk[0]) if squeeze else (lat, chunk)

    # -- planning -------------------------------------------------------------------------------

    def planner_config(self, preset: str | planning.PlannerConfig = "vjepa2_ac", **overrides: Any
                       ) -> planning.PlannerConfig:
        if isinstance(preset, planning.PlannerConfig):
            return preset.replace(**overrides) if overrides else preset
        return planning.preset(preset, **overrides)

    def plan(self, observation: ArrayLike, goal: ArrayLike, *, preset: str | planning.PlannerConfig = "vjepa2_ac",
             key: jax.Array | int = 0, init_mean: ArrayLike | None = None, embodiment: str | int | None = None,
             resize: bool = False, steps: str = "last", cost: str = "latent", scene_basis: ArrayLike | None = None
             ) -> planning.PlanResult:
        """Plans `H` actions taking `observation` to `goal` (uint8 images) by latent-space CEM/MPPI.

        observation: `[H, W, 3]` (current frame) or `[C, H, W, 3]` (context, newest last).
        goal: `[H, W, 3]` goal image (same size rules as `encode`).
        Returns a PlanResult whose `actions`/`best_actions` are numpy `[H, A]` in robot units.
        """
        # dtype, size and ragged / empty arrays first, so that np.asarray below cannot fail
        check_frames(observation, self.image_size, name="observation", resize=resize)
        check_frames(goal, self.image_size, name="goal image", resize=resize)
        obs = np.asarray(observation)
        if obs.ndim not in (3, 4):
            raise ValueError(f"observation has shape {obs.shape}; expected [H, W, 3] or [C, H, W, 3] uint8")
        g = np.asarray(goal)
        if g.ndim != 3:
            raise ValueError(f"goal has shape {g.shape}; expected one uint8 image "
                             f"[{self.image_size}, {self.image_size}, 3]")
        z_obs = self.encode(obs if obs.ndim == 4 else obs[None], resize=resize)
        z_goal = self.encode(g, resize=resize)
        return self.plan_latents(z_obs, z_goal, preset=preset, key=key, init_mean=init_mean,
                                 embodiment=embodiment, steps=steps, cost=cost, scene_basis=scene_basis)

    def plan_latents(self, context_latents: ArrayLike, goal_latents: ArrayLike, *,
                     preset: str | planning.PlannerConfig = "vjepa2_ac", key: jax.Array | int = 0,
                     init_mean: ArrayLike | None = None, embodiment: str | int | None = None,
                     steps: str = "last", context_proprio: ArrayLike | None = None,
                     decoder: planning.ActionDecoder | None = None, anchor: ArrayLike | None = None,
                     cost: str = "latent", scene_basis: ArrayLike | None = None) -> planning.PlanResult:
        """`plan` on latents: context `[N, D]` / `[C, N, D]`, goal `[N, D]`; robot-unit results.

        `context_proprio`: the robot's proprio at the context frames (`[P]` / `[C, P]`, robot
        units). The predictor is trained with proprio beside every observed frame; planning
        without it feeds the rollout an input it saw only on imagined steps.
        `decoder` (with its `anchor`): search its variables instead of the actions (`init_mean`
        is then in variables, and the result's `variables` holds their mean).
        `cost`: 'latent' (L1 to the goal latents) or 'decoded' (L1 between the frames the model's
        frame decoder draws from the prediction and from the goal; `wam_jax.inference.plan_energy`)
        or 'scene' (L1 to the goal latents without the directions of `scene_basis`, `[N * D, r]`
        from `state_subspace`: what the robot's own state explains) or 'privileged' (L1 between the
        privileged states read out of both: `loss.privileged`)."""
        self._need_model("plan")
        plan_energy.check_cost(cost, self.has_decoder, scene_basis is not None,
                               self.has_predictor and int(self.config.model.get("privileged_dim", 0)) > 0)
        space = self.action_space(embodiment)
        cfg = self.planner_config(preset)
        z = self._latents(context_latents, "context_latents", 2, 3)
        z = z[None] if z.ndim == 2 else z
        goal = self._latents(goal_latents, "goal_latents", 2, 2)
        proprio = None
        if context_proprio is not None:
            p = real_array(context_proprio, "context_proprio", "[P] or [C, P] (one row per context frame)")
            p = p[None] if p.ndim == 1 else p
            if p.ndim != 2 or p.shape[0] != z.shape[0]:
                raise ValueError(f"context_proprio has shape {np.shape(context_proprio)}; expected [P] or "
                                 f"[C, P] with C={z.shape[0]} (one row per context frame)")
            proprio = tuple(jnp.asarray(x) for x in self._model_proprio(space, p))
        planner = self._fn(("plan", cfg, z.shape[0], steps, space.embodiment, proprio is not None, decoder, cost),
                           lambda: self._build_planner(cfg, space, steps, decoder, cost))
        dim = decoder.dim if decoder else space.dim
        if decoder:
            if anchor is None:
                raise ValueError(f"decoder {decoder.name!r} needs its anchor (e.g. the robot's current position)")
            bounds = planning.ActionBounds(jnp.full((dim,), decoder.lower, jnp.float32),
                                           jnp.full((dim,), decoder.upper, jnp.float32))
        else:
            bounds = space.bounds()
        mean0 = None
        if init_mean is not None:
            m = real_array(init_mean, "init_mean", f"[H, A] = [{cfg.horizon}, {dim}]")
            if m.shape != (cfg.horizon, dim):
                raise ValueError(f"init_mean has shape {m.shape}; expected [H, A] = [{cfg.horizon}, {dim}]")
            mean0 = jnp.asarray(m) if decoder else jnp.asarray(space.normalize(m)[0][..., : space.dim])
        if isinstance(key, int):
            key = jax.random.key(key)
        anchor_arr = None if decoder is None else jnp.asarray(real_array(anchor, "anchor", "an array"))
        basis = None
        if cost == "scene":
            basis = jnp.asarray(real_array(scene_basis, "scene_basis", "[N * D, r]"), jnp.float32)
            if basis.ndim != 2 or basis.shape[0] != goal.size:
                raise ValueError(f"scene_basis has shape {basis.shape}; expected [N * D, r] with N * D = {goal.size}")
        ctx = (self._model_state, z, goal, jnp.int32(space.embodiment_id), proprio, anchor_arr, basis)
        res = planner(ctx, key, bounds.lower, bounds.upper, mean0)
        return plan_energy.in_robot_units(res, space, decoder, anchor_arr)

    def _build_planner(self, cfg: planning.PlannerConfig, space: ActionSpace, steps: str,
                       decoder: planning.ActionDecoder | None = None, cost: str = "latent"):
        return plan_energy.build_planner(self._model_graph, cfg, space, steps, decoder=decoder, cost=cost,
                                         mesh=self.mesh)
