"""What a saved model looks like on disk: the export directory's layout and manifest, frame checks.

Imports only jax, numpy and etils (no Flax, no model code), so the exported encoder
(`wam_jax.load_encoder`) runs in a process that never imports the framework, and both the export
writer and `WorldModel` can read these names without importing each other. Paths go through
`etils.epath`: an export may live on `gs://`.
"""

from __future__ import annotations

import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

# The manifest's format name: an identifier of the on-disk layout, not a module path, so moving
# the writer between modules never invalidates exports written before.
FORMAT = "wam_jax.export"
VERSION = 1
EXPORT_JSON = "export.json"
CONFIG_JSON = "config.json"
STATS_JSON = "stats.json"
PREPROCESSING_JSON = "preprocessing.json"
PARAMS_DIR = "params"
ENCODER_EXPORT = "encoder.jax_export"
ENCODER_SAFETENSORS = "encoder.safetensors"
PREDICTOR_EXPORT = "predictor.jax_export"
PREDICTOR_SAFETENSORS = "predictor.safetensors"
EXAMPLE_INPUT = "example_input.npy"
EXAMPLE_OUTPUT = "example_output.npy"
REQUIRED_FILES = (ENCODER_EXPORT, ENCODER_SAFETENSORS, PREPROCESSING_JSON, PARAMS_DIR, CONFIG_JSON,
                  STATS_JSON, EXAMPLE_INPUT, EXAMPLE_OUTPUT)
PREDICTOR_FILES = (PREDICTOR_EXPORT, PREDICTOR_SAFETENSORS)

ArrayLike = Any


class IncompleteExportError(ValueError):
    """An export directory is missing files (interrupted export, or copied partially)."""


class MissingStatisticsError(ValueError):
    """The checkpoint has no dataset statistics, so actions cannot be mapped to robot units."""


# ----------------------------------------------------------------------------------------------
# Export directories


def is_export(path: str) -> bool:
    """Whether `path` holds a complete-looking export (its manifest is written last)."""
    return (epath.Path(path) / EXPORT_JSON).exists()


def check_not_partial_export(path: str) -> None:
    """Raises when `path` holds export files but no manifest: an interrupted or partial copy."""
    root = epath.Path(path)
    if root.is_dir() and any((root / f).exists() for f in REQUIRED_FILES):
        raise IncompleteExportError(
            f"{path} looks like an export directory but has no {EXPORT_JSON} (written last "
            f"by wam-export): the export was interrupted or copied partially; re-run wam-export")


def read_manifest(export_dir: str) -> dict[str, Any]:
    """The manifest of a complete export; clear errors for missing or partial directories."""
    root = epath.Path(export_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"export directory {export_dir} does not exist (write one with wam-export)")
    path = root / EXPORT_JSON
    if not path.exists():
        present = sorted(p.name for p in root.iterdir())
        raise IncompleteExportError(
            f"{export_dir} has no {EXPORT_JSON} (written last by wam-export), so the export is incomplete "
            f"or this is not an export directory (it holds {present[:10]}); re-run wam-export")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise IncompleteExportError(f"{path}: format is {manifest.get('format')!r}, expected {FORMAT!r}")
    if int(manifest.get("version", -1)) > VERSION:
        raise IncompleteExportError(f"{path}: version {manifest.get('version')} is newer than this library ({VERSION})")
    missing = [f for f in manifest.get("files", []) if not (root / f).exists()]
    if missing:
        raise IncompleteExportError(
            f"export {export_dir} is partial: missing {missing} (listed in {EXPORT_JSON}); re-run wam-export")
    return manifest


def read_json(export_dir: str, name: str) -> Any:
    return json.loads((epath.Path(export_dir) / name).read_text())


# ----------------------------------------------------------------------------------------------
# Frames


def resize_frames(frames: ArrayLike, size: int) -> np.ndarray:
    """uint8 `[..., H, W, 3]` -> `[..., size, size, 3]` (bilinear with antialiasing)."""
    x = jnp.asarray(frames)
    shape = x.shape[:-3] + (size, size, x.shape[-1])
    y = jax.image.resize(x.astype(jnp.float32), shape, method="bilinear", antialias=True)
    return np.asarray(jnp.clip(jnp.round(y), 0, 255).astype(jnp.uint8))


def check_frames(frames: ArrayLike, image_size: int, *, name: str = "frames", resize: bool = False
                 ) -> tuple[np.ndarray, tuple[int, ...]]:
    """Validates uint8 RGB frames `[H, W, 3]`, `[T, H, W, 3]` or `[B, T, H, W, 3]`.

    Returns (`[B, T, S, S, 3]` frames, the leading dims to restore on outputs).
    """
    expected = f"uint8 [T, {image_size}, {image_size}, 3] (or [{image_size}, {image_size}, 3], or batched [B, T, ...])"
    try:
        x = np.asarray(frames)
    except ValueError as e:  # ragged nested lists
        raise ValueError(f"{name} is not a rectangular array ({e}); expected {expected}") from None
    if x.ndim not in (3, 4, 5) or x.shape[-1] != 3 or x.size == 0:
        raise ValueError(f"{name} has shape {x.shape}; expected {expected}, at least one frame")
    if x.dtype != np.uint8:
        raise ValueError(f"{name} has dtype {x.dtype}; expected {expected}, RGB values 0..255")
    if x.shape[-3:-1] != (image_size, image_size):
        if not resize:
            raise ValueError(
                f"{name} are {x.shape[-3]}x{x.shape[-2]} pixels but the model expects "
                f"{image_size}x{image_size} (shape {expected}); resize them or pass resize=True")
        x = resize_frames(x, image_size)
    lead = x.shape[:-3]
    return x.reshape((1,) * (5 - x.ndim) + x.shape), lead


def real_array(x: ArrayLike, name: str, expected: str) -> np.ndarray | jax.Array:
    """`x` as float32 (a jax.Array stays on its devices), or a ValueError naming `name` and the
    `expected` shape: strings, bools, complex numbers, ragged lists and NaN / inf would otherwise
    end in a numpy / XLA error that names neither, or in silently NaN outputs."""
    if isinstance(x, jax.Array):
        arr = x
    else:
        try:
            arr = np.asarray(x)
        except ValueError as e:  # ragged nested lists
            raise ValueError(f"{name} is not a rectangular array ({e}); expected {expected}") from None
    if not (jnp.issubdtype(arr.dtype, jnp.floating) or jnp.issubdtype(arr.dtype, jnp.integer)):  # bf16 too
        raise ValueError(f"{name} has dtype {arr.dtype}; expected real numbers {expected}")
    arr = arr.astype(jnp.float32 if isinstance(arr, jax.Array) else np.float32)
    if arr.size and not bool((jnp if isinstance(arr, jax.Array) else np).isfinite(arr).all()):
        raise ValueError(f"{name} contains NaN or inf (shape {arr.shape}); expected finite {expected}")
    return arr
