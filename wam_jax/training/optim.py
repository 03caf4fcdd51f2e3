"""Optimizer, learning-rate schedules (warmup-cosine, WSD) and the EMA momentum schedule.

Everything here is a pure function of `config.optim` / `config.model.ema` and the step, so a
resumed run reproduces the uninterrupted one exactly (the step is part of the checkpoint).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

SCHEDULES = ("warmup_cosine", "wsd", "constant")
OPTIMIZERS = ("adamw", "sgd")


def make_schedule(optim_cfg: Any, num_steps: int) -> optax.Schedule:
    """Learning rate per step.

    - `warmup_cosine`: linear 0 -> lr over `warmup_steps`, cosine to `lr * end_lr_ratio` at `num_steps`.
    - `wsd` (warmup-stable-decay): linear warmup, constant, then decay over the last
      `decay_fraction` of training (linear, or `1-sqrt` as in Hägele et al. 2024). A WSD run can be
      extended from any stable-phase checkpoint without re-warming.
    - `constant`: linear warmup then constant.
    """
    name = optim_cfg.schedule
    lr = float(optim_cfg.lr)
    warmup = int(min(optim_cfg.warmup_steps, max(num_steps - 1, 0)))
    end = lr * float(optim_cfg.end_lr_ratio)
    if name == "warmup_cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0, peak_value=lr, warmup_steps=warmup, decay_steps=max(num_steps, warmup + 1), end_value=end
        )
    if name == "constant":
        if warmup == 0:
            return optax.constant_schedule(lr)
        return optax.join_schedules(
            [optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup]
        )
    if name == "wsd":
        frac = float(optim_cfg.decay_fraction)
        if not 0.0 < frac <= 1.0:
            raise ValueError(f"--config.optim.decay_fraction={frac}: must be in (0, 1] for the 'wsd' schedule")
        decay_steps = max(1, int(round(num_steps * frac)))
        stable_end = max(warmup, num_steps - decay_steps)
        shape = optim_cfg.decay_shape
        if shape == "linear":
            decay = optax.linear_schedule(lr, end, decay_steps)
        elif shape == "1-sqrt":
            decay = lambda s: end + (lr - end) * (1.0 - jnp.sqrt(jnp.clip(s / decay_steps, 0.0, 1.0)))
        else:
            raise ValueError(f"--config.optim.decay_shape={shape!r}: expected 'linear' or '1-sqrt'")
        parts = [optax.linear_schedule(0.0, lr, warmup)] if warmup else []
        parts += [optax.constant_schedule(lr), decay]
        bounds = ([warmup] if warmup else []) + [stable_end]
        return optax.join_schedules(parts, bounds)
    raise ValueError(f"--config.optim.schedule={name!r}: expected one of {SCHEDULES}")


def make_optimizer(optim_cfg: Any, num_steps: int, mask: Any = None) -> optax.GradientTransformation:
    """Gradient clipping by global norm, then the optimizer with the schedule."""
    schedule = make_schedule(optim_cfg, num_steps)
    name = optim_cfg.optimizer
    if name == "adamw":
        opt = optax.adamw(
            schedule,
            b1=float(optim_cfg.b1),
            b2=float(optim_cfg.b2),
            eps=float(optim_cfg.eps),
            weight_decay=float(optim_cfg.weight_decay),
            mask=mask,
        )
    elif name == "sgd":
        opt = optax.sgd(schedule, momentum=float(optim_cfg.b1))
    else:
        raise ValueError(f"--config.optim.optimizer={name!r}: expected one of {OPTIMIZERS}")
    parts = []
    if optim_cfg.grad_clip and float(optim_cfg.grad_clip) > 0:
        parts.append(optax.clip_by_global_norm(float(optim_cfg.grad_clip)))
    parts.append(opt)
    return optax.chain(*parts)


def ema_momentum(step: jax.Array | int, ema_cfg: Any, num_steps: int) -> jax.Array:
    """Target-encoder EMA momentum: linear from `ema.start` to `ema.end` over training (V-JEPA)."""
    frac = jnp.clip(jnp.asarray(step, jnp.float32) / max(num_steps, 1), 0.0, 1.0)
    return float(ema_cfg.start) + (float(ema_cfg.end) - float(ema_cfg.start)) * frac


def ema_update(target: Any, online: Any, momentum: jax.Array) -> Any:
    """target <- m * target + (1 - m) * online, leaf by leaf, in the target's dtype."""
    return jax.tree.map(
        lambda t, o: (momentum * t.astype(jnp.float32) + (1.0 - momentum) * o.astype(jnp.float32)).astype(t.dtype),
        target,
        online,
    )
