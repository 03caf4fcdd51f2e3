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


def test_dual_form_equals_the_primal_solution():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(20, 50)), rng.normal(size=(20, 2))  # d > n: the dual form
    mu, sd, w, ym = probes._fit(x, y, 0.5)
    xs = (x - mu) / sd
    primal = np.linalg.solve(xs.T @ xs + 0.5 * len(x) * np.eye(50), xs.T @ (y - ym))
    np.testing.assert_allclose(w, primal, rtol=1e-6, atol=1e-8)


def test_too_few_groups_is_a_clear_error():
    x, y, _ = _data()
    with pytest.raises(ValueError, match="groups"):
        probes.linear_probe(x, y, np.zeros(len(x)), names=["a", "b", "c"])
