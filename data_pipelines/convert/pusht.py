"""`wam-convert pusht`: the PushT demo data, generated with the `gym_pusht` simulator.

    wam-convert pusht --output=DIR [--labeled_episodes=N] [--video_episodes=M] [--test_episodes=K]
        [--steps=S] [--seed=0] [--workers=W] [--image_size=64]

writes

```
DIR/
  rlds/pusht/0.1.0/            labeled episodes: a genuine RLDS builder directory (train split)
  rlds_test/pusht/0.1.0/       held-out labeled episodes (own builder directory, same features)
  ego4d/                       action-free rollouts in the Ego4D layout: ego4d.json,
                               v2/full_scale/<uid>.mp4 (VP9, 10 fps),
                               v2/annotations/narration.json
  converted/pusht_labeled      ← `wam-convert oxe` of rlds/      (registry entry 'pusht')
  converted/pusht_test         ← `wam-convert oxe` of rlds_test/
  converted/pusht_video        ← `wam-convert ego4d` of ego4d/
  generation.json              sizes, seeds, timings, success rates
```

so the demo runs the same conversion code as real Open X-Embodiment and Ego4D data.

Episodes come from `ScriptedPushPolicy`, a pushing heuristic: it walks the agent around the T to
the side opposite the direction the block must go (with an offset from the centre of gravity that
turns the block toward the goal angle), pushes, and re-plans; Gaussian action noise and
per-episode gains make trajectories diverse. Observation per step: the rendered image (96x96),
`state` = agent position (2), `block_pose` = (x, y, angle) of the T; action = the absolute 2-d
target position of the agent (what `gym_pusht` takes); language "push the T to the target".

`reset_to_state`, `get_state`, `pose_error`, `is_success` are also the evaluation helpers: the
planning evaluation resets the simulator to a state and scores the block pose with the DINO-WM
rule (block position error < 20 px and angle error < 20 degrees).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from data_pipelines import records

LANGUAGE = "push the T to the target"
ENV_ID = "gym_pusht/PushT-v0"
RENDER_SIZE = 96
MAX_STEPS = 300  # gym_pusht registers PushT-v0 with max_episode_steps=300
CONTROL_FPS = 10.0
WORKSPACE = (20.0, 492.0)  # keep targets inside the walls (at 5 and 506) with the agent radius
AGENT_RADIUS = 15.0
# The T in the block's body frame (gym_pusht.PushTEnv.add_tee, scale 30): a 120x30 bar on top of
# a 30x90 stem; the body origin is the middle of the bar's lower edge, the centre of gravity is
# at (0, 45).
TEE_POLYGONS = (
    ((-60.0, 0.0), (60.0, 0.0), (60.0, 30.0), (-60.0, 30.0)),
    ((-15.0, 30.0), (15.0, 30.0), (15.0, 120.0), (-15.0, 120.0)),
)
TEE_COG = np.array([0.0, 45.0])
GOAL_POSE = (256.0, 256.0, math.pi / 4)  # gym_pusht's fixed goal (PushTEnv._setup)
SUCCESS_POS_TOL = 20.0
SUCCESS_ANGLE_TOL_DEG = 20.0


# ---------------------------------------------------------------------------------------------
# Environment helpers (shared with the planning evaluation)


def make_env(image_size: int = RENDER_SIZE, obs_type: str = "pixels_agent_pos") -> Any:
    """A headless PushT env (`gym_pusht/PushT-v0`, 300-step limit).

    SDL is pointed at its dummy video driver before pygame loads, so no display is needed.
    `obs_type='state'` skips rendering inside `step` (faster when `render` is called anyway).
    """
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    import gym_pusht  # noqa: F401  (registers the env id)
    import gymnasium as gym

    return gym.make(ENV_ID, obs_type=obs_type, render_mode="rgb_array",
                    observation_width=image_size, observation_height=image_size)


def get_state(env: Any) -> np.ndarray:
    """[agent_x, agent_y, block_x, block_y, block_angle] (angle wrapped to [-pi, pi))."""
    u = env.unwrapped
    angle = (u.block.angle + math.pi) % (2 * math.pi) - math.pi
    return np.array([*u.agent.position, *u.block.position, angle], dtype=np.float64)


def block_pose(env: Any) -> np.ndarray:
    return get_state(env)[2:]


def goal_pose(env: Any) -> np.ndarray:
    """The env's goal block pose (x, y, angle); gym_pusht's fixed goal before the first reset."""
    return np.asarray(getattr(env.unwrapped, "goal_pose", GOAL_POSE), dtype=np.float64)


def render(env: Any) -> np.ndarray:
    """The observation image (uint8 [H, W, 3]) of the current state, pixel-identical to
    `gym_pusht`'s 'pixels' observation but about twice as fast: the 512x512 canvas is read with
    one contiguous `pygame.image.tobytes` instead of a transposed `surfarray` copy."""
    import cv2
    import pygame

    u = env.unwrapped
    screen = u._draw()
    w, h = screen.get_size()
    canvas = np.frombuffer(pygame.image.tobytes(screen, "RGB"), np.uint8).reshape(h, w, 3)
    return cv2.resize(canvas, (u.observation_width, u.observation_height))


def reset_to_state(env: Any, state: Sequence[float], seed: int | None = None) -> dict[str, Any]:
    """Resets to exactly `state` = [agent_x, agent_y, block_x, block_y, block_angle].

    `gym_pusht`'s own `reset_to_state` sets the block position before its angle, and the angle
    turns the T about its centre of gravity, so the block ends up elsewhere (its docstring shows
    (20, 30) becoming (57.9, 50.7)). Here the angle is set first, then the position, so reading
    the state back gives what was asked. Returns the observation dict.
    """
    state = np.asarray(state, dtype=np.float64)
    if state.shape != (5,):
        raise ValueError(f"state has shape {state.shape}, expected (5,): [agent_x, agent_y, block_x, block_y, angle]")
    env.reset(seed=seed)  # resets the wrappers (time limit) and the env's RNG
    u = env.unwrapped
    u._setup()  # a fresh physics space: no contact cached from the random state reset() drew
    u.agent.velocity = (0.0, 0.0)
    u.agent.position = (float(state[0]), float(state[1]))
    u.block.velocity = (0.0, 0.0)
    u.block.angular_velocity = 0.0
    u.block.angle = float(state[4])
    u.block.position = (float(state[2]), float(state[3]))
    u.space.step(u.dt)  # let pymunk register the new poses (as gym_pusht does)
    u._last_action = None
    return u.get_obs()


def pose_error(pose: Sequence[float], goal: Sequence[float]) -> tuple[float, float]:
    """(position error in px, absolute angle error in degrees, wrapped) between two block poses."""
    pose, goal = np.asarray(pose, float), np.asarray(goal, float)
    pos = float(np.linalg.norm(pose[:2] - goal[:2]))
    d = (pose[2] - goal[2] + math.pi) % (2 * math.pi) - math.pi
    return pos, abs(math.degrees(d))


def is_success(pose: Sequence[float], goal: Sequence[float], *, pos_tol: float = SUCCESS_POS_TOL,
               angle_tol_deg: float = SUCCESS_ANGLE_TOL_DEG) -> bool:
    """DINO-WM success: block position error < 20 px and angle error < 20 degrees."""
    pos, ang = pose_error(pose, goal)
    return pos < pos_tol and ang < angle_tol_deg


# ---------------------------------------------------------------------------------------------
# The scripted policy


def _rot(theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, -s], [s, c]])


def _wrap(a: float) -> float:
    return (a + math.pi) % (2 * math.pi) - math.pi


@dataclass
class PolicyParams:
    """Per-episode knobs, drawn at random so that no two episodes push the same way."""

    rot_gain: float  # px of lever arm per radian of angle error
    max_lever: float
    approach_speed: float  # px the commanded target leads the agent by, per control step
    push_speed: float  # (the PD-controlled agent covers about 40 % of the lead per step)
    push_length: float  # px pushed before re-planning
    standoff: float  # extra clearance behind the contact point
    noise: float  # std of Gaussian action noise (px)
    wander_prob: float  # chance per re-plan of a short random excursion (exploration)

    @classmethod
    def sample(cls, rng: np.random.Generator, *, noise_scale: float = 1.0) -> PolicyParams:
        return cls(
            rot_gain=float(rng.uniform(25, 55)),
            max_lever=float(rng.uniform(35, 55)),
            approach_speed=float(rng.uniform(45, 70)),
            push_speed=float(rng.uniform(18, 30)),
            push_length=float(rng.uniform(30, 70)),
            standoff=float(rng.uniform(6, 14)),
            noise=float(rng.uniform(1.0, 3.0) * noise_scale),
            wander_prob=float(0.05 * noise_scale),
        )


class ScriptedPushPolicy:
    """Pushes the T toward its goal pose: go around to a staging point behind the block, line up,
    push, re-plan.

    A plan picks the push direction d (toward the goal centre of gravity; or, when the block is
    already close, across the bar to turn it) and a lever offset s along the normal n of d, so
    that the push torque (torque = -s for a push along d at c + s n) turns the block toward the
    goal angle. The contact point is where the line through c + s n along d enters the T from
    behind. A plan is kept only if its staging and pre-push points lie inside the workspace and
    the line-up path to the contact is free (no pockets of the T, no walls in the way); else
    nearby directions and smaller levers are tried. Between plans the agent walks around the
    block on a circle that clears it. Works on the true state: it is the data-collection
    "expert", not a pixel policy.
    """

    CLEAR_RADIUS = 80.0 + AGENT_RADIUS + 15.0  # circle around the centre of gravity clearing the T

    def __init__(self, rng: np.random.Generator, params: PolicyParams):
        import shapely.affinity
        import shapely.geometry as sg

        self._sg = sg
        self._affine = shapely.affinity.affine_transform
        # The T and the region the agent's centre must avoid, in the body frame; per step they are
        # only moved (an affine map), never rebuilt.
        self._local_tee = sg.Polygon(TEE_POLYGONS[0]).union(sg.Polygon(TEE_POLYGONS[1]))
        self._local_blocked = self._local_tee.buffer(AGENT_RADIUS + 2.0, quad_segs=4)
        self.rng = rng
        self.p = params
        self.phase = "plan"
        self.stage: np.ndarray | None = None
        self.pre: np.ndarray | None = None
        self.push_dir: np.ndarray | None = None
        self.push_goal: np.ndarray | None = None
        self.waypoint: np.ndarray | None = None
        self.steps_in_phase = 0
        self.failed_plans = 0
        self.stage_budget = 30

    # -- geometry -------------------------------------------------------------------------------

    def _place(self, geom: Any, pose: np.ndarray) -> Any:
        c, s = math.cos(pose[2]), math.sin(pose[2])
        return self._affine(geom, [c, -s, s, c, float(pose[0]), float(pose[1])])

    @staticmethod
    def _cog(pose: np.ndarray) -> np.ndarray:
        return pose[:2] + _rot(pose[2]) @ TEE_COG

    def _entry_point(self, tee: Any, through: np.ndarray, d: np.ndarray) -> np.ndarray | None:
        """Where the line along d through `through` first meets the T, coming from behind."""
        start = through - d * 400.0
        hit = tee.boundary.intersection(self._sg.LineString([start, through + d * 400.0]))
        if hit.is_empty:
            return None
        pts = [np.array(g.coords[0]) for g in getattr(hit, "geoms", [hit])]
        return min(pts, key=lambda q: float(np.dot(q - start, d)))

    @staticmethod
    def _inside(x: np.ndarray, margin: float = 0.0) -> bool:
        return bool(np.all(x >= WORKSPACE[0] + margin) and np.all(x <= WORKSPACE[1] - margin))

    # -- planning -------------------------------------------------------------------------------

    def _try_plan(self, tee: Any, blocked: Any, cog: np.ndarray, d: np.ndarray, s: float,
                  length: float) -> bool:
        n = np.array([-d[1], d[0]])
        contact = self._entry_point(tee, cog + n * s, d)
        if contact is None:
            return False
        pre = contact - d * (AGENT_RADIUS + self.p.standoff)
        stage = pre - d * 45.0
        if not (self._inside(pre) and self._inside(stage)):
            return False
        if blocked.intersects(self._sg.LineString([stage, pre])):
            return False
        self.push_dir, self.pre, self.stage = d, pre, stage
        self.push_goal = np.clip(contact + d * length, *WORKSPACE)
        return True

    def _plan(self, agent: np.ndarray, pose: np.ndarray, goal: np.ndarray, tee: Any, blocked: Any) -> None:
        cog, cog_goal = self._cog(pose), self._cog(goal)
        e = cog_goal - cog
        dtheta = _wrap(goal[2] - pose[2])
        if np.linalg.norm(e) > 25.0 or abs(dtheta) < math.radians(12):
            d0 = e / max(float(np.linalg.norm(e)), 1e-6)
            s0 = float(np.clip(-self.p.rot_gain * dtheta, -self.p.max_lever, self.p.max_lever))
        else:  # close enough: push across the bar, near one end, to turn the block
            d0 = _rot(pose[2]) @ np.array([0.0, 1.0]) * (1 if self.rng.random() < 0.5 else -1)
            s0 = -math.copysign(self.p.max_lever, dtheta)
        d0 = _rot(self.rng.normal(0.0, 0.12)) @ d0  # direction noise
        length = min(self.p.push_length, float(np.linalg.norm(e)) + 25.0)
        sign = 1 if self.rng.random() < 0.5 else -1
        offsets = [0.0] + [sign * k * math.radians(25) * (-1) ** j for k in (1, 2, 3, 4) for j in (0, 1)]
        if self.failed_plans:  # the last plan led nowhere: start from another direction
            self.rng.shuffle(offsets)
        self.phase, self.steps_in_phase = "stage", 0
        for off in offsets:
            d = _rot(off) @ d0
            for s in (s0, s0 / 2, 0.0):
                if self._try_plan(tee, blocked, cog, d, s, length):
                    return
        # Nothing reachable (block jammed in a corner): drag it toward the middle instead.
        d = np.array([256.0, 256.0]) - cog
        d /= max(float(np.linalg.norm(d)), 1e-6)
        for off in (0.0, 0.5, -0.5, 1.0, -1.0):
            if self._try_plan(tee, blocked, cog, _rot(off) @ d, 0.0, 40.0):
                return
        self.phase = "wander"
        self.waypoint = np.clip(agent + self.rng.normal(0, 60, 2), *WORKSPACE)

    def _detour(self, agent: np.ndarray, dest: np.ndarray, cog: np.ndarray, blocked: Any) -> np.ndarray:
        """Next point toward `dest` that does not cut through the block: straight if the path is
        clear; else out to a circle around the block, then along it (the way that stays clear)."""
        if not blocked.intersects(self._sg.LineString([agent, dest])):
            return dest
        r = agent - cog
        dist = float(np.linalg.norm(r))
        if dist < self.CLEAR_RADIUS - 25.0:  # well inside: back off radially first (hysteresis:
            # a 40-degree chord of the circle stays above this, so walking never flips to backing)
            return np.clip(cog + r / max(dist, 1e-6) * self.CLEAR_RADIUS, *WORKSPACE)
        a0 = math.atan2(r[1], r[0])
        a1 = math.atan2(dest[1] - cog[1], dest[0] - cog[0])
        delta = _wrap(a1 - a0)
        best = None
        for direction in (math.copysign(1.0, delta), -math.copysign(1.0, delta)):
            step = direction * min(abs(delta) if direction * delta > 0 else 2 * math.pi - abs(delta),
                                   math.radians(40))
            a = a0 + step
            w = np.clip(cog + self.CLEAR_RADIUS * np.array([math.cos(a), math.sin(a)]), *WORKSPACE)
            if not blocked.intersects(self._sg.LineString([agent, w])):
                return w
            best = w if best is None else best
        return best

    @staticmethod
    def _toward(src: np.ndarray, dst: np.ndarray, speed: float) -> np.ndarray:
        v = dst - src
        dist = float(np.linalg.norm(v))
        return dst.copy() if dist <= speed else src + v / dist * speed

    def act(self, state: np.ndarray, goal: np.ndarray) -> np.ndarray:
        """The next action (absolute target position) for state [agent(2), block pose(3)]."""
        agent, pose = np.asarray(state[:2], float), np.asarray(state[2:5], float)
        tee = self._place(self._local_tee, pose)
        blocked = self._place(self._local_blocked, pose)
        cog = self._cog(pose)
        if self.phase == "plan":
            self._plan(agent, pose, goal, tee, blocked)
            if self.stage is not None:
                # The PD-controlled agent covers about a third of the commanded step per control
                # step; allow for that, plus a detour around the block.
                detour = math.pi * self.CLEAR_RADIUS
                self.stage_budget = 10 + int(3 * (np.linalg.norm(self.stage - agent) + detour)
                                             / self.p.approach_speed)
        self.steps_in_phase += 1
        if self.phase == "wander":
            nxt = self._toward(agent, self._detour(agent, self.waypoint, cog, blocked), self.p.approach_speed)
            if np.linalg.norm(agent - self.waypoint) < 8.0 or self.steps_in_phase > 6:
                self.phase = "plan"
        elif self.phase == "stage":
            nxt = self._toward(agent, self._detour(agent, self.stage, cog, blocked), self.p.approach_speed)
            if np.linalg.norm(agent - self.stage) < 10.0:
                self.phase, self.steps_in_phase = "line_up", 0
            elif self.steps_in_phase > self.stage_budget:
                self.phase, self.failed_plans = "plan", self.failed_plans + 1
        elif self.phase == "line_up":
            nxt = self._toward(agent, self.pre, self.p.push_speed * 1.5)
            if np.linalg.norm(agent - self.pre) < 6.0:
                self.phase, self.steps_in_phase = "push", 0
            elif self.steps_in_phase > 8:
                self.phase, self.failed_plans = "plan", self.failed_plans + 1
        else:  # push
            nxt = self._toward(agent, self.push_goal, self.p.push_speed)
            if np.linalg.norm(agent - self.push_goal) < 8.0 or self.steps_in_phase > 15:
                self.phase, self.failed_plans = "plan", 0
        noisy = np.clip(nxt, *WORKSPACE) + self.rng.normal(0.0, self.p.noise, 2)
        return np.clip(noisy, *WORKSPACE).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Rollouts


@dataclass
class Rollout:
    images: np.ndarray  # uint8 [T + 1, H, W, 3]: observation before each action, plus the last
    agent_pos: np.ndarray  # float32 [T + 1, 2]
    block_pose: np.ndarray  # float32 [T + 1, 3]
    actions: np.ndarray  # float32 [T, 2]
    success: bool  # DINO-WM rule on the final block pose
    coverage: float  # gym_pusht goal coverage at the end
    terminated: bool  # gym_pusht's own success (coverage > 95 %) ended the episode
    seed: int


def rollout(seed: int, steps: int, *, noise_scale: float = 1.0, image_size: int = RENDER_SIZE,
            env: Any | None = None) -> Rollout:
    """One scripted episode from the env's random initial state for `seed`."""
    if not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"steps={steps} must be in [1, {MAX_STEPS}] (gym_pusht's episode limit)")
    env = env or make_env(image_size, obs_type="state")
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    policy = ScriptedPushPolicy(rng, PolicyParams.sample(rng, noise_scale=noise_scale))
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
    )


