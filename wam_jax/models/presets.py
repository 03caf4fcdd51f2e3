"""Size presets. `L`, `H`, `g` follow V-JEPA 2's encoder widths and depths so its checkpoints convert."""

from __future__ import annotations

import ml_collections as mlc

# name: (width, depth, heads, mlp_ratio)
ENCODERS: dict[str, tuple[int, int, int, float]] = {
    "tiny": (64, 2, 2, 4.0),  # unit tests
    "small": (128, 4, 4, 4.0),  # CPU demo: trains in minutes on 2 cores
    "S": (384, 12, 6, 4.0),  # ViT-S
    "B": (768, 12, 12, 4.0),  # ViT-B
    "L": (1024, 24, 16, 4.0),  # V-JEPA 2 ViT-L (~300M)
    "H": (1280, 32, 16, 4.0),  # V-JEPA 2 ViT-H (~600M)
    "g": (1408, 40, 22, 48 / 11),  # V-JEPA 2 ViT-g (~1B)
}

# name: (width, depth, heads, mlp_ratio)
PREDICTORS: dict[str, tuple[int, int, int, float]] = {
    "tiny": (64, 2, 2, 4.0),
    "small": (128, 4, 4, 4.0),
    "S": (384, 6, 6, 4.0),
    "B": (384, 12, 6, 4.0),
    "L": (1024, 24, 16, 4.0),  # V-JEPA 2-AC predictor width/depth
    "H": (1024, 24, 16, 4.0),
    "g": (1024, 24, 16, 4.0),
}


def _cfg(spec: tuple[int, int, int, float]) -> mlc.ConfigDict:
    width, depth, heads, mlp_ratio = spec
    return mlc.ConfigDict(dict(width=width, depth=depth, heads=heads, mlp_ratio=mlp_ratio))


def encoder_preset(name: str) -> mlc.ConfigDict:
    if name not in ENCODERS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(ENCODERS)}")
    return _cfg(ENCODERS[name])


def predictor_preset(name: str) -> mlc.ConfigDict:
    if name not in PREDICTORS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PREDICTORS)}")
    return _cfg(PREDICTORS[name])
