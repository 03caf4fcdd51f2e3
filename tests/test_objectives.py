"""The loss: masking (exactly-zero gradients where a modality is absent), padded steps, batch
validation, SSL / bottleneck / frozen variants; health metrics and tube masks against references."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.test_model import random_batch, tiny_config, trained_like
from wam_jax.models.world_model import WorldActionModel
from wam_jax.training import health, masks, objectives

ACTION_PATHS = ("inverse_head", "policy_head", "action_embedder")


def loss_and_grads(loss_cfg):
    """jitted (model, target, batch, key) -> (loss, metrics, grads w.r.t. every model Param).
    The target is an argument of the differentiated function (same trace level as the model),
    but only the model (argnum 0) is differentiated."""

    @nnx.jit
    def run(model, target, batch, key):
        def loss(m, t):
            return objectives.loss_fn(m, t, batch, key, loss_cfg, 0)

        (value, metrics), grads = nnx.value_and_grad(loss, has_aux=True)(model, target)
        return value, metrics, grads

    return run


def _leaves(state) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(state)]


def _max_abs(state) -> float:
    return max(float(np.abs(x).max()) for x in _leaves(state))


@pytest.fixture(scope="module")
def setup():
    # No usage hinge here: latent-action gradients can then only come through the predictor's
    # conditioning, which is what the routing tests are about (the hinge is tested below).
    cfg = tiny_config(**{"loss.bottleneck": 0.0})
    model = trained_like(WorldActionModel(cfg.model, rngs=nnx.Rngs(0)))
    return cfg, model, model.make_target_encoder(), loss_and_grads(cfg.loss)


def _only(cfg, term: str) -> dict:
    """`cfg.loss` with every term weight 0 but `term`'s (1)."""
    weights = {name: float(name == term) for name in objectives.LOSS_TERMS}
    return {**cfg.loss.to_dict(), **weights}


def _run(setup, batch, seed=0):
    _, model, target, run = setup
    return run(model, target, batch, jax.random.key(seed))


def test_action_free_batch_gives_exactly_zero_gradient_to_action_paths(setup):
    cfg = setup[0]
    batch = random_batch(cfg, labeled=0)
    loss, metrics, grads = _run(setup, batch)
    assert np.isfinite(float(loss))
    for name in ACTION_PATHS:
        leaves = _leaves(grads[name])
        assert leaves
        for leaf in leaves:
            assert np.all(leaf == 0.0), name  # exactly, not approximately
    for term in ("act", "act_pred", "policy", "align"):
        assert float(metrics[f"loss/{term}"]) == 0.0
    # The action-free paths do learn from this batch. The predictor works on target latents, so
    # without SSL the online encoder learns nothing from unlabeled video (SSL is its path).
    assert _max_abs(grads["latent_actions"]) > 0
    assert _max_abs(grads["predictor"]) > 0
    assert _max_abs(grads["encoder"]) == 0.0


def test_mixed_batch_trains_both_the_embedder_and_the_latent_action_model(setup):
    cfg = setup[0]
    batch = random_batch(cfg, labeled=2)  # clips 0, 1 labeled, clips 2, 3 action-free
    loss, metrics, grads = _run(setup, batch)
    assert np.isfinite(float(loss))
    for name in (*ACTION_PATHS, "latent_actions", "predictor"):
        assert _max_abs(grads[name]) > 0, name
    # Per-embodiment maps: only the embodiments of labeled clips (ids 0, 1) receive gradient.
    g_in = np.asarray(grads["action_embedder"]["action_in"]["kernel"])
    assert np.abs(g_in[:2]).max() > 0 and np.all(g_in[2:] == 0.0)
    assert 0.0 < float(metrics["act/labeled_frac"]) < 1.0


def test_action_decoding_of_predictions_trains_the_head_not_the_predictor(setup):
    """act_pred (the inverse head on predicted latents) teaches the head to read imagined
    futures; it must not bend the predictor towards action-decodable latents."""
    cfg, model, target, _ = setup
    only = _only(cfg, "act_pred")
    run = loss_and_grads(only)
    _, metrics, grads = run(model, target, random_batch(cfg, labeled=4), jax.random.key(0))
    assert float(metrics["loss/act_pred"]) > 0
    assert _max_abs(grads["inverse_head"]) > 0
    for name in ("predictor", "action_embedder", "latent_actions"):
        assert _max_abs(grads[name]) == 0.0, name


