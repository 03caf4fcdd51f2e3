"""The PushT simulator (`gym_pusht`), headless, with exact state read-out and reset.

Observation per step: the rendered image (96x96 by default), the agent position and the block
pose (x, y, angle) of the T; an action is the absolute 2-d target position of the agent (what
`gym_pusht` takes). `reset_to_state` puts the simulator in a given state exactly, which the
planning evaluation needs to start every method from the same state; `render` is the
observation image, pixel-identical to `gym_pusht`'s but faster.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

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


def to_model_size(frame: np.ndarray, image_size: int) -> np.ndarray:
    """A rendered frame as the converted data holds it: resized to the model size with the
    converter's resampling (bicubic, `reducing_gap=3`); unchanged when already that size."""
    from PIL import Image

    if frame.shape[:2] == (image_size, image_size):
        return frame
    img = Image.fromarray(frame).resize((image_size, image_size), Image.Resampling.BICUBIC, reducing_gap=3.0)
    return np.asarray(img, dtype=np.uint8)
