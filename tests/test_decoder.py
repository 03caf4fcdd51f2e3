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
from wam_jax.models.encoder import IMAGENET_MEAN, IMAGENET_STD
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


def test_decoder_sizes_off_powers_of_two():
    """PushT's native 96-px frames: a 3 x 3 first map doubled five times; 20 (5 x 4) has no such
    factorization and is refused, as is a size that does not divide the image."""
    assert decoder.first_map(64) == (4, 4) and decoder.first_map(96) == (3, 5) and decoder.first_map(4) == (4, 0)
    dec = decoder.FrameDecoder(1, 8, 96, 16, rngs=nnx.Rngs(0))
    assert dec(jnp.ones((2, 1, 8))).shape == (2, 96, 96, 3)
    decoder.check_size(48, 96)
    for size, image in ((20, 40), (64, 96), (5, 10)):
        with pytest.raises(ValueError, match=f"model.decoder.size={size}: expected 0"):
            decoder.check_size(size, image)


def test_broadcast_decoder_tiles_the_latent_with_coordinates():
    """`kind='broadcast'`: the latent tiled over a size/4 grid with two coordinate channels, then
    two doublings; any size the upsampling decoder takes (64, PushT's 96, 16). A constant latent
    still draws a frame that varies across the grid (the coordinates); an unknown kind is named."""
    for size, first in ((64, 16), (96, 24), (16, 4)):
        dec = decoder.FrameDecoder(1, 8, size, 16, kind="broadcast", rngs=nnx.Rngs(0))
        assert dec.first == first and len(dec.convs) == 2 and dec.mix[0].in_features == 18
        out = dec(jnp.ones((2, 3, 1, 8)))
        assert out.shape == (2, 3, size, size, 3)
        assert float(jnp.std(out[0, 0, :, :, 0])) > 0
    with pytest.raises(ValueError, match=r"model.decoder.kind must be one of \('upsample', 'broadcast'\), got 'mlp'"):
        WorldActionModel(_cfg(**{"model.decoder.kind": "mlp"}).model, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("kind", ["upsample", "broadcast"])
def test_recon_trains_the_decoder_and_the_encoder_only(kind):
    cfg = _cfg(**{"model.decoder.kind": kind})
    model = WorldActionModel(cfg.model, rngs=nnx.Rngs(0))
    assert model.frame_decoder.kind == kind
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


@pytest.fixture(scope="module")
def decoder_wm(tmp_path_factory):
    """A tiny pooled workdir with a frame decoder and a privileged-state readout (untrained: its
    data records no state), loaded as a `WorldModel`."""
    from tests.test_world_model_api import make_tiny_workdir, one_device_mesh
    from wam_jax import WorldModel

    workdir, _ = make_tiny_workdir(str(tmp_path_factory.mktemp("wam_decoder")), **{
        "model.target": "online", "model.pool.kind": "mean", "model.pool.dim": 16, "model.decoder.size": 16,
        "model.privileged_dim": 3, "loss.recon": 1.0, "loss.sigreg": 0.09})
    return WorldModel.load(workdir, mesh=one_device_mesh())


def test_foreground_weight_falls_on_what_moves():
    """`loss.recon_fg`: pixels away from the batch's median frame (a square that moves across a
    fixed background) weigh 1 + fg; the background's median ignores the square; fg = 0 is the
    plain mean; an error on the square alone costs more than the same error on the scenery."""
    from wam_jax.training.objectives import foreground_mean

    frames = np.full((2, 3, 8, 8, 3), -1.0, np.float32)
    frames[:, :, 2:6, :4] = 0.3  # a static stripe: scenery, not foreground
    for i in range(6):
        frames.reshape(6, 8, 8, 3)[i, i % 7, i % 7] = 2.0  # the mover, one pixel per frame
    on_mover = (np.abs(frames - np.median(frames.reshape(6, 8, 8, 3), 0)) > 1).astype(np.float32)
    np.testing.assert_allclose(foreground_mean(jnp.asarray(on_mover), jnp.asarray(frames), 0.0), 3 / 192)
    np.testing.assert_allclose(foreground_mean(jnp.asarray(on_mover), jnp.asarray(frames), 20.0),
                               21 * 3 / (21 * 3 + 189))
    on_scenery = np.zeros_like(on_mover)
    on_scenery[..., 7, 7, :] = 1.0  # one background pixel, never the mover's
    assert float(foreground_mean(jnp.asarray(on_scenery), jnp.asarray(frames), 20.0).max()) < 3 / 192
    cfg = _cfg(**{"loss.recon_fg": 20.0})
    model = WorldActionModel(cfg.model, rngs=nnx.Rngs(0))
    _, metrics, _ = loss_and_grads(_only(cfg, "recon"))(model, model.make_target_encoder(), random_batch(cfg),
                                                       jax.random.key(0))
    assert np.isfinite(float(metrics["loss/recon"])) and float(metrics["loss/recon"]) > 0


def test_world_model_decodes_and_plans_in_decoded_frames(decoder_wm, tmp_path_factory):
    """`WorldModel.decode` draws uint8 frames from any latents; `cost='decoded'` plans on them and
    equals the L1 between the decoded prediction and the decoded goal; the energy agreement adds
    the decoded energy; a model without a decoder refuses both, naming what to train."""
    from launch import energy_agreement
    from tests.test_world_model_api import shared_workdir
    from wam_jax import WorldModel

    wm = decoder_wm
    assert wm.has_decoder
    frames = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    z = wm.encode(frames)
    img = wm.decode(z)
    assert img.shape == (3, 16, 16, 3) and img.dtype == np.uint8 and img.std() > 0
    res = wm.plan_latents(z[0], z[1], preset=wm.planner_config("vjepa2_ac", num_samples=8, num_elites=2,
                                                                num_iterations=2), cost="decoded")
    drawn = wm.decode(np.concatenate([np.asarray(wm.predict(z[0], res.best_actions))[-1:], np.asarray(z[1])[None]]))
    norm = (drawn / 255.0 - np.asarray(IMAGENET_MEAN)) / np.asarray(IMAGENET_STD)  # the energy's pixel space
    assert float(res.best_energy) == pytest.approx(np.abs(norm[0] - norm[1]).mean(), abs=0.01)
    ea = energy_agreement.energy_agreement(wm, tasks=1, num_candidates=6, horizon=2)
    assert "rho/decoded energy" in ea["summary"] and "decoded energy" in energy_agreement.format_agreement(ea)

    plain = WorldModel.load(shared_workdir(tmp_path_factory)[0])
    assert not plain.has_decoder
    with pytest.raises(ValueError, match="has no frame decoder"):
        plain.decode(plain.encode(frames))
    with pytest.raises(ValueError, match="cost='decoded' needs a model trained with a frame decoder"):
        plain.plan_latents(plain.encode(frames[0]), plain.encode(frames[1]), cost="decoded")


def test_world_model_plans_on_the_privileged_readout(decoder_wm, tmp_path_factory):
    """`cost='privileged'`: the energy is the L1 between the states the model's readout
    (`loss.privileged`) gives for the predicted last frame and for the goal; a model without the
    readout refuses it, naming what to train."""
    from tests.test_world_model_api import shared_workdir
    from wam_jax import WorldModel

    wm = decoder_wm
    frames = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    z = wm.encode(frames)
    res = wm.plan_latents(z[0], z[1], preset=wm.planner_config("vjepa2_ac", num_samples=8, num_elites=2,
                                                                num_iterations=2), cost="privileged")
    pred = np.asarray(wm.predict(z[0], res.best_actions))[-1]
    head = nnx.merge(wm._model_graph, wm._model_state).privileged_head
    emb = jnp.zeros((2,), jnp.int32)
    read = np.asarray(head(jnp.stack([jnp.asarray(pred), jnp.asarray(z[1])]).reshape(2, -1), emb))
    assert float(res.best_energy) == pytest.approx(np.abs(read[0] - read[1]).mean(), rel=1e-3, abs=1e-6)
    plain = WorldModel.load(shared_workdir(tmp_path_factory)[0])
    with pytest.raises(ValueError, match="cost='privileged' needs a model trained to read out"):
        plain.plan_latents(plain.encode(frames[0]), plain.encode(frames[1]), cost="privileged")