def test_padded_steps_do_not_touch_the_loss(setup):
    cfg = setup[0]
    batch = random_batch(cfg, labeled=3)
    batch["timestep_mask"][0, -1] = False  # clip 0 ended one frame early
    batch["action_mask"][0, -1] = True  # a mask claiming a label on the padded step is ignored
    loss, metrics, grads = _run(setup, batch)
    other = {k: v.copy() for k, v in batch.items()}
    other["video"][0, -1] = 255 - other["video"][0, -1]
    other["action"][0, -1] = 5.0
    other["proprio"][0, -1] = -3.0
    loss2, metrics2, grads2 = _run(setup, other)
    np.testing.assert_allclose(float(loss2), float(loss), rtol=1e-6)
    for k in metrics:
        np.testing.assert_allclose(float(metrics2[k]), float(metrics[k]), rtol=1e-5, atol=1e-6,
                                   err_msg=k)
    for a, b in zip(_leaves(grads), _leaves(grads2), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_metrics_are_reported_and_finite(setup):
    cfg = setup[0]
    _, metrics, _ = _run(setup, random_batch(cfg, labeled=2))
    expected = {"loss", "loss/tf", "loss/roll", "loss/align", "loss/act",
                "loss/act_pred", "loss/policy", "health/target_std", "health/target_eff_rank",
                "health/copy_l1", "health/pred_l1", "health/pred_to_copy", "la/code_usage",
                "la/code_entropy", "act/r2", "source/0/tf", "source/2/copy_l1", "source/7/frac"}
    assert expected <= set(metrics)
    for k, v in metrics.items():
        assert np.isfinite(float(v)), k
    total = sum(float(cfg.loss[t]) * float(metrics[f"loss/{t}"])
                for t in objectives.LOSS_TERMS if f"loss/{t}" in metrics)
    np.testing.assert_allclose(float(metrics["loss"]), total, rtol=1e-5)
    assert float(metrics["source/0/frac"]) == 0.5 and float(metrics["source/5/frac"]) == 0.0
    assert 0 < float(metrics["health/target_eff_rank"]) <= model_dim(setup)


def model_dim(setup) -> int:
    return setup[1].spec.latent_dim


@pytest.mark.parametrize("key,bad,expected", [
    ("video", lambda b: b["video"][..., :2], "[B, T, H, W, 3]"),
    ("video", lambda b: b["video"].astype(np.float32), "uint8"),
    ("action", lambda b: b["action"][:, :, :3], "[4, 3, 7]"),
    ("action_mask", lambda b: b["action_mask"].astype(np.int32), "bool"),
    ("timestep_mask", lambda b: b["timestep_mask"][:, :2], "[4, 4]"),
])
def test_loss_rejects_bad_batches_naming_the_key(setup, key, bad, expected):
    cfg, model, target, _ = setup
    batch = random_batch(cfg)
    batch[key] = bad(batch)
    with pytest.raises(ValueError) as err:
        objectives.loss_fn(model, target, batch, jax.random.key(0), cfg.loss, 0)
    assert repr(key) in str(err.value) and expected in str(err.value), str(err.value)
    del batch[key]
    with pytest.raises(ValueError, match="missing keys"):
        objectives.loss_fn(model, target, batch, jax.random.key(0), cfg.loss, 0)


def test_ssl_and_gaussian_bottleneck_terms():
    cfg = tiny_config(**{"model.ssl.enabled": True, "model.latent_action.bottleneck": "gaussian",
                         "loss.label_dropout": 0.5, "loss.ssl": 1.0})
    model = WorldActionModel(cfg.model, rngs=nnx.Rngs(1))
    target = model.make_target_encoder()
    batch = random_batch(cfg, labeled=2)
    loss, metrics, grads = loss_and_grads(cfg.loss)(model, target, batch, jax.random.key(0))
    for k in ("loss/ssl", "loss/bottleneck", "la/kl_per_dim"):
        assert np.isfinite(float(metrics[k])) and float(metrics[k]) > 0, k
    assert _max_abs(grads["ssl_predictor"]) > 0
    assert _max_abs(grads["encoder"]) > 0
    # The target encoder is an argument, never differentiated: no gradient leaves for it.
    assert "target" not in grads


def test_masked_video_conditioning_ablation():
    """video_cond='mask' (the ablation's naive arm): action-free steps are conditioned on one
    learned token, the latent-action model gets no gradient, and labeled steps still use g(a)."""
    cfg = tiny_config(**{"model.latent_action.video_cond": "mask"})
    model = trained_like(WorldActionModel(cfg.model, rngs=nnx.Rngs(3)))  # non-zero output layers
    target = model.make_target_encoder()
    run = loss_and_grads(cfg.loss)
    _, metrics, grads = run(model, target, random_batch(cfg, labeled=2), jax.random.key(0))
    assert _max_abs(grads["cond_mask"]) > 0  # the mask token conditions the action-free clips
    assert _max_abs(grads["latent_actions"]) == 0.0
    assert _max_abs(grads["action_embedder"]) > 0
    assert "loss/align" not in metrics and "loss/bottleneck" not in metrics
    # Fully labeled: the mask token conditions nothing.
    _, _, grads = run(model, target, random_batch(cfg, labeled=4), jax.random.key(0))
    assert _max_abs(grads["cond_mask"]) == 0.0
    with pytest.raises(ValueError, match="video_cond"):
        WorldActionModel(tiny_config(**{"model.latent_action.video_cond": "zeros"}).model, rngs=nnx.Rngs(0))


def test_encoder_from_heads_scales_the_action_heads_gradient_into_the_encoder(setup):
    cfg, model, target, run = setup
    batch = random_batch(cfg, labeled=4)
    _, _, grads = run(model, target, batch, jax.random.key(0))
    full = _max_abs(grads["encoder"])
    assert full > 0  # without SSL, the action heads are the encoder's only teacher
    detached = cfg.loss.copy_and_resolve_references()
    detached.encoder_from_heads = 0.0
    _, metrics, grads0 = loss_and_grads(detached)(model, target, batch, jax.random.key(0))
    assert _max_abs(grads0["encoder"]) == 0.0
    assert _max_abs(grads0["inverse_head"]) > 0 and float(metrics["loss/act"]) > 0  # the heads still learn
    half = cfg.loss.copy_and_resolve_references()
    half.encoder_from_heads = 0.5
    _, _, grads_half = loss_and_grads(half)(model, target, batch, jax.random.key(0))
    np.testing.assert_allclose(_max_abs(grads_half["encoder"]), 0.5 * full, rtol=1e-4)


def test_align_directions_route_gradients(setup):
    """align: g(a) -> sg(u) trains the action embedder only; align_u: u -> sg(g(a)) trains the
    latent-action model only (each measured with every other term off)."""
    cfg, model, target, _ = setup
    batch = random_batch(cfg, labeled=4)
    for term, trained, untouched in (("align", "action_embedder", "latent_actions"),
                                     ("align_u", "latent_actions", "action_embedder")):
        _, metrics, grads = loss_and_grads(_only(cfg, term))(model, target, batch, jax.random.key(0))
        assert float(metrics[f"loss/{term}"]) > 0
        assert _max_abs(grads[trained]) > 0, term
        assert _max_abs(grads[untouched]) == 0.0, term


def test_frozen_target_trains_everything_but_the_encoder():
    cfg = tiny_config(**{"model.target": "frozen", "model.latent_action.bottleneck": "noisy"})
    model = WorldActionModel(cfg.model, rngs=nnx.Rngs(2))
    batch = random_batch(cfg, labeled=2)

    @nnx.jit
    def run(model, batch):
        def loss(m):
            return objectives.loss_fn(m, None, batch, jax.random.key(0), cfg.loss, 0)

        diff = nnx.DiffState(0, nnx.Param)
        return nnx.value_and_grad(loss, argnums=diff, has_aux=True)(model)

    (loss, metrics), grads = run(model, batch)
    assert np.isfinite(float(loss))
    assert float(metrics["health/pred_to_copy"]) == pytest.approx(1.0, abs=1e-6)  # zero-init delta
    for leaf in _leaves(grads["encoder"]):
        assert np.all(leaf == 0.0)  # stop-gradient: the frozen encoder is its own target
    assert _max_abs(grads["predictor"]) > 0 and _max_abs(grads["latent_actions"]) > 0
    assert float(metrics["loss/bottleneck"]) >= 0.0 and "la/kl_per_dim" in metrics
    with pytest.raises(ValueError, match="target encoder"):
        objectives.loss_fn(WorldActionModel(tiny_config().model, rngs=nnx.Rngs(0)), None, batch,
                           jax.random.key(0), cfg.loss, 0)


# ---------------------------------------------------------------------------------------------
# Metrics and masks against references
# ---------------------------------------------------------------------------------------------


def test_masked_mean_empty_mask_is_zero_with_zero_gradient():
    x = jnp.array([1.0, jnp.inf, jnp.nan])
    mask = jnp.array([False, False, False])
    assert float(objectives.masked_mean(x, mask)) == 0.0
    g = jax.grad(lambda v: objectives.masked_mean(v * 2.0, mask))(x)
    assert np.all(np.asarray(g) == 0.0)
    m2 = jnp.array([True, False, False])
    assert float(objectives.masked_mean(x, m2)) == 1.0
    assert np.all(np.isfinite(np.asarray(jax.grad(lambda v: objectives.masked_mean(v, m2))(x))))


def test_effective_rank_matches_definition():
    rng = np.random.default_rng(0)
    d = 16
    q, _ = np.linalg.qr(rng.normal(size=(64, d)))
    full = jnp.asarray(q * 3.0, jnp.float32)  # equal singular values: effective rank d
    mask = jnp.ones((64,), bool)
    np.testing.assert_allclose(float(_rank(full, mask)), d, rtol=1e-3)
    rank2 = jnp.asarray(rng.normal(size=(64, 2)) @ rng.normal(size=(2, d)), jnp.float32)
    s = np.linalg.svd(np.asarray(rank2), compute_uv=False)
    p = s / s.sum()
    ref = math.exp(-np.sum(p * np.log(p + 1e-12)))
    np.testing.assert_allclose(float(_rank(rank2, mask)), ref, rtol=1e-3)
    # Masked rows do not count.
    junk = full.at[:8].set(100.0)
    m = mask.at[:8].set(False)
    masked_rank = float(_rank(junk, m))
    np.testing.assert_allclose(masked_rank, float(_rank(full[8:], mask[8:])), rtol=1e-3)
    # Gram matrices summed over batches give the rank of all rows; NumPy (float64) in, NumPy out.
    g1, n1 = health.masked_gram(rank2[:40], mask[:40])
    g2, n2 = health.masked_gram(rank2[40:], mask[40:])
    host = health.effective_rank(np.asarray(g1, np.float64) + np.asarray(g2, np.float64),
                                     float(n1 + n2))
    assert isinstance(host, np.floating) and host.dtype == np.float64
    np.testing.assert_allclose(float(host), ref, rtol=1e-3)
    jitted = jax.jit(health.effective_rank)(g1 + g2, n1 + n2)
    np.testing.assert_allclose(float(jitted), float(host), rtol=1e-4)
    assert float(health.feature_std(jnp.ones((10, 4)), jnp.ones((10,), bool))) < 1e-5


def _rank(z, mask):
    return health.effective_rank(*health.masked_gram(z, mask))


def test_code_usage_matches_numpy():
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 3, size=(200, 4)).astype(np.int32)
    mask = rng.random(200) < 0.7
    usage, entropy = jax.jit(health.code_usage, static_argnums=2)(codes, mask, 81)
    valid = codes[mask]
    _, counts = np.unique(valid, axis=0, return_counts=True)
    p = counts / counts.sum()
    np.testing.assert_allclose(float(usage), len(counts) / min(81, mask.sum()), rtol=1e-6)
    np.testing.assert_allclose(float(entropy), -np.sum(p * np.log(p)), rtol=1e-5)
    one, zero_h = health.code_usage(np.zeros((10, 4), np.int32), np.ones(10, bool), 81)
    assert float(one) == pytest.approx(0.1) and float(zero_h) == pytest.approx(0.0, abs=1e-6)


