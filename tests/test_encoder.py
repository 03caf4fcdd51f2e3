"""Video encoder: shapes, per-frame independence, token dropping, input validation; both stems
(the patch matmul and `models/conv_stem.py`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import base
from wam_jax.models.encoder import IMAGENET_MEAN, IMAGENET_STD, VideoEncoder, normalize_video

SIZE, PATCH = 32, 8  # 4x4 = 16 tokens per frame


def _config(tubelet: int = 1, pos_emb: str = "rope", **overrides):
    c = base.model_config("tiny")
    c.image_size, c.patch_size, c.tubelet, c.pos_emb = SIZE, PATCH, tubelet, pos_emb
    for k, v in overrides.items():
        setattr(c, k, v)
    return c


def _video(key: int, b: int = 2, t: int = 4) -> jax.Array:
    return jax.random.normal(jax.random.key(key), (b, t, SIZE, SIZE, 3), jnp.float32)


@pytest.fixture(scope="module")
def encoders():
    out = {(tub, pe): VideoEncoder(_config(tub, pe), rngs=nnx.Rngs(0)) for tub in (1, 2) for pe in ("rope", "sincos")}
    out.update({(tub, "conv"): VideoEncoder(_config(tub, stem="conv"), rngs=nnx.Rngs(0)) for tub in (1, 2)})
    return out


@pytest.mark.parametrize("tubelet", [1, 2])
@pytest.mark.parametrize("pos_emb", ["rope", "sincos", "conv"])  # "conv": rope with the conv stem
def test_shapes(encoders, tubelet, pos_emb):
    enc = encoders[(tubelet, pos_emb)]
    d = enc.width
    assert enc.grid == (4, 4) and enc.num_patches == 16
    video = _video(0)
    z = enc(video)
    assert z.shape == (2, enc.num_tokens(4), d) == (2, (4 // tubelet) * 16, d)
    assert enc.encode_frames(video).shape == (2, 4, 16, d)
    assert enc.encode_frames(video[:, :3]).shape == (2, 3, 16, d)  # any T per frame
    assert bool(jnp.all(jnp.isfinite(z)))


@pytest.mark.parametrize("tubelet", [1, 2])
@pytest.mark.parametrize("stem", ["rope", "conv"])
def test_encode_frames_is_per_frame(encoders, tubelet, stem):
    enc = encoders[(tubelet, stem)]
    run = nnx.jit(lambda m, v: m.encode_frames(v))
    video = _video(1)
    changed = video.at[:, 2].set(_video(2)[:, 2])
    a, b = run(enc, video), run(enc, changed)
    np.testing.assert_array_equal(a[:, :2], b[:, :2])  # bit-identical before the change
    np.testing.assert_array_equal(a[:, 3], b[:, 3])  # and after it
    assert not np.allclose(a[:, 2], b[:, 2])


@pytest.mark.parametrize("tubelet", [1, 2])
@pytest.mark.parametrize("stem", ["rope", "conv"])
def test_encode_frames_equals_single_frame_clips(encoders, tubelet, stem):
    # Frame t alone, repeated over the tubelet, through the clip encoder gives step t's latents.
    enc = encoders[(tubelet, stem)]
    video = _video(3, t=2)
    per_step = enc.encode_frames(video)
    for t in range(2):
        clip = jnp.repeat(video[:, t : t + 1], tubelet, axis=1)
        np.testing.assert_allclose(enc(clip), per_step[:, t], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("pos_emb", ["rope", "sincos"])
def test_keep_idx(encoders, pos_emb):
    enc = encoders[(2, pos_emb)]
    video = _video(4)
    full = enc(video)
    n = full.shape[1]  # 32 tokens: 2 tubelet slots x 16
    # keeping every token in order is the full encoder
    everything = jnp.broadcast_to(jnp.arange(n), (2, n))
    np.testing.assert_allclose(enc(video, keep_idx=everything), full, rtol=1e-5, atol=1e-5)
    # tokens carry their true positions: any order of all tokens permutes the output
    perm = jnp.stack([jax.random.permutation(jax.random.key(i), n) for i in range(2)])
    np.testing.assert_allclose(
        enc(video, keep_idx=perm),
        jnp.take_along_axis(full, perm[..., None], axis=1),
        rtol=1e-4,
        atol=1e-5,
    )
    # a subset attends among itself only: pixels of dropped patches cannot matter ...
    keep = jnp.asarray([[0, 3, 5, 17, 30], [1, 2, 16, 20, 31]])
    sub = enc(video, keep_idx=keep)
    assert sub.shape == (2, 5, enc.width)
    # ... patch (t-slot 0, row 3, col 3) = pixels [0:2, 24:32, 24:32] is token 15, dropped in both
    poked = video.at[:, 0:2, 24:32, 24:32].add(5.0)
    np.testing.assert_allclose(enc(video=poked, keep_idx=keep), sub, rtol=1e-5, atol=1e-6)
    assert not np.allclose(enc(poked), full, atol=1e-3)
    # ... and a subset is not a gather of the full run (fewer tokens to attend to)
    assert not np.allclose(sub, jnp.take_along_axis(full, keep[..., None], axis=1), atol=1e-3)


def test_keep_idx_positions_are_true_positions(encoders):
    # The same two patch contents at other grid positions must encode differently under RoPE.
    enc = encoders[(1, "rope")]
    video = _video(5, b=1, t=1)
    # swap the pixels of patches 0 and 5 and keep those two tokens: contents swap, positions too
    p0, p5 = (slice(0, 8), slice(0, 8)), (slice(8, 16), slice(8, 16))
    swapped = video.at[:, :, p0[0], p0[1]].set(video[:, :, p5[0], p5[1]])
    swapped = swapped.at[:, :, p5[0], p5[1]].set(video[:, :, p0[0], p0[1]])
    a = enc(video, keep_idx=jnp.asarray([[0, 5]]))
    b = enc(swapped, keep_idx=jnp.asarray([[5, 0]]))  # same contents, same order, other positions
    assert not np.allclose(a, b, atol=1e-3)


def test_bad_inputs(encoders):
    enc = encoders[(2, "rope")]
    with pytest.raises(ValueError, match=r"video must be float \[B, T, 32, 32, 3\].*rank 4"):
        enc(jnp.zeros((2, SIZE, SIZE, 3)))
    with pytest.raises(ValueError, match="normalize_video.*uint8"):
        enc(jnp.zeros((1, 2, SIZE, SIZE, 3), jnp.uint8))
    with pytest.raises(ValueError, match="not divisible by patch_size 8"):
        enc(jnp.zeros((1, 2, 30, 30, 3)))
    with pytest.raises(ValueError, match=r"\[B, T, 32, 32, 3\].*\(1, 2, 40, 40, 3\)"):
        enc.encode_frames(jnp.zeros((1, 2, 40, 40, 3)))
    with pytest.raises(ValueError, match="multiple of tubelet 2.*T=3"):
        enc(jnp.zeros((1, 3, SIZE, SIZE, 3)))
    with pytest.raises(ValueError, match=r"\[B, T, 32, 32, 3\]"):
        enc(jnp.zeros((1, 2, SIZE, SIZE, 1)))
    with pytest.raises(ValueError, match="keep_idx must be int"):
        enc(jnp.zeros((1, 2, SIZE, SIZE, 3)), keep_idx=jnp.zeros((2, 4), jnp.int32))
    with pytest.raises(ValueError, match="keep_idx must be an integer"):
        enc(jnp.zeros((1, 2, SIZE, SIZE, 3)), keep_idx=jnp.zeros((1, 4)))
    with pytest.raises(ValueError, match="uint8"):
        normalize_video(jnp.zeros((1, 2, SIZE, SIZE, 3)))
    with pytest.raises(ValueError, match="tubelet must be 1 or 2"):
        VideoEncoder(_config(tubelet=3), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="image_size 30 is not a multiple of patch_size 8"):
        VideoEncoder(_config(image_size=30), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="pos_emb"):
        VideoEncoder(_config(pos_emb="learned"), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"stem must be one of \('patch', 'conv'\), got 'cnn'"):
        VideoEncoder(_config(stem="cnn"), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="stem='conv' needs model.patch_size to be a power of two.*got 12"):
        VideoEncoder(_config(image_size=48, patch_size=12, stem="conv"), rngs=nnx.Rngs(0))


def test_conv_stem_tokens_see_their_neighbourhood_only(encoders):
    """A conv-stem token is a function of the pixels around its patch (three 3x3 stride-2
    convolutions: a 15-pixel receptive field), unlike the transformer's tokens after it: a change
    in the far corner leaves the first token of the stem as it was and changes the last one."""
    stem = encoders[(1, "conv")].patch_embed
    frames = _video(7)[:, 0]
    changed = frames.at[:, -4:, -4:].add(1.0)
    a, b = stem.embed_single_frames(frames), stem.embed_single_frames(changed)
    assert a.shape == (2, 4, 4, encoders[(1, "conv")].width)
    np.testing.assert_array_equal(a[:, :2, :2], b[:, :2, :2])
    assert not np.allclose(a[:, -1, -1], b[:, -1, -1])


def test_normalize_video():
    video = np.zeros((1, 1, 2, 2, 3), np.uint8)
    video[..., 1, :, :] = 255
    x = normalize_video(video)
    assert x.dtype == jnp.float32
    mean, std = np.asarray(IMAGENET_MEAN), np.asarray(IMAGENET_STD)
    np.testing.assert_allclose(x[0, 0, 0, 0], -mean / std, rtol=1e-6)
    np.testing.assert_allclose(x[0, 0, 1, 1], (1 - mean) / std, rtol=1e-6)


@pytest.mark.parametrize("stem", ["rope", "conv"])
def test_params_have_logical_axes(encoders, stem):
    for path, var in nnx.to_flat_state(nnx.state(encoders[(2, stem)], nnx.Param)):
        names = var.get_metadata().get("out_sharding")
        assert names is not None and len(names) == var[...].ndim, (path, names)
        if path[0] == "blocks":
            assert names[0] == "layers", path


def test_bf16_unscanned_remat_runs():
    enc = VideoEncoder(
        _config(2, dtype="bfloat16", scan_layers=False, remat="dots"), rngs=nnx.Rngs(0)
    )
    z = nnx.jit(lambda m, v: m.encode_frames(v))(enc, _video(6, t=2))
    assert z.dtype == jnp.bfloat16 and z.shape == (2, 2, 16, enc.width)
    leaves = jax.tree.leaves(nnx.state(enc, nnx.Param))
    assert {x.dtype for x in leaves} == {jnp.dtype("float32")}


def test_sharded_encoder_matches_single_device():
    # Params sharded by their logical axes (fsdp x tensor), activations constrained per block:
    # the same numbers as the unsharded encoder.
    from jax.sharding import AxisType

    from wam_jax import sharding

    cfg = _config(2)
    ref = VideoEncoder(cfg, rngs=nnx.Rngs(0))
    mesh = jax.make_mesh((2, 2, 2), sharding.MESH_AXES, axis_types=(AxisType.Auto,) * 3)
    video = _video(7, b=4, t=2)
    with jax.set_mesh(mesh), nnx.logical_axis_rules(sharding.LOGICAL_RULES):
        enc = VideoEncoder(cfg, rngs=nnx.Rngs(0))
        kernel = enc.blocks.blocks.mlp.fc1.kernel[...]
        assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
        z = nnx.jit(lambda m, v: m.encode_frames(v))(enc, video)
        clip = nnx.jit(lambda m, v: m(v))(enc, video)
    np.testing.assert_allclose(z, ref.encode_frames(video), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(clip, ref(video), rtol=1e-4, atol=1e-5)
