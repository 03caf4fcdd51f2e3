"""Grain streaming from converted datasets into per-process training batches, with exact resume.

Training pipeline, per mixture source `i` (window index of `n_i` clips):

    MapDataset.range(n_i).seed(seed_i).shuffle().repeat()   # epoch-reshuffled, infinite
        .random_map(LoadClip)                               # rng seeded by (seed_i, global position)
        [process_index::process_count]                      # this process's share
    -> MapDataset.mix(sources, weights) -> to_iter_dataset -> batch(B) -> mp_prefetch (workers > 0)

`random_map` sits before the process slice so that an element's augmentation depends only on its
global position, not on how many processes share the stream. Everything before `to_iter_dataset`
is a pure function of the element index, so the iterator state is a handful of integers and a
restored iterator yields the same batches bit for bit.

Evaluation (`split="eval"`): the held-out windows of every source once, in order, center crops
(or every window of other datasets, `data=`; at most `max_clips`); the tail is filled with
all-masked `PaddingClip`s (every mask false) up to a multiple of
`global_batch_size * max(1, num_workers)` so every process and worker produces only full batches
and no window is dropped. With `trained=` (a checkpoint's `mixture_info`) clips are normalized with
the statistics the model was trained with for their embodiment (`trained_normalization`).

Resume notes: Grain iterator state is per process and depends on the process count and on
`config.data.num_workers` (workers each own a slice); restore with the same values.
Multiprocess workers (`num_workers > 0`) are spawned: scripts need an `if __name__ == "__main__":`
guard, and iterators should be closed (`it.close()`) before exit.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import grain
import ml_collections as mlc
import numpy as np

from data_pipelines import records
from data_pipelines.mixture import Mixture, Source, load_mixture
from data_pipelines.transforms import LoadClip, Normalization, PaddingClip
from data_pipelines.window_index import (
    SPLITS,
    EpisodeTable,
    WindowIndex,
    build_window_index,
    read_episode_table,
)

_TABLE_CACHE: dict[tuple[str, int, int], EpisodeTable] = {}
_TABLE_LOCK = threading.Lock()


def _episode_table(source: Source) -> EpisodeTable:
    """Episode table of a source, read once per process (keyed by dataset.json identity)."""
    st = os.stat(os.path.join(source.path, records.DATASET_JSON))
    key = (os.path.realpath(source.path), st.st_mtime_ns, st.st_size)
    with _TABLE_LOCK:
        table = _TABLE_CACHE.get(key)
    if table is None:
        table = read_episode_table(source.path, source.info)
        with _TABLE_LOCK:
            _TABLE_CACHE[key] = table
    return table


def window_index(source: Source, config: mlc.ConfigDict, split: str) -> WindowIndex:
    """The window index of one mixture source for `split` ('train' or 'eval')."""
    return build_window_index(
        _episode_table(source),
        num_frames=int(config.data.num_frames),
        fps=source.fps,
        target_fps=float(config.data.target_fps),
        split=split,
        heldout_fraction=float(config.data.heldout_fraction),
    )


def per_process_batch_size(config: mlc.ConfigDict, process_count: int) -> int:
    g = int(config.data.global_batch_size)  # > 0: config_utils.validate
    if g % process_count:
        raise ValueError(
            f"config.data.global_batch_size={g} is not divisible by process_count={process_count}; "
            f"each process loads global_batch_size / process_count examples"
        )
    return g // process_count


def _source_seed(seed: int, source_id: int) -> int:
    """Independent, reproducible seed per source (equal-size sources must not shuffle alike)."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, source_id]).generate_state(1)[0])


def _chunked(config: mlc.ConfigDict) -> bool:
    """`data.stride_actions='chunk'`: a transition's action is its stride's recorded actions."""
    return str(config.data.get("stride_actions", "reduce")) == "chunk"


def _clip_transform(source: Source, index: WindowIndex, config: mlc.ConfigDict,
                    norm: Normalization | None = None) -> LoadClip:
    return LoadClip(
        source,
        index,
        image_size=int(config.model.image_size),
        action_dim=int(config.model.action_dim),
        proprio_dim=int(config.model.proprio_dim),
        privileged_dim=int(config.model.privileged_dim),
        crop_scale=tuple(config.data.crop_scale),
        color_jitter=float(config.data.color_jitter),
        norm=norm if norm is not None else Normalization.of_source(source, index.stride, chunk=_chunked(config)),
        max_bad_records=int(config.data.max_bad_records),
        view_on_device=str(config.data.augment_on) == "device",
    )