def _rollout_batch(seeds: Sequence[int], steps: int, noise_scale: float, image_size: int,
                   video_paths: Sequence[str] | None = None) -> list[Rollout]:
    """Rollouts for `seeds` in one process. With `video_paths`, each rollout is encoded to its mp4
    right here and returned without images (so frames never cross process boundaries)."""
    from data_pipelines.convert import ego4d_writer

    env = make_env(image_size, obs_type="state")
    out = []
    try:
        for i, seed in enumerate(seeds):
            r = rollout(seed, steps, noise_scale=noise_scale, image_size=image_size, env=env)
            if video_paths is not None:
                # VP9: its encoder output is byte-for-byte reproducible (x264's is not quite).
                ego4d_writer.encode_video(video_paths[i], r.images, CONTROL_FPS, codec="vp9")
                r.images = None  # type: ignore[assignment]
            out.append(r)
    finally:
        env.close()
    return out


def generate_rollouts(seeds: Sequence[int], steps: int, *, noise_scale: float = 1.0,
                      image_size: int = RENDER_SIZE, workers: int = 1,
                      video_paths: Sequence[str] | None = None) -> list[Rollout]:
    """Rollouts for `seeds`, in seed order, deterministic for any `workers` (each rollout depends
    only on its seed). `video_paths` (one per seed): encode mp4s in the workers instead of
    returning images."""
    seeds = list(seeds)
    if video_paths is not None and len(video_paths) != len(seeds):
        raise ValueError(f"{len(video_paths)} video paths for {len(seeds)} seeds")
    workers = max(1, min(workers, len(seeds)))
    if workers == 1 or len(seeds) < 4:
        return _rollout_batch(seeds, steps, noise_scale, image_size, video_paths)
    import multiprocessing as mp

    # Interleaved blocks balance the work (episodes that succeed early are shorter).
    blocks = [list(range(k, len(seeds), workers)) for k in range(workers)]
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        futures = [
            pool.submit(_rollout_batch, [seeds[i] for i in b], steps, noise_scale, image_size,
                        None if video_paths is None else [video_paths[i] for i in b])
            for b in blocks
        ]
        parts = [f.result() for f in futures]
    out: list[Rollout | None] = [None] * len(seeds)
    for b, part in zip(blocks, parts, strict=True):
        for i, r in zip(b, part, strict=True):
            out[i] = r
    return out  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# Writers


