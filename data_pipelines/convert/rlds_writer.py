"""Write genuine RLDS / TFDS builder directories from Python episodes.

Used by the PushT demo generator and by the test fixtures, so that everything downstream
(`data_pipelines.convert.rlds`, `wam-convert oxe`) reads exactly what it reads for a real Open
X-Embodiment dataset: a TFDS *builder directory* (`dataset_info.json`, `features.json` and
`{name}-{split}.{tfrecord|array_record}-XXXXX-of-YYYYY` shards) that
`tfds.builder_from_directory(dir)` opens.

The writing goes through TFDS's own machinery (`tfds.dataset_builders.store_as_tfds_dataset`:
the feature connectors' encoders, the example serializer, the shard writer and `DatasetInfo`),
rather than a re-implementation of the file format, so the output cannot drift from what TFDS
(and therefore every RLDS consumer) expects. Encoding `tfds.features.Image` from numpy arrays
runs through TensorFlow (installed); pre-encoded JPEG/PNG bytes are stored as given.

RLDS layout reminder (one TFDS example per episode)::

    {
      "steps": tfds.features.Dataset({
          "observation": {"image": Image, "state": Tensor, ...},
          "action": Tensor | {"world_vector": ..., ...},
          "is_first": bool, "is_last": bool, "is_terminal": bool,
          "reward": float32, "discount": float32,
          "language_instruction": Text,            # optional, step level
      }),
      "episode_metadata": {"file_path": Text, ...},  # optional
    }
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np

FILE_FORMATS = ("tfrecord", "array_record")

# A step / episode as accepted by `write_rlds_dataset`: nested dicts of numpy arrays, python
# scalars, str / bytes, and (for images) uint8 arrays or encoded JPEG / PNG bytes.
Example = Mapping[str, Any]


def image(shape: tuple[int, int, int], encoding: str = "jpeg") -> Any:
    """A `tfds.features.Image` with an explicit encoding ('jpeg' or 'png')."""
    import tensorflow_datasets as tfds

    if encoding not in ("jpeg", "png"):
        raise ValueError(f"image encoding must be 'jpeg' or 'png', got {encoding!r}")
    return tfds.features.Image(shape=tuple(shape), dtype=np.uint8, encoding_format=encoding)


def tensor(shape: tuple[int, ...], dtype: Any = np.float32) -> Any:
    """A `tfds.features.Tensor` (`Scalar` for numeric shape=(); strings: dtype=np.str_, the
    way OXE stores e.g. `natural_language_instruction`)."""
    import tensorflow_datasets as tfds

    if tuple(shape) == () and np.dtype(dtype).kind not in "SUO":
        return tfds.features.Scalar(dtype=dtype)
    return tfds.features.Tensor(shape=tuple(shape), dtype=dtype)


def text() -> Any:
    import tensorflow_datasets as tfds

    return tfds.features.Text()


def rlds_features(
    observation: Mapping[str, Any],
    action: Any,
    *,
    step_extras: Mapping[str, Any] | None = None,
    episode_metadata: Mapping[str, Any] | None = None,
    language_instruction: bool = False,
    discount: bool = True,
    extras: Mapping[str, Any] | None = None,
) -> Any:
    """Builds the standard RLDS `FeaturesDict` (steps + optional episode metadata).

    `observation` maps names to feature connectors (see `image`, `tensor`); `action` is one
    connector (flat action) or a mapping of connectors (dict-valued action, as in fractal or
    bridge 0.1.0). `is_first / is_last / is_terminal / reward` are always present, `discount`
    and a step-level `language_instruction` on request. `step_extras` adds further step fields
    (e.g. `language_embedding`), `extras` further top-level fields next to `steps`.
    """
    import tensorflow_datasets as tfds

    def as_feature(x: Any) -> Any:
        return tfds.features.FeaturesDict(dict(x)) if isinstance(x, Mapping) else x

    steps: dict[str, Any] = {
        "observation": tfds.features.FeaturesDict(dict(observation)),
        "action": as_feature(action),
        "is_first": tfds.features.Scalar(dtype=np.bool_),
        "is_last": tfds.features.Scalar(dtype=np.bool_),
        "is_terminal": tfds.features.Scalar(dtype=np.bool_),
        "reward": tfds.features.Scalar(dtype=np.float32),
    }
    if discount:
        steps["discount"] = tfds.features.Scalar(dtype=np.float32)
    if language_instruction:
        steps["language_instruction"] = tfds.features.Text()
    for k, v in (step_extras or {}).items():
        steps[k] = as_feature(v)
    top: dict[str, Any] = {"steps": tfds.features.Dataset(steps)}
    if episode_metadata:
        top["episode_metadata"] = tfds.features.FeaturesDict(dict(episode_metadata))
    for k, v in (extras or {}).items():
        top[k] = as_feature(v)
    return tfds.features.FeaturesDict(top)


def episode_from_steps(
    steps: list[Mapping[str, Any]],
    *,
    terminal: bool = True,
    episode_metadata: Mapping[str, Any] | None = None,
    **extras: Any,
) -> dict[str, Any]:
    """Fills the RLDS bookkeeping fields of a list of steps and wraps them as an episode.

    Each step needs at least `observation` and `action`. `is_first`, `is_last`,
    `is_terminal` (last step only, when `terminal`), `reward` (1 on a terminal last step)
    and `discount` (1) are filled where missing. Extra keyword arguments become top-level
    episode fields.
    """
    n = len(steps)
    out = []
    for t, s in enumerate(steps):
        s = dict(s)
        s.setdefault("is_first", t == 0)
        s.setdefault("is_last", t == n - 1)
        s.setdefault("is_terminal", terminal and t == n - 1)
        s.setdefault("reward", 1.0 if (terminal and t == n - 1) else 0.0)
        s.setdefault("discount", 1.0)
        out.append(s)
    ep: dict[str, Any] = {"steps": out}
    if episode_metadata is not None:
        ep["episode_metadata"] = dict(episode_metadata)
    ep.update(extras)
    return ep


def _drop_unused(example: Mapping[str, Any], features: Any) -> dict[str, Any]:
    """Drops step fields the features do not declare (e.g. `discount` when not declared).

    `episode_from_steps` fills the standard RLDS fields unconditionally; a dataset whose
    features omit one of them (some real OXE datasets have no `discount`) must still accept
    such episodes. Any other unknown key is left in place so TFDS reports it.
    """
    step_keys = set(features["steps"].feature.keys())
    optional = {"is_first", "is_last", "is_terminal", "reward", "discount"}
    ex = dict(example)
    steps = ex.get("steps")
    if isinstance(steps, list):
        ex["steps"] = [
            {k: v for k, v in s.items() if k in step_keys or k not in optional} for s in steps
        ]
    return ex


def write_rlds_dataset(
    out_dir: str,
    name: str,
    version: str,
    features: Any,
    episodes: Iterable[Example],
    *,
    file_format: str = "tfrecord",
    num_shards: int | None = None,
    split: str = "train",
    description: str | None = None,
    overwrite: bool = False,
) -> str:
    """Writes `episodes` as a TFDS builder directory at exactly `out_dir`; returns `out_dir`.

    Args:
      out_dir: the builder directory to create (it will hold `features.json`,
        `dataset_info.json` and the shards), like a downloaded `fractal20220817_data/0.1.0`.
      name: dataset name recorded in `dataset_info.json` and the shard file names.
      version: 'X.Y.Z'.
      features: a `tfds.features.FeaturesDict`, usually from `rlds_features`.
      episodes: iterable of episode dicts matching `features` (see `episode_from_steps`).
        Their order is preserved in the shards (shuffling is disabled), so readers see
        episode i of shard k in writing order.
      file_format: 'tfrecord' (what OXE publishes) or 'array_record' (random access via
        `builder.as_data_source()`).
      num_shards: number of shard files (default: TFDS decides by size, i.e. one for small
        data). Must not exceed the number of episodes (ValueError otherwise).
      split: split name.
      overwrite: replace an existing `out_dir`; otherwise an existing one is an error.
    """
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core import download

    if file_format not in FILE_FORMATS:
        raise ValueError(f"file_format must be one of {FILE_FORMATS}, got {file_format!r}")
    if os.path.exists(out_dir):
        if not overwrite:
            raise FileExistsError(f"{out_dir}: already exists (pass overwrite=True to replace it)")
        shutil.rmtree(out_dir)
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)

    def keyed() -> Iterator[tuple[str, dict[str, Any]]]:
        for i, ep in enumerate(episodes):
            yield f"{i:09d}", _drop_unused(ep, features)

    tfds.disable_progress_bar()
    # TFDS writes to DATA_DIR/name/version; build in a private scratch dir next to the
    # target (same filesystem, so the final move is a rename) and move the version dir.
    scratch = tempfile.mkdtemp(prefix=".rlds_build_", dir=parent)
    try:
        builder = tfds.dataset_builders.store_as_tfds_dataset(
            name=name,
            version=version,
            features=features,
            split_datasets={split: keyed()},
            data_dir=scratch,
            description=description or f"RLDS dataset {name} written by wam_jax.",
            file_format=file_format,
            disable_shuffling=True,
            download_config=download.DownloadConfig(num_shards=num_shards),
        )
    except AssertionError as e:  # TFDS checks the shard count only after writing
        if "number_of_shards" in str(e):
            raise ValueError(
                f"{out_dir}: num_shards={num_shards} exceeds the number of episodes ({e})"
            ) from e
        raise
    else:
        os.replace(os.fspath(builder.data_dir), out_dir)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return out_dir