def _ensure_absl_flags_parsed() -> None:
    """Grain's multiprocess prefetch reads absl flags; outside `absl.app.run` they are unparsed
    and reading them raises. Marking them parsed keeps every flag at its default."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _train_dataset(mixture: Mixture, indices: list[WindowIndex], config: mlc.ConfigDict, seed: int,
                   process_index: int, process_count: int) -> grain.MapDataset:
    if str(config.data.augment_on) == "device":  # one batch holds the stored frames of every source
        sizes = {tuple(s.info["image_size"]) for s in mixture.sources}
        if len(sizes) > 1:
            raise ValueError("config.data.augment_on='device' batches frames at their stored size, but the "
                             "mixture's datasets differ: " + ", ".join(
                                 f"{s.path} {list(s.info['image_size'])}" for s in mixture.sources)
                             + "; re-convert them at one size or use config.data.augment_on='host'")
    datasets = []
    for source, index in zip(mixture.sources, indices, strict=True):
        if len(index) == 0:
            raise ValueError(
                f"{source.path}: no training clips of {index.num_frames} frames at stride "
                f"{index.stride} ({index.summary()}); lower config.data.num_frames, raise "
                f"config.data.target_fps, or drop this dataset from config.data.mixture"
            )
        ds = (
            grain.MapDataset.range(len(index))
            .seed(_source_seed(seed, source.source_id))
            .shuffle()
            .repeat()
            .random_map(_clip_transform(source, index, config))
        )
        datasets.append(ds[process_index::process_count])
    if len(datasets) == 1:
        return datasets[0]
    return grain.MapDataset.mix(datasets, mixture.weights)


@dataclasses.dataclass(frozen=True)
class EvalSource:
    """One evaluated dataset: its windows, how many of them are read, and the statistics (and
    embodiment id) its clips are fed to the model with."""

    source: Source
    index: WindowIndex
    num_clips: int
    norm: Normalization


def _vector(stats: Mapping[str, Any] | None, modality: str, key: str) -> np.ndarray | None:
    entry = (stats or {}).get(modality)
    if not entry or entry.get(key) is None:
        return None
    return np.asarray(entry[key], np.float32)


def trained_normalization(source: Source, trained: Mapping[str, Any]) -> Normalization:
    """How a model trained on `trained` (its `mixture_info`) saw `source`'s clips: the statistics of
    the training source at the same path, else of the first labeled training source of the same
    embodiment (the one `WorldModel.action_space` uses). An embodiment it never saw gets neither
    actions nor proprio, and embodiment id 0."""
    entries = list(zip(trained["sources"], trained["stats"], strict=True))
    real = os.path.realpath(source.path)
    match = next((e for e in entries if os.path.realpath(str(e[0]["path"])) == real), None)
    if match is None:
        match = next((e for e in entries if e[0]["embodiment"] == source.embodiment
                      and _vector(e[1], "action", "mean") is not None), None)
    if match is None:
        known = list(trained.get("embodiments") or [])
        return Normalization(known.index(source.embodiment) if source.embodiment in known else 0)
    entry, stats = match
    delta = entry.get("action_is_delta")
    chunk = int(entry.get("action_chunk") or 1)
    return Normalization(
        embodiment_id=int(entry["embodiment_id"]),
        stride=1 if chunk > 1 else int(entry.get("stride") or 1),
        chunk=chunk,
        action_mean=_vector(stats, "action", "mean"),
        action_std=_vector(stats, "action", "std"),
        action_is_delta=None if delta is None else np.asarray(delta, bool),
        proprio_mean=_vector(stats, "proprio", "mean"),
        proprio_std=_vector(stats, "proprio", "std"),
        privileged_mean=_vector(stats, "privileged", "mean"),
        privileged_std=_vector(stats, "privileged", "std"),
    )


def eval_sources(config: mlc.ConfigDict, *, data: str | None = None, trained: Mapping[str, Any] | None = None,
                 max_clips: int | None = None) -> list[EvalSource]:
    """The evaluated sources, in order: the held-out windows of `config.data.mixture`, or every
    window of `data` ('DIR' or 'DIR[:w],DIR'). `max_clips` caps the total (earlier sources first);
    `trained`: normalize with a trained model's statistics (`trained_normalization`), else each
    source's own."""
    if data is not None:
        config = copy.deepcopy(config)
        config.data.mixture = data
        config.data.heldout_fraction = 0.0  # every episode is in the 'train' split
    split = "eval" if data is None else "train"
    mixture = load_mixture(config)
    out, total = [], 0
    for source in mixture.sources:
        index = window_index(source, config, split)
        n = len(index) if max_clips is None else min(len(index), max(0, int(max_clips) - total))
        total += n
        norm = (trained_normalization(source, trained) if trained is not None
                else Normalization.of_source(source, index.stride, chunk=_chunked(config)))
        out.append(EvalSource(source, index, n, norm))
    if total == 0:
        summary = [e.index.summary() for e in out]
        if data is not None:
            raise ValueError(f"no evaluation clips of {config.data.num_frames} frames in {data} "
                             f"(per source: {summary})")
        raise ValueError(
            f"config.data.mixture has no held-out clips (heldout_fraction="
            f"{config.data.heldout_fraction}, per source: {summary}); raise "
            f"config.data.heldout_fraction when training, or evaluate other data (data=DIR)")
    return out


