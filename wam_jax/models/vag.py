"""VAG in latent space: an action chunk and the imagined future it leads to, generated together.

VAG denoises a video stream and an action stream in step, the action stream reading a pooled
summary of the video stream. Here the "video stream" is the world model's own predictor: at each
flow step the chunk the action flow points at is rolled out by the predictor (`imagine`), and the
pooled rollout conditions the next flow step (the bridge of `models/flow_head.py`). The returned
latents are the predictor's rollout under the returned actions, so the pair is consistent by
construction: what `generate_paired` imagines is what the predictor says those actions do.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from wam_jax.models import flow_head as flow_head_lib
from wam_jax.models.checks import check_array
from wam_jax.models.world_model import WorldActionModel


def imagine(model: WorldActionModel, z_t: jax.Array, chunk: jax.Array, embodiment_id: jax.Array,
            proprio: jax.Array | None = None, proprio_mask: jax.Array | None = None) -> jax.Array:
    """The predictor's rollout from each z_t `[B, S, N, D]` under its chunk `[B, S, h, A]` (every
    action dim valid), proprio `[B, S, P]` at z_t (None: unknown; known where `proprio_mask`, all of
    it without one) -> latents of the h steps `[B, S, h, N, D]`."""
    b, s, h = chunk.shape[:3]
    n, d = z_t.shape[-2:]
    emb = jnp.repeat(embodiment_id, s)
    actions = chunk.reshape(b * s, h, -1)
    conds = model.action_embedder(actions, jnp.ones(actions.shape, bool), emb)
    flat = lambda x: None if x is None else x.reshape(b * s, 1, -1)  # noqa: E731
    mask = jnp.ones(proprio.shape, bool) if proprio is not None and proprio_mask is None else proprio_mask
    roll = model.rollout_raw(z_t.reshape(b * s, 1, n, d), conds, flat(proprio), flat(mask), h)
    return roll.reshape(b, s, h, n, d)


def flow_policy(model: WorldActionModel, z_t: jax.Array, z_goal: jax.Array, key: jax.Array,
                proprio: jax.Array | None = None, embodiment_id: jax.Array | None = None, *,
                steps: int | None = None, method: str | None = None) -> jax.Array:
    """`WorldActionModel.policy`'s inputs and proprio `[B, S, P]` (absent if None) -> one chunk
    `[B, S, h, A]` drawn from the flow head per (example, step) with `key`, in `steps` Euler or
    midpoint steps (default `model.flow_head.sample_steps` / `.sampler`); with the bridge, each
    step reads the rollout of the previous step's estimate."""
    where = "flow_policy"
    if model.flow_head is None:
        raise ValueError(f"{where}: this model has no flow head; train it with model.flow_head.depth > 0 "
                         "and loss.flow > 0")
    z_goal, emb = model.policy_inputs(where, z_t, z_goal, embodiment_id)
    b, s = z_t.shape[:2]
    p = model.spec.proprio_dim
    if proprio is not None:
        check_array(where, "proprio", proprio, f"[B, S, P] = [{b}, {s}, {p}]", (b, s, p))
    head_proprio = jnp.zeros((b, s, p), jnp.float32) if proprio is None else proprio  # the head's input
    return flow_head_lib.sample(
        model.flow_head, z_t, z_goal, head_proprio, emb, key, steps=steps or model.flow_sampling[0],
        method=method or model.flow_sampling[1],
        imagine=lambda chunk: imagine(model, z_t, chunk, emb, proprio))


def generate_paired(model: WorldActionModel, z_t: jax.Array, z_goal: jax.Array, key: jax.Array,
                    proprio: jax.Array | None = None, embodiment_id: jax.Array | None = None, *,
                    steps: int | None = None, method: str | None = None) -> tuple[jax.Array, jax.Array]:
    """(z_t, z_goal `[B, N, D]`, proprio `[B, P]`) -> (imagined latents `[B, h, N, D]`, the action
    chunk `[B, h, A]`): the chunk drawn by `flow_policy`, the latents the predictor's rollout under
    it (jit the call: the sampler's steps unroll into one program)."""
    b = z_t.shape[0]
    emb = jnp.zeros((b,), jnp.int32) if embodiment_id is None else embodiment_id
    prop = None if proprio is None else proprio[:, None]
    chunk = flow_policy(model, z_t[:, None], z_goal, key, prop, emb, steps=steps, method=method)
    latents = imagine(model, z_t[:, None], chunk, emb, prop)
    return latents[:, 0], chunk[:, 0]
