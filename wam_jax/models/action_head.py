"""Action heads trained jointly with the world model.

- `InverseDynamicsHead`: (z_t, z_{t+1}) -> a_t. Trained on labeled steps from encoded frames, and
  also on (z_t, ẑ_{t+1}) with ẑ the predictor's output, so a planner can decode imagined futures
  into executable actions.
- `PolicyHead`: (z_t, z_goal) -> the action chunk a_{t:t+h}, goal-conditioned behaviour cloning.

Both share a `TransitionEncoder` trunk design (separate weights) and map into action space with a
per-embodiment output layer, since action dim i means different things on different robots.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from wam_jax.models.linear import EmbodimentLinear
from wam_jax.models.partitioning import mesh_optional
from wam_jax.models.transition import TransitionEncoder


class _PairToActions(nnx.Module):
    @mesh_optional
    def __init__(self, *, latent_dim: int, out_dim: int, num_embodiments: int, width: int,
                 depth: int, heads: int, mlp_ratio: float, grid_hw: tuple[int, int],
                 rngs: nnx.Rngs, scan: bool = True, scan_unroll: int = 1, remat: str = "none",
                 dtype=jnp.float32, param_dtype=jnp.float32, attention_impl: str = "xla"):
        self.trunk = TransitionEncoder(
            latent_dim=latent_dim, width=width, depth=depth, heads=heads, mlp_ratio=mlp_ratio,
            grid_hw=grid_hw, rngs=rngs, scan=scan, scan_unroll=scan_unroll, remat=remat, dtype=dtype,
            param_dtype=param_dtype, attention_impl=attention_impl, change_only_init=False)
        self.out = EmbodimentLinear(num_embodiments, width, out_dim, ("embed", "act"), rngs=rngs,
                                    dtype=dtype, param_dtype=param_dtype)

    def _features(self, z_a: jax.Array, z_b: jax.Array, embodiment_id: jax.Array) -> jax.Array:
        return self.out(self.trunk(z_a, z_b), embodiment_id).astype(jnp.float32)


class InverseDynamicsHead(_PairToActions):
    """(z_t, z_{t+1}) `[B, S, N, D]` each, embodiment `[B]` -> a_t `[B, S, A]`."""

    def __init__(self, *, action_dim: int, **kw):
        self.action_dim = action_dim
        super().__init__(out_dim=action_dim, **kw)

    def __call__(self, z_t: jax.Array, z_next: jax.Array, embodiment_id: jax.Array) -> jax.Array:
        return self._features(z_t, z_next, embodiment_id)


class PolicyHead(_PairToActions):
    """(z_t, z_goal) `[B, S, N, D]` each, embodiment `[B]` -> chunk a_{t:t+h} `[B, S, h, A]`."""

    def __init__(self, *, action_dim: int, horizon: int, **kw):
        if horizon < 1:
            raise ValueError(f"model.policy_horizon must be >= 1, got {horizon}")
        self.action_dim = action_dim
        self.horizon = horizon
        super().__init__(out_dim=horizon * action_dim, **kw)

    def __call__(self, z_t: jax.Array, z_goal: jax.Array, embodiment_id: jax.Array) -> jax.Array:
        y = self._features(z_t, z_goal, embodiment_id)
        return y.reshape(*y.shape[:-1], self.horizon, self.action_dim)