def test_r_squared_and_usage_hinge():
    y = jnp.asarray(np.random.default_rng(2).normal(size=(50, 3)), jnp.float32)
    mask = jnp.ones(y.shape, bool).at[:, 2].set(False)  # dim 2 unlabeled: ignored
    assert float(health.r_squared(y, y, mask)) == pytest.approx(1.0)
    mean = jnp.broadcast_to(jnp.mean(y, axis=0), y.shape)
    assert float(health.r_squared(mean, y, mask)) == pytest.approx(0.0, abs=1e-5)
    flat = jnp.zeros((32, 4))
    assert float(objectives.usage_hinge(flat, jnp.ones(32, bool))) == pytest.approx(0.5 - 0.01, abs=1e-4)
    spread = jnp.asarray(np.random.default_rng(3).uniform(-1, 1, (256, 4)), jnp.float32)
    assert float(objectives.usage_hinge(spread, jnp.ones(256, bool))) == 0.0


@pytest.mark.parametrize("grid", [(2, 4, 4), (1, 8, 8), (3, 6, 5)])
def test_tube_masks_static_disjoint_and_tube_shaped(grid):
    b, (t, hp, wp) = 3, grid
    sample = jax.jit(lambda k: masks.sample_tube_masks(
        k, b, grid, mask_ratio=0.6, num_blocks=3, block_scale=0.2))
    m = sample(jax.random.key(0))
    n = hp * wp
    n_mask = masks.num_masked_spatial((hp, wp), 0.6)
    assert m.keep_idx.shape == (b, t * (n - n_mask)) and m.mask_idx.shape == (b, t * n_mask)
    keep, hide = np.asarray(m.keep_idx), np.asarray(m.mask_idx)
    for i in range(b):
        both = np.concatenate([keep[i], hide[i]])
        np.testing.assert_array_equal(np.sort(both), np.arange(t * n))  # a partition
        assert np.all(np.diff(keep[i]) > 0) and np.all(np.diff(hide[i]) > 0)
        spatial = hide[i].reshape(t, n_mask) - (np.arange(t) * n)[:, None]
        assert np.all(spatial == spatial[0])  # the same positions in every frame: a tube
    other = np.asarray(sample(jax.random.key(1)).mask_idx)
    assert not np.array_equal(other, hide)


