"""`model.decoder` + `loss.recon`: the frame decoder's shapes and target, its gradient into the
encoder, and the configurations it refuses."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.test_model import random_batch, tiny_config
from tests.test_objectives import _max_abs, _only, loss_and_grads
from wam_jax.models import decoder
from wam_jax.models.world_model import WorldActionModel


def _cfg(**extra):
    return tiny_config(**{"model.target": "online", "model.pool.kind": "mean", "model.pool.dim": 16,
                          "model.decoder.size": 16, "loss.recon": 1.0, **extra})


def test_decoder_shapes_and_target():
    """Pooled latents `[B, T, N, D]` -> `[B, T, size, size, 3]`; the target is the frame averaged
    over `image_size / size` pixel blocks."""
    cfg = _cfg(**{"model.pool.kind": "grid", "model.pool.grid": 2})
    model = WorldActionModel(cfg.model, rngs=nnx.Rngs(0))
    z = jnp.ones((2, 3, 4, 16))
    assert model.frame_decoder(z).shape == (2, 3, 16, 16, 3)
    video = jnp.arange(2 * 32 * 32 * 3, dtype=jnp.float32).reshape(2, 32, 32, 3)
    small = decoder.downsample(video, 16)
    assert small.shape == (2, 16, 16, 3)
    np.testing.assert_allclose(small[1, 3, 5], video[1, 6:8, 10:12].mean(axis=(0, 1)))


def test_recon_trains_the_decoder_and_the_encoder_only():
    cfg = _cfg()
    model = WorldActionModel(cfg.model, rngs=nnx.Rngs(0))
    _, metrics, grads = loss_and_grads(_only(cfg, "recon"))(model, model.make_target_encoder(),
                                                             random_batch(cfg), jax.random.key(0))
    assert float(metrics["loss/recon"]) > 0
    assert _max_abs(grads["frame_decoder"]) > 0 and _max_abs(grads["encoder"]) > 0
    assert _max_abs(grads["predictor"]) == 0.0


def test_decoder_configurations_that_cannot_work_are_named():
    with pytest.raises(ValueError, match=r"model.decoder.size=24: expected 0 .* divides model.image_size=32"):
        WorldActionModel(_cfg(**{"model.decoder.size": 24}).model, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="model.decoder decodes pooled latents"):
        WorldActionModel(_cfg(**{"model.pool.kind": "none"}).model, rngs=nnx.Rngs(0))
    cfg = _cfg(**{"model.decoder.size": 0})
    model = WorldActionModel(cfg.model, rngs=nnx.Rngs(0))
    assert model.frame_decoder is None
    with pytest.raises(ValueError, match=r"loss.recon > 0 needs a frame decoder: set model.decoder.size"):
        loss_and_grads(_only(cfg, "recon"))(model, model.make_target_encoder(), random_batch(cfg),
                                            jax.random.key(0))
