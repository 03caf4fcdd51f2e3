"""Read RLDS / TFDS builder directories (Open X-Embodiment datasets) without TensorFlow.

A builder directory is what `tfds` prepares and what OXE publishes (e.g.
`gs://gresearch/robotics/fractal20220817_data/0.1.0`): `dataset_info.json`, `features.json` and
`{name}-{split}.{tfrecord|array_record}-XXXXX-of-YYYYY` shards, one serialized `tf.train.Example`
per episode. Reading goes through TFDS's own feature connectors in numpy mode
(`features.deserialize_example_np`), so every TFDS encoding (JPEG / PNG images, zlib tensors,
nested `steps` datasets) decodes exactly as TFDS intends, but TensorFlow is never imported:

* tfrecord shards: sequential record reading with `grain.experimental.TFRecordIterDataset`;
* array_record shards: random access with `builder.as_data_source()`.

Episodes come back as nested numpy dicts with the `steps` leaves stacked over time::

    {"steps": {"observation": {"image": uint8[T, H, W, 3] (or T encoded bytes), ...},
               "action": float32[T, 7] | {"world_vector": float32[T, 3], ...},
               "is_first": bool[T], ..., "language_instruction": object[T] of str},
     "episode_metadata": {"file_path": str, ...}}

Keys are addressed with '/'-joined paths ("observation/image", "action/world_vector"). A key may
itself contain '/' (kuka's "clip_function_input/base_pose_tool_reached"); `lookup` resolves the
longest matching name first.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from data_pipelines import paths

FEATURES_JSON = "features.json"
DATASET_INFO_JSON = "dataset_info.json"


class RLDSFormatError(ValueError):
    """A builder directory is missing files or does not have the expected RLDS structure."""


class RLDSKeyError(KeyError):
    """A requested feature key does not exist; the message lists the keys that do."""

    def __str__(self) -> str:  # KeyError quotes its argument; show the message as written
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class LeafSpec:
    """A leaf feature of the dataset: its '/'-path, shape, numpy dtype and kind."""

    path: str
    shape: tuple[int | None, ...]
    dtype: np.dtype
    kind: str  # 'image' | 'text' | 'tensor'


def _leaf_kind(feature: Any) -> str:
    import tensorflow_datasets as tfds

    if isinstance(feature, tfds.features.Image):
        return "image"
    if isinstance(feature, tfds.features.Text):
        return "text"
    if isinstance(feature, tfds.features.Tensor) and np.dtype(feature.np_dtype).kind in "SOU":
        return "text"
    return "tensor"


def _flatten_features(feature: Any, prefix: str = "") -> list[LeafSpec]:
    import tensorflow_datasets as tfds

    if isinstance(feature, tfds.features.FeaturesDict):
        out: list[LeafSpec] = []
        for k, v in feature.items():
            out.extend(_flatten_features(v, f"{prefix}{k}/"))
        return out
    if isinstance(feature, tfds.features.Sequence):  # incl. tfds.features.Dataset
        return _flatten_features(feature.feature, prefix)
    kind = _leaf_kind(feature)
    dtype = np.dtype(object) if kind == "text" else np.dtype(feature.np_dtype)
    return [LeafSpec(prefix.rstrip("/"), tuple(feature.shape), dtype, kind)]


def lookup(tree: Mapping[str, Any], path: str) -> Any:
    """Value at '/'-path `path` in a nested dict; names containing '/' are matched greedily.

    Raises KeyError(path) when absent (callers turn it into an `RLDSKeyError` with the list of
    available keys).
    """
    if path in tree:
        return tree[path]
    parts = path.split("/")
    for i in range(len(parts) - 1, 0, -1):
        head = "/".join(parts[:i])
        if head in tree and isinstance(tree[head], Mapping):
            try:
                return lookup(tree[head], "/".join(parts[i:]))
            except KeyError:
                continue
    raise KeyError(path)


def _set_path(tree: dict[str, Any], keys: tuple[str, ...], value: Any) -> None:
    for k in keys[:-1]:
        tree = tree.setdefault(k, {})
    tree[keys[-1]] = value


def _as_str(x: Any) -> str:
    if isinstance(x, bytes):
        return x.decode("utf-8", errors="replace")
    if isinstance(x, np.ndarray) and x.shape == ():
        return _as_str(x.item())
    return str(x)


class RLDSDataset:
    """One split of an RLDS builder directory, read TF-free.

    Args:
      builder_dir: directory holding `features.json` and `dataset_info.json` (the version
        directory of a TFDS dataset, e.g. `.../bridge/0.1.0`).
      split: split name ('train' by default; the error lists the available ones).
    """

    def __init__(self, builder_dir: str, split: str = "train"):
        self.builder_dir = paths.local_only(builder_dir, "--input (an RLDS builder directory)")
        if not os.path.isdir(self.builder_dir):
            raise RLDSFormatError(
                f"{self.builder_dir}: not a directory (expected an RLDS builder dir)"
            )
        for fname in (FEATURES_JSON, DATASET_INFO_JSON):
            if not os.path.exists(os.path.join(self.builder_dir, fname)):
                present = sorted(os.listdir(self.builder_dir))[:20]
                raise RLDSFormatError(
                    f"{self.builder_dir}: missing {fname}; an RLDS/TFDS builder directory holds "
                    f"{FEATURES_JSON}, {DATASET_INFO_JSON} and the shard files (found: {present}). "
                    f"Point --input at the version directory, e.g. .../fractal20220817_data/0.1.0"
                )
        try:
            with open(os.path.join(self.builder_dir, DATASET_INFO_JSON)) as f:
                self._info_json = json.load(f)
        except ValueError as e:  # JSONDecodeError, or UnicodeDecodeError for a cut multi-byte char
            raise RLDSFormatError(
                f"{os.path.join(self.builder_dir, DATASET_INFO_JSON)}: not valid JSON ({e})"
            ) from e

        import tensorflow_datasets as tfds

        try:
            self.builder = tfds.builder_from_directory(self.builder_dir)
        except Exception as e:  # tfds raises assorted errors for a broken features.json
            raise RLDSFormatError(
                f"{self.builder_dir}: TFDS cannot open this directory: its "
                f"{_unusable_json(self.builder_dir)} is not a valid TFDS description "
                f"({type(e).__name__}: {e})"
            ) from e
        info = self.builder.info
        self.name: str = info.name
        self.version: str = str(info.version)
        self.features = info.features
        if "steps" not in self.features.keys():
            raise RLDSFormatError(
                f"{os.path.join(self.builder_dir, FEATURES_JSON)}: no 'steps' feature; not an RLDS "
                f"dataset (top-level features: {sorted(self.features.keys())})"
            )
        splits = info.splits
        if split not in splits:
            raise RLDSFormatError(
                f"{self.builder_dir}: no split {split!r} in {DATASET_INFO_JSON}; available splits: "
                f"{sorted(splits.keys())}"
            )
        self.split = split
        split_info = splits[split]
        try:  # shard names come from the dataset name and split fields of dataset_info.json
            self.shard_paths: list[str] = [os.fspath(p) for p in split_info.filepaths]
        except Exception as e:  # noqa: BLE001 - tfds: ValueError / KeyError from the file template
            raise RLDSFormatError(
                f"{os.path.join(self.builder_dir, DATASET_INFO_JSON)}: cannot name the shard "
                f"files of split {split!r} (fields 'name', 'splits'): {type(e).__name__}: {e}"
            ) from e
        self.shard_lengths: list[int] = [int(n) for n in split_info.shard_lengths]
        if any(n < 0 for n in self.shard_lengths):
            raise RLDSFormatError(
                f"{os.path.join(self.builder_dir, DATASET_INFO_JSON)}: split {split!r} has "
                f"negative shardLengths {self.shard_lengths}"
            )
        self.file_format: str = info.file_format.value if info.file_format else "tfrecord"
        missing = [p for p in self.shard_paths if not os.path.exists(p)]
        if missing:
            raise RLDSFormatError(
                f"{self.builder_dir}: {DATASET_INFO_JSON} lists {len(missing)} shard file(s) that "
                f"do not exist, e.g. {os.path.basename(missing[0])}"
            )
        self._offsets = np.concatenate([[0], np.cumsum(self.shard_lengths)]).astype(int)
        self._step_leaves = _flatten_features(self.features["steps"])
        self._episode_leaves = [
            leaf
            for k in self.features.keys()
            if k != "steps"
            for leaf in _flatten_features(self.features[k], f"{k}/")
        ]
        self._data_source: Any = None

    # ------------------------------------------------------------------ schema
    def __len__(self) -> int:
        return int(self._offsets[-1])

    @property
    def step_keys(self) -> list[str]:
        """'/'-paths of all step-level leaves, e.g. ['action/world_vector', 'observation/image']."""
        return [leaf.path for leaf in self._step_leaves]

    @property
    def episode_keys(self) -> list[str]:
        """'/'-paths of episode-level leaves, e.g. ['episode_metadata/file_path']."""
        return [leaf.path for leaf in self._episode_leaves]

    def step_leaf(self, path: str) -> LeafSpec:
        for leaf in self._step_leaves:
            if leaf.path == path:
                return leaf
        raise self.key_error(path, level="step")

    def has_step_key(self, path: str) -> bool:
        """True if `path` is a step leaf or a group of leaves (e.g. 'action' for dict actions)."""
        return any(
            leaf.path == path or leaf.path.startswith(path + "/") for leaf in self._step_leaves
        )

    def key_error(self, path: str, level: str = "step", what: str = "key") -> RLDSKeyError:
        keys = sorted(self.step_keys if level == "step" else self.episode_keys)
        return RLDSKeyError(
            f"{self.name} ({self.builder_dir}): unknown {level}-level {what} {path!r}; "
            f"the dataset has {level} keys: {keys}"
        )

    def image_keys(self) -> list[str]:
        return [leaf.path for leaf in self._step_leaves if leaf.kind == "image"]

    # ------------------------------------------------------------------ reading
    @functools.cache  # noqa: B019 (one small dict per dataset object and flag)
    def _decoders(self, decode_images: bool) -> dict[str, Any] | None:
        if decode_images:
            return None
        import tensorflow_datasets as tfds

        steps: dict[str, Any] = {}
        for leaf in self._step_leaves:
            if leaf.kind == "image":
                _set_path(
                    steps,
                    _feature_keys(self.features["steps"].feature, leaf.path),
                    tfds.decode.SkipDecoding(),
                )
        return {"steps": steps} if steps else None

    def _raw_records(self, shard: int, start: int, stop: int) -> Iterator[tuple[int, Any]]:
        """(index-in-shard, serialized example) for records [start, stop) of one shard.

        A tfrecord shard that cannot be read on at record i yields (max(i, start),
        RLDSFormatError) and ends.
        """
        if self.file_format == "array_record":
            src = self._array_record_source()
            base = int(self._offsets[shard])
            for i in range(start, stop):
                yield i, src[base + i]
            return
        import grain

        path = self.shard_paths[shard]
        it = iter(grain.experimental.TFRecordIterDataset(path))
        i = 0
        while i < stop:
            try:
                rec = next(it)
            except StopIteration:
                yield (
                    i,
                    RLDSFormatError(
                        f"{path}: ends after {i} records, but {DATASET_INFO_JSON} says "
                        f"{self.shard_lengths[shard]} (truncated shard?)"
                    ),
                )
                return
            # grain: a truncated record (ValueError), or a corrupt length field it tries to allocate
            except (ValueError, MemoryError, OverflowError) as e:
                yield (
                    max(i, start),
                    RLDSFormatError(f"{path}: record {i} is unreadable ({str(e)[:200]})"),
                )
                return  # a sequential file cannot be read past a broken record
            if i >= start:
                yield i, rec
            i += 1

    def _array_record_source(self) -> Any:
        if self._data_source is None:
            import tensorflow_datasets as tfds

            # Raw serialized examples; decoding happens in `_decode` with per-call decoders.
            self._data_source = self.builder.as_data_source(
                split=self.split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES
            )
        return self._data_source

    def _decode(self, record: Any, decode_images: bool) -> dict[str, Any]:
        ex = self.features.deserialize_example_np(
            bytes(record) if isinstance(record, memoryview) else record,
            decoders=self._decoders(decode_images),
        )
        out: dict[str, Any] = {k: v for k, v in ex.items() if k != "steps"}
        steps_src = ex["steps"]
        n = len(steps_src)
        step_list = [steps_src[i] for i in range(n)]
        steps: dict[str, Any] = {}
        feat_steps = self.features["steps"].feature
        for leaf in self._step_leaves:
            keys = _feature_keys(feat_steps, leaf.path)
            vals = [_get_keys(s, keys) for s in step_list]
            _set_path(steps, keys, self._stack(leaf, vals, decode_images))
        out["steps"] = steps
        return _strings_to_str(out)

    @staticmethod
    def _stack(leaf: LeafSpec, vals: list[Any], decode_images: bool) -> np.ndarray:
        if leaf.kind == "text" or (leaf.kind == "image" and not decode_images):
            arr = np.empty(len(vals), dtype=object)
            for i, v in enumerate(vals):
                arr[i] = _as_str(v) if leaf.kind == "text" else bytes(v)
            return arr
        if not vals:
            shape = tuple(0 if d is None else d for d in leaf.shape)
            return np.zeros((0, *shape), dtype=leaf.dtype)
        return np.stack([np.asarray(v) for v in vals])

    def episodes(
        self,
        shard: int | None = None,
        start: int = 0,
        stop: int | None = None,
        *,
        decode_images: bool = True,
        errors: str = "raise",
    ) -> Iterator[tuple[tuple[int, int], Any]]:
        """Yields ((shard, index-in-shard), episode) in storage order.

        With `shard=None` all shards are read; otherwise records [start, stop) of that shard.
        `decode_images=False` leaves images as their stored JPEG / PNG bytes (object arrays),
        which is what a converter that re-encodes wants (and where it can skip corrupt images
        itself instead of failing).

        `errors='raise'`: a damaged record raises RLDSFormatError naming the shard file and
        record. `errors='return'`: it is yielded as that RLDSFormatError in place of the episode
        (a converter counts and skips it); after an unreadable tfrecord record the rest of that
        shard cannot be read and is not yielded.
        """
        if errors not in ("raise", "return"):
            raise ValueError(f"errors must be 'raise' or 'return', got {errors!r}")
        shards = range(len(self.shard_paths)) if shard is None else [shard]
        for s in shards:
            if not 0 <= s < len(self.shard_paths):
                raise IndexError(
                    f"{self.name}: shard {s} out of range [0, {len(self.shard_paths)})"
                )
            hi = (
                self.shard_lengths[s]
                if stop is None or shard is None
                else min(stop, self.shard_lengths[s])
            )
            lo = start if shard is not None else 0
            for i, rec in self._raw_records(s, lo, hi):
                if isinstance(rec, RLDSFormatError):
                    ep: Any = rec
                else:
                    try:
                        ep = self._decode(rec, decode_images)
                    except Exception as e:  # protobuf / feature decoding of a damaged record
                        ep = RLDSFormatError(
                            f"{self.shard_paths[s]}: record {i} does not decode as the features in "
                            f"{FEATURES_JSON} ({type(e).__name__}: {str(e)[:200]})"
                        )
                        ep.__cause__ = e
                if isinstance(ep, RLDSFormatError) and errors == "raise":
                    raise ep
                yield (s, i), ep

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for _, ep in self.episodes():
            yield ep

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Random access by global episode index (array_record only; tfrecord is sequential)."""
        if self.file_format != "array_record":
            raise TypeError(
                f"{self.name}: random access needs array_record shards; this dataset is "
                f"{self.file_format} (iterate with .episodes() instead)"
            )
        if not 0 <= index < len(self):
            raise IndexError(f"{self.name}: episode {index} out of range [0, {len(self)})")
        return self._decode(self._array_record_source()[index], True)

    def shard_of(self, index: int) -> tuple[int, int]:
        """(shard, index-in-shard) of a global episode index."""
        s = int(np.searchsorted(self._offsets, index, side="right") - 1)
        return s, int(index - self._offsets[s])


