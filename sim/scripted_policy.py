"""`ScriptedPushPolicy`: the pushing heuristic that plays the expert in the PushT demo data.

It walks the agent around the T to the side opposite the direction the block must go (with an
offset from the centre of gravity that turns the block toward the goal angle), pushes, and
re-plans; Gaussian action noise and per-episode gains (`PolicyParams`) make trajectories
diverse. It reads the true simulator state, not pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from sim.pusht import AGENT_RADIUS, TEE_COG, TEE_POLYGONS, WORKSPACE


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
