"""`WorldActionModel`: encoder + latent predictor + latent actions + action embedder + action heads
(+ an optional frame decoder, `model.decoder`).

The trained model holds the online encoder and everything downstream of it; the target encoder
(EMA or frozen copy) is a separate `VideoEncoder` made by `make_target_encoder()`, so its
parameters never enter the trained `nnx.Param` tree. Latents are per-frame encoder tokens
layer-normed without affine (`normalize_latents`); pooled latents (`model.pool`) are the
projector's output as is (its scale is SIGReg's business), and so are their predictions.

Which encoder feeds what: the predictor and the latent-action model live in the *target* space
(inputs and targets from the target encoder, no gradient), the space a planner encodes
observations and goals into; the online encoder learns through the action heads and the SSL
objective, and the target follows it by EMA. With `model.target='frozen'` both are the same.

Public entry points (`encode`, `predict`, `rollout`, `infer_latent_actions`, `embed_actions`,
`inverse_dynamics`, `policy`) validate shapes and dtypes in Python before any array op, raising
`ValueError` that names the argument and the expected shape; they trace fine under `nnx.jit`.
The loss (`wam_jax.training.objectives.loss_fn`) and evaluation use the unvalidated versions
(`encode_float`, `conditioning`, `predict_raw`, `rollout_raw`) and the submodules directly.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wam_jax.models import encoder as encoder_lib
from wam_jax.models import flow_head as flow_head_lib
from wam_jax.models.action_head import InverseDynamicsHead, PolicyHead
from wam_jax.models.checks import array_shape, check_array
from wam_jax.models.decoder import FrameDecoder, check_size
from wam_jax.models.latent_actions import ActionEmbedder, LatentActionModel, LatentActions
from wam_jax.models.linear import EmbodimentLinear
from wam_jax.models.ops import use_matmul_dtype
from wam_jax.models.partitioning import eager_sharding_scope
from wam_jax.models.predictor import LatentPredictor, MaskedPredictor

VIDEO_CONDS = ("latent", "mask")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """The static numbers the model and the loss need (hashable, unlike the ConfigDict)."""

    image_size: int
    patch_size: int
    tubelet: int
    latent_dim: int
    grid_hw: tuple[int, int]
    action_dim: int
    proprio_dim: int
    num_embodiments: int
    num_sources: int
    latent_action_dim: int
    bottleneck: str
    video_cond: str  # what conditions action-free steps: 'latent' (u_t) or 'mask' (a learned token)
    policy_horizon: int
    target: str
    ssl_enabled: bool
    ssl_mask_ratio: float
    ssl_num_blocks: int
    ssl_block_scale: float
    pooled: bool = False  # latents are the projector's outputs (`model.pool`), not patch tokens
    privileged_dim: int = 0  # K of the privileged-state readout (0 = none)

    @property
    def tokens_per_frame(self) -> int:
        return self.grid_hw[0] * self.grid_hw[1]


def spec_from_config(cfg: Any) -> ModelSpec:
    ssl_enabled = bool(cfg.ssl.enabled)
    if ssl_enabled and cfg.target == "frozen":
        raise ValueError("model.ssl.enabled trains the encoder; it needs model.target='ema', not 'frozen'")
    la = cfg.latent_action
    video_cond = str(la.video_cond)
    if video_cond not in VIDEO_CONDS:
        raise ValueError(f"model.latent_action.video_cond must be one of {VIDEO_CONDS}, got {video_cond!r}")
    g = cfg.image_size // cfg.patch_size
    pooled = str(cfg.pool.kind) != "none"
    regions = encoder_lib.pool_grid(cfg)
    if pooled and ssl_enabled:
        raise ValueError("model.ssl.enabled predicts masked patch tokens; it needs model.pool.kind='none'")
    return ModelSpec(
        image_size=int(cfg.image_size), patch_size=int(cfg.patch_size), tubelet=int(cfg.tubelet),
        latent_dim=int(cfg.pool.dim) if pooled else int(cfg.encoder.width),
        grid_hw=(regions, regions) if pooled else (g, g), pooled=pooled, action_dim=int(cfg.action_dim),
        proprio_dim=int(cfg.proprio_dim), num_embodiments=int(cfg.num_embodiments),
        num_sources=int(cfg.num_sources), latent_action_dim=int(la.dim),
        bottleneck=str(la.bottleneck), video_cond=video_cond, policy_horizon=int(cfg.policy_horizon),
        target=str(cfg.target), ssl_enabled=ssl_enabled,
        ssl_mask_ratio=float(cfg.ssl.mask_ratio), ssl_num_blocks=int(cfg.ssl.num_blocks),
        ssl_block_scale=float(cfg.ssl.block_scale), privileged_dim=int(cfg.get("privileged_dim", 0)),
    )


class Conditioning(NamedTuple):
    """`WorldActionModel.conditioning`'s result."""

    cond: jax.Array  # [B, S, du] c_t, the predictor's conditioning
    action_emb: jax.Array  # [B, S, du] g(a_t) on every step (used or not)
    latent: LatentActions  # q(u_t | z_t, z_{t+1}) of the observed transitions, `[B, C - 1, du]`