def _unusable_json(builder_dir: str) -> str:
    """The file TFDS failed on: features.json if it does not load alone, else dataset_info.json."""
    import tensorflow_datasets as tfds

    try:
        with open(os.path.join(builder_dir, FEATURES_JSON)) as f:
            tfds.features.FeatureConnector.from_json(json.load(f))
    except Exception:  # noqa: BLE001 - any failure means this file is the broken one
        return FEATURES_JSON
    return DATASET_INFO_JSON


def _feature_keys(feature: Any, path: str) -> tuple[str, ...]:
    """Splits a '/'-path into the actual nested FeaturesDict keys (keys may contain '/')."""
    import tensorflow_datasets as tfds

    if not isinstance(feature, tfds.features.FeaturesDict):
        raise KeyError(path)
    if path in feature.keys():
        return (path,)
    parts = path.split("/")
    for i in range(len(parts) - 1, 0, -1):
        head = "/".join(parts[:i])
        if head in feature.keys():
            try:
                return (head, *_feature_keys(feature[head], "/".join(parts[i:])))
            except KeyError:
                continue
    raise KeyError(path)


def _get_keys(tree: Mapping[str, Any], keys: tuple[str, ...]) -> Any:
    for k in keys:
        tree = tree[k]
    return tree


def _strings_to_str(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _strings_to_str(v) for k, v in tree.items()}
    if isinstance(tree, bytes):
        return _as_str(tree)
    if isinstance(tree, np.ndarray) and tree.dtype.kind == "S" and tree.shape == ():
        return _as_str(tree.item())
    return tree


def open_rlds(builder_dir: str, split: str = "train") -> RLDSDataset:
    """Opens an RLDS builder directory (see `RLDSDataset`)."""
    return RLDSDataset(builder_dir, split)
