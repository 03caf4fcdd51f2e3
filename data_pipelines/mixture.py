"""The training mixture: which converted datasets, with which weights, and the registries they imply.

`config.data.mixture = "DIR[:weight],DIR[:weight],..."`. Weights default to 1 and are normalized to
sum to 1. A path may itself contain ':' (e.g. `gs://bucket/ds`): the text after the last ':' is read
as a weight only when it contains no '/'.

Registries fixed here travel with the checkpoint (via `loader.mixture_info`):
- source id: position of the entry in the mixture string;
- embodiment id: embodiment names (`dataset.json["embodiment"]`, else the dataset name) numbered in
  order of first appearance, at most `config.model.num_embodiments` of them;
- per-source normalization stats (`stats.json`), used by the loader and to un-normalize actions;
- per-dimension names of actions and proprio (`dataset.json` `action_names` / `proprio_names`;
  derived from `action_keys` for datasets converted before the names were recorded).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import ml_collections as mlc
import numpy as np

from data_pipelines import paths, records

KINDS = ("robot", "video")


@dataclass(frozen=True)
class Source:
    """One validated mixture entry: everything the loader needs about a converted dataset."""

    source_id: int
    path: str
    weight: float  # normalized over the mixture
    name: str
    kind: str  # 'robot' | 'video'
    embodiment: str
    embodiment_id: int
    fps: float
    action_dim: int  # the dataset's own (unpadded) action dimension; 0 if it has none
    proprio_dim: int
    action_keys: tuple[str, ...]
    action_is_delta: tuple[bool, ...]  # per action dim; see transforms.transition_actions
    action_names: tuple[str, ...]  # one per action dim (`action_dim` of them)
    proprio_names: tuple[str, ...]  # one per proprio dim
    privileged_dim: int  # the recorded privileged state (records.Episode.privileged); 0 if none
    privileged_names: tuple[str, ...]
    info: dict[str, Any] = field(repr=False)
    stats: dict[str, Any] | None = field(repr=False)

    def stat(self, modality: str, key: str) -> np.ndarray | None:
        """float32 [D] statistic (e.g. ('action', 'mean')) or None if the dataset has none."""
        entry = (self.stats or {}).get(modality)
        if not entry or entry.get(key) is None:
            return None
        return np.asarray(entry[key], dtype=np.float32)


@dataclass(frozen=True)
class Mixture:
    sources: tuple[Source, ...]
    embodiments: tuple[str, ...]  # embodiment id -> name

    @property
    def weights(self) -> list[float]:
        return [s.weight for s in self.sources]


def indexed_names(prefix: str, dim: int) -> tuple[str, ...]:
    return tuple(f"{prefix}[{i}]" for i in range(dim))


def dimension_names(names: Sequence[str] | None, keys: Sequence[str] | None, prefix: str, dim: int
                    ) -> tuple[str, ...]:
    """One name per dimension: the recorded names; for datasets converted before they were
    recorded, the keys when there is one per dimension, one vector key indexed (`key[i]`), or
    `prefix[i]`."""
    if names and len(names) == dim:
        return tuple(str(n) for n in names)
    keys = list(keys or [])
    if len(keys) == dim:
        return tuple(str(k) for k in keys)
    if len(keys) == 1:
        return indexed_names(str(keys[0]), dim)
    return indexed_names(prefix, dim)


def _recorded_names(info: dict[str, Any], field_name: str, dim: int, where: str) -> list[str] | None:
    names = info.get(field_name)
    if names is None:
        return None
    if not isinstance(names, list) or len(names) != dim or not all(isinstance(n, str) for n in names):
        raise records.DatasetFormatError(
            f"{where}: field {field_name!r} is {names!r}, expected a list of {dim} strings (one per dim)")
    return names


def parse_mixture(spec: str) -> list[tuple[str, float]]:
    """`"DIR[:weight],..."` -> [(DIR, normalized weight)]; errors name the offending entry."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(
            "config.data.mixture is empty; expected 'DIR[:weight],DIR[:weight],...' of converted datasets"
        )
    entries: list[tuple[str, float]] = []
    for position, raw in enumerate(spec.split(",")):
        entry = raw.strip()
        if not entry:
            raise ValueError(f"config.data.mixture={spec!r}: entry {position} is empty (stray ',')")
        path, weight = entry, 1.0
        head, sep, tail = entry.rpartition(":")
        if sep and "/" not in tail:
            path = head.strip()
            try:
                weight = float(tail)
            except ValueError:
                raise ValueError(
                    f"config.data.mixture entry {entry!r}: weight {tail!r} is not a number; "
                    f"expected 'DIR' or 'DIR:weight' with weight > 0"
                ) from None
        if not path:
            raise ValueError(f"config.data.mixture entry {entry!r}: empty dataset path")
        if not (math.isfinite(weight) and weight > 0):
            raise ValueError(
                f"config.data.mixture entry {entry!r}: weight must be a finite number > 0, got {weight}"
            )
        entries.append((path, weight))
    dirs = [p for p, _ in entries]
    dupes = sorted({p for p in dirs if dirs.count(p) > 1})
    if dupes:
        raise ValueError(f"config.data.mixture lists {dupes} more than once; merge them into one weight")
    total = sum(w for _, w in entries)
    return [(p, w / total) for p, w in entries]


