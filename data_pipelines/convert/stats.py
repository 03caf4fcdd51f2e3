"""Per-dimension statistics (mean, std, q01, q99) that merge across shards and workers.

Converters compute stats shard by shard in separate processes, and a resumed conversion must
merge the stats of shards finished by an earlier run, so the accumulator is:

* exact moments: count, mean and sum of squared deviations (Chan et al.'s parallel update), in
  float64, plus min / max;
* a bounded quantile sketch per dimension: weighted sample points. While the total number of rows
  stays under `max_points` every row is kept with weight 1 and the quantiles are exact; beyond it,
  each dimension is compressed to `max_points` equally weighted points placed at the quantiles of
  its weighted empirical distribution (a deterministic merge-and-compress sketch, rank error about
  1 / max_points per compression).

Quantiles use the midpoint ("hazen") plotting positions: the i-th of n sorted unit-weight points
sits at (i + 0.5) / n, which generalizes directly to weighted points.

`to_json` / `from_json` round-trip the full accumulator (so shard results can be stored on disk),
`summary` gives the `stats.json` entry: lists of floats, or None for an absent stream.
"""

from __future__ import annotations

from typing import Any

import numpy as np

DEFAULT_MAX_POINTS = 4096


class RunningStats:
    """Mergeable per-dimension moments and quantile sketch of a stream of [N, D] rows."""

    def __init__(self, dim: int | None = None, max_points: int = DEFAULT_MAX_POINTS):
        self.dim = dim
        self.max_points = int(max_points)
        self.count = 0
        self._mean: np.ndarray | None = None
        self._m2: np.ndarray | None = None
        self._min: np.ndarray | None = None
        self._max: np.ndarray | None = None
        # Sketch: points [K, D] (each column independently a set of points) with weights [K]
        # shared by the row; after a compression all weights of the block are equal.
        self._points: list[np.ndarray] = []
        self._weights: list[np.ndarray] = []

    # ---------------------------------------------------------------- accumulation
    def _check_dim(self, d: int, what: str) -> None:
        if self.dim is None:
            self.dim = d
        elif d != self.dim:
            raise ValueError(f"{what}: rows have {d} dims, expected {self.dim} (stats dimension)")

    def update(self, x: np.ndarray) -> None:
        """Adds rows `x` [N, D] (a [N] vector is treated as [N, 1])."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim == 1:
            x = x[:, None]
        if x.ndim != 2:
            raise ValueError(f"stats update expects [N, D] rows, got shape {x.shape}")
        if x.shape[0] == 0:
            return
        if not np.all(np.isfinite(x)):
            raise ValueError("stats update: rows contain NaN or inf")
        self._check_dim(x.shape[1], "stats update")
        other = RunningStats(x.shape[1], self.max_points)
        other.count = x.shape[0]
        other._mean = x.mean(0)
        other._m2 = ((x - other._mean) ** 2).sum(0)
        other._min = x.min(0)
        other._max = x.max(0)
        other._points = [x]
        other._weights = [np.ones(x.shape[0])]
        self.merge(other)

    def merge(self, other: RunningStats) -> RunningStats:
        """Merges `other` into self (in place) and returns self."""
        if other.count == 0:
            return self
        self._check_dim(int(other.dim), "stats merge")
        if self.count == 0:
            self.count = other.count
            self._mean, self._m2 = other._mean.copy(), other._m2.copy()
            self._min, self._max = other._min.copy(), other._max.copy()
        else:
            n_a, n_b = self.count, other.count
            n = n_a + n_b
            delta = other._mean - self._mean
            self._mean = self._mean + delta * (n_b / n)
            self._m2 = self._m2 + other._m2 + delta**2 * (n_a * n_b / n)
            self._min = np.minimum(self._min, other._min)
            self._max = np.maximum(self._max, other._max)
            self.count = n
        self._points.extend(other._points)
        self._weights.extend(other._weights)
        if sum(len(w) for w in self._weights) > self.max_points:
            self._compress()
        return self

    def _compress(self) -> None:
        pts = np.concatenate(self._points, 0)
        w = np.concatenate(self._weights, 0)
        total = w.sum()
        k = self.max_points
        targets = (np.arange(k) + 0.5) / k
        cols = []
        for d in range(pts.shape[1]):
            order = np.argsort(pts[:, d], kind="stable")
            v, wd = pts[order, d], w[order]
            pos = (np.cumsum(wd) - 0.5 * wd) / total
            cols.append(np.interp(targets, pos, v))
        self._points = [np.stack(cols, 1)]
        self._weights = [np.full(k, total / k)]

    # ---------------------------------------------------------------- queries
    @property
    def mean(self) -> np.ndarray:
        self._require()
        return self._mean

    @property
    def std(self) -> np.ndarray:
        self._require()
        return np.sqrt(self._m2 / self.count)

    def quantile(self, q: float) -> np.ndarray:
        """Per-dimension quantile `q` in [0, 1] (midpoint plotting positions)."""
        self._require()
        pts = np.concatenate(self._points, 0)
        w = np.concatenate(self._weights, 0)
        total = w.sum()
        out = np.empty(pts.shape[1])
        for d in range(pts.shape[1]):
            order = np.argsort(pts[:, d], kind="stable")
            v, wd = pts[order, d], w[order]
            pos = (np.cumsum(wd) - 0.5 * wd) / total
            out[d] = np.interp(q, pos, v)
        return out

    def _require(self) -> None:
        if self.count == 0:
            raise ValueError("stats: no rows were added")

    def summary(self) -> dict[str, list[float]] | None:
        """The `stats.json` entry: {"mean","std","q01","q99","min","max","count"}; None if empty."""
        if self.count == 0:
            return None
        return {
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "q01": self.quantile(0.01).tolist(),
            "q99": self.quantile(0.99).tolist(),
            "min": self._min.tolist(),
            "max": self._max.tolist(),
            "count": int(self.count),
        }

    # ---------------------------------------------------------------- (de)serialization
    def to_json(self) -> dict[str, Any]:
        if self.count == 0:
            return {"count": 0, "dim": self.dim, "max_points": self.max_points}
        pts = np.concatenate(self._points, 0)
        w = np.concatenate(self._weights, 0)
        return {
            "count": int(self.count),
            "dim": int(self.dim),
            "max_points": self.max_points,
            "mean": self._mean.tolist(),
            "m2": self._m2.tolist(),
            "min": self._min.tolist(),
            "max": self._max.tolist(),
            "points": pts.tolist(),
            "weights": w.tolist(),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RunningStats:
        s = cls(d.get("dim"), d.get("max_points", DEFAULT_MAX_POINTS))
        s.count = int(d["count"])
        if s.count:
            s._mean = np.asarray(d["mean"], np.float64)
            s._m2 = np.asarray(d["m2"], np.float64)
            s._min = np.asarray(d["min"], np.float64)
            s._max = np.asarray(d["max"], np.float64)
            s._points = [np.asarray(d["points"], np.float64).reshape(-1, s.dim)]
            s._weights = [np.asarray(d["weights"], np.float64)]
        return s


def merge_all(items: list[RunningStats], max_points: int = DEFAULT_MAX_POINTS) -> RunningStats:
    """Merges a list of accumulators (in order) into a fresh one."""
    out = RunningStats(max_points=max_points)
    for s in items:
        out.merge(s)
    return out
