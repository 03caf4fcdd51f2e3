"""Linear probes: a linear relation is recovered on held-out groups, noise is not, and the
dual (d > n) and primal forms agree."""

from __future__ import annotations

import numpy as np
import pytest

from wam_jax.inference import probes


def _data(n_groups: int = 12, per: int = 20, d: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_groups * per, d))
    w = rng.normal(size=(d, 2))
    y = np.concatenate([x @ w, rng.normal(size=(len(x), 1))], axis=1)  # two linear targets, one noise
    return x, y, np.repeat(np.arange(n_groups), per)


def test_probe_recovers_linear_targets_and_not_noise():
    x, y, g = _data()
    r = probes.linear_probe(x, y, g, names=["a", "b", "noise"])
    assert r["r2"]["a"] > 0.99 and r["r2"]["b"] > 0.99
    assert r["r2"]["noise"] < 0.1
    assert r["test_groups"] == 4 and r["train_rows"] + r["test_rows"] == len(x)


def test_given_test_groups_are_exactly_the_ones_scored():
    """A fixed test set shared by several readers: only those groups are scored, none is fitted on
    (a target that is noise everywhere but a constant shift in the test groups is not learned)."""
    x, y, g = _data()
    y = y.copy()
    y[np.isin(g, [3, 7]), 0] += 100.0  # a fit that saw groups 3 or 7 would absorb part of the shift
    r = probes.linear_probe(x, y, g, names=["a", "b", "noise"], test_groups=[3, 7])
    assert r["test_groups"] == 2 and r["test_rows"] == 40
    assert r["r2"]["b"] > 0.99 and r["r2"]["a"] < 0  # "a" is off by the unseen shift


def test_dual_form_equals_the_primal_solution():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(20, 50)), rng.normal(size=(20, 2))  # d > n: the dual form
    mu, sd, w, ym = probes._fit(x, y, 0.5)
    xs = (x - mu) / sd
    primal = np.linalg.solve(xs.T @ xs + 0.5 * len(x) * np.eye(50), xs.T @ (y - ym))
    np.testing.assert_allclose(w, primal, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("d", [8, 50])  # primal (d < n) and dual (d > n)
def test_the_ridge_path_equals_one_solve_per_strength(d):
    rng = np.random.default_rng(3)
    x, y, xe = rng.normal(size=(30, d)), rng.normal(size=(30, 3)), rng.normal(size=(7, d))
    alphas = (1e-3, 0.1, 10.0)
    path = probes._ridge_path(x, y, alphas)(xe)
    assert path.shape == (3, 7, 3)
    for a, got in zip(alphas, path, strict=True):
        np.testing.assert_allclose(got, probes._predict(probes._fit(x, y, a), xe), rtol=1e-6, atol=1e-8)


def test_too_few_groups_is_a_clear_error():
    x, y, _ = _data()
    with pytest.raises(ValueError, match="groups"):
        probes.linear_probe(x, y, np.zeros(len(x)), names=["a", "b", "c"])


def test_explained_variance_and_distance_rank_see_what_the_features_spend_themselves_on():
    """Features that are a cubic of the factors are explained in full and rank distances as the
    factors do; independent noise is not and does not; half and half is explained by half."""
    rng = np.random.default_rng(2)
    groups = np.repeat(np.arange(12), 40)
    a = rng.uniform(-1, 1, size=(len(groups), 2))
    cubic = np.stack([a[:, 0], a[:, 1] ** 2, a[:, 0] * a[:, 1] ** 2, a[:, 1] ** 3], axis=1)
    cubic = (cubic - cubic.mean(0)) / cubic.std(0)
    noise = rng.normal(size=cubic.shape)
    assert probes.explained_variance(cubic, a, groups) > 0.999
    assert probes.explained_variance(noise, a, groups) < 0.05
    assert abs(probes.explained_variance(np.concatenate([cubic, noise], 1), a, groups) - 0.5) < 0.08
    assert probes.distance_rank(3.0 * a, a) > 0.9
    assert abs(probes.distance_rank(noise, a)) < 0.1
    assert np.isnan(probes.spearman(np.ones(5), np.arange(5)))


def test_explained_variance_does_not_extrapolate_a_cubic_fitted_on_few_episodes():
    """Six episodes and four factors: the 35-term cubic fits the training rows exactly, and least
    squares scores unrelated features at about -24; the validated ridge keeps them near 0."""
    rng = np.random.default_rng(3)
    groups = np.repeat(np.arange(6), 8)
    a = rng.uniform(-1, 1, size=(len(groups), 4))
    noise = rng.normal(size=(len(groups), 16))
    assert abs(probes.explained_variance(noise, a, groups)) < 0.05
    with pytest.raises(ValueError, match="2 groups; need at least 3"):
        probes.explained_variance(noise[:16], a[:16], groups[:16])
