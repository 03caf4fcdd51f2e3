"""V-JEPA 2 conversion: a random `transformers` VJEPA2Model and the converted `VideoEncoder` agree."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from configs import base  # noqa: E402
from wam_jax.models import vjepa2_convert  # noqa: E402
from wam_jax.models.encoder import VideoEncoder  # noqa: E402

pytestmark = pytest.mark.torch

# (hidden, layers, heads, patch, tubelet, crop, frames): head dims 16 (RoPE leaves 4 channels
# unrotated) and 24 (none left)
CASES = {
    "tubelet2": (64, 2, 4, 8, 2, 32, 4),
    "tubelet1": (48, 2, 2, 8, 1, 24, 2),
}


@functools.cache
def _hf_model(case: str):
    """Built once per case; tests only read it."""
    hidden, depth, heads, patch, tubelet, crop, frames = CASES[case]
    config = transformers.VJEPA2Config(
        hidden_size=hidden,
        num_hidden_layers=depth,
        num_attention_heads=heads,
        patch_size=patch,
        tubelet_size=tubelet,
        crop_size=crop,
        frames_per_clip=frames,
        pred_hidden_size=32,
        pred_num_attention_heads=2,
        pred_num_hidden_layers=1,
        num_pooler_layers=1,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    model = transformers.VJEPA2Model(config).eval()
    with torch.no_grad():  # non-trivial values everywhere (HF init zeroes biases)
        for name, p in model.named_parameters():
            one = 1.0 if "norm" in name and name.endswith("weight") else 0.0
            p.copy_(one + 0.05 * torch.randn_like(p))
    return config, model


def _video(case: str, t: int | None = None, seed: int = 0) -> np.ndarray:
    _, _, _, _, _, crop, frames = CASES[case]
    rng = np.random.default_rng(seed)
    return rng.normal(size=(2, t or frames, crop, crop, 3)).astype(np.float32)


def _hf_encode(model, video: np.ndarray) -> np.ndarray:
    pixels = torch.from_numpy(video).permute(0, 1, 4, 2, 3)  # [B, T, C, H, W]
    with torch.no_grad():
        out = model(pixel_values_videos=pixels, skip_predictor=True)
    return out.last_hidden_state.numpy()  # encoder output after its final LayerNorm


def _converted(config, model, scan: bool = True) -> VideoEncoder:
    cfg = vjepa2_convert.config_from_hf(config, base.model_config())
    cfg.scan_layers = scan
    encoder = VideoEncoder(cfg, rngs=nnx.Rngs(1))
    return vjepa2_convert.load_state_dict(encoder, model.state_dict())


def _rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("case", sorted(CASES))
def test_encoder_matches_transformers(case):
    config, model = _hf_model(case)
    video = _video(case)
    want = _hf_encode(model, video)
    for scan in (True, False):
        encoder = _converted(config, model, scan=scan)
        got = np.asarray(encoder(jnp.asarray(video)))
        assert got.shape == want.shape
        err = _rel_err(got, want)
        print(
            f"{case} scan={scan}: relative error {err:.2e}, max abs {np.abs(got - want).max():.2e}"
        )
        assert err <= 1e-4


def test_encode_frames_matches_transformers_single_frame_clips():
    # HF duplicates a clip shorter than the tubelet: exactly encode_frames' per-step semantics.
    config, model = _hf_model("tubelet2")
    encoder = _converted(config, model)
    video = _video("tubelet2", t=3, seed=1)
    per_step = np.asarray(encoder.encode_frames(jnp.asarray(video)))
    for t in range(3):
        want = _hf_encode(model, video[:, t : t + 1])
        assert _rel_err(per_step[:, t], want) <= 1e-4


def test_param_count_matches_transformers():
    for case in CASES:
        config, model = _hf_model(case)
        hf = sum(p.numel() for p in model.encoder.parameters())
        encoder = VideoEncoder(vjepa2_convert.config_from_hf(config, base.model_config()), rngs=nnx.Rngs(0))
        ours = sum(x.size for x in jax.tree.leaves(nnx.state(encoder, nnx.Param)))
        assert ours == hf, case


def _meta_keys(model, config) -> dict:
    """The same weights under Meta's original key names (fused qkv, `module.backbone.` prefix)."""
    sd = {
        k.removeprefix("encoder."): v
        for k, v in model.state_dict().items()
        if k.startswith("encoder.")
    }
    out = {}
    for k, v in sd.items():
        if ".attention.query." in k:
            parts = [sd[k.replace("query", n)] for n in ("query", "key", "value")]
            k = k.replace("attention.query", "attn.qkv")
            v = torch.cat(parts, 0)
        elif ".attention.key." in k or ".attention.value." in k:
            continue
        k = k.replace("attention.", "attn.").replace("layer.", "blocks.", 1)
        k = k.replace("embeddings.patch_embeddings.", "patch_embed.").replace("layernorm.", "norm.")
        out["module.backbone." + k] = v
    return out