def test_tube_masks_prefer_blocks():
    """With one block smaller than the masking budget, the whole block is masked."""
    m = masks.sample_tube_masks(jax.random.key(3), 8, (1, 8, 8), mask_ratio=0.5, num_blocks=1,
                                block_scale=0.25)
    for i in range(8):
        hidden = np.zeros(64, bool)
        hidden[np.asarray(m.mask_idx[i])] = True
        grid = hidden.reshape(8, 8)
        # Some 4x4 (area 16 = 0.25 * 64, aspect in [0.75, 1.5] -> 3..5 sides) rectangle is hidden.
        found = any(grid[r:r + h, c:c + w].all() for h in range(3, 6) for w in range(3, 6)
                    for r in range(9 - h) for c in range(9 - w) if h * w >= 12)
        assert found
    with pytest.raises(ValueError, match="mask_ratio"):
        masks.sample_tube_masks(jax.random.key(0), 1, (1, 4, 4), mask_ratio=1.0, num_blocks=1,
                                block_scale=0.2)


def test_sigreg_is_small_for_gaussian_rows_and_large_for_collapsed_ones():
    from wam_jax.training.anti_collapse import sigreg

    rng = np.random.default_rng(0)
    key = jax.random.key(0)
    mask = jnp.ones((512,), bool)
    gauss = sigreg(jnp.asarray(rng.normal(size=(512, 32)), jnp.float32), mask, key)
    rank2 = sigreg(jnp.asarray(rng.normal(size=(512, 2)) @ rng.normal(size=(2, 32)), jnp.float32), mask, key)
    scaled = sigreg(jnp.asarray(3.0 * rng.normal(size=(512, 32)), jnp.float32), mask, key)
    point = sigreg(jnp.ones((512, 32), jnp.float32), mask, key)
    assert float(gauss) < 3.0, gauss
    assert min(float(rank2), float(scaled), float(point)) > 10 * float(gauss)
    # Masked rows do not count: garbage in them changes nothing.
    x = jnp.asarray(rng.normal(size=(512, 32)), jnp.float32)
    half = jnp.arange(512) < 256
    garbage = x.at[256:].set(100.0)
    np.testing.assert_allclose(float(sigreg(x, half, key)), float(sigreg(garbage, half, key)), rtol=1e-5)
    # Differentiable, and its gradient pushes a collapsed batch apart.
    g = jax.grad(lambda y: sigreg(y, mask, key))(jnp.asarray(0.1 * rng.normal(size=(512, 32)), jnp.float32))
    assert np.isfinite(np.asarray(g)).all() and float(jnp.abs(g).sum()) > 0


