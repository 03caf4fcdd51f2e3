"""Scripted PushT episodes: one per seed, the same for the same seed.

The demo data generator records them (labeled demonstrations and action-free videos), and the
planning evaluation takes its start and goal states from them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from sim.pusht import MAX_STEPS, RENDER_SIZE, block_pose, get_state, goal_pose, make_env, render
from sim.random_policy import RandomPushPolicy
from sim.scripted_policy import PolicyParams, ScriptedPushPolicy
from sim.success import is_success


@dataclass
class Rollout:
    """One scripted episode as recorded (the data generator writes it, the planning evaluation
    takes its first and last states as a task)."""

    images: np.ndarray  # uint8 [T + 1, H, W, 3]: observation before each action, plus the last
    agent_pos: np.ndarray  # float32 [T + 1, 2]
    block_pose: np.ndarray  # float32 [T + 1, 3]
    actions: np.ndarray  # float32 [T, 2]
    success: bool  # DINO-WM rule on the final block pose
    coverage: float  # gym_pusht goal coverage at the end
    terminated: bool  # gym_pusht's own success (coverage > 95 %) ended the episode
    seed: int
    behaviour: str = "scripted"  # 'scripted' (the expert) or 'random' (RandomPushPolicy)


BEHAVIOURS = ("scripted", "random")


def behaviour_of(seed: int, random_fraction: float) -> str:
    """The behaviour of the episode of `seed` in a mix with `random_fraction` random-push episodes
    (a function of the seed alone, so any worker split gives the same data)."""
    return "random" if np.random.default_rng([seed, 1]).random() < random_fraction else "scripted"


def rollout(seed: int, steps: int, *, noise_scale: float = 1.0, image_size: int = RENDER_SIZE,
            env: Any | None = None, behaviour: str = "scripted") -> Rollout:
    """One episode from the env's random initial state for `seed`, by the scripted expert
    (`noise_scale` scales its noise) or, `behaviour='random'`, by `RandomPushPolicy`."""
    if not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"steps={steps} must be in [1, {MAX_STEPS}] (gym_pusht's episode limit)")
    if behaviour not in BEHAVIOURS:
        raise ValueError(f"behaviour={behaviour!r}; expected one of {BEHAVIOURS}")
    env = env or make_env(image_size, obs_type="state")
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    policy = (RandomPushPolicy(rng) if behaviour == "random"
              else ScriptedPushPolicy(rng, PolicyParams.sample(rng, noise_scale=noise_scale)))
    goal = goal_pose(env)
    images, agent, blocks, actions = [render(env)], [get_state(env)[:2]], [block_pose(env)], []
    terminated, coverage = False, 0.0
    for _ in range(steps):
        a = policy.act(get_state(env), goal)
        _, _, terminated, _, info = env.step(a)
        actions.append(a)
        images.append(render(env))
        st = get_state(env)
        agent.append(st[:2])
        blocks.append(st[2:])
        coverage = float(info.get("coverage", 0.0))
        if terminated:
            break
    return Rollout(
        images=np.stack(images).astype(np.uint8),
        agent_pos=np.asarray(agent, np.float32),
        block_pose=np.asarray(blocks, np.float32),
        actions=np.asarray(actions, np.float32),
        success=is_success(blocks[-1], goal),
        coverage=coverage,
        terminated=bool(terminated),
        seed=seed,
        behaviour=behaviour,
    )