def normalize_latents(z: jax.Array, eps: float = 1e-6) -> jax.Array:
    """Layer norm without affine over the feature axis, in float32 (V-JEPA target normalization)."""
    z = z.astype(jnp.float32)
    mean = jnp.mean(z, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(z - mean), axis=-1, keepdims=True)
    return (z - mean) * jax.lax.rsqrt(var + eps)


def latent_space(z: jax.Array, pooled: bool) -> jax.Array:
    """Encoder outputs or predictions -> the latent space (float32): layer-normed patch tokens, or
    pooled vectors as they are."""
    return z.astype(jnp.float32) if pooled else normalize_latents(z)


def encode_latents(encoder: nnx.Module, video_float: jax.Array, *, train: bool = False) -> jax.Array:
    """Per-frame latents `[B, T, N, D]` of any `VideoEncoder` (float32); `train`: see
    `VideoEncoder.encode_frames`."""
    return latent_space(encoder.encode_frames(video_float, train=train), encoder.projector is not None)


def build_model(cfg: Any, rngs: nnx.Rngs) -> WorldActionModel:
    """`WorldActionModel` of `config.model` with `model.matmul_dtype` applied to its projections
    (before the target encoder is cloned from it, so both run the same matmuls): the one way
    training and inference build the model."""
    return use_matmul_dtype(WorldActionModel(cfg, rngs=rngs), cfg.matmul_dtype)


