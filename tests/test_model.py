"""WorldActionModel: block causality, rollout = repeated prediction, target encoder separation,
bottlenecks, and input validation at the public entry points."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import base
from data_pipelines import schema
from wam_jax.models import latent_actions as la_lib
from wam_jax.models.world_model import WorldActionModel

IMAGE = 32  # 4 x 4 patches of 8: keeps every test small


def tiny_config(**overrides):
    """The tiny preset at 32x32 frames; `overrides` are dotted config paths."""
    cfg = base.get_config("tiny")
    cfg.model.image_size = IMAGE
    for path, value in overrides.items():
        node = cfg
        *parents, leaf = path.split(".")
        for p in parents:
            node = node[p]
        if leaf not in node:  # as `wam-train` does: a typo must not pass silently
            raise KeyError(f"tiny_config: unknown config key {path!r}")
        node[leaf] = value
    return cfg


def random_batch(cfg, batch_size: int = 4, seed: int = 0, labeled: int | None = None) -> dict:
    """A batch in the schema of docs/ARCHITECTURE.md; the first `labeled` clips carry actions
    (default all), the others are action-free (mask false, zeros)."""
    rng = np.random.default_rng(seed)
    b, t = batch_size, cfg.data.num_frames
    a, p, s = cfg.model.action_dim, cfg.model.proprio_dim, cfg.model.image_size
    labeled = b if labeled is None else labeled
    action_mask = np.zeros((b, t - 1, a), bool)
    action_mask[:labeled, :, : a - 1] = True  # the last action dim is padding
    action = np.where(action_mask, rng.normal(size=(b, t - 1, a)), 0.0).astype(np.float32)
    return {
        "video": rng.integers(0, 256, (b, t, s, s, 3), dtype=np.uint8),
        "action": action,
        "action_mask": action_mask,
        "proprio": rng.normal(size=(b, t, p)).astype(np.float32),
        "proprio_mask": np.ones((b, t, p), bool),
        "privileged": rng.normal(size=(b, t, schema.privileged_width(cfg.model.privileged_dim))).astype(np.float32),
        "privileged_mask": np.full((b, t, schema.privileged_width(cfg.model.privileged_dim)),
                                   cfg.model.privileged_dim > 0),
        "timestep_mask": np.ones((b, t), bool),
        "embodiment_id": (np.arange(b) % cfg.model.num_embodiments).astype(np.int32),
        "source_id": (np.arange(b) % 3).astype(np.int32),
        "dt": np.full((b,), 0.1, np.float32),
    }


def trained_like(model: WorldActionModel, seed: int = 0) -> WorldActionModel:
    """Gives the predictor's zero-initialised output map random weights, as after some training:
    at initialisation the prediction is exactly the copy baseline and nothing upstream of the
    output (conditioning included) can be seen to matter, or receive gradient."""
    k = model.predictor.latent_out.kernel
    k[...] = 0.02 * jax.random.normal(jax.random.key(seed), k[...].shape, k[...].dtype)
    return model


@pytest.fixture(scope="module")
def cfg():
    return tiny_config()


@pytest.fixture(scope="module")
def model(cfg):
    return trained_like(WorldActionModel(cfg.model, rngs=nnx.Rngs(0)))


def _latents(model, b, s, seed):
    n, d = model.spec.tokens_per_frame, model.spec.latent_dim
    return jax.random.normal(jax.random.key(seed), (b, s, n, d))


@nnx.jit
def _predict(model, z, cond, proprio, proprio_mask):
    return model.predict(z, cond, proprio, proprio_mask)


def test_predict_is_frame_block_causal(model):
    b, s, du, p = 2, 4, model.spec.latent_action_dim, model.spec.proprio_dim
    z = _latents(model, b, s, 0)
    cond = jax.random.normal(jax.random.key(1), (b, s, du))
    proprio = jax.random.normal(jax.random.key(2), (b, s, p))
    pmask = jnp.ones((b, s, p), bool)
    base_out = np.asarray(_predict(model, z, cond, proprio, pmask))
    assert base_out.shape == z.shape
    for t in range(s - 1):
        # Perturb step t+1 (latents, conditioning and proprio): outputs <= t must not move at all.
        z2 = z.at[:, t + 1].add(1.0)
        c2 = cond.at[:, t + 1].add(1.0)
        p2 = proprio.at[:, t + 1].add(1.0)
        out = np.asarray(_predict(model, z2, c2, p2, pmask))
        np.testing.assert_array_equal(out[:, : t + 1], base_out[:, : t + 1])
        assert np.abs(out[:, t + 1] - base_out[:, t + 1]).max() > 1e-3  # step t+1 does react


def test_changing_frame_or_action_leaves_earlier_predictions_bit_identical(model, cfg):
    batch = random_batch(cfg, batch_size=2)

    @nnx.jit
    def run(model, video, action, action_mask, emb, proprio):
        z = model.encode(video)
        cond = model.embed_actions(action, action_mask, emb)
        return model.predict(z[:, :-1], cond, proprio[:, :-1])

    args = [batch[k] for k in ("video", "action", "action_mask", "embodiment_id", "proprio")]
    ref = np.asarray(run(model, *args))
    t = 1
    video = batch["video"].copy()
    video[:, t + 1] = 255 - video[:, t + 1]
    out_v = np.asarray(run(model, video, *args[1:]))
    action = batch["action"].copy()
    action[:, t + 1] += 3.0
    out_a = np.asarray(run(model, args[0], action, *args[2:]))
    for out in (out_v, out_a):
        np.testing.assert_array_equal(out[:, : t + 1], ref[:, : t + 1])
        assert np.abs(out[:, t + 1] - ref[:, t + 1]).max() > 1e-4


def test_rollout_equals_repeated_single_step_predictions(model):
    b, c, k = 2, 2, 3
    du, p = model.spec.latent_action_dim, model.spec.proprio_dim
    z_ctx = _latents(model, b, c, 3)
    conds = jax.random.normal(jax.random.key(4), (b, c - 1 + k, du))
    proprio = jax.random.normal(jax.random.key(5), (b, c, p))
    rolled = np.asarray(nnx.jit(lambda m, *a: m.rollout(*a, k=k))(model, z_ctx, conds, proprio))
    assert rolled.shape == (b, k, *z_ctx.shape[2:])

    seq = z_ctx
    for i in range(k):
        s = c + i
        # Future proprio is unknown: zeros with mask false, exactly what rollout assumes.
        pp = jnp.concatenate([proprio, jnp.zeros((b, s - c, p))], axis=1)
        pm = jnp.concatenate([jnp.ones((b, c, p), bool), jnp.zeros((b, s - c, p), bool)], axis=1)
        nxt = _predict(model, seq, conds[:, :s], pp, pm)[:, -1]
        np.testing.assert_allclose(rolled[:, i], np.asarray(nxt), atol=2e-5, rtol=1e-5)
        seq = jnp.concatenate([seq, nxt[:, None]], axis=1)

    # The rollout's first step is the teacher-forced prediction of the last context step.
    tf = _predict(model, z_ctx, conds[:, :c], proprio, jnp.ones((b, c, p), bool))
    np.testing.assert_allclose(rolled[:, 0], np.asarray(tf[:, -1]), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("scan", [True, False])
def test_cached_extend_equals_the_full_block_causal_pass(scan):
    """prefill(steps 0..1) + extend(steps 2..3, two at once) = one pass over steps 0..3, for
    scanned and unrolled layers; a cache of the wrong length is refused."""
    m = trained_like(WorldActionModel(tiny_config(**{"model.scan_layers": scan}).model,
                                      rngs=nnx.Rngs(0)))
    b, s = 2, 4
    du, p = m.spec.latent_action_dim, m.spec.proprio_dim
    z = _latents(m, b, s, 7)
    cond = jax.random.normal(jax.random.key(8), (b, s, du))
    proprio = jax.random.normal(jax.random.key(9), (b, s, p))
    pm = jnp.ones((b, s, p), bool)
    full = m.predictor(z, cond, proprio, pm)
    head, cache = m.predictor.prefill(z[:, :2], cond[:, :2], proprio[:, :2], pm[:, :2])
    tail, cache = m.predictor.extend(z[:, 2:], cond[:, 2:], proprio[:, 2:], pm[:, 2:], cache, start=2)
    np.testing.assert_allclose(np.asarray(head), np.asarray(full[:, :2]), atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(tail), np.asarray(full[:, 2:]), atol=2e-5, rtol=1e-5)
    assert cache[0].shape[:3] == (m.predictor.blocks.depth, b, s * (m.spec.tokens_per_frame + 2))
    with pytest.raises(ValueError, match="cache holds"):
        m.predictor.extend(z[:, 3:], cond[:, 3:], None, None, cache, start=3)


def test_scan_unroll_reaches_every_layer_stack():
    """`model.scan_unroll` is honoured by every BlockStack of the model (encoder, predictors,
    latent-action trunk, heads), and the stacked parameter layout does not depend on it."""
    from wam_jax.models.blocks import BlockStack

    rolled = WorldActionModel(tiny_config().model, rngs=nnx.Rngs(0))
    unrolled = WorldActionModel(tiny_config(**{"model.scan_unroll": 0}).model, rngs=nnx.Rngs(0))
    stacks = [m for _, m in nnx.iter_graph(unrolled) if isinstance(m, BlockStack)]
    assert len(stacks) >= 4 and all(st.scan_unroll == 0 for st in stacks)
    assert all(m.scan_unroll == 1 for _, m in nnx.iter_graph(rolled) if isinstance(m, BlockStack))
    shapes = [jax.tree.map(lambda a: a.shape, nnx.to_pure_dict(nnx.state(m, nnx.Param)))
              for m in (rolled, unrolled)]
    assert shapes[0] == shapes[1]


def test_absent_proprio_is_one_input_whether_none_or_masked(model):
    """Planning and evaluation pass proprio=None; training sees absent proprio as mask=false.
    Both must reach the predictor as the same input."""
    b, s = 2, 3
    z = _latents(model, b, s, 11)
    cond = jax.random.normal(jax.random.key(12), (b, s, model.spec.latent_action_dim))
    p = model.spec.proprio_dim
    none = model.predictor(z, cond, None, None)
    masked = model.predictor(z, cond, jnp.full((b, s, p), 3.0), jnp.zeros((b, s, p), bool))
    np.testing.assert_array_equal(np.asarray(none), np.asarray(masked))


def test_target_encoder_lives_outside_the_trained_tree(model):
    target = model.make_target_encoder()
    online = nnx.state(model.encoder, nnx.Param)
    tgt = nnx.state(target, nnx.Param)
    assert jax.tree.structure(online) == jax.tree.structure(tgt)
    for a, b in zip(jax.tree.leaves(online), jax.tree.leaves(tgt), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert a.unsafe_buffer_pointer() != b.unsafe_buffer_pointer()  # own buffers: donatable
    n_model = len(jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert not any(target is m for _, m in nnx.iter_modules(model))
    # Changing the target does not touch the model.
    k = jax.tree.leaves(nnx.state(target.patch_embed, nnx.Param))[0]
    before = np.asarray(jax.tree.leaves(nnx.state(model.encoder.patch_embed, nnx.Param))[0]).copy()
    nnx.update(target.patch_embed, jax.tree.map(lambda x: x + 1.0, nnx.state(target.patch_embed)))
    np.testing.assert_array_equal(
        np.asarray(jax.tree.leaves(nnx.state(model.encoder.patch_embed, nnx.Param))[0]), before)
    assert len(jax.tree.leaves(nnx.state(model, nnx.Param))) == n_model
    del k


def test_trainable_filter_excludes_the_frozen_encoder():
    cfg = tiny_config(**{"model.target": "frozen"})
    model = WorldActionModel(cfg.model, rngs=nnx.Rngs(0))
    trained = nnx.state(model, model.trainable_filter)
    paths = ["/".join(map(str, p)) for p, _ in nnx.to_flat_state(trained)]
    assert paths and not any(p.startswith("encoder/") for p in paths)
    assert any(p.startswith("predictor/") for p in paths)
    everything = nnx.state(model, nnx.Param)
    n_enc = len(jax.tree.leaves(nnx.state(model.encoder, nnx.Param)))
    assert len(jax.tree.leaves(everything)) == len(jax.tree.leaves(trained)) + n_enc
    ema = WorldActionModel(tiny_config().model, rngs=nnx.Rngs(0))
    assert ema.trainable_filter is nnx.Param
    with pytest.raises(ValueError, match="model.ssl.enabled"):
        WorldActionModel(tiny_config(**{"model.target": "frozen", "model.ssl.enabled": True}).model,
                         rngs=nnx.Rngs(0))


def test_fsq_values_on_the_grid_with_straight_through_gradient():
    levels = (5, 4, 3)
    z = jax.random.normal(jax.random.key(0), (256, 3)) * 2
    q, idx, pre = la_lib.fsq_quantize(z, levels)
    for i, lv in enumerate(levels):
        half = lv // 2
        grid = (np.arange(lv) - half) / half
        np.testing.assert_allclose(np.asarray(q[:, i]), grid[np.asarray(idx[:, i])], atol=1e-6)
        assert set(np.unique(np.asarray(idx[:, i]))) <= set(range(lv))
    assert np.abs(np.asarray(q - pre)).max() <= 0.5 / min(lv // 2 for lv in levels) + 1e-6
    g = jax.grad(lambda x: jnp.sum(la_lib.fsq_quantize(x, levels)[0]))(z)
    assert np.all(np.asarray(g) > 0)  # rounding is skipped in the backward pass
    with pytest.raises(ValueError, match="fsq_levels"):
        la_lib.parse_fsq_levels((5, 5), 3)


@pytest.mark.parametrize("bottleneck", ["gaussian", "noisy"])
def test_continuous_bottlenecks(bottleneck):
    m = la_lib.LatentActionModel(
        latent_dim=16, dim=4, bottleneck=bottleneck, fsq_levels=5, noise_std=0.1, width=16,
        depth=1, heads=2, mlp_ratio=2.0, grid_hw=(2, 2), rngs=nnx.Rngs(0))
    z0, z1 = jax.random.normal(jax.random.key(1), (2, 3, 4, 4, 16))
    run = nnx.jit(lambda m, z0, z1, key: (m(z0, z1), m(z0, z1, key=key)))
    det, noisy = run(m, z0, z1, jax.random.key(2))
    np.testing.assert_array_equal(np.asarray(det.u), np.asarray(det.mean))  # no key: no noise
    assert noisy.u.shape == (3, 4, 4)
    assert not np.allclose(np.asarray(noisy.u), np.asarray(det.mean))
    assert np.all(np.asarray(det.kl) >= 0)
    if bottleneck == "noisy":
        assert np.abs(np.asarray(det.mean)).max() <= 1.0


@pytest.mark.parametrize("video_cond", ["latent", "mask"])
def test_conditioning_chooses_actions_or_latent_actions_per_step(video_cond):
    """c_t = g(a_t) where use_action, else u_t (or the mask token); latents may stop early (a
    rollout's context): steps past the last frame take g(a_t), and one frame means no u_t."""
    cfg = tiny_config(**{"model.latent_action.video_cond": video_cond})
    m = WorldActionModel(cfg.model, rngs=nnx.Rngs(0))
    if m.cond_mask is not None:  # a token that differs from every latent action
        m.cond_mask[...] = jnp.full(m.cond_mask[...].shape, 0.5)
    batch = random_batch(cfg)
    z = m.encode(batch["video"])  # [B, 4, N, D]
    a, am, emb = batch["action"], batch["action_mask"], batch["embodiment_id"]
    b, s = a.shape[:2]
    g = np.asarray(m.action_embedder(a, am, emb))
    use = np.zeros((b, s), bool)
    use[0] = True
    out = m.conditioning(z, a, am, emb, use)
    u = np.asarray(m.latent_actions(z[:, :-1], z[:, 1:]).mean)
    other = u if video_cond == "latent" else np.full(u.shape, 0.5, np.float32)
    np.testing.assert_array_equal(np.asarray(out.cond), np.where(use[..., None], g, other))
    np.testing.assert_array_equal(np.asarray(out.action_emb), g)
    np.testing.assert_array_equal(np.asarray(out.latent.u), u)  # no key: u is the mean
    ctx = m.conditioning(z[:, :2], a, am, emb, np.arange(s)[None].repeat(b, 0) >= 1)
    np.testing.assert_array_equal(np.asarray(ctx.cond[:, 0]), other[:, 0])
    np.testing.assert_array_equal(np.asarray(ctx.cond[:, 1:]), g[:, 1:])
    one = m.conditioning(z[:, :1], a, am, emb, np.ones((b, s), bool))
    assert one.latent.u.shape == (b, 0, cfg.model.latent_action.dim)
    np.testing.assert_array_equal(np.asarray(one.cond), g)
    with pytest.raises(ValueError, match="C - 1 <= S"):
        m.conditioning(z, a[:, :2], am[:, :2], emb, use[:, :2])


def test_embed_actions_pads_smaller_action_dims(model):
    a = model.spec.action_dim
    act = jax.random.normal(jax.random.key(0), (2, 3, a - 2))
    emb = jnp.array([1, 2], jnp.int32)
    short = model.embed_actions(act, None, emb)
    full = model.embed_actions(
        jnp.pad(act, ((0, 0), (0, 0), (0, 2)), constant_values=7.0),
        jnp.pad(jnp.ones(act.shape, bool), ((0, 0), (0, 0), (0, 2))), emb)
    np.testing.assert_allclose(np.asarray(short), np.asarray(full), atol=1e-6)
    assert short.shape == (2, 3, model.spec.latent_action_dim)


def test_public_entry_points_shapes(model, cfg):
    batch = random_batch(cfg, batch_size=2)
    t, n, d = cfg.data.num_frames, model.spec.tokens_per_frame, model.spec.latent_dim
    du, a, h = model.spec.latent_action_dim, model.spec.action_dim, model.spec.policy_horizon

    def shapes(model, video, emb, proprio):
        z = model.encode(video)
        u = model.infer_latent_actions(z)
        return {
            "z": z, "u": u,
            "a": model.inverse_dynamics(z[:, :-1], z[:, 1:], emb),
            "chunk": model.policy(z[:, :-1], z[:, -1], emb),
            "roll": model.rollout(z[:, :1], u, proprio[:, :1]),
        }

    out = nnx.eval_shape(shapes, model, batch["video"], batch["embodiment_id"], batch["proprio"])
    assert out["z"].shape == (2, t, n, d)
    assert out["u"].shape == (2, t - 1, du)
    assert out["a"].shape == (2, t - 1, a)
    assert out["chunk"].shape == (2, t - 1, h, a)
    assert out["roll"].shape == (2, t - 1, n, d)


# ---------------------------------------------------------------------------------------------
# Bad input: ValueError naming the argument and the expected shape, raised before any tracing
# ---------------------------------------------------------------------------------------------


def _bad_calls(model):
    n, d = model.spec.tokens_per_frame, model.spec.latent_dim
    du, a = model.spec.latent_action_dim, model.spec.action_dim
    vid = np.zeros((1, 2, IMAGE, IMAGE, 3), np.uint8)
    z = np.zeros((1, 2, n, d), np.float32)
    c = np.zeros((1, 2, du), np.float32)
    return [
        ("encode rank", lambda: model.encode(vid[0]), "'video'", "[B, T, H, W, 3]"),
        ("encode dtype", lambda: model.encode(vid.astype(np.float32)), "'video'", "uint8"),
        ("encode patch", lambda: model.encode(np.zeros((1, 2, 30, 30, 3), np.uint8)), "'video'",
         "divisible by model.patch_size=8"),
        ("encode size", lambda: model.encode(np.zeros((1, 2, 64, 64, 3), np.uint8)), "'video'",
         f"[B, T, {IMAGE}, {IMAGE}, 3]"),
        ("predict tokens", lambda: model.predict(z[:, :, :-1], c), "'latents'",
         f"[B, S, N, D] = [B, S, {n}, {d}]"),
        ("predict cond", lambda: model.predict(z, c[:, :1]), "'cond'", f"[1, 2, {du}]"),
        ("predict proprio", lambda: model.predict(z, c, np.zeros((1, 2, 3), np.float32)),
         "'proprio'", "[B, S, P]"),
        ("rollout conds", lambda: model.rollout(z, c[:, :1], k=2), "'conds'", "[B, C - 1 + k, du]"),
        ("embed dim", lambda: model.embed_actions(np.zeros((1, 2, a + 1), np.float32)), "'action'",
         f"A <= {a}"),
        ("embed mask", lambda: model.embed_actions(np.zeros((1, 2, a), np.float32),
                                                   np.zeros((1, 2, a), np.float32)),
         "'action_mask'", "bool"),
        ("embed embodiment", lambda: model.embed_actions(np.zeros((1, 2, a), np.float32), None,
                                                         np.array([99], np.int32)),
         "'embodiment_id'", "num_embodiments"),
        ("latent actions", lambda: model.infer_latent_actions(z[0]), "'latents'", "[B, T, N, D]"),
        ("inverse dynamics", lambda: model.inverse_dynamics(z, z[:, :1]), "'z_next'", "[B, S, N, D]"),
        ("policy goal", lambda: model.policy(z, z[:, :, :-1]), "'z_goal'", "[B, N, D]"),
    ]


@pytest.mark.parametrize("case", range(14))
def test_bad_inputs_raise_value_error_naming_the_key(model, case):
    calls = _bad_calls(model)
    assert len(calls) == 14
    name, call, key, expected = calls[case]
    with pytest.raises(ValueError) as err:
        call()
    assert key in str(err.value) and expected in str(err.value), (name, str(err.value))


def test_bad_input_raises_before_any_model_computation(model, monkeypatch):
    """The checks run on shapes/dtypes in Python: the encoder / predictor are never entered,
    eagerly or under `nnx.jit` (where the error comes while tracing)."""
    entered = []
    monkeypatch.setattr(type(model.encoder), "encode_frames", lambda *a, **k: entered.append(1))
    monkeypatch.setattr(type(model.predictor), "__call__", lambda *a, **k: entered.append(1))
    bad_video = np.zeros((1, 2, IMAGE, IMAGE, 3), np.float32)
    with pytest.raises(ValueError, match="'video'"):
        model.encode(bad_video)
    with pytest.raises(ValueError, match="'video'"):
        nnx.jit(lambda m, v: m.encode(v))(model, bad_video)
    z = np.zeros((1, 2, model.spec.tokens_per_frame, model.spec.latent_dim), np.float32)
    with pytest.raises(ValueError, match="'cond'"):
        nnx.jit(lambda m, z, c: m.predict(z, c))(model, z, np.zeros((1, 2, 3), np.float32))
    assert entered == []
