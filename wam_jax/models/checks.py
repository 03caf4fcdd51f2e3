"""Input validation of the model's public methods: host side, on shapes and dtypes only, so a
wrong input fails with its name and the expected shape before anything is traced."""

from __future__ import annotations

from typing import Any

import numpy as np


def array_shape(x: Any) -> tuple[int, ...] | None:
    s = getattr(x, "shape", None)
    return None if s is None else tuple(s)


def check_array(where: str, name: str, x: Any, expected: str, dims: tuple[int | None, ...],
                kind: str = "float") -> None:
    """Raises ValueError unless `x` has rank len(dims), the given sizes (None = any) and dtype kind."""
    shape = array_shape(x)
    if shape is None or len(shape) != len(dims) or any(
            d is not None and s != d for s, d in zip(shape, dims, strict=True)):
        raise ValueError(f"{where}: {name!r} has shape {shape}, expected {expected}")
    dt = np.dtype(x.dtype)
    ok = {"float": np.issubdtype(dt, np.floating), "bool": dt == np.bool_,
          "int": np.issubdtype(dt, np.integer), "uint8": dt == np.uint8}[kind]
    if not ok:
        want = {"float": "a floating dtype", "bool": "bool", "int": "an integer dtype",
                "uint8": "uint8"}[kind]
        raise ValueError(f"{where}: {name!r} has dtype {dt}, expected {want} with shape {expected}")