def rlds_features(image_size: int = RENDER_SIZE) -> Any:
    from data_pipelines.convert import rlds_writer as rw

    return rw.rlds_features(
        observation={
            "image": rw.image((image_size, image_size, 3), "jpeg"),
            "state": rw.tensor((2,)),
            "block_pose": rw.tensor((3,)),
        },
        action=rw.tensor((2,)),
        language_instruction=True,
        episode_metadata={"file_path": rw.text(), "seed": rw.tensor((), np.int64),
                          "success": rw.tensor((), np.bool_)},
    )


def rlds_episode(r: Rollout, index: int, split: str) -> dict[str, Any]:
    """RLDS steps: step t holds the observation before action t; the final observation is a last
    step whose action holds the agent's target (the agent stays where it is)."""
    from data_pipelines.convert import rlds_writer as rw

    n = len(r.actions)
    actions = np.concatenate([r.actions, r.actions[-1:] if n else r.agent_pos[:1]], axis=0)
    steps = [
        {
            "observation": {"image": r.images[t], "state": r.agent_pos[t], "block_pose": r.block_pose[t]},
            "action": actions[t],
            "language_instruction": LANGUAGE,
            "reward": 1.0 if (t == n and r.terminated) else 0.0,
        }
        for t in range(n + 1)
    ]
    return rw.episode_from_steps(
        steps, terminal=r.terminated,
        episode_metadata={"file_path": f"pusht/{split}/episode_{index:05d}", "seed": np.int64(r.seed),
                          "success": bool(r.success)},
    )


