"""The planner's energy of action sequences under a trained model (`WorldModel.plan_latents`).

Each candidate sequence is rolled out by the predictor from the context latents; the energy is
the L1 distance of the predicted latents to the goal latents (`cost='latent'`, V-JEPA 2-AC /
DINO-WM), or of the frames the model's frame decoder draws from both (`cost='decoded'`, a model
trained with `model.decoder`): a cost in what the frames show, whatever the latent spends its
dimensions on; or the latent L1 without the directions the robot's own state explains
(`cost='scene'`, `wam_jax.inference.state_subspace`): a cost in what the robot moves, not where
the goal frame shows the robot; or the L1 between the privileged state the model reads out of both
(`cost='privileged'`, a model trained with `loss.privileged`, e.g. PushT's block pose): a cost in
exactly what success is scored on, read from images at plan time.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from wam_jax.inference import planning
from wam_jax.inference.action_space import ActionSpace
from wam_jax.inference.state_subspace import remove_subspace

COSTS = ("latent", "decoded", "scene", "privileged")


def context_and_action_conds(model: Any, z: jax.Array, a: jax.Array, mask: jax.Array, emb: jax.Array
                             ) -> jax.Array:
    """Conditioning for a rollout from C context frames and k actions, through the model's one
    conditioning rule: the C-1 observed transitions get their inferred latent actions, the k
    future ones the embedded real actions -> `[B, C-1+k, du]`."""
    b, c = z.shape[:2]
    steps = c - 1 + a.shape[1]
    observed = ((0, 0), (c - 1, 0), (0, 0))  # no real action on the observed transitions
    use_action = jnp.broadcast_to(jnp.arange(steps) >= c - 1, (b, steps))
    return model.conditioning(z, jnp.pad(a, observed), jnp.pad(mask, observed), emb, use_action).cond


def check_cost(cost: str, has_decoder: bool, has_basis: bool = False, has_privileged: bool = False) -> None:
    if cost not in COSTS:
        raise ValueError(f"cost={cost!r}; expected one of {COSTS}")
    if cost == "decoded" and not has_decoder:
        raise ValueError("cost='decoded' needs a model trained with a frame decoder (model.decoder.size > 0, "
                         "loss.recon > 0)")
    if cost == "scene" and not has_basis:
        raise ValueError("cost='scene' needs scene_basis, the latent directions the robot's state explains "
                         "(WorldModel.state_subspace)")
    if cost == "privileged" and not has_privileged:
        raise ValueError("cost='privileged' needs a model trained to read out a privileged state "
                         "(model.privileged_dim > 0, loss.privileged > 0)")


def build_planner(graph: Any, cfg: planning.PlannerConfig, space: ActionSpace, steps: str, *,
                  decoder: planning.ActionDecoder | None = None, cost: str = "latent", mesh: Any = None):
    """A jitted `plan(ctx, key, lower, upper, init_mean)` over `ctx = (model state, context latents,
    goal latents, embodiment id, proprio or None, decoder anchor or None, scene basis or None)`."""
    from flax import nnx

    from data_pipelines.transforms import NORM_CLIP, action_norm

    pad = space.model_dim - space.dim
    offset, scale = (jnp.asarray(x) for x in action_norm(space.mean, space.std, space.is_delta, space.stride))

    def energy(actions, ctx):
        state, z_ctx, goal, emb_id, proprio, anchor, basis = ctx
        if decoder is not None:  # variables -> robot units -> the model's normalized actions
            actions = jnp.clip((decoder.fn(actions, anchor) - offset) / scale, -NORM_CLIP, NORM_CLIP)
        model = nnx.merge(graph, state)
        s = actions.shape[0]
        a = jnp.pad(actions, ((0, 0), (0, 0), (0, pad)))
        mask = jnp.broadcast_to(jnp.arange(space.model_dim) < space.dim, a.shape)
        emb = jnp.full((s,), emb_id, jnp.int32)
        z = jnp.broadcast_to(z_ctx[None], (s,) + z_ctx.shape)
        cond = context_and_action_conds(model, z, a, mask, emb)
        p, pm = (None, None) if proprio is None else (jnp.broadcast_to(x[None], (s,) + x.shape) for x in proprio)
        preds = model.rollout_raw(z, cond, p, pm, actions.shape[1])
        if cost == "decoded":  # frames [S, H, s, s, 3] as [S, H, s * s, 3] "tokens"
            frames = model.frame_decoder(preds[:, -1:] if steps == "last" else preds)  # draw only what counts
            preds = frames.reshape(*frames.shape[:2], -1, 3)
            goal = model.frame_decoder(goal[None]).reshape(-1, 3)
        elif cost == "privileged":  # [S, H, 1, K]: the state read out of each predicted frame
            preds = model.privileged_head(preds.reshape(*preds.shape[:2], -1), emb)[:, :, None]
            goal = model.privileged_head(goal.reshape(1, -1), emb[:1])
        elif cost == "scene":  # [S, H, N * D] as one token, without the robot state's directions
            preds = remove_subspace(preds.reshape(*preds.shape[:2], 1, -1), basis)
            goal = remove_subspace(goal.reshape(1, -1), basis)
        return planning.latent_goal_energy(preds, goal, steps=steps)

    return planning.make_planner(energy, cfg, action_dim=decoder.dim if decoder else space.dim, mesh=mesh)


def in_robot_units(res: planning.PlanResult, space: ActionSpace, decoder: planning.ActionDecoder | None = None,
                   anchor: jax.Array | None = None) -> planning.PlanResult:
    """The planner's result (normalized actions, or a decoder's variables) as numpy robot units;
    with a decoder, its variables' mean is kept in `variables`."""
    if decoder:
        decode = lambda u: np.asarray(decoder.fn(jnp.asarray(u)[None], anchor)[0])  # noqa: E731
        return planning.PlanResult(
            actions=decode(res.actions), std=np.asarray(res.std), best_actions=decode(res.best_actions),
            best_energy=np.asarray(res.best_energy), energy_trace=np.asarray(res.energy_trace),
            variables=np.asarray(res.actions))
    from data_pipelines.transforms import action_norm

    scale = action_norm(space.mean, space.std, space.is_delta, space.stride)[1]
    return planning.PlanResult(
        actions=space.denormalize(np.asarray(res.actions)), std=np.asarray(res.std) * scale,
        best_actions=space.denormalize(np.asarray(res.best_actions)),
        best_energy=np.asarray(res.best_energy), energy_trace=np.asarray(res.energy_trace))