def test_vicreg_terms_match_their_definitions():
    from wam_jax.training.anti_collapse import vicreg_terms

    rng = np.random.default_rng(1)
    x = rng.normal(size=(256, 8)) * np.array([0.1, 0.5, 1, 2, 1, 1, 1, 1])
    x[:, 5] = x[:, 4] + 0.1 * rng.normal(size=256)  # a correlated pair
    var, cov = vicreg_terms(jnp.asarray(x, jnp.float32), jnp.ones((256,), bool))
    c = np.cov(x, rowvar=False)
    want_var = np.mean(np.maximum(0.0, 1.0 - np.sqrt(np.diag(c) + 1e-4)))
    want_cov = (np.sum(c ** 2) - np.sum(np.diag(c) ** 2)) / 8
    np.testing.assert_allclose(float(var), want_var, rtol=1e-4)
    np.testing.assert_allclose(float(cov), want_cov, rtol=1e-3)


def test_anti_collapse_terms_enter_the_loss_only_when_weighted():
    cfg = tiny_config()
    model = WorldActionModel(cfg.model, rngs=nnx.Rngs(0))
    target = model.make_target_encoder()
    batch = random_batch(cfg)
    key = jax.random.key(0)
    base_loss, m0 = objectives.loss_fn(model, target, batch, key, cfg.loss, 0)
    assert not any(k in m0 for k in ("loss/sigreg", "loss/vic_var", "loss/vic_cov"))
    cfg.loss.sigreg, cfg.loss.vic_var, cfg.loss.vic_cov = 0.5, 1.0, 0.1
    loss, m = objectives.loss_fn(model, target, batch, key, cfg.loss, 0)
    extra = 0.5 * m["loss/sigreg"] + 1.0 * m["loss/vic_var"] + 0.1 * m["loss/vic_cov"]
    np.testing.assert_allclose(float(loss), float(base_loss + extra), rtol=1e-5)
    assert float(m["loss/sigreg"]) > 0