def write_rlds(out_dir: str, rollouts: Sequence[Rollout], *, split_tag: str, image_size: int = RENDER_SIZE
               ) -> str:
    from data_pipelines.convert import rlds_writer as rw

    return rw.write_rlds_dataset(
        out_dir, "pusht", "0.1.0", rlds_features(image_size),
        (rlds_episode(r, i, split_tag) for i, r in enumerate(rollouts)),
        file_format="tfrecord", overwrite=True,
        description=f"PushT scripted pushing episodes ({split_tag}), gym_pusht, 10 Hz.",
    )


# ---------------------------------------------------------------------------------------------
# The demo data job


@dataclass(frozen=True)
class DemoSizes:
    labeled_episodes: int = 40
    video_episodes: int = 80
    test_episodes: int = 10
    steps: int = 100  # control steps per episode at most (10 Hz); an episode ends early on success
    seed: int = 0

    def seeds(self) -> dict[str, list[int]]:
        """Disjoint seed ranges per set, so the test episodes never share an initial state."""
        base = self.seed * 1_000_000
        return {
            "labeled": [base + i for i in range(self.labeled_episodes)],
            "test": [base + 300_000 + i for i in range(self.test_episodes)],
            "video": [base + 600_000 + i for i in range(self.video_episodes)],
        }


