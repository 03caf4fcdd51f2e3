"""Sampling-based planners (CEM, MPPI) over action sequences, jitted end to end.

A planner minimizes an energy over action sequences `a[H, A]`:

    energy(actions[S, H, A], context) -> [S]

where `context` is any pytree the energy needs (current latents, goal latents, model state). The
whole optimization (sampling, energy, elite selection, distribution update, every iteration) is
one `lax.scan` inside one `jax.jit`, so one planning step is one device program. Candidates carry
the logical axis `samples`, which the rules table (`wam_jax.sharding`) maps to mesh axes, so
planning with 400 candidates on 8 devices evaluates 50 per device; the energy function sees the
full `[S, H, A]` array and XLA partitions it.

The model-independent parts live here (optimizer, presets, bounds, energies on latents, the
receding-horizon loop); `wam_jax.inference.world_model_api.WorldModel.plan` binds them to a trained model.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from wam_jax import sharding as shd

Array = jax.Array
EnergyFn = Callable[[Array, Any], Array]

METHODS = ("cem", "mppi")
SAMPLES = "samples"  # the logical axis of candidate sequences (mapped to mesh axes by the rules)


@dataclasses.dataclass(frozen=True)
class PlannerConfig:
    """Hyper-parameters of one planner; frozen (hashable) so it can be a static jit argument.

    `init_std` and `min_std` are fractions of the half-width of the action bounds, so one config
    works for any action scale. `momentum` blends the previous mean into the update (V-JEPA 2-AC
    style smoothing; 0 = plain CEM). For MPPI the `num_elites` best samples are softmax-weighted by
    `-energy / (temperature * elite energy spread)` (TD-MPC's elite variant with a scale-free
    temperature; set `num_elites = num_samples` for plain MPPI).
    """

    method: str = "cem"
    num_samples: int = 300
    num_elites: int = 30
    num_iterations: int = 30
    horizon: int = 5
    init_std: float = 1.0
    min_std: float = 0.05
    momentum: float = 0.0
    temperature: float = 0.5

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"PlannerConfig.method={self.method!r}; expected one of {METHODS}")
        for name in ("num_samples", "num_elites", "num_iterations", "horizon"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"PlannerConfig.{name}={getattr(self, name)} must be >= 1")
        if self.num_elites > self.num_samples:
            raise ValueError(
                f"PlannerConfig.num_elites={self.num_elites} exceeds num_samples={self.num_samples}"
            )
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"PlannerConfig.momentum={self.momentum} must be in [0, 1)")
        if self.temperature <= 0:
            raise ValueError(f"PlannerConfig.temperature={self.temperature} must be > 0")

    def replace(self, **overrides: Any) -> PlannerConfig:
        return dataclasses.replace(self, **overrides)


# Published planner settings (DESIGN.md §7).
PRESETS: dict[str, PlannerConfig] = {
    # V-JEPA 2-AC (Assran et al. 2025): CEM, 400 samples, top-10, 10 iterations, horizon 2.
    "vjepa2_ac": PlannerConfig(method="cem", num_samples=400, num_elites=10, num_iterations=10, horizon=2),
    # DINO-WM (Zhou et al. 2024): CEM, 300 samples, top-30, 30 iterations, horizon 5.
    "dino_wm": PlannerConfig(method="cem", num_samples=300, num_elites=30, num_iterations=30, horizon=5),
}


def preset(name: str, **overrides: Any) -> PlannerConfig:
    """A named preset with fields overridden, e.g. `preset('dino_wm', method='mppi')`."""
    if name not in PRESETS:
        raise ValueError(f"unknown planner preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides)


class PlanResult(NamedTuple):
    """What one planning call returns (all device arrays).

    `actions` is the final distribution mean (what MPC executes); `best_actions`/`best_energy`
    the lowest-energy candidate evaluated; `energy_trace[i]` the best energy of iteration i (a
    convergence diagnostic); `std` the final sampling std (a warm start for the next call).
    """

    actions: Array  # [H, A]
    std: Array  # [H, A]
    best_actions: Array  # [H, A]
    best_energy: Array  # []
    energy_trace: Array  # [num_iterations]
    variables: Array | None = None  # [H, k]: the searched variables' mean, with an `ActionDecoder`


@dataclasses.dataclass(frozen=True)
class ActionDecoder:
    """Search variables `u [H, dim]` in `[lower, upper]` in place of the model's actions.

    `fn(u [S, H, dim], anchor) -> actions [S, H, A]` in robot units, jittable; `anchor` is given
    with each planning call (e.g. the robot's current position). It keeps the search where the
    training data was: uniform samples of an absolute action box can ask for motions no episode
    made, and a model's energy is least trustworthy exactly there. `name` identifies the compiled
    planner (decoders with the same name must compute the same function). `encode(actions [H, A],
    anchor) -> u [H, dim]` (optional, numpy) maps a plan in actions back to the variables that
    come closest, to warm-start the search from another controller (e.g. a policy head)."""

    name: str
    dim: int
    lower: float
    upper: float
    fn: Callable[[Array, Array], Array] = dataclasses.field(compare=False)
    encode: Callable[[Any, Any], Any] | None = dataclasses.field(default=None, compare=False)


# ----------------------------------------------------------------------------------------------
# Bounds


class ActionBounds(NamedTuple):
    """Box constraint of the planner, broadcastable to [H, A]."""

    lower: Array
    upper: Array

    @classmethod
    def from_quantiles(cls, q_low: Sequence[float] | np.ndarray, q_high: Sequence[float] | np.ndarray,
                       mean: Sequence[float] | np.ndarray | None = None,
                       std: Sequence[float] | np.ndarray | None = None, eps: float = 1e-6
                       ) -> ActionBounds:
        """Bounds from dataset quantiles (q01/q99), optionally mapped to mean/std-normalized units.

        The model sees normalized actions, so a planner working in model units needs the
        quantiles normalized the same way; degenerate dims (q01 == q99) get a tiny width so the
        sampler stays finite.
        """
        lo = np.asarray(q_low, np.float32)
        hi = np.asarray(q_high, np.float32)
        if lo.shape != hi.shape or lo.ndim != 1:
            raise ValueError(f"action quantiles must be two 1-D lists of equal length, got {lo.shape} and {hi.shape}")
        if mean is not None or std is not None:
            if mean is None or std is None:
                raise ValueError("normalizing bounds needs both 'mean' and 'std'")
            m = np.asarray(mean, np.float32)
            s = np.maximum(np.asarray(std, np.float32), eps)
            lo, hi = (lo - m) / s, (hi - m) / s
        lo, hi = np.minimum(lo, hi), np.maximum(lo, hi)
        hi = np.maximum(hi, lo + eps)
        return cls(jnp.asarray(lo), jnp.asarray(hi))

    @classmethod
    def symmetric(cls, action_dim: int, limit: float = 1.0) -> ActionBounds:
        return cls(jnp.full((action_dim,), -limit, jnp.float32), jnp.full((action_dim,), limit, jnp.float32))


# ----------------------------------------------------------------------------------------------
# Sharding of candidates


def planning_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Every device (default: all) on the mesh axis the rules put planning `samples` on."""
    return shd.mesh_along(SAMPLES, devices)


def _samples_axes(mesh: Mesh) -> tuple[str, ...]:
    spec = shd.logical_to_spec((SAMPLES,))[0]
    axes = () if spec is None else (spec,) if isinstance(spec, str) else tuple(spec)
    return tuple(a for a in axes if a in mesh.axis_names and mesh.shape[a] > 1)


def num_sample_shards(mesh: Mesh | None) -> int:
    if mesh is None:
        return 1
    return math.prod(mesh.shape[a] for a in _samples_axes(mesh))


def padded_num_samples(num_samples: int, mesh: Mesh | None) -> int:
    """Rounds the candidate count up to a multiple of the shard count (extra samples only help)."""
    k = num_sample_shards(mesh)
    return -(-num_samples // k) * k


def _is_explicit(mesh: Mesh, axes: Sequence[str]) -> bool:
    types = dict(zip(mesh.axis_names, mesh.axis_types, strict=True))
    return any(types[a] == AxisType.Explicit for a in axes)


def _shard_samples(x: Array, mesh: Mesh | None) -> Array:
    """Puts the leading (samples) dim of `x` on the mesh's samples axes."""
    if mesh is None:
        return x
    axes = _samples_axes(mesh)
    if not axes:
        return x
    spec = shd.spec_for(x.shape, (SAMPLES,) + (None,) * (x.ndim - 1), mesh)
    if _is_explicit(mesh, axes):
        return jax.sharding.reshard(x, spec)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def _replicate(x: Array, mesh: Mesh | None) -> Array:
    """Gathers `x` before a global op (top-k, argmin): Explicit meshes require it, Auto ones infer it."""
    if mesh is None:
        return x
    axes = _samples_axes(mesh)
    if axes and _is_explicit(mesh, axes):
        return jax.sharding.reshard(x, P())
    return x


# ----------------------------------------------------------------------------------------------
# The optimizer


def _bounds_hw(lower: Array, upper: Array, horizon: int, action_dim: int) -> tuple[Array, Array]:
    lo = jnp.broadcast_to(jnp.asarray(lower, jnp.float32), (horizon, action_dim))
    hi = jnp.broadcast_to(jnp.asarray(upper, jnp.float32), (horizon, action_dim))
    return lo, hi


def optimize(energy_fn: EnergyFn, context: Any, key: Array, lower: Array, upper: Array,
             config: PlannerConfig, *, action_dim: int | None = None, init_mean: Array | None = None,
             init_std: Array | None = None, mesh: Mesh | None = None) -> PlanResult:
    """Runs CEM or MPPI; traceable, so it can sit inside a larger jitted program.

    Args:
      energy_fn: `energy_fn(actions[S, H, A], context) -> [S]`, lower is better.
      context: pytree passed through to `energy_fn` unchanged (traced, so new observations do not
        recompile).
      key: PRNG key.
      lower, upper: action bounds broadcastable to [H, A].
      config: planner hyper-parameters (static).
      action_dim: A; defaults to the last dim of `lower`.
      init_mean: warm start [H, A] (e.g. the previous plan shifted by one step); default the
        middle of the bounds.
      init_std: initial std [H, A]; default `config.init_std` times the half-width of the bounds.
      mesh: shard candidates over this mesh's samples axes (None: no constraint).
    """
    h = config.horizon
    a = int(action_dim if action_dim is not None else jnp.shape(lower)[-1])
    lo, hi = _bounds_hw(lower, upper, h, a)
    half = 0.5 * (hi - lo)
    mean0 = 0.5 * (lo + hi) if init_mean is None else jnp.clip(jnp.asarray(init_mean, jnp.float32), lo, hi)
    std0 = config.init_std * half if init_std is None else jnp.asarray(init_std, jnp.float32)
    mean0 = jnp.broadcast_to(mean0, (h, a))
    std0 = jnp.broadcast_to(std0, (h, a))
    min_std = config.min_std * half
    s = padded_num_samples(config.num_samples, mesh)
    k = config.num_elites

    def iteration(carry, key_i):
        # The context rides in the carry (unchanged) rather than being closed over: an energy that
        # rebuilds NNX modules from it (nnx.merge) must see values of the loop's own trace level.
        ctx, mean, std, best_a, best_e = carry
        noise = jax.random.normal(key_i, (s, h, a), jnp.float32)
        # Candidate 0 is the current mean itself (zero noise), so an iteration never loses the
        # incumbent; a mask rather than a scatter keeps this valid on sharded candidates.
        keep = (jnp.arange(s) > 0).astype(jnp.float32)[:, None, None]
        noise = _shard_samples(noise * keep, mesh)
        cand = jnp.clip(mean[None] + std[None] * noise, lo[None], hi[None])
        cand = _shard_samples(cand, mesh)
        energy = energy_fn(cand, ctx)
        if energy.shape != (s,):
            raise ValueError(f"energy_fn returned shape {energy.shape}, expected [S]=({s},)")
        energy = _replicate(energy.astype(jnp.float32), mesh)
        energy = jnp.where(jnp.isfinite(energy), energy, jnp.inf)
        cand = _replicate(cand, mesh)
        neg_top, idx = jax.lax.top_k(-energy, k)
        elites = cand[idx]  # [k, H, A]
        if config.method == "cem":
            w = jnp.full((k,), 1.0 / k, jnp.float32)
        else:
            # Energies have no natural scale (L1 between latents), so the temperature is relative
            # to the elites' energy spread: the worst elite weighs exp(-1/temperature) of the best.
            top = -neg_top
            spread = jnp.maximum(top[-1] - top[0], 1e-12)
            w = jax.nn.softmax(-(top - top[0]) / (config.temperature * spread))
        new_mean = jnp.einsum("k,kha->ha", w, elites)
        new_std = jnp.sqrt(jnp.einsum("k,kha->ha", w, jnp.square(elites - new_mean[None])))
        new_mean = config.momentum * mean + (1.0 - config.momentum) * new_mean
        new_std = jnp.maximum(config.momentum * std + (1.0 - config.momentum) * new_std, min_std)
        it_best_e = -neg_top[0]
        better = it_best_e < best_e
        best_a = jnp.where(better, elites[0], best_a)
        best_e = jnp.where(better, it_best_e, best_e)
        return (ctx, new_mean, new_std, best_a, best_e), it_best_e

    keys = jax.random.split(key, config.num_iterations)
    init = (context, mean0, std0, mean0, jnp.asarray(jnp.inf, jnp.float32))
    (_, mean, std, best_a, best_e), trace = jax.lax.scan(iteration, init, keys)
    return PlanResult(actions=mean, std=std, best_actions=best_a, best_energy=best_e, energy_trace=trace)


def make_planner(energy_fn: EnergyFn, config: PlannerConfig, *, action_dim: int,
                 mesh: Mesh | None = None) -> Callable[..., PlanResult]:
    """A jitted `plan(context, key, lower, upper, init_mean=None, init_std=None) -> PlanResult`.

    Compiles once per (context structure, shapes); a new observation or goal is a new `context`
    value, not a recompile. With `mesh`, the call runs under `jax.set_mesh(mesh)` so logical-axis
    constraints inside the energy (the model's own `sharding.constrain`) see the same mesh.
    """

    def _plan(context, key, lower, upper, init_mean=None, init_std=None):
        return optimize(energy_fn, context, key, lower, upper, config, action_dim=action_dim,
                        init_mean=init_mean, init_std=init_std, mesh=mesh)

    jitted = jax.jit(_plan)
    if mesh is None:
        return jitted

    def plan(*args, **kwargs):
        with jax.set_mesh(mesh):
            return jitted(*args, **kwargs)

    plan.lower = jitted.lower  # type: ignore[attr-defined]
    return plan


# ----------------------------------------------------------------------------------------------
# Energies on latents


def latent_goal_energy(pred_latents: Array, goal_latents: Array, *, pred_proprio: Array | None = None,
                       goal_proprio: Array | None = None, proprio_weight: float = 0.0,
                       steps: str = "last") -> Array:
    """L1 distance between predicted and goal latents (+ weighted proprio L1), per sample.

    Args:
      pred_latents: [S, H, N, D] predicted latents for each candidate sequence.
      goal_latents: [N, D] (or [1, N, D], broadcastable) latents of the goal image.
      pred_proprio, goal_proprio: optional [S, H, P] / [P] proprio prediction and target.
      proprio_weight: weight of the proprio term (DINO-WM's alpha).
      steps: 'last' (V-JEPA 2-AC: only the final predicted state counts) or 'all' (mean over the
        horizon, which rewards reaching the goal early).
    """
    if pred_latents.ndim != 4:
        raise ValueError(f"pred_latents has shape {pred_latents.shape}, expected [S, H, N, D]")
    goal = jnp.reshape(goal_latents, goal_latents.shape[-2:])
    per_step = jnp.mean(jnp.abs(pred_latents.astype(jnp.float32) - goal[None, None]), axis=(-2, -1))
    if pred_proprio is not None and goal_proprio is not None and proprio_weight:
        gp = jnp.reshape(goal_proprio, goal_proprio.shape[-1:])
        per_step = per_step + proprio_weight * jnp.mean(jnp.abs(pred_proprio - gp[None, None]), axis=-1)
    if steps == "last":
        return per_step[:, -1]
    if steps == "all":
        return jnp.mean(per_step, axis=1)
    raise ValueError(f"steps={steps!r}; expected 'last' or 'all'")


# ----------------------------------------------------------------------------------------------
# Receding-horizon control


def shift_plan(actions: Array | np.ndarray, num_executed: int, fill: str = "last") -> np.ndarray:
    """Warm start for the next MPC call: drop executed steps and pad the tail.

    `fill='last'` repeats the final action (smooth motions continue), `'zero'` pads with zeros.
    """
    x = np.asarray(actions)
    shifted = x[num_executed:]
    if fill == "last":
        pad = np.repeat(x[-1:], num_executed, axis=0)
    elif fill == "zero":
        pad = np.zeros((num_executed,) + x.shape[1:], x.dtype)
    else:
        raise ValueError(f"fill={fill!r}; expected 'last' or 'zero'")
    return np.concatenate([shifted, pad], axis=0)[: x.shape[0]]


@dataclasses.dataclass
class MPCTrace:
    """Record of a receding-horizon episode: executed actions, plan energies, wall time per plan."""

    actions: list[np.ndarray] = dataclasses.field(default_factory=list)
    energies: list[float] = dataclasses.field(default_factory=list)
    plan_seconds: list[float] = dataclasses.field(default_factory=list)
    infos: list[Any] = dataclasses.field(default_factory=list)

    def summary(self) -> Mapping[str, float]:
        t = np.asarray(self.plan_seconds, np.float64)
        # The first plan includes compilation; report steady state separately.
        steady = t[1:] if t.size > 1 else t
        return {
            "num_plans": float(t.size),
            "first_plan_s": float(t[0]) if t.size else float("nan"),
            "plan_s_mean": float(steady.mean()) if steady.size else float("nan"),
            "final_energy": float(self.energies[-1]) if self.energies else float("nan"),
        }


def receding_horizon(plan_fn: Callable[[Any, Array, np.ndarray | None], PlanResult],
                     observe: Callable[[], Any], act: Callable[[np.ndarray], Any], *, num_steps: int,
                     key: Array, execute: int = 1, warm_start: bool = True) -> MPCTrace:
    """Model-predictive control: plan, execute the first `execute` actions, re-plan, ...

    Runs exactly `num_steps` environment steps (no early stop: success is judged by the caller at
    the end, as DINO-WM's fixed-budget protocol requires).

    Args:
      plan_fn: `plan_fn(observation, key, init_mean) -> PlanResult` (e.g. `WorldModel.plan`).
      observe: returns the current observation.
      act: applies one action (robot units) to the environment; its return value is recorded.
      num_steps: environment steps to run.
      key: PRNG key; split once per plan.
      execute: actions executed per plan (1 = classic MPC).
      warm_start: seed each plan with the previous one shifted by `execute` steps.
    """
    if execute < 1:
        raise ValueError(f"execute={execute} must be >= 1")
    trace = MPCTrace()
    prev: np.ndarray | None = None
    step = 0
    while step < num_steps:
        key, sub = jax.random.split(key)
        t0 = time.perf_counter()
        result = plan_fn(observe(), sub, prev if warm_start else None)
        plan = np.asarray(jax.block_until_ready(result.actions))
        trace.plan_seconds.append(time.perf_counter() - t0)
        trace.energies.append(float(result.best_energy))
        n = min(execute, plan.shape[0], num_steps - step)
        for i in range(n):
            trace.actions.append(plan[i])
            trace.infos.append(act(plan[i]))
        step += n
        prev = shift_plan(plan, n)
    return trace
