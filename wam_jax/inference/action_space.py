"""Per-embodiment action units: the loader's normalization, reproduced and inverted for inference.

A trained model sees normalized, padded actions; people and robots speak in the converted dataset's
units. `ActionSpace` holds one embodiment's statistics (saved with every checkpoint by
`loader.mixture_info`) and converts both ways, exactly as the loader does.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import numpy as np

from data_pipelines.mixture import dimension_names, indexed_names
from wam_jax.inference import planning
from wam_jax.inference.artifacts import MissingStatisticsError

ArrayLike = Any


@dataclasses.dataclass(frozen=True)
class ActionSpace:
    """One embodiment's action (and proprio) units, from a training source's `stats.json`.

    The loader feeds the model `(a - mean * s) / (std * s)` per transition for delta dims summed over
    the frame stride `s` (absolute dims: `(a - mean) / std`), clipped to ±5, zero-padded to
    `model.action_dim` with a mask. `normalize`/`denormalize` reproduce and invert exactly that.
    `action_names` / `proprio_names` name every dimension (the dataset's, or `action[i]`).
    """

    embodiment: str
    embodiment_id: int
    source: str
    dim: int
    model_dim: int
    mean: np.ndarray
    std: np.ndarray
    q01: np.ndarray | None
    q99: np.ndarray | None
    is_delta: np.ndarray
    stride: int
    proprio_dim: int = 0
    proprio_mean: np.ndarray | None = None
    proprio_std: np.ndarray | None = None
    action_names: tuple[str, ...] = ()
    proprio_names: tuple[str, ...] = ()
    # Recorded actions per model action (`data.stride_actions='chunk'`): the `dim` dims are
    # `chunk` recorded actions of `dim / chunk` dims each, in time order, each executed for one
    # recorded step; 1: one action per transition, spread over the frame `stride` when executed.
    chunk: int = 1

    def __post_init__(self) -> None:
        # Direct constructions (tests, benchmarks) may leave the names out: index them.
        if not self.action_names:
            object.__setattr__(self, "action_names", indexed_names("action", self.dim))
        if not self.proprio_names:
            object.__setattr__(self, "proprio_names", indexed_names("proprio", self.proprio_dim))

    @property
    def frame_stride(self) -> int:
        """Recorded (environment) steps one model action spans."""
        return self.chunk if self.chunk > 1 else self.stride

    def step_box(self) -> tuple[np.ndarray, np.ndarray]:
        """(low, high) of one recorded action in robot units: the data's q01 / q99 (mean ± 2 std
        without quantiles), the first step of a chunk."""
        low = self.q01 if self.q01 is not None else self.mean - 2 * self.std
        high = self.q99 if self.q99 is not None else self.mean + 2 * self.std
        raw = self.dim // self.chunk
        return np.asarray(low[:raw], np.float32), np.asarray(high[:raw], np.float32)

    def to_env_steps(self, actions: ArrayLike) -> np.ndarray:
        """Model actions `[n, dim]` (robot units) -> one action per recorded step `[n * frame_stride,
        dim / chunk]`: a chunk unrolled in time; a reduced action spread over the stride: absolute
        dims held, delta dims (the stride's sum, as the loader fed them) split evenly, so the
        executed steps add up to the model's action."""
        a = np.asarray(actions)
        if self.chunk > 1:
            return a.reshape(-1, self.dim // self.chunk)
        per_step = np.where(self.is_delta[: self.dim], a.reshape(-1, self.dim) / self.stride, a.reshape(-1, self.dim))
        return np.repeat(per_step, self.stride, axis=0)

    def from_env_steps(self, steps: ArrayLike) -> np.ndarray:
        """One action per recorded step `[n * frame_stride, dim / chunk]` -> model actions `[n, dim]`
        (robot units), by the loader's own rule (`transforms.transition_actions`: a chunk
        concatenated in time; reduced, the stride's delta dims summed and absolute dims' last).
        `to_env_steps`' inverse."""
        from data_pipelines import transforms

        a = np.asarray(steps, np.float32)
        n = a.shape[0] // self.frame_stride
        if n * self.frame_stride != a.shape[0]:
            raise ValueError(f"{a.shape[0]} recorded steps are not a whole number of model actions "
                             f"({self.frame_stride} recorded steps each)")
        raw = self.dim // self.chunk
        return transforms.transition_actions(a, np.arange(n + 1) * self.frame_stride, self.frame_stride,
                                             np.asarray(self.is_delta[:raw]), chunk=self.chunk > 1)

    def normalize(self, actions: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        """Robot-unit actions `[..., dim]` -> (normalized `[..., model_dim]`, mask `[..., model_dim]`)."""
        from data_pipelines import transforms

        a = np.asarray(actions, np.float32)
        if a.shape[-1] != self.dim:
            raise ValueError(
                f"actions have shape {a.shape}: expected [..., {self.dim}] (the action dims of "
                f"embodiment {self.embodiment!r}, in its own units: {', '.join(self.action_names)})")
        x = transforms.normalize_actions(a, self.mean, self.std, self.is_delta, self.stride)
        pad = [(0, 0)] * (a.ndim - 1) + [(0, self.model_dim - self.dim)]
        mask = np.zeros(a.shape[:-1] + (self.model_dim,), bool)
        mask[..., : self.dim] = True
        return np.pad(x, pad), mask

    def denormalize(self, x: ArrayLike) -> np.ndarray:
        """Normalized model actions `[..., model_dim]` (or `[..., dim]`) -> robot units `[..., dim]`."""
        from data_pipelines import transforms

        return transforms.denormalize_actions(np.asarray(x, np.float32)[..., : self.dim], self.mean,
                                              self.std, self.is_delta, self.stride)

    def normalize_proprio(self, proprio: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        from data_pipelines import transforms

        if not self.proprio_dim or self.proprio_mean is None:
            raise ValueError(f"embodiment {self.embodiment!r} has no proprio statistics; pass proprio=None")
        p = np.asarray(proprio, np.float32)
        if p.shape[-1] != self.proprio_dim:
            raise ValueError(f"proprio has shape {p.shape}: expected [..., {self.proprio_dim}]")
        return transforms.normalize(p, self.proprio_mean, self.proprio_std), np.ones(p.shape, bool)

    def bounds(self) -> planning.ActionBounds:
        """Planner box in normalized units: the dataset's q01/q99 (mean ± 3 std without quantiles)."""
        if self.q01 is None or self.q99 is None:
            lo, hi = self.mean - 3 * self.std, self.mean + 3 * self.std
        else:
            lo, hi = self.q01, self.q99
        return planning.ActionBounds.from_quantiles(lo, hi, mean=self.mean, std=np.maximum(self.std, 1e-6))


def _tiled(v: np.ndarray | None, times: int) -> np.ndarray | None:
    return None if v is None else np.tile(v, times)


def _vec(stats: Mapping[str, Any] | None, key: str) -> np.ndarray | None:
    if not stats or stats.get(key) is None:
        return None
    return np.asarray(stats[key], np.float32)


def action_spaces_from_info(info: Mapping[str, Any], model_action_dim: int, where: str
                            ) -> dict[str, ActionSpace]:
    """Embodiment name -> ActionSpace, from `loader.mixture_info` (the checkpoint's `stats` item)."""
    if not info or "sources" not in info or "stats" not in info:
        raise MissingStatisticsError(
            f"{where} has no dataset statistics (expected the `loader.mixture_info` dict with "
            f"'sources' and 'stats'); actions cannot be converted to robot units. Re-save the "
            f"checkpoint with `Checkpointer.save(..., stats=loader.mixture_info(config))`")
    spaces: dict[str, ActionSpace] = {}
    for src, stats in zip(info["sources"], info["stats"], strict=True):
        dim = int(src.get("action_dim") or 0)
        if src.get("kind") != "robot" or dim == 0 or src["embodiment"] in spaces:
            continue
        a = (stats or {}).get("action")
        mean, std = _vec(a, "mean"), _vec(a, "std")
        if mean is None or std is None:
            raise MissingStatisticsError(
                f"{where}: source {src.get('name')!r} ({src.get('path')}) has {dim} action dims but "
                f"no action mean/std in its statistics (expected stats.action.mean/std of length {dim})")
        p = (stats or {}).get("proprio")
        proprio_dim = int(src.get("proprio_dim") or 0)
        chunk = int(src.get("action_chunk") or 1)
        q01, q99 = _vec(a, "q01"), _vec(a, "q99")
        names = dimension_names(src.get("action_names"), src.get("action_keys"), "action", dim)
        tile = functools.partial(_tiled, times=chunk)
        spaces[src["embodiment"]] = ActionSpace(
            embodiment=src["embodiment"], embodiment_id=int(src["embodiment_id"]),
            source=str(src.get("name")), dim=dim * chunk, model_dim=int(model_action_dim), mean=tile(mean),
            std=tile(std), q01=tile(q01), q99=tile(q99),
            is_delta=tile(np.asarray(src.get("action_is_delta") or [False] * dim, bool)),
            stride=1 if chunk > 1 else int(src.get("stride") or 1), proprio_dim=proprio_dim,
            proprio_mean=_vec(p, "mean"), proprio_std=_vec(p, "std"),
            action_names=names if chunk == 1 else tuple(f"{n}@{i}" for i in range(chunk) for n in names),
            proprio_names=dimension_names(src.get("proprio_names"), src.get("proprio_keys"), "proprio",
                                          proprio_dim), chunk=chunk)
    return spaces
