"""`RandomPushPolicy`: undirected pushing, the exploratory half of the PushT behaviour mix.

A scripted expert's action is nearly a function of the state (where it stands in its plan), so a
world model trained only on expert episodes can predict the next frame from the frames alone and
learns to ignore the action. This policy decouples the two: it walks the agent toward random
waypoints (most near the block, so it is pushed in every direction, some anywhere in the
workspace) at a random speed, with noise, re-drawing the waypoint every few steps.
"""

from __future__ import annotations

import math

import numpy as np

from sim.pusht import TEE_COG, WORKSPACE


class RandomPushPolicy:
    NEAR_BLOCK = 0.7  # share of waypoints within `REACH` px of the block's centre of gravity
    REACH = 90.0

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.waypoint: np.ndarray | None = None
        self.speed = 0.0
        self.left = 0

    def _new_segment(self, pose: np.ndarray) -> None:
        c, s = math.cos(pose[2]), math.sin(pose[2])
        cog = pose[:2] + np.array([[c, -s], [s, c]]) @ TEE_COG
        if self.rng.random() < self.NEAR_BLOCK:
            r, a = self.REACH * math.sqrt(self.rng.random()), self.rng.uniform(0, 2 * math.pi)
            self.waypoint = cog + r * np.array([math.cos(a), math.sin(a)])
        else:
            self.waypoint = self.rng.uniform(*WORKSPACE, 2)
        self.waypoint = np.clip(self.waypoint, *WORKSPACE)
        self.speed = float(self.rng.uniform(15.0, 60.0))  # px the target leads the agent by
        self.left = int(self.rng.integers(3, 11))

    def act(self, state: np.ndarray, goal: np.ndarray) -> np.ndarray:
        """The next action (absolute target position) for state [agent(2), block pose(3)]; the
        goal is ignored."""
        del goal
        agent, pose = np.asarray(state[:2], float), np.asarray(state[2:5], float)
        if self.left <= 0 or self.waypoint is None:
            self._new_segment(pose)
        self.left -= 1
        v = self.waypoint - agent
        dist = float(np.linalg.norm(v))
        nxt = self.waypoint if dist <= self.speed else agent + v / dist * self.speed
        return np.clip(nxt + self.rng.normal(0.0, 4.0, 2), *WORKSPACE).astype(np.float32)