OUTPUT_PARTS = {"rlds", "rlds_test", "ego4d", "converted"}  # what `generate` writes before generation.json
VIDEO_NOISE_SCALE = 1.5  # the action-free rollouts explore more than the labeled demonstrations


def _summary(rollouts: Sequence[Rollout]) -> dict[str, Any]:
    goal = GOAL_POSE
    moved = [float(np.linalg.norm(r.block_pose[-1, :2] - r.block_pose[0, :2])) for r in rollouts]
    start_err = [pose_error(r.block_pose[0], goal)[0] for r in rollouts]
    end_err = [pose_error(r.block_pose[-1], goal)[0] for r in rollouts]
    return {
        "episodes": len(rollouts),
        "steps": int(sum(len(r.actions) for r in rollouts)),
        "success_rate": float(np.mean([r.success for r in rollouts])) if rollouts else 0.0,
        "terminated_rate": float(np.mean([r.terminated for r in rollouts])) if rollouts else 0.0,
        "mean_coverage": float(np.mean([r.coverage for r in rollouts])) if rollouts else 0.0,
        "mean_block_moved_px": float(np.mean(moved)) if moved else 0.0,
        "mean_block_error_px": {"start": float(np.mean(start_err)) if rollouts else 0.0,
                                "end": float(np.mean(end_err)) if rollouts else 0.0},
    }