class WorldActionModel(nnx.Module):
    """The trained model. See the module docstring and docs/ARCHITECTURE.md (model contract)."""

    def __init__(self, cfg: Any, *, rngs: nnx.Rngs):
        spec = spec_from_config(cfg)
        self.spec = spec
        dtype = jnp.dtype(cfg.dtype)
        param_dtype = jnp.dtype(cfg.param_dtype)
        common = dict(rngs=rngs, scan=bool(cfg.scan_layers), scan_unroll=int(cfg.scan_unroll),
                      remat=str(cfg.remat), dtype=dtype, param_dtype=param_dtype,
                      attention_impl=str(cfg.attention))
        pc = cfg.predictor
        self.encoder = encoder_lib.VideoEncoder(cfg, rngs=rngs)
        self.predictor = LatentPredictor(
            latent_dim=spec.latent_dim, width=pc.width, depth=pc.depth, heads=pc.heads,
            mlp_ratio=pc.mlp_ratio, cond_dim=spec.latent_action_dim, proprio_dim=spec.proprio_dim,
            grid_hw=spec.grid_hw, residual=bool(pc.residual),
            action_cond=str(pc.action_cond), **common)
        la = cfg.latent_action
        la_width = int(la.width) or int(pc.width)
        self.latent_actions = LatentActionModel(
            latent_dim=spec.latent_dim, dim=spec.latent_action_dim, bottleneck=spec.bottleneck,
            fsq_levels=la.fsq_levels, noise_std=la.noise_std, width=la_width, depth=int(la.depth),
            heads=pc.heads, mlp_ratio=pc.mlp_ratio, grid_hw=spec.grid_hw, **common)
        # video_cond='mask' (the naive alternative to latent actions, for ablations): action-free
        # steps are conditioned on one learned vector, so the predictor learns their dynamics
        # without any information about what happened.
        self.cond_mask: nnx.Param | None = nnx.data(None)
        if spec.video_cond == "mask":
            with eager_sharding_scope():
                self.cond_mask = nnx.Param(nnx.with_partitioning(nnx.initializers.zeros_init(), ("latent_action",))(
                    rngs.params(), (spec.latent_action_dim,), param_dtype))
        self.action_embedder = ActionEmbedder(
            action_dim=spec.action_dim, num_embodiments=spec.num_embodiments,
            dim=spec.latent_action_dim, width=la_width, rngs=rngs, dtype=dtype,
            param_dtype=param_dtype)
        hc = cfg.action_head
        head_width = int(hc.width) or int(pc.width)
        head_depth = int(hc.depth)
        head_kw = dict(latent_dim=spec.latent_dim, action_dim=spec.action_dim,
                       num_embodiments=spec.num_embodiments, width=head_width, depth=head_depth,
                       heads=pc.heads, mlp_ratio=pc.mlp_ratio, grid_hw=spec.grid_hw, **common)
        self.inverse_head = InverseDynamicsHead(**head_kw)
        self.policy_head = PolicyHead(horizon=spec.policy_horizon, **head_kw)
        fc = cfg.flow_head  # the flow-matching action stream (models/flow_head.py, loss.flow)
        if int(fc.depth) < 0 or int(fc.sample_steps) < 1 or str(fc.sampler) not in flow_head_lib.SAMPLERS:
            raise ValueError(f"model.flow_head: expected depth >= 0 (0 = none), sample_steps >= 1 and sampler in "
                             f"{flow_head_lib.SAMPLERS}, got {dict(fc)}")
        self.flow_sampling = (int(fc.sample_steps), str(fc.sampler))
        self.flow_head: flow_head_lib.FlowActionHead | None = nnx.data(None)
        if int(fc.depth) > 0:
            flow_kw = {**{k: v for k, v in head_kw.items() if k != "grid_hw"},
                       "width": int(fc.width) or head_width, "depth": int(fc.depth)}
            self.flow_head = flow_head_lib.FlowActionHead(
                horizon=spec.policy_horizon, proprio_dim=spec.proprio_dim, grid_hw=spec.grid_hw,
                bridge=tuple(int(v) for v in fc.bridge) or None, **flow_kw)
        if spec.ssl_enabled:
            sc = cfg.ssl
            self.ssl_predictor = MaskedPredictor(
                latent_dim=spec.latent_dim, width=int(sc.pred_width) or int(pc.width),
                depth=int(sc.pred_depth) or int(pc.depth), heads=pc.heads,
                mlp_ratio=pc.mlp_ratio, **common)
        else:
            self.ssl_predictor = None
        # A linear map from a frame's latents (all tokens, flattened) to the privileged state, one
        # per embodiment (what the state means differs): loss.privileged asks the encoder to make
        # that state linearly readable, which is what a latent distance can then measure.
        self.privileged_head: EmbodimentLinear | None = nnx.data(None)
        if spec.privileged_dim > 0:
            self.privileged_head = EmbodimentLinear(
                spec.num_embodiments, spec.tokens_per_frame * spec.latent_dim, spec.privileged_dim,
                ("embed", None), rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.frame_decoder: FrameDecoder | None = nnx.data(None)
        dc = cfg.decoder
        if int(dc.size) > 0:
            check_size(int(dc.size), spec.image_size)
            if not spec.pooled:
                raise ValueError("model.decoder decodes pooled latents; it needs model.pool.kind='mean', 'grid' or 'attn'")
            self.frame_decoder = FrameDecoder(spec.tokens_per_frame, spec.latent_dim, int(dc.size), int(dc.width),
                                              kind=str(dc.kind), rngs=rngs, dtype=dtype, param_dtype=param_dtype)

    # -- target encoder / optimizer helpers ------------------------------------------------------

    def make_target_encoder(self) -> nnx.Module:
        """A separate `VideoEncoder` initialised as a copy of the online encoder (own buffers, so
        the train state can be donated). 'ema': the train step moves it towards the encoder;
        'frozen': it stays equal to the (untrained) encoder, and the loss reads the encoder;
        'online': the train step copies the encoder into it every step (what inference encodes
        with), and the loss reads the encoder."""
        return nnx.clone(self.encoder, arrays=True)

    @property
    def trainable_filter(self) -> Any:
        """nnx filter of the trained parameters: everything, or all but the encoder when frozen."""
        if self.spec.target == "frozen":
            return nnx.All(nnx.Param, nnx.Not(nnx.PathContains("encoder")))
        return nnx.Param

    def ema_source(self) -> nnx.Module:
        """The module the EMA target tracks."""
        return self.encoder

    # -- internal (unvalidated) computations, shared by the loss and the public API -------------

    def encode_float(self, video_float: jax.Array, encoder: nnx.Module | None = None, *,
                     train: bool = False) -> jax.Array:
        """Per-frame latents `[B, T, N, D]` (float32) of video already through `normalize_video`,
        by `encoder` (default: the online encoder); `train=True` for the encoder being trained
        (batch statistics in a pooled projector)."""
        return encode_latents(self.encoder if encoder is None else encoder, video_float, train=train)

    def conditioning(self, latents: jax.Array, action: jax.Array, action_mask: jax.Array,
                     embodiment_id: jax.Array, use_action: jax.Array, *,
                     key: jax.Array | None = None) -> Conditioning:
        """What conditions the predictor on each transition: c_t = g(a_t) where `use_action`,
        else the latent action u_t inferred from (z_t, z_{t+1}); with `video_cond='mask'` (the
        ablation) the learned mask token instead of u_t.

        The choice is a `jnp.where`, so the branch not taken gets exactly zero gradient: a step
        conditioned on g(a_t) sends none into the latent-action model, and vice versa.

        Args:
          latents: target-space latents `[B, C, N, D]` with C - 1 <= S; u_t is inferred for the
            C - 1 observed transitions. Steps t >= C - 1 have no u_t (their next frame is not
            given): there `use_action` must be True (for a rollout conditioned on C context
            frames and the actions of the k steps after them, C - 1 + k = S).
          action, action_mask: `[B, S, A]` (A = model.action_dim); rows where the mask is false
            contribute nothing to g(a_t).
          embodiment_id: int `[B]`.
          use_action: bool `[B, S]`: True to condition step t on g(a_t).
          key: PRNG key for the bottleneck noise (training); None gives the deterministic
            latent actions (`u == mean`), as evaluation and planning use.

        Returns:
          `Conditioning(cond [B, S, du], action_emb [B, S, du] = g(a_t) on every step,
          latent LatentActions with `[B, C - 1, du]` fields)`.
        """
        s = action.shape[1]
        if latents.shape[1] - 1 > s or use_action.shape != action.shape[:2]:
            raise ValueError(
                f"WorldActionModel.conditioning: latents {tuple(latents.shape)}, action "
                f"{tuple(action.shape)} and use_action {tuple(use_action.shape)}: expected "
                "[B, C, N, D], [B, S, A] and [B, S] with C - 1 <= S")
        la = self.latent_actions(latents[:, :-1], latents[:, 1:], key=key)
        g = self.action_embedder(action, action_mask, embodiment_id)
        if self.spec.video_cond == "mask":
            other = self.cond_mask[...].astype(g.dtype)
        else:
            other = la.u
            if other.shape[1] < s:  # steps past the last latent frame: only g(a_t) is defined
                other = jnp.pad(other, ((0, 0), (0, s - other.shape[1]), (0, 0)))
        return Conditioning(cond=jnp.where(use_action[..., None], g, other), action_emb=g, latent=la)

    def predict_raw(self, z: jax.Array, cond: jax.Array, proprio: jax.Array | None,
                    proprio_mask: jax.Array | None) -> jax.Array:
        """Teacher-forced next latents, normalized like the targets (so rollouts stay in-space)."""
        return latent_space(self.predictor(z, cond, proprio, proprio_mask), self.spec.pooled)

    def rollout_raw(self, z_context: jax.Array, conds: jax.Array, proprio: jax.Array | None,
                    proprio_mask: jax.Array | None, k: int) -> jax.Array:
        """k autoregressive steps from `c` context frames: the first step runs the block-causal
        predictor over the context, each later step only the latest prediction's tokens, over the
        key/value cache of everything before (the same numbers as re-running the predictor on the
        growing sequence, at a fraction of the cost). Proprio is known for the context frames
        only. conds `[B, >= c - 1 + k, du]`."""
        c = z_context.shape[1]
        pred, cache = self.predictor.prefill(
            z_context.astype(jnp.float32), conds[:, :c], None if proprio is None else proprio[:, :c],
            None if proprio_mask is None else proprio_mask[:, :c])
        nxt = latent_space(pred[:, -1], self.spec.pooled)
        outs = [nxt]
        for i in range(1, k):
            s = c + i - 1  # the step `nxt` is the latent of
            # Imagined steps: proprio absent (None is the same input as a false proprio mask).
            pred, cache = self.predictor.extend(nxt[:, None], conds[:, s:s + 1], None, None, cache,
                                                start=s)
            nxt = latent_space(pred[:, -1], self.spec.pooled)
            outs.append(nxt)
        return jnp.stack(outs, axis=1)

    # -- public entry points ---------------------------------------------------------------------

    def _latents_desc(self, lead: str) -> tuple[str, tuple[int | None, ...]]:
        n, d = self.spec.tokens_per_frame, self.spec.latent_dim
        nlead = len(lead.split(", "))
        return f"[{lead}, N, D] = [{lead}, {n}, {d}]", (None,) * nlead + (n, d)

    def encode(self, video_uint8: jax.Array, encoder: nnx.Module | None = None) -> jax.Array:
        """uint8 video `[B, T, H, W, 3]` -> normalized per-frame latents `[B, T, N, D]` float32.

        `encoder`: the `VideoEncoder` to use; default the online one. Pass the target encoder
        (`make_target_encoder()`, EMA-updated) for the predictor's space when training with EMA.
        """
        p = self.spec.patch_size
        check_array("WorldActionModel.encode", "video", video_uint8, "uint8 [B, T, H, W, 3]",
                    (None, None, None, None, 3), kind="uint8")
        h, w = video_uint8.shape[2:4]
        if h % p or w % p:
            raise ValueError(
                f"WorldActionModel.encode: 'video' frames are {h}x{w}, expected [B, T, H, W, 3] with "
                f"H and W divisible by model.patch_size={p} (e.g. {self.spec.image_size})")
        if (h, w) != (self.spec.image_size,) * 2:
            s = self.spec.image_size
            raise ValueError(
                f"WorldActionModel.encode: 'video' has shape {tuple(video_uint8.shape)}, expected "
                f"uint8 [B, T, {s}, {s}, 3] (model.image_size={s})")
        return self.encode_float(encoder_lib.normalize_video(video_uint8), encoder)

    def _check_proprio(self, where: str, proprio, proprio_mask, b: int, s: int) -> None:
        pdim = self.spec.proprio_dim
        if proprio is not None:
            check_array(where, "proprio", proprio, f"[B, S, P] = [{b}, {s}, {pdim}]", (b, s, pdim))
        if proprio_mask is not None:
            if proprio is None:
                raise ValueError(f"{where}: 'proprio_mask' given without 'proprio'")
            check_array(where, "proprio_mask", proprio_mask, f"bool [B, S, P] = [{b}, {s}, {pdim}]",
                        (b, s, pdim), kind="bool")

    def predict(self, latents: jax.Array, cond: jax.Array, proprio: jax.Array | None = None,
                proprio_mask: jax.Array | None = None) -> jax.Array:
        """Teacher-forced one-step prediction.

        latents `[B, S, N, D]` (target-space latents of steps 0..S-1, see the module docstring),
        cond `[B, S, du]` (conditioning of the transition
        s -> s+1: `embed_actions(...)` or `infer_latent_actions(...)`), proprio `[B, S, P]`
        -> predicted latents of steps 1..S `[B, S, N, D]`; output s sees inputs of steps <= s only.
        """
        where = "WorldActionModel.predict"
        desc, dims = self._latents_desc("B, S")
        check_array(where, "latents", latents, desc, dims)
        b, s = latents.shape[:2]
        du = self.spec.latent_action_dim
        check_array(where, "cond", cond, f"[B, S, du] = [{b}, {s}, {du}]", (b, s, du))
        self._check_proprio(where, proprio, proprio_mask, b, s)
        return self.predict_raw(latents, cond, proprio, proprio_mask)

    def rollout(self, z_context: jax.Array, conds: jax.Array, proprio: jax.Array | None = None,
                k: int | None = None, *, proprio_mask: jax.Array | None = None) -> jax.Array:
        """Autoregressive rollout.

        z_context `[B, C, N, D]` (observed latents), conds `[B, C - 1 + k, du]` (one per transition,
        the last k of them into the future), proprio `[B, C, P]` for the context frames
        -> predicted latents of steps C..C+k-1 `[B, k, N, D]`. `k` defaults to what `conds` covers.
        """
        where = "WorldActionModel.rollout"
        desc, dims = self._latents_desc("B, C")
        check_array(where, "z_context", z_context, desc, dims)
        b, c = z_context.shape[:2]
        du = self.spec.latent_action_dim
        check_array(where, "conds", conds, f"[B, C - 1 + k, du] = [{b}, {c - 1} + k, {du}]",
                    (b, None, du))
        k = conds.shape[1] - c + 1 if k is None else int(k)
        if k < 1 or conds.shape[1] < c - 1 + k:
            raise ValueError(
                f"{where}: 'conds' has shape {tuple(conds.shape)}, expected [B, C - 1 + k, du] = "
                f"[{b}, {c - 1 + max(k, 1)}, {du}] for C={c} context frames and k={k} >= 1 steps")
        self._check_proprio(where, proprio, proprio_mask, b, c)
        return self.rollout_raw(z_context, conds[:, : c - 1 + k], proprio, proprio_mask, k)

    def infer_latent_actions(self, latents: jax.Array) -> jax.Array:
        """Latent actions of consecutive frames: latents `[B, T, N, D]` -> `[B, T-1, du]`
        (deterministic: quantized FSQ codes or the posterior mean)."""
        where = "WorldActionModel.infer_latent_actions"
        desc, dims = self._latents_desc("B, T")
        check_array(where, "latents", latents, desc, dims)
        if latents.shape[1] < 2:
            raise ValueError(f"{where}: 'latents' has shape {tuple(latents.shape)}, expected T >= 2 frames")
        return self.latent_actions(latents[:, :-1], latents[:, 1:]).mean

    def _check_actions(self, where: str, action, action_mask) -> tuple[jax.Array, jax.Array]:
        a_max = self.spec.action_dim
        check_array(where, "action", action, f"[B, S, A] with A <= model.action_dim={a_max}",
                    (None, None, None))
        a = action.shape[-1]
        if a > a_max:
            raise ValueError(
                f"{where}: 'action' has shape {tuple(action.shape)}: action dim {a} exceeds "
                f"model.action_dim={a_max}; expected [B, S, A] with A <= {a_max}")
        if action_mask is None:
            action_mask = jnp.ones(action.shape, jnp.bool_)
        else:
            check_array(where, "action_mask", action_mask, f"bool [B, S, A] = {list(action.shape)}",
                        tuple(action.shape), kind="bool")
        pad = ((0, 0), (0, 0), (0, a_max - a))
        return jnp.pad(action, pad), jnp.pad(action_mask, pad)

    def _embodiment(self, where: str, embodiment_id, b: int) -> jax.Array:
        if embodiment_id is None:
            return jnp.zeros((b,), jnp.int32)
        check_array(where, "embodiment_id", embodiment_id, f"int [B] = [{b}]", (b,), kind="int")
        if not isinstance(embodiment_id, jax.core.Tracer):
            ids = np.asarray(embodiment_id)
            if ids.size and (ids.min() < 0 or ids.max() >= self.spec.num_embodiments):
                raise ValueError(
                    f"{where}: 'embodiment_id' values must be in [0, model.num_embodiments="
                    f"{self.spec.num_embodiments}), got {ids.tolist()}")
        return embodiment_id

    def embed_actions(self, action: jax.Array, action_mask: jax.Array | None = None,
                      embodiment_id: jax.Array | None = None) -> jax.Array:
        """g(a, embodiment): actions `[B, S, A']` (A' <= model.action_dim; padded with masked
        zeros), mask `[B, S, A']` (default all valid), embodiment `[B]` (default 0) -> `[B, S, du]`."""
        where = "WorldActionModel.embed_actions"
        action, action_mask = self._check_actions(where, action, action_mask)
        emb = self._embodiment(where, embodiment_id, action.shape[0])
        return self.action_embedder(action, action_mask, emb)

    def inverse_dynamics(self, z_t: jax.Array, z_next: jax.Array,
                         embodiment_id: jax.Array | None = None) -> jax.Array:
        """(z_t, z_{t+1}) `[B, S, N, D]` each -> actions `[B, S, A]` (A = model.action_dim)."""
        where = "WorldActionModel.inverse_dynamics"
        desc, dims = self._latents_desc("B, S")
        check_array(where, "z_t", z_t, desc, dims)
        check_array(where, "z_next", z_next, f"{desc} matching z_t {tuple(z_t.shape)}", tuple(z_t.shape))
        emb = self._embodiment(where, embodiment_id, z_t.shape[0])
        return self.inverse_head(z_t, z_next, emb)

    def policy(self, z_t: jax.Array, z_goal: jax.Array,
               embodiment_id: jax.Array | None = None) -> jax.Array:
        """(z_t `[B, S, N, D]`, z_goal `[B, N, D]` or `[B, S, N, D]`) -> chunks `[B, S, h, A]`."""
        z_goal, emb = self.policy_inputs("WorldActionModel.policy", z_t, z_goal, embodiment_id)
        return self.policy_head(z_t, z_goal, emb)

    def policy_inputs(self, where: str, z_t: jax.Array, z_goal: jax.Array, embodiment_id: jax.Array | None
                       ) -> tuple[jax.Array, jax.Array]:
        """Checks z_t `[B, S, N, D]` and z_goal `[B, N, D]` or `[B, S, N, D]` (errors name `where`);
        the goal broadcast over S, and the embodiment ids (`policy`, `models/vag.py`)."""
        desc, dims = self._latents_desc("B, S")
        check_array(where, "z_t", z_t, desc, dims)
        b, s = z_t.shape[:2]
        n, d = self.spec.tokens_per_frame, self.spec.latent_dim
        if array_shape(z_goal) is not None and len(z_goal.shape) == 3:
            check_array(where, "z_goal", z_goal, f"[B, N, D] = [{b}, {n}, {d}]", (b, n, d))
            z_goal = jnp.broadcast_to(z_goal[:, None], z_t.shape)
        else:
            check_array(where, "z_goal", z_goal, f"[B, N, D] = [{b}, {n}, {d}] or [B, S, N, D]",
                        (b, s, n, d))
        return z_goal, self._embodiment(where, embodiment_id, b)