def _stats_vector(stats: dict[str, Any] | None, modality: str, key: str, dim: int, where: str) -> None:
    entry = (stats or {}).get(modality)
    value = None if not entry else entry.get(key)
    if value is None:
        raise records.DatasetFormatError(
            f"{where}: {modality!r} has {dim} dims but {records.STATS_JSON} has no "
            f"{modality}.{key}; expected a list of {dim} floats (re-run the converter's stats pass)"
        )
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape != (dim,) or not np.all(np.isfinite(arr)):
        raise records.DatasetFormatError(
            f"{where}: {records.STATS_JSON} {modality}.{key} has shape {list(arr.shape)} "
            f"(or non-finite values), expected [{dim}] finite floats"
        )


def load_source(path: str, *, source_id: int, weight: float, model: mlc.ConfigDict) -> Source:
    """Validates one converted dataset against the model dims; errors name the file and field.

    The embodiment id is left at -1: only the whole mixture can number embodiments.
    """
    info = records.read_dataset_info(path)
    where = os.path.join(path, records.DATASET_JSON)
    kind = info["kind"]
    if kind not in KINDS:
        raise records.DatasetFormatError(f"{where}: field 'kind' is {kind!r}, expected one of {KINDS}")
    fps = info["fps"]
    if not isinstance(fps, (int, float)) or not (fps > 0 and math.isfinite(fps)):
        raise records.DatasetFormatError(f"{where}: field 'fps' is {fps!r}, expected a positive number")
    dims = {}
    for key, model_key in (("action_dim", "action_dim"), ("proprio_dim", "proprio_dim"),
                           ("privileged_dim", "privileged_dim")):
        d = info.get(key) or 0
        if not isinstance(d, int) or d < 0:
            raise records.DatasetFormatError(f"{where}: field {key!r} is {d!r}, expected an int >= 0")
        limit = int(model[model_key])
        if key == "privileged_dim" and limit == 0:  # a model that reads no privileged state ignores it
            d = 0
        if d > limit:
            raise ValueError(
                f"{where}: {key} is {d} but config.model.{model_key} is {limit}; raise "
                f"config.model.{model_key} to at least {d} (it is the padded maximum over embodiments)"
            )
        dims[key] = d
    action_dim, proprio_dim, privileged_dim = dims["action_dim"], dims["proprio_dim"], dims["privileged_dim"]
    delta = info.get("action_is_delta")
    if delta is None:
        delta = [False] * action_dim
    if not isinstance(delta, list) or len(delta) != action_dim or not all(isinstance(x, bool) for x in delta):
        raise records.DatasetFormatError(
            f"{where}: field 'action_is_delta' is {delta!r}, expected a list of {action_dim} booleans"
        )
    stats = records.read_stats(path)
    stats_where = os.path.join(path, records.STATS_JSON)
    for modality, dim in (("action", action_dim), ("proprio", proprio_dim), ("privileged", privileged_dim)):
        if dim:
            _stats_vector(stats, modality, "mean", dim, stats_where)
            _stats_vector(stats, modality, "std", dim, stats_where)
    embodiment = str(info.get("embodiment") or info["name"])
    action_keys = tuple(str(k) for k in info.get("action_keys") or ())
    return Source(
        source_id=source_id,
        path=path,
        weight=weight,
        name=str(info["name"]),
        kind=kind,
        embodiment=embodiment,
        embodiment_id=-1,
        fps=float(fps),
        action_dim=action_dim,
        proprio_dim=proprio_dim,
        action_keys=action_keys,
        action_is_delta=tuple(delta),
        action_names=dimension_names(_recorded_names(info, "action_names", action_dim, where), action_keys,
                                     "action", action_dim),
        proprio_names=dimension_names(_recorded_names(info, "proprio_names", proprio_dim, where),
                                      info.get("proprio_keys"), "proprio", proprio_dim),
        privileged_dim=privileged_dim,
        privileged_names=dimension_names(_recorded_names(info, "privileged_names", privileged_dim, where), None,
                                         "privileged", privileged_dim) if privileged_dim else (),
        info=info,
        stats=stats,
    )


def load_mixture(config: mlc.ConfigDict) -> Mixture:
    """Parses and validates `config.data.mixture`; assigns source and embodiment ids."""
    sources: list[Source] = []
    embodiments: list[str] = []
    for source_id, (path, weight) in enumerate(parse_mixture(config.data.mixture)):
        paths.local_only(path, "config.data.mixture")
        src = load_source(path, source_id=source_id, weight=weight, model=config.model)
        if src.embodiment not in embodiments:
            embodiments.append(src.embodiment)
        sources.append(replace(src, embodiment_id=embodiments.index(src.embodiment)))
    limit = int(config.model.num_embodiments)
    if len(embodiments) > limit:
        raise ValueError(
            f"config.data.mixture has {len(embodiments)} embodiments {embodiments} but "
            f"config.model.num_embodiments is {limit}; raise it to at least {len(embodiments)}"
        )
    return Mixture(sources=tuple(sources), embodiments=tuple(embodiments))
