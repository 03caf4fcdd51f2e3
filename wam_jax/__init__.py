"""wam_jax: latent-space World Action Models in JAX/Flax.

`import wam_jax` stays light (no Flax, no model code): the public entry points load lazily.

    wam_jax.WorldModel.load(workdir_or_export)   # encode / predict / infer_actions / policy / plan
    wam_jax.load_encoder(export_dir)             # the exported encoder, Flax-free
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wam_jax.inference.export import load_encoder
    from wam_jax.inference.world_model_api import WorldModel

__all__ = ["WorldModel", "load_encoder"]


def __getattr__(name: str) -> Any:
    if name == "WorldModel":
        from wam_jax.inference.world_model_api import WorldModel

        return WorldModel
    if name == "load_encoder":
        from wam_jax.inference.export import load_encoder

        return load_encoder
    raise AttributeError(f"module 'wam_jax' has no attribute {name!r}")
