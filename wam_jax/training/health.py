"""Health metrics of a training batch: feature spread, effective rank, code usage, R², per-source
means. Logged by the loss every step and summed over batches by evaluation; none of them is a
training signal."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def feature_std(z: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean over features of the per-feature std across valid rows; z `[M, D]`, mask `[M]`.
    Near zero means collapse (every token maps to the same vector)."""
    w = mask.astype(jnp.float32)[:, None]
    n = jnp.maximum(jnp.sum(w), 1.0)
    mean = jnp.sum(w * z, axis=0) / n
    var = jnp.sum(w * jnp.square(z - mean), axis=0) / n
    return jnp.mean(jnp.sqrt(var + 1e-12))


def masked_gram(z: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(uncentered Gram matrix `sum_m z_m z_m^T` `[D, D]`, row count) of the valid rows of
    z `[M, D]`, mask `[M]`: what `effective_rank` reads, and what evaluation sums over batches."""
    w = mask.astype(jnp.float32)[:, None]
    zf = z.astype(jnp.float32) * w
    return zf.T @ zf, jnp.sum(w)


def effective_rank(gram: jax.Array | np.ndarray, count: jax.Array | np.ndarray | float
                   ) -> jax.Array | np.ndarray:
    """RankMe effective rank exp(H(s / sum s)) of rows whose Gram matrix is `gram [D, D]`
    (`masked_gram`, or a sum of them over batches) and whose number is `count`; s are the
    singular values of the rows / sqrt(count), from the Gram matrix's eigenvalues (cheap when
    rows >> D).

    Eigenvalues below 1e-6 times the largest are set to 0: float32 eigenvalues carry ~1e-7 * max
    of noise, whose square roots would pose as singular values of 3e-4 * max. NumPy inputs are
    computed in NumPy at their precision (evaluation accumulates float64 Gram matrices on the
    host) and give a NumPy scalar; JAX arrays (or tracers) give a JAX scalar, under `jit` too.
    """
    xp = np if isinstance(gram, np.ndarray) and not isinstance(count, jax.Array) else jnp
    eig = xp.linalg.eigvalsh(gram / xp.maximum(count, 1.0))
    eig = xp.where(eig > 1e-6 * xp.max(eig), eig, 0.0)
    s = xp.sqrt(eig)
    p = s / xp.maximum(xp.sum(s), 1e-12) + 1e-12
    return xp.exp(-xp.sum(p * xp.log(p)))


def code_usage(codes: jax.Array, mask: jax.Array, num_codes: int) -> tuple[jax.Array, jax.Array]:
    """FSQ usage in one batch: (distinct codes / min(num_codes, valid samples), code entropy in
    nats). codes int `[M, du]` (level index per dim), mask `[M]`. Static shapes: lexicographic sort,
    group boundaries, segment sums."""
    m = codes.shape[0]
    sentinel = jnp.max(codes) + 1  # invalid rows form one extra group, removed below
    keyed = jnp.where(mask[:, None], codes, sentinel)
    order = jnp.lexsort(tuple(keyed[:, i] for i in range(keyed.shape[1] - 1, -1, -1)))
    srt = keyed[order]
    valid = mask[order]
    new = jnp.concatenate([jnp.ones((1,), bool), jnp.any(srt[1:] != srt[:-1], axis=-1)])
    group = jnp.cumsum(new) - 1
    counts = jax.ops.segment_sum(valid.astype(jnp.float32), group, num_segments=m)
    n_valid = jnp.sum(mask.astype(jnp.float32))
    distinct = jnp.sum((counts > 0).astype(jnp.float32))
    p = counts / jnp.maximum(n_valid, 1.0)
    entropy = -jnp.sum(jnp.where(counts > 0, p * jnp.log(jnp.where(counts > 0, p, 1.0)), 0.0))
    usage = distinct / jnp.maximum(jnp.minimum(float(num_codes), n_valid), 1.0)
    return usage, entropy


def r_squared(pred: jax.Array, target: jax.Array, mask: jax.Array) -> jax.Array:
    """Coefficient of determination over masked entries, per action dim then averaged over the
    dims that have at least two valid entries."""
    w = mask.astype(jnp.float32).reshape(-1, mask.shape[-1])
    p = pred.astype(jnp.float32).reshape(w.shape)
    y = target.astype(jnp.float32).reshape(w.shape)
    n = jnp.sum(w, axis=0)
    mean = jnp.sum(w * y, axis=0) / jnp.maximum(n, 1.0)
    sst = jnp.sum(w * jnp.square(y - mean), axis=0)
    sse = jnp.sum(w * jnp.square(y - p), axis=0)
    ok = (n >= 2) & (sst > 1e-8)
    r2 = jnp.where(ok, 1.0 - sse / jnp.where(ok, sst, 1.0), 0.0)
    return jnp.sum(r2) / jnp.maximum(jnp.sum(ok.astype(jnp.float32)), 1.0)


def per_source(err: jax.Array, mask: jax.Array, source_id: jax.Array, num_sources: int
                ) -> jax.Array:
    """Masked mean of err `[B, S]` per source id (< num_sources) -> `[num_sources]`."""
    onehot = jax.nn.one_hot(source_id, num_sources, dtype=jnp.float32)  # out-of-range ids: zeros
    w = mask.astype(jnp.float32)
    tot = jnp.einsum("bs,bk->k", jnp.where(mask, err, 0.0), onehot)
    cnt = jnp.einsum("bs,bk->k", w, onehot)
    return tot / jnp.maximum(cnt, 1.0)
