"""Linear probes: how much of a known state (a simulator's ground truth) a representation carries.

    result = linear_probe(x, y, groups, names=["block_x", ...])   # R^2 per target on held-out groups

Ridge regression from features `x [n, d]` to targets `y [n, k]`, fit on some groups (episodes) and
scored on the others, so a probe never sees a test episode; the ridge strength is chosen by
validation on a further split of the training groups. Works the same on latents and on raw
pixels (the baseline a representation has to beat), with the dual form when d > n.

What the features spend themselves on, beside what can be read from them:

    explained_variance(x, factors, groups)   # share of x's variance a cubic in the factors explains
    distance_rank(x, factors)                # Spearman of feature distance vs factor distance

A planner's cost is a distance between latents: a representation can carry the block (a good
probe) and still measure mostly the agent, when the agent explains most of its variance.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

ALPHAS = tuple(10.0 ** e for e in range(-6, 4))


def _standardize(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, scale, scaled x): features centered and scaled by one global std (per-feature scaling
    would blow up pixels that never change in the training frames)."""
    mu = x.mean(0)
    sd = np.sqrt(np.mean(np.square(x - mu))) + 1e-12
    return mu, sd, (x - mu) / sd


def _fit(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Ridge on `_standardize`d features; `alpha` is relative to the sample count.
    Returns (mean, scale, weights, intercept)."""
    mu, sd, xs = _standardize(x)
    ym = y.mean(0)
    n, d = xs.shape
    alpha = alpha * n
    if d > n:  # dual: w = X^T (X X^T + a I)^-1 y
        w = xs.T @ np.linalg.solve(xs @ xs.T + alpha * np.eye(n), y - ym)
    else:
        w = np.linalg.solve(xs.T @ xs + alpha * np.eye(d), xs.T @ (y - ym))
    return mu, sd, w, ym


def _predict(fit: tuple[np.ndarray, ...], x: np.ndarray) -> np.ndarray:
    mu, sd, w, ym = fit
    return ((x - mu) / sd) @ w + ym


def _ridge_path(x: np.ndarray, y: np.ndarray, alphas: Sequence[float]):
    """`_fit` for every strength in `alphas` from one eigendecomposition of the smaller Gram matrix
    (`X X^T` when d > n, else `X^T X`): a function from features `[m, d]` to predictions
    `[len(alphas), m, k]`. A 8192-d token or pixel probe on thousands of frames costs one
    decomposition instead of one solve per strength."""
    mu, sd, xs = _standardize(x)
    ym = y.mean(0)
    n, d = xs.shape
    if d > n:  # w = X^T U diag(1 / (s2 + a)) U^T y with X X^T = U diag(s2) U^T
        s2, basis = np.linalg.eigh(xs @ xs.T)
        coef = basis.T @ (y - ym)
        project = lambda xe: (((xe - mu) / sd) @ xs.T) @ basis  # noqa: E731
    else:  # w = V diag(1 / (s2 + a)) V^T X^T y with X^T X = V diag(s2) V^T
        s2, basis = np.linalg.eigh(xs.T @ xs)
        coef = basis.T @ (xs.T @ (y - ym))
        project = lambda xe: ((xe - mu) / sd) @ basis  # noqa: E731

    def predict(xe: np.ndarray) -> np.ndarray:
        p = project(xe)
        return np.stack([p @ (coef / (s2 + a * n)[:, None]) + ym for a in alphas])

    return predict


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties; nan when either side is constant)."""
    from scipy import stats

    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(stats.spearmanr(x, y)[0])


def _split_groups(groups: np.ndarray, test_fraction: float, seed: int, test_groups: Sequence[Any] | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(test group ids, train group ids in a seeded order): whole groups (episodes), `test_fraction`
    of them held out, or exactly `test_groups` when given."""
    ids = np.random.default_rng(seed).permutation(np.unique(groups))
    if test_groups is not None:
        test = np.isin(ids, np.asarray(test_groups))
        return ids[test], ids[~test]
    n_test = max(1, int(round(len(ids) * test_fraction)))
    return ids[:n_test], ids[n_test:]


def polynomial_features(f: np.ndarray, degree: int = 3) -> np.ndarray:
    """`[n, k]` -> every monomial of the standardized columns up to `degree`, with a constant."""
    import itertools

    f = (f - f.mean(0)) / (f.std(0) + 1e-12)
    cols = [np.ones(len(f))]
    for d in range(1, degree + 1):
        cols += [np.prod(f[:, c], axis=1) for c in itertools.combinations_with_replacement(range(f.shape[1]), d)]
    return np.stack(cols, axis=1)


def explained_variance(x: np.ndarray, factors: np.ndarray, groups: np.ndarray, *, degree: int = 3,
                       test_fraction: float = 1 / 3, alphas: Sequence[float] = ALPHAS, folds: int = 4,
                       seed: int = 0) -> float:
    """Share of the total variance of `x [n, d]` that a polynomial of `factors [n, k]` explains on
    held-out groups: ridge, its strength chosen by `folds`-fold cross-validation over the training
    groups (at most one fold per group; one validation split is too few episodes: the cubic
    extrapolates to poses it never saw, and which strength wins then depends on the split)."""
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    if len(np.unique(groups)) < 3:
        raise ValueError(f"explained_variance: {len(np.unique(groups))} groups; need at least 3 "
                         "(test, and two cross-validation folds)")
    test_ids, train_ids = _split_groups(groups, test_fraction, seed)
    test, train = np.isin(groups, test_ids), np.isin(groups, train_ids)
    f = polynomial_features(np.asarray(factors, np.float64), degree)

    def share(fit_rows: np.ndarray, score_rows: np.ndarray, alpha: float) -> float:
        resid = x[score_rows] - _predict(_fit(f[fit_rows], x[fit_rows], alpha), f[score_rows])
        return float(1.0 - resid.var(0).sum() / max(x[score_rows].var(0).sum(), 1e-12))

    held = [np.isin(groups, fold) for fold in np.array_split(train_ids, min(folds, len(train_ids)))]
    alpha = max(alphas, key=lambda a: np.mean([share(train & ~h, h, a) for h in held]))
    return share(train, test, alpha)


def distance_rank(x: np.ndarray, factors: np.ndarray, *, pairs: int = 4000, seed: int = 0) -> float:
    """Spearman between the mean absolute feature difference and the Euclidean factor distance
    of random pairs of rows: how far the features' distance ranks pairs as the factors do."""
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    rng = np.random.default_rng(seed)
    i, j = rng.integers(0, len(x), pairs), rng.integers(0, len(x), pairs)
    return spearman(np.abs(x[i] - x[j]).mean(1), np.linalg.norm(factors[i] - factors[j], axis=1))


def r_squared(y: np.ndarray, y_hat: np.ndarray) -> np.ndarray:
    sst = np.sum((y - y.mean(0)) ** 2, axis=0)
    return 1.0 - np.sum((y - y_hat) ** 2, axis=0) / np.maximum(sst, 1e-12)


def linear_probe(x: np.ndarray, y: np.ndarray, groups: np.ndarray, *, names: Sequence[str],
                 test_fraction: float = 1 / 3, alphas: Sequence[float] = ALPHAS, seed: int = 0,
                 test_groups: Sequence[Any] | None = None) -> dict[str, Any]:
    """R^2 per target of a ridge probe, on groups (episodes) held out from fitting.

    Args:
      x: features `[n, d]` (flattened latents, or pixels).
      y: targets `[n, k]`.
      groups: `[n]` group id per row (its episode); whole groups go to train or test.
      names: the k target names.
      test_fraction: share of the groups scored (never fitted on).
      test_groups: the groups scored instead (a fixed test set shared by several readers).
      alphas: ridge strengths tried; per target, the one with the best validation R^2 (on a
        quarter of the training groups) is refitted on all training groups.
    """
    x, y = np.asarray(x, np.float64).reshape(len(x), -1), np.asarray(y, np.float64)
    if len(np.unique(groups)) < 4:
        raise ValueError(f"linear_probe: {len(np.unique(groups))} groups; need at least 4 (train, validation, test)")
    test_ids, train_ids = _split_groups(groups, test_fraction, seed, test_groups)
    n_test = len(test_ids)
    n_val = max(1, len(train_ids) // 4)
    val_ids, fit_ids = train_ids[:n_val], train_ids[n_val:]
    rows = {name: np.isin(groups, g) for name, g in
            (("test", test_ids), ("train", train_ids), ("val", val_ids), ("fit", fit_ids))}
    # The ridge strength per target: the best validation R^2 on held-out training groups, then
    # refitted on all training groups (targets are independent in ridge: one fit serves them all).
    val_pred = _ridge_path(x[rows["fit"]], y[rows["fit"]], alphas)(x[rows["val"]])
    best = np.argmax(np.stack([r_squared(y[rows["val"]], p) for p in val_pred]), axis=0)  # [k]
    test_pred = _ridge_path(x[rows["train"]], y[rows["train"]], alphas)(x[rows["test"]])
    y_hat = test_pred[best, :, np.arange(y.shape[1])].T
    r2 = r_squared(y[rows["test"]], y_hat)
    return {"r2": dict(zip(names, r2.tolist(), strict=True)),
            "alpha": dict(zip(names, [float(alphas[i]) for i in best], strict=True)),
            "feature_dim": int(x.shape[1]),
            "train_rows": int(rows["train"].sum()), "test_rows": int(rows["test"].sum()),
            "test_groups": int(n_test)}