def generate(output: str, sizes: DemoSizes = DemoSizes(), *, workers: int = 1, image_size: int = 64,
             convert: bool = True, progress: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """Generates the PushT demo data under `output` and converts it (see the module docstring).

    A finished `output` with the same sizes is kept as is (the demo can be re-run cheaply);
    anything else already there is an error unless `overwrite`. Returns `generation.json`.
    """
    import shutil

    from data_pipelines.convert import ego4d as convert_ego4d
    from data_pipelines.convert import ego4d_writer
    from data_pipelines.convert import oxe as convert_oxe

    report_path = os.path.join(output, "generation.json")
    wanted = {"sizes": sizes.__dict__, "image_size": image_size, "render_size": RENDER_SIZE,
              "converted": convert}
    if os.path.exists(report_path) and not overwrite:
        with open(report_path) as f:
            report = json.load(f)
        if {k: report.get(k) for k in wanted} == wanted:
            if progress:
                print(f"{output}: PushT demo data already generated ({report_path})")
            return report
    if os.path.exists(output) and os.listdir(output):
        interrupted = not os.path.exists(report_path) and set(os.listdir(output)) <= OUTPUT_PARTS
        if not (overwrite or interrupted):
            raise FileExistsError(
                f"{output}: exists and holds other data or a generation with other sizes "
                f"(see its generation.json); pass --overwrite to replace it or choose another --output"
            )
        if interrupted and progress:
            print(f"[pusht] {output}: redoing an interrupted generation", flush=True)
        shutil.rmtree(output)
    os.makedirs(output, exist_ok=True)
    seeds = sizes.seeds()
    timings: dict[str, float] = {}
    report: dict[str, Any] = dict(wanted)
    t_all = time.perf_counter()

    def log(msg: str) -> None:
        if progress:
            print(f"[pusht] {msg}", flush=True)

    # Labeled demonstrations and the held-out labeled test set: RLDS builder directories.
    rlds_dirs = {"labeled": os.path.join(output, "rlds", "pusht", "0.1.0"),
                 "test": os.path.join(output, "rlds_test", "pusht", "0.1.0")}
    for part in ("labeled", "test"):
        if not seeds[part]:
            continue
        t0 = time.perf_counter()
        rollouts = generate_rollouts(seeds[part], sizes.steps, workers=workers)
        timings[f"simulate_{part}"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        write_rlds(rlds_dirs[part], rollouts, split_tag="train" if part == "labeled" else "test")
        timings[f"write_rlds_{part}"] = time.perf_counter() - t0
        report[part] = {**_summary(rollouts), "rlds_dir": os.path.relpath(rlds_dirs[part], output)}
        log(f"{part}: {len(rollouts)} episodes, {report[part]['steps']} steps, success "
            f"{report[part]['success_rate']:.0%}, block moved {report[part]['mean_block_moved_px']:.0f} px "
            f"on average ({timings[f'simulate_{part}']:.1f} s simulate, {timings[f'write_rlds_{part}']:.1f} s write)")
        del rollouts

    # Action-free rollouts: mp4 videos in the Ego4D layout (encoded inside the workers).
    video_root = os.path.join(output, "ego4d")
    if seeds["video"]:
        t0 = time.perf_counter()
        layout = ego4d_writer.Ego4DLayoutWriter(video_root)
        uids = [f"pusht-{i:05d}" for i in range(len(seeds["video"]))]
        paths = [layout.video_path(u) for u in uids]
        rollouts = generate_rollouts(seeds["video"], sizes.steps, noise_scale=VIDEO_NOISE_SCALE,
                                     workers=workers, video_paths=paths)
        for uid in uids:
            layout.register_video(uid, split="train", scenarios=("pusht",),
                                  narrations=[(0.0, f"#C C starts to {LANGUAGE}")])
        layout.finish()
        timings["simulate_encode_video"] = time.perf_counter() - t0
        report["video"] = {**_summary(rollouts), "ego4d_root": os.path.relpath(video_root, output)}
        log(f"video: {len(rollouts)} rollouts as mp4 ({timings['simulate_encode_video']:.1f} s)")
        del rollouts

    if convert:
        conv_root = os.path.join(output, "converted")
        report["converted_dirs"] = {}
        jobs = []
        if seeds["labeled"]:
            jobs.append(("pusht_labeled", "oxe", rlds_dirs["labeled"]))
        if seeds["test"]:
            jobs.append(("pusht_test", "oxe", rlds_dirs["test"]))
        if seeds["video"]:
            jobs.append(("pusht_video", "ego4d", video_root))
        for name, kind, src in jobs:
            dst = os.path.join(conv_root, name)
            t0 = time.perf_counter()
            if kind == "oxe":
                m = convert_oxe.convert(src, dst, dataset="pusht", options=convert_oxe.OXEOptions(image_size),
                                        workers=workers, progress=progress)
            else:
                m = convert_ego4d.convert(
                    src, dst, video_dir="full_scale",
                    options=convert_ego4d.Ego4DOptions(target_fps=CONTROL_FPS, image_size=image_size),
                    workers=workers, name=name, embodiment="pusht", progress=progress)
            timings[f"convert_{name}"] = time.perf_counter() - t0
            report["converted_dirs"][name] = {"path": os.path.relpath(dst, output),
                                              "episodes": m["num_episodes"], "frames": m["num_frames"],
                                              "skipped": m["num_skipped"]}
    timings["total"] = time.perf_counter() - t_all
    report["timings_s"] = {k: round(v, 2) for k, v in timings.items()}
    report["workers"] = workers
    records.write_json_atomic(report_path, report)
    log(f"done in {timings['total']:.1f} s -> {output}")
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = DemoSizes()
    parser.add_argument("--output", required=True, help="output directory (rlds/, ego4d/, converted/)")
    parser.add_argument("--labeled_episodes", type=int, default=d.labeled_episodes,
                        help="scripted demonstrations with actions (RLDS)")
    parser.add_argument("--video_episodes", type=int, default=d.video_episodes,
                        help="action-free rollouts (mp4, Ego4D layout)")
    parser.add_argument("--test_episodes", type=int, default=d.test_episodes,
                        help="held-out labeled episodes (own RLDS builder dir)")
    parser.add_argument("--steps", type=int, default=d.steps, help="max control steps per episode (10 Hz)")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--image_size", type=int, default=64, help="converted frame size")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--no_convert", action="store_true", help="only generate the sources")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    parser.add_argument("--no_progress", action="store_true")


def main(args: argparse.Namespace) -> dict[str, Any]:
    for name in ("labeled_episodes", "video_episodes", "test_episodes"):
        if getattr(args, name) < 0:
            raise SystemExit(f"--{name} must be >= 0, got {getattr(args, name)}")
    if not 2 <= args.steps <= MAX_STEPS:
        raise SystemExit(f"--steps must be in [2, {MAX_STEPS}], got {args.steps}")
    if args.labeled_episodes + args.video_episodes + args.test_episodes == 0:
        raise SystemExit("nothing to generate: all episode counts are 0")
    sizes = DemoSizes(args.labeled_episodes, args.video_episodes, args.test_episodes, args.steps, args.seed)
    return generate(args.output, sizes, workers=args.workers, image_size=args.image_size,
                    convert=not args.no_convert, progress=not args.no_progress, overwrite=args.overwrite)
