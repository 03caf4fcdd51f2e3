"""The latent shapes (patch grid, pooled) and the predictor's conditioning modes: every combination
keeps the predictor's contracts (block causality, cached extend = full pass, shapes), and in every
mode the conditioning actually reaches the prediction."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.test_model import random_batch, tiny_config, trained_like
from wam_jax.models.predictor import ACTION_CONDS
from wam_jax.models.world_model import WorldActionModel

MODES = [(pool, cond) for pool in ("none", "mean") for cond in ACTION_CONDS] + [("grid", "adaln"), ("attn", "adaln")]


def make(pool: str, action_cond: str, seed: int = 0) -> WorldActionModel:
    cfg = tiny_config(**{"model.pool.kind": pool, "model.pool.dim": 24,
                         "model.predictor.action_cond": action_cond})
    m = trained_like(WorldActionModel(cfg.model, rngs=nnx.Rngs(seed)))
    if action_cond == "adaln":  # AdaLN-zero starts as the identity: give it weights, as training does
        ada = m.predictor.blocks.blocks.ada.kernel
        ada[...] = 0.05 * jax.random.normal(jax.random.key(seed + 1), ada[...].shape)
    return m


def _inputs(m: WorldActionModel, b: int = 2, s: int = 4, seed: int = 0):
    n, d = m.spec.tokens_per_frame, m.spec.latent_dim
    ks = jax.random.split(jax.random.key(seed), 3)
    z = jax.random.normal(ks[0], (b, s, n, d))
    cond = jax.random.normal(ks[1], (b, s, m.spec.latent_action_dim))
    proprio = jax.random.normal(ks[2], (b, s, m.spec.proprio_dim))
    return z, cond, proprio, jnp.ones(proprio.shape, bool)


@pytest.mark.parametrize("pool", ["none", "mean", "grid", "attn"])
def test_latent_shape_and_per_frame_encoding(pool):
    m = make(pool, "token_channels")
    cfg = tiny_config()
    batch = random_batch(cfg, batch_size=2)
    z = np.asarray(m.encode(batch["video"]))
    n = {"mean": 1, "attn": 1, "grid": cfg.model.pool.grid ** 2}.get(pool, (cfg.model.image_size // cfg.model.patch_size) ** 2)
    d = cfg.model.encoder.width if pool == "none" else 24
    assert z.shape == (2, cfg.data.num_frames, n, d) == (2, cfg.data.num_frames,
                                                          m.spec.tokens_per_frame, m.spec.latent_dim)
    video = batch["video"].copy()
    video[:, 2] = 255 - video[:, 2]  # step t's latents depend on frame t only
    z2 = np.asarray(m.encode(video))
    np.testing.assert_array_equal(np.delete(z2, 2, axis=1), np.delete(z, 2, axis=1))
    assert np.abs(z2[:, 2] - z[:, 2]).max() > 1e-3


@pytest.mark.parametrize("pool,action_cond", MODES)
def test_every_mode_is_block_causal_and_cacheable(pool, action_cond):
    m = make(pool, action_cond)
    z, cond, proprio, pm = _inputs(m)
    full = np.asarray(m.predictor(z, cond, proprio, pm))
    assert full.shape == z.shape
    head, cache = m.predictor.prefill(z[:, :2], cond[:, :2], proprio[:, :2], pm[:, :2])
    tail, _ = m.predictor.extend(z[:, 2:], cond[:, 2:], proprio[:, 2:], pm[:, 2:], cache, start=2)
    np.testing.assert_allclose(np.asarray(head), full[:, :2], atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(tail), full[:, 2:], atol=2e-5, rtol=1e-5)
    out = np.asarray(m.predictor(z, cond.at[:, 2].add(1.0), proprio, pm))
    np.testing.assert_array_equal(out[:, :2], full[:, :2])  # earlier steps untouched


@pytest.mark.parametrize("pool,action_cond", MODES)
def test_the_conditioning_reaches_the_prediction_in_every_mode(pool, action_cond):
    """Change only c_t: prediction t moves. In 'adaln' the conditioning has no token and no
    channel path, so this is the modulation alone."""
    m = make(pool, action_cond)
    z, cond, proprio, pm = _inputs(m)
    ref = np.asarray(m.predictor(z, cond, proprio, pm))
    out = np.asarray(m.predictor(z, cond.at[:, 1].multiply(-1.0), proprio, pm))
    assert np.abs(out[:, 1] - ref[:, 1]).max() > 1e-3


def test_adaln_starts_as_the_identity_of_the_blocks():
    """AdaLN-zero: with the modulation map at its zero init, every block adds nothing, so the
    conditioning cannot move the prediction yet (the gradient into the map is not zero)."""
    cfg = tiny_config(**{"model.predictor.action_cond": "adaln"})
    m = trained_like(WorldActionModel(cfg.model, rngs=nnx.Rngs(0)))
    z, cond, proprio, pm = _inputs(m)
    a = np.asarray(m.predictor(z, cond, proprio, pm))
    b = np.asarray(m.predictor(z, 2.0 * cond, proprio, pm))
    np.testing.assert_array_equal(a, b)

    grads = nnx.grad(lambda p: jnp.sum(p(z, cond, proprio, pm) ** 2))(m.predictor)
    assert float(jnp.abs(grads.blocks.blocks.ada.kernel[...]).max()) > 0.0


def test_pooling_refuses_patch_ssl():
    cfg = tiny_config(**{"model.pool.kind": "mean", "model.ssl.enabled": True})
    with pytest.raises(ValueError, match="pool.kind"):
        WorldActionModel(cfg.model, rngs=nnx.Rngs(0))


def test_grid_pooling_averages_regions_and_one_region_is_the_mean_pool():
    """`pool.kind='grid'` with grid 1 is the mean pool exactly (same parameters); with grid 2 each
    latent is the projector of its quadrant's mean token, so the four quadrants' latents differ
    and their tokens' overall mean projects to the mean-pooled latent."""
    mean_m = make("mean", "adaln")
    cfg1 = tiny_config(**{"model.pool.kind": "grid", "model.pool.grid": 1, "model.pool.dim": 24,
                          "model.predictor.action_cond": "adaln"})
    grid1 = trained_like(WorldActionModel(cfg1.model, rngs=nnx.Rngs(0)))
    nnx.update(grid1.encoder, nnx.state(mean_m.encoder))
    video = random_batch(cfg1, batch_size=2)["video"]
    np.testing.assert_array_equal(np.asarray(grid1.encode(video)), np.asarray(mean_m.encode(video)))
    grid2 = make("grid", "adaln")
    z = np.asarray(grid2.encode(video))
    assert z.shape[2] == 4 and np.abs(z[:, :, 0] - z[:, :, 3]).max() > 1e-3
    g = grid2.spec.grid_hw
    assert g == (2, 2) and grid2.spec.pooled


def test_grid_pooling_refuses_a_grid_that_does_not_divide_the_patches():
    cfg = tiny_config(**{"model.pool.kind": "grid", "model.pool.grid": 3})
    with pytest.raises(ValueError, match="pool.grid=3"):
        WorldActionModel(cfg.model, rngs=nnx.Rngs(0))


def test_attention_pooling_reads_the_token_its_query_matches_and_contains_the_mean_pool():
    """Zero keys weight every token alike (the mean of the values); a key that matches the query
    on one token only reads that token's value."""
    from wam_jax.models.attention_pool import AttentionPool

    pool = AttentionPool(8, 2, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (3, 5, 8))
    pool.key.kernel[...] = jnp.zeros((8, 8))
    np.testing.assert_allclose(np.asarray(pool(x)), np.asarray(pool.out(pool.value(x).mean(1))), atol=1e-5)
    pool.key.kernel[...] = jnp.eye(8)
    pool.key.bias[...] = jnp.zeros(8)
    hot = x.at[:, 3].set(200.0 * jnp.sign(pool.query[...]))  # token 3 matches the query in every head
    np.testing.assert_allclose(np.asarray(pool(hot)), np.asarray(pool.out(pool.value(hot)[:, 3])), atol=1e-4)