def test_online_target_sends_the_prediction_error_into_the_encoder():
    """'online': the encoder receives gradient from the teacher-forcing term alone ('ema' and
    'frozen' do not: their predictor targets and inputs are stop-gradient)."""
    for target_mode, expect in (("online", True), ("ema", False)):
        cfg = tiny_config(**{"model.target": target_mode})
        model = trained_like(WorldActionModel(cfg.model, rngs=nnx.Rngs(0)))
        _, _, grads = loss_and_grads(_only(cfg, "tf"))(model, model.make_target_encoder(),
                                                        random_batch(cfg), jax.random.key(0))
        assert (_max_abs(grads["encoder"]) > 0) == expect, target_mode


def test_anti_collapse_gradient_reaches_the_encoder_whatever_the_heads_send():
    """`loss.encoder_from_heads=0` stops the action heads' gradient into the encoder, not the
    anti-collapse terms' (they are the encoder's own objective)."""
    cfg = tiny_config(**{"model.target": "online", "loss.encoder_from_heads": 0.0})
    model = WorldActionModel(cfg.model, rngs=nnx.Rngs(0))
    _, _, grads = loss_and_grads(_only(cfg, "vic_var"))(model, model.make_target_encoder(),
                                                         random_batch(cfg), jax.random.key(0))
    assert _max_abs(grads["encoder"]) > 0


def test_privileged_readout_trains_the_head_and_the_encoder_where_the_state_is_recorded():
    """loss.privileged: the readout's squared error on frames whose state is recorded; its gradient
    reaches the head and the encoder even with `encoder_from_heads=0` (it is the encoder's own
    objective, as the anti-collapse terms are); without a recorded state it is exactly zero."""
    cfg = tiny_config(**{"model.target": "online", "model.privileged_dim": 3, "loss.encoder_from_heads": 0.0})
    model = WorldActionModel(cfg.model, rngs=nnx.Rngs(0))
    run = loss_and_grads(_only(cfg, "privileged"))
    batch = random_batch(cfg)
    loss, metrics, grads = run(model, model.make_target_encoder(), batch, jax.random.key(0))
    assert float(loss) > 0.5 and float(metrics["loss/privileged"]) == float(loss)  # targets ~N(0, 1)
    assert _max_abs(grads["privileged_head"]) > 0 and _max_abs(grads["encoder"]) > 0
    unrecorded = dict(batch, privileged_mask=np.zeros_like(batch["privileged_mask"]))
    loss, _, grads = run(model, model.make_target_encoder(), unrecorded, jax.random.key(0))
    assert float(loss) == 0.0
    assert _max_abs(grads["privileged_head"]) == 0 and _max_abs(grads["encoder"]) == 0
    with pytest.raises(ValueError, match="model.privileged_dim"):
        plain = tiny_config()
        objectives.loss_fn(WorldActionModel(plain.model, rngs=nnx.Rngs(0)), None, random_batch(plain),
                           jax.random.key(0), _only(plain, "privileged"))
