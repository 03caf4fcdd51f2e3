"""The latent directions the robot's own state explains, and a planning cost without them.

An end-to-end latent spends most of its variance on what the actions move directly: on PushT the
agent (73 % of the variance, BENCHMARKS.md §11.12). The L1 from a predicted latent to a goal
image's then pays more for walking the agent to where the goal frame shows it than for pushing
the block, which is what success asks; in half of the planning tasks the planner never pushes
(§11.14). Regressing the latents on a polynomial of the proprio (the robot's state, recorded
beside every labeled frame) finds the directions that state accounts for; the planner's
`cost='scene'` measures the distance in their orthogonal complement, what the robot's state does
not explain (the scene). Fitted on frames the model trained on, never on a simulator's state.
Measured (§11.15, one model): 7 of 50 goals against 3 with the latent cost, yet the block is
pushed less often; the predictor is least accurate in the directions this cost keeps.

    basis = fit_state_subspace(latents, proprio)      # [F, r] orthonormal, F = N * D
    residual = remove_subspace(latents, basis)        # the same latents without those directions
"""

from __future__ import annotations

from typing import Any

import numpy as np

from wam_jax.inference.probes import polynomial_features

MIN_FRAMES = 64


def fit_state_subspace(latents: np.ndarray, proprio: np.ndarray, *, degree: int = 3, alpha: float = 1e-3,
                       min_explained: float = 0.5) -> np.ndarray:
    """Orthonormal basis `[F, r]` of the latent directions a degree-`degree` polynomial of the
    proprio explains: ridge from the features to `latents [n, ...]` (flattened to F), then those
    principal directions of the fitted part along which the fit explains at least
    `min_explained` of the latents' variance (r <= the number of features). A variance share of
    the fit would be the wrong rule: its last directions are a small part of the fit and still
    outweigh a small object in the scene."""
    x = np.asarray(latents, np.float64).reshape(len(latents), -1)
    p = np.asarray(proprio, np.float64).reshape(len(proprio), -1)
    if len(x) != len(p):
        raise ValueError(f"fit_state_subspace: {len(x)} latents but {len(p)} proprio rows")
    if len(x) < MIN_FRAMES:
        raise ValueError(f"fit_state_subspace: {len(x)} frames; need at least {MIN_FRAMES}")
    if not 0.0 < min_explained <= 1.0:
        raise ValueError(f"min_explained={min_explained}; expected a fraction in (0, 1]")
    f = polynomial_features(p[:, p.std(0) > 0], degree)[:, 1:]  # constant columns carry no state
    if f.shape[1] == 0:
        raise ValueError("fit_state_subspace: the proprio is constant over these frames; no state to remove")
    f = f - f.mean(0)
    xc = x - x.mean(0)
    coef = np.linalg.solve(f.T @ f + alpha * len(f) * np.eye(f.shape[1]), f.T @ xc)
    fitted = f @ coef
    _, s, vt = np.linalg.svd(fitted, full_matrices=False)
    v = vt[s > 1e-6 * max(float(s[0]), 1e-30)]  # the fit's directions
    explained = np.var(fitted @ v.T, axis=0) / np.maximum(np.var(xc @ v.T, axis=0), 1e-30)
    return v[explained >= min_explained].T.astype(np.float32)


def remove_subspace(x: Any, basis: Any) -> Any:
    """`x [..., F]` (numpy or jax) minus its projection on the orthonormal `basis [F, r]`."""
    return x - (x @ basis) @ basis.T


def explained_share(latents: np.ndarray, basis: np.ndarray) -> float:
    """Share of the latents' (centered) variance that lies in the subspace."""
    x = np.asarray(latents, np.float64).reshape(len(latents), -1)
    x = x - x.mean(0)
    return float(np.sum((x @ basis) ** 2) / max(float(np.sum(x**2)), 1e-30))