def test_meta_layout_converts_to_the_same_params():
    config, model = _hf_model("tubelet2")
    encoder = VideoEncoder(vjepa2_convert.config_from_hf(config, base.model_config()), rngs=nnx.Rngs(0))
    from_hf = vjepa2_convert.convert_state_dict(model.state_dict(), encoder)
    meta = _meta_keys(model, config)
    assert "module.backbone.blocks.1.attn.qkv.weight" in meta
    from_meta = vjepa2_convert.convert_state_dict(
        {"target_encoder": meta}, encoder, checkpoint_key="target_encoder"
    )
    for a, b in zip(jax.tree.leaves(from_hf), jax.tree.leaves(from_meta), strict=True):
        np.testing.assert_array_equal(a, b)
    # HF's encoder-only state dict (no `encoder.` prefix) too
    from_enc = vjepa2_convert.convert_state_dict(model.encoder.state_dict(), encoder)
    for a, b in zip(jax.tree.leaves(from_hf), jax.tree.leaves(from_enc), strict=True):
        np.testing.assert_array_equal(a, b)


def test_encoder_from_state_dict_without_random_init():
    config, model = _hf_model("tubelet2")
    cfg = vjepa2_convert.config_from_hf(config, base.model_config())
    encoder = vjepa2_convert.encoder_from_state_dict(cfg, model.state_dict())
    assert isinstance(encoder, VideoEncoder)
    leaves = jax.tree.leaves(nnx.state(encoder, nnx.Param))
    assert all(isinstance(x, jax.Array) for x in leaves)
    video = _video("tubelet2")
    assert _rel_err(encoder(jnp.asarray(video)), _hf_encode(model, video)) <= 1e-4


def test_mismatches_are_listed():
    config, model = _hf_model("tubelet2")
    encoder = VideoEncoder(vjepa2_convert.config_from_hf(config, base.model_config()), rngs=nnx.Rngs(0))
    sd = dict(model.state_dict())
    extra = dict(sd, **{"encoder.layer.0.attention.rotary.weight": torch.zeros(3)})
    with pytest.raises(
        ValueError, match=r"unmatched checkpoint keys \['encoder.layer.0.attention.rotary.weight'\]"
    ):
        vjepa2_convert.convert_state_dict(extra, encoder)
    gone = {k: v for k, v in sd.items() if k != "encoder.layernorm.bias"}
    with pytest.raises(ValueError, match=r"without a value \['norm.bias'\]"):
        vjepa2_convert.convert_state_dict(gone, encoder)
    no_value = {k: v for k, v in sd.items() if "layer.1.attention.value" not in k}
    with pytest.raises(ValueError, match=r"layer 1: attention kernel lacks \['value'\]"):
        vjepa2_convert.convert_state_dict(no_value, encoder)
    cfg = vjepa2_convert.config_from_hf(config, base.model_config())
    cfg.encoder.depth = 3
    with pytest.raises(ValueError, match="2 encoder layers.*depth 3"):
        vjepa2_convert.convert_state_dict(sd, VideoEncoder(cfg, rngs=nnx.Rngs(0)))
    cfg = vjepa2_convert.config_from_hf(config, base.model_config())
    cfg.patch_size = 16
    with pytest.raises(
        ValueError, match=r"patch_embeddings.proj.weight: converts to shape \(2, 8, 8, 3, 64\)"
    ):
        vjepa2_convert.convert_state_dict(sd, VideoEncoder(cfg, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="cannot tell"):
        vjepa2_convert.convert_state_dict({"foo.weight": np.zeros(2)}, encoder)
    with pytest.raises(ValueError, match="checkpoint_key='target_encoder'"):
        vjepa2_convert.convert_state_dict({"encoder": {}, "predictor": {}}, encoder)
