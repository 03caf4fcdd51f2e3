"""The PushT success rule of DINO-WM: the block within 20 px and 20 degrees of the goal pose.

One rule for everything that scores PushT: the demo data's per-episode `success`, the planning
evaluation (`wam-plan pusht`) and the downstream-policy example.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

SUCCESS_POS_TOL = 20.0
SUCCESS_ANGLE_TOL_DEG = 20.0


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