def _eval_dataset(sources: list[EvalSource], config: mlc.ConfigDict, process_index: int,
                  process_count: int) -> grain.MapDataset:
    parts = [grain.MapDataset.range(e.num_clips).map(_clip_transform(e.source, e.index, config, e.norm))
             for e in sources if e.num_clips]
    total = sum(e.num_clips for e in sources)
    multiple = int(config.data.global_batch_size) * max(1, int(config.data.num_workers))
    pad = -total % multiple
    if pad:
        first = next(e.index for e in sources if e.num_clips)
        parts.append(grain.MapDataset.range(pad).map(PaddingClip(
            num_frames=int(config.data.num_frames), image_size=int(config.model.image_size),
            action_dim=int(config.model.action_dim), proprio_dim=int(config.model.proprio_dim),
            privileged_dim=int(config.model.privileged_dim), dt=first.dt)))
    ds = parts[0] if len(parts) == 1 else grain.MapDataset.concatenate(parts)
    return ds[process_index::process_count]


def make_dataset(config: mlc.ConfigDict, *, split: str = "train", process_index: int = 0,
                 process_count: int = 1, seed: int | None = None, data: str | None = None,
                 max_clips: int | None = None, trained: Mapping[str, Any] | None = None) -> grain.IterDataset:
    """This process's stream of numpy batch dicts (`schema.batch_spec` with B = global / count).

    `split='train'`: infinite, shuffled, augmented. `split='eval'`: one deterministic pass over the
    held-out windows, or over `data`, with `max_clips` and `trained` as in `eval_sources` (see
    module docstring). `seed` defaults to `config.seed`.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if split == "train" and (data is not None or max_clips is not None or trained is not None):
        raise ValueError("data=, max_clips= and trained= select what split='eval' reads; training reads "
                         "config.data.mixture")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} must be in [0, process_count={process_count})")
    batch_size = per_process_batch_size(config, process_count)
    num_workers = int(config.data.num_workers)
    if num_workers < 0:
        raise ValueError(f"config.data.num_workers must be >= 0, got {num_workers}")
    if split == "train":
        mixture = load_mixture(config)
        if float(config.loss.privileged) > 0 and not any(s.privileged_dim for s in mixture.sources):
            raise ValueError(
                f"config.loss.privileged reads out a privileged state, but no dataset of config.data.mixture "
                f"({config.data.mixture}) records one (dataset.json privileged_dim); PushT data converted "
                f"before it was recorded needs `wam-convert pusht` again (or `wam-convert oxe` of its RLDS)")
        indices = [window_index(source, config, split) for source in mixture.sources]
        seed = int(config.seed if seed is None else seed)
        ds = _train_dataset(mixture, indices, config, seed, process_index, process_count)
    else:
        sources = eval_sources(config, data=data, trained=trained, max_clips=max_clips)
        ds = _eval_dataset(sources, config, process_index, process_count)
    read = grain.ReadOptions(
        num_threads=int(config.data.read_threads),
        prefetch_buffer_size=max(2 * batch_size, 8),
    )
    it = ds.to_iter_dataset(read).batch(batch_size, drop_remainder=True)
    if num_workers > 0:
        _ensure_absl_flags_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers, per_worker_buffer_size=2))
    return it


def make_iterator(config: mlc.ConfigDict, *, split: str = "train", process_index: int = 0,
                  process_count: int = 1, seed: int | None = None, **eval_options: Any) -> grain.DatasetIterator:
    """`iter(make_dataset(...))`: has `get_state()` / `set_state()` and is checkpointable with
    `grain.checkpoint.CheckpointSave` / `CheckpointRestore`. Close it (`.close()`) when done."""
    return iter(make_dataset(config, split=split, process_index=process_index,
                             process_count=process_count, seed=seed, **eval_options))


def mixture_info(config: mlc.ConfigDict) -> dict[str, Any]:
    """Sources (with one name per action and proprio dim), weights, embodiment registry and
    normalization stats (JSON-serialisable), saved with every checkpoint so a trained model can map
    ids back to datasets, un-normalize actions and name their dimensions.
    """
    mixture = load_mixture(config)
    sources = []
    for s in mixture.sources:
        train, held = window_index(s, config, "train"), window_index(s, config, "eval")
        sources.append({
            "source_id": s.source_id,
            "path": s.path,
            "name": s.name,
            "kind": s.kind,
            "embodiment": s.embodiment,
            "embodiment_id": s.embodiment_id,
            "weight": s.weight,
            "fps": s.fps,
            "stride": train.stride,
            "action_chunk": train.stride if _chunked(config) else 1,  # recorded actions per transition
            "dt": train.dt,
            "action_dim": s.action_dim,
            "proprio_dim": s.proprio_dim,
            "action_keys": list(s.action_keys),
            "action_is_delta": list(s.action_is_delta),
            "action_names": list(s.action_names),
            "proprio_names": list(s.proprio_names),
            "privileged_dim": s.privileged_dim,
            "privileged_names": list(s.privileged_names),
            "num_episodes": train.num_episodes,
            "train": train.summary(),
            "eval": held.summary(),
        })
    return {
        "sources": sources,
        "weights": mixture.weights,
        "embodiments": list(mixture.embodiments),
        "stats": [s.stats for s in mixture.sources],
        "num_frames": int(config.data.num_frames),
        "target_fps": float(config.data.target_fps),
        "image_size": int(config.model.image_size),
        "action_dim": int(config.model.action_dim),
        "proprio_dim": int(config.model.proprio_dim),
        "privileged_dim": int(config.model.privileged_dim),
        "heldout_fraction": float(config.data.heldout_fraction),
    }


class DevicePrefetchIterator(grain.DatasetIterator):
    """Keeps `size` batches already placed on device ahead of the consumer.

    `sharding_fn` turns a host batch into (global, sharded) device arrays; JAX transfers are
    asynchronous, so placing batch k+size while step k runs hides the copy. The iterator is
    itself checkpointable: its state is the wrapped iterator's state *before* the oldest batch still
    in the buffer, i.e. exactly after the last batch handed to the consumer, so a restored run
    neither skips nor repeats the prefetched batches.
    """

    def __init__(self, iterator: Iterator[Any], sharding_fn: Callable[[Any], Any], size: int):
        if size < 0:
            raise ValueError(f"prefetch size must be >= 0, got {size}")
        super().__init__(iterator if isinstance(iterator, grain.DatasetIterator) else ())
        self._it = iterator
        self._fn = sharding_fn
        self._size = int(size)
        self._buffer: collections.deque[tuple[Any, Any]] = collections.deque()  # (state before, batch)

    def _underlying_state(self) -> Any:
        if not hasattr(self._it, "get_state"):
            raise TypeError(f"{type(self._it).__name__} has no get_state(); cannot checkpoint it")
        return self._it.get_state()

    def _pull(self) -> bool:
        # a copy: the state of the batch not yet consumed must not follow later pulls
        state = copy.deepcopy(self._underlying_state()) if hasattr(self._it, "get_state") else None
        try:
            batch = next(self._it)
        except StopIteration:
            return False
        self._buffer.append((state, self._fn(batch)))
        return True

    def __next__(self) -> Any:
        self._assert_not_closed()
        while len(self._buffer) <= self._size and self._pull():
            pass
        if not self._buffer:
            raise StopIteration
        return self._buffer.popleft()[1]

    def get_state(self) -> dict[str, Any]:
        return self._buffer[0][0] if self._buffer else self._underlying_state()

    def set_state(self, state: dict[str, Any]) -> None:
        self._buffer.clear()
        self._it.set_state(state)

    def close(self) -> None:
        self._buffer.clear()
        if isinstance(self._it, grain.DatasetIterator):
            super().close()
        elif hasattr(self._it, "close"):
            self._it.close()
        self._closed = True

    def __str__(self) -> str:
        return f"DevicePrefetchIterator(size={self._size})"


def device_prefetch(iterator: Iterator[Any], sharding_fn: Callable[[Any], Any], size: int
                    ) -> DevicePrefetchIterator:
    """Host -> device prefetch: yields `sharding_fn(batch)` with `size` batches in flight.

    Save and restore the returned iterator (not the wrapped one) to resume exactly.
    """
    return DevicePrefetchIterator(iterator, sharding_fn, size)
