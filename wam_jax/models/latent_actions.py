"""Latent actions: what changed between two frames, squeezed through a small bottleneck.

`LatentActionModel` is an inverse-dynamics model on (stop-gradient) target latents,
q(u_t | z̄_t, z̄_{t+1}). Its output conditions the predictor on clips without action labels, so the
bottleneck has to be narrow enough that u_t cannot smuggle the whole next frame through:

- 'fsq': finite scalar quantization (Mentzer et al. 2023), `levels` values per dimension,
  straight-through rounding; capacity `dim * log(levels)` nats.
- 'gaussian': a VAE-style posterior N(mu, sigma^2) sampled with the reparameterization trick and a
  KL to N(0, 1) (the bottleneck loss, weighted by `loss.kl_weight`).
- 'noisy': a bounded mean `tanh(mu)` plus fixed Gaussian noise of std `noise_std`: a channel with
  bounded capacity.

For 'fsq' and 'noisy' the bottleneck loss is a usage term on `LatentActions.pre` instead (the
loss's `usage_hinge`): early on the predictor cannot use u_t yet and, thanks to its
copy-last-frame residual, is best served by a *constant* u_t, so without it the latent actions
collapse to one code within a few dozen steps (and the alignment then drags g(a_t) to a constant
as well).

`ActionEmbedder` g(a_t, embodiment) maps real actions into the same space (per-embodiment input
map, only the valid action dims), aligned to the latent actions with ||g(a_t) - sg(u_t)||^2.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from wam_jax.models.linear import EmbodimentLinear, linear
from wam_jax.models.ops import gelu
from wam_jax.models.partitioning import mesh_optional
from wam_jax.models.transition import TransitionEncoder

BOTTLENECKS = ("fsq", "gaussian", "noisy")


class LatentActions(NamedTuple):
    u: jax.Array  # [..., du] what conditions the predictor (noisy / quantized with straight-through)
    mean: jax.Array  # [..., du] deterministic version (quantized FSQ / posterior mean); inference
    kl: jax.Array  # [..., du] KL(q || N(0, 1)) per dim (zeros for FSQ)
    codes: jax.Array  # int32 [..., du] FSQ level index per dim (zeros for Gaussian bottlenecks)
    pre: jax.Array  # [..., du] continuous value before rounding / noise, in about [-1, 1]


def parse_fsq_levels(levels: int | tuple[int, ...] | list[int], dim: int) -> tuple[int, ...]:
    """Per-dimension FSQ levels from the config (`int` = the same for every dim)."""
    lv = (int(levels),) * dim if isinstance(levels, int | float) else tuple(int(v) for v in levels)
    if len(lv) != dim:
        raise ValueError(f"model.latent_action.fsq_levels has {len(lv)} entries, expected dim={dim}")
    if min(lv) < 2:
        raise ValueError(f"model.latent_action.fsq_levels must all be >= 2, got {lv}")
    return lv


def fsq_quantize(z: jax.Array, levels: tuple[int, ...]) -> tuple[jax.Array, jax.Array, jax.Array]:
    """FSQ: bound each dim to `levels[i]` integer values, round with a straight-through gradient.

    Returns (quantized values scaled into [-1, 1], int32 level index in [0, levels[i]),
    the bounded value before rounding on the same scale).
    """
    lv = jnp.asarray(levels, jnp.float32)
    eps = 1e-3
    half_l = (lv - 1.0) * (1.0 + eps) / 2.0
    offset = jnp.where(jnp.asarray(levels) % 2 == 0, 0.5, 0.0)
    shift = jnp.arctanh(offset / half_l)
    bounded = jnp.tanh(z.astype(jnp.float32) + shift) * half_l - offset
    rounded = bounded + jax.lax.stop_gradient(jnp.round(bounded) - bounded)
    half_width = jnp.floor(lv / 2.0)
    idx = (jnp.round(bounded) + half_width).astype(jnp.int32)
    return rounded / half_width, idx, bounded / half_width


class LatentActionModel(nnx.Module):
    """q(u_t | z̄_t, z̄_{t+1}) with an FSQ / Gaussian / noisy bottleneck of width `dim`."""

    @mesh_optional
    def __init__(self, *, latent_dim: int, dim: int, bottleneck: str, fsq_levels: int | tuple[int, ...],
                 noise_std: float, width: int, depth: int, heads: int, mlp_ratio: float,
                 grid_hw: tuple[int, int], rngs: nnx.Rngs, scan: bool = True, scan_unroll: int = 1,
                 remat: str = "none", dtype=jnp.float32, param_dtype=jnp.float32,
                 attention_impl: str = "xla"):
        if bottleneck not in BOTTLENECKS:
            raise ValueError(f"model.latent_action.bottleneck must be one of {BOTTLENECKS}, got {bottleneck!r}")
        self.dim = dim
        self.bottleneck = bottleneck
        self.levels = parse_fsq_levels(fsq_levels, dim) if bottleneck == "fsq" else ()
        self.noise_std = float(noise_std)
        self.trunk = TransitionEncoder(
            latent_dim=latent_dim, width=width, depth=depth, heads=heads, mlp_ratio=mlp_ratio,
            grid_hw=grid_hw, rngs=rngs, scan=scan, scan_unroll=scan_unroll, remat=remat, dtype=dtype,
            param_dtype=param_dtype, attention_impl=attention_impl)
        out = 2 * dim if bottleneck == "gaussian" else dim
        # Unit-scale pre-activations at init, so the FSQ codes / Gaussian means start spread out
        # instead of all at the origin.
        self.head = linear(width, out, ("embed", "latent_action"), rngs=rngs, dtype=dtype,
                           param_dtype=param_dtype, stddev=width**-0.5)

    @property
    def num_codes(self) -> int:
        """FSQ codebook size (prod of levels); 0 for continuous bottlenecks."""
        return math.prod(self.levels) if self.bottleneck == "fsq" else 0

    def __call__(self, z_t: jax.Array, z_next: jax.Array, *, key: jax.Array | None = None
                 ) -> LatentActions:
        """z_t, z_next `[..., N, D]` -> `LatentActions` with `[..., du]` fields.

        `key` draws the bottleneck noise ('gaussian', 'noisy'); without it `u == mean`.
        """
        h = self.head(self.trunk(z_t, z_next)).astype(jnp.float32)
        zeros = jnp.zeros((*h.shape[:-1], self.dim), jnp.float32)
        if self.bottleneck == "fsq":
            q, idx, pre = fsq_quantize(h, self.levels)
            return LatentActions(u=q, mean=q, kl=zeros, codes=idx, pre=pre)
        if self.bottleneck == "gaussian":
            mu, log_var = jnp.split(h, 2, axis=-1)
            log_var = jnp.clip(log_var, -10.0, 10.0)
            kl = 0.5 * (jnp.exp(log_var) + mu**2 - 1.0 - log_var)
            u = mu
            if key is not None:
                u = mu + jnp.exp(0.5 * log_var) * jax.random.normal(key, mu.shape)
            return LatentActions(u=u, mean=mu, kl=kl, codes=zeros.astype(jnp.int32), pre=mu)
        mean = jnp.tanh(h)
        var = self.noise_std**2
        kl = 0.5 * (var + mean**2 - 1.0 - math.log(var))
        u = mean if key is None else mean + self.noise_std * jax.random.normal(key, mean.shape)
        return LatentActions(u=u, mean=mean, kl=kl, codes=zeros.astype(jnp.int32), pre=mean)


class ActionEmbedder(nnx.Module):
    """g(a_t, embodiment): real actions -> the latent-action space.

    The input map is per embodiment and reads `[a * mask, mask]`, so padded action dims contribute
    nothing (and receive no gradient) and "dim absent" differs from "dim = 0".
    """

    @mesh_optional
    def __init__(self, *, action_dim: int, num_embodiments: int, dim: int, width: int,
                 rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.action_dim = action_dim
        self.dtype = dtype
        # Fan-in scaled init: g(a) starts at the unit scale of the latent actions it is aligned
        # to, so real actions move the predictor from the first step.
        self.action_in = EmbodimentLinear(num_embodiments, 2 * action_dim, width, ("act", "mlp"),
                                          stddev=(2 * action_dim) ** -0.5, **kw)
        self.hidden = linear(width, width, ("mlp", "embed"), stddev=width**-0.5, **kw)
        self.out = linear(width, dim, ("embed", "latent_action"), stddev=width**-0.5, **kw)

    def __call__(self, action: jax.Array, action_mask: jax.Array, embodiment_id: jax.Array
                 ) -> jax.Array:
        """action / action_mask `[B, S, A]`, embodiment_id `[B]` -> `[B, S, du]` float32."""
        feats = jnp.concatenate(
            [jnp.where(action_mask, action, 0.0), action_mask.astype(action.dtype)], axis=-1)
        h = gelu(self.action_in(feats.astype(self.dtype), embodiment_id))
        h = gelu(self.hidden(h))
        return self.out(h).astype(jnp.float32)
