"""Anti-collapse terms on the online encoder's latents: SIGReg (LeWM) and VICReg's variance and
covariance (PLDM). With `model.target='online'` they are all that keeps the end-to-end encoder
from mapping every frame to one point."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def sigreg(x: jax.Array, mask: jax.Array, key: jax.Array, *, num_projections: int = 256,
           num_knots: int = 17, t_max: float = 3.0) -> jax.Array:
    """SIGReg (LeWM): how far the valid rows of `x [M, D]` are from an isotropic standard Gaussian,
    as the Epps-Pulley statistic of `num_projections` random unit directions, averaged.

    Per direction a, the empirical characteristic function of <x_m, a> is compared with
    exp(-t^2/2) at `num_knots` points t in [0, t_max] (trapezoid rule over the symmetric integral,
    Gaussian weight exp(-t^2/2)), scaled by the number of rows: about 1 for Gaussian rows,
    hundreds for collapsed or badly scaled ones. By Cramer-Wold, matching every 1-D projection
    matches the distribution, so the embedding cannot shrink onto a few directions. Directions are
    redrawn from `key` every step.
    """
    d = x.shape[-1]
    a = jax.random.normal(key, (d, num_projections), jnp.float32)
    a = a / jnp.linalg.norm(a, axis=0, keepdims=True)
    h = x.astype(jnp.float32) @ a  # [M, P]
    w = mask.astype(jnp.float32)[:, None, None]
    n = jnp.maximum(jnp.sum(mask.astype(jnp.float32)), 1.0)
    t = jnp.linspace(0.0, t_max, num_knots)
    th = h[..., None] * t  # [M, P, K]
    re = jnp.sum(w * jnp.cos(th), axis=0) / n
    im = jnp.sum(w * jnp.sin(th), axis=0) / n
    phi = jnp.exp(-0.5 * jnp.square(t))
    dt = t_max / (num_knots - 1)
    trap = jnp.full((num_knots,), dt).at[0].set(dt / 2).at[-1].set(dt / 2)
    stat = 2.0 * n * jnp.sum((jnp.square(re - phi) + jnp.square(im)) * phi * trap, axis=-1)  # [P]
    return jnp.mean(stat)


def vicreg_terms(x: jax.Array, mask: jax.Array, target_std: float = 1.0) -> tuple[jax.Array, jax.Array]:
    """(variance hinge, covariance) of VICReg / PLDM on the valid rows of `x [M, D]`: mean over
    dims of relu(target_std - std), and the summed squared off-diagonal covariance / D."""
    w = mask.astype(jnp.float32)[:, None]
    n = jnp.maximum(jnp.sum(w), 2.0)
    xf = x.astype(jnp.float32)
    mean = jnp.sum(w * xf, axis=0) / jnp.maximum(jnp.sum(w), 1.0)
    xc = (xf - mean) * w
    cov = xc.T @ xc / (n - 1.0)
    std = jnp.sqrt(jnp.diagonal(cov) + 1e-4)
    var_term = jnp.mean(jax.nn.relu(target_std - std))
    off = cov - jnp.diag(jnp.diagonal(cov))
    cov_term = jnp.sum(jnp.square(off)) / x.shape[-1]
    return var_term, cov_term



def anti_collapse_terms(z: jax.Array, tm: jax.Array, w: dict[str, float], loss_cfg: Any, key: jax.Array
                   ) -> dict[str, jax.Array]:
    """SIGReg and / or VICReg terms of latents `z [B, T, N, D]`, computed per time step over the
    batch's valid tokens (the statistics of one moment of the world, as LeWM and PLDM take them)
    and averaged over time steps; with `loss.collapse_samples='all'` over every valid token of
    the batch at once (pooled latents on a small CPU batch: T times the samples per test)."""
    b, t, n, d = z.shape
    x = jnp.moveaxis(z, 1, 0).reshape(t, b * n, d)  # [T, B*N, D]
    mask = jnp.repeat(jnp.moveaxis(tm, 1, 0), n, axis=1)  # [T, B*N]
    if str(loss_cfg["collapse_samples"]) == "all":
        x, mask = x.reshape(1, t * b * n, d), mask.reshape(1, t * b * n)
    valid_t = jnp.any(mask, axis=1).astype(jnp.float32)
    per_t = lambda v: jnp.sum(v * valid_t) / jnp.maximum(jnp.sum(valid_t), 1.0)  # noqa: E731
    out = {}
    if w["sigreg"] > 0:
        stat = jax.vmap(lambda xi, mi: sigreg(
            xi, mi, key, num_projections=int(loss_cfg["sigreg_projections"]),
            num_knots=int(loss_cfg["sigreg_knots"])))(x, mask)
        out["sigreg"] = per_t(stat)
    if w["vic_var"] > 0 or w["vic_cov"] > 0:
        var, cov = jax.vmap(vicreg_terms)(x, mask)
        if w["vic_var"] > 0:
            out["vic_var"] = per_t(var)
        if w["vic_cov"] > 0:
            out["vic_cov"] = per_t(cov)
    return out
