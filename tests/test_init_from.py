"""`model.init_from`: a new run's encoder (and its target) start from a wam_jax export, a Hugging
Face V-JEPA 2 directory or a PyTorch checkpoint; what does not fit is named."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

from tests import runtime_fixtures as rf
from tests.test_world_model_api import one_device_mesh, shared_workdir
from wam_jax.training import init_from
from wam_jax.training import train_step as ts


def _init(config):
    mesh = one_device_mesh()
    defs, shardings, abstract = ts.abstract_train_state(config, mesh)
    tx = ts.make_tx(config, defs, abstract.params)
    return ts.init_train_state(config, defs, tx, shardings)


def _flat(tree) -> dict[str, np.ndarray]:
    return {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(x)
            for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> str:
    from wam_jax.inference import export

    workdir, _ = shared_workdir(tmp_path_factory)
    out = str(tmp_path_factory.mktemp("init_from") / "export")
    export.export_model(workdir, out, step=2, platforms=("cpu",))
    return out


def test_a_new_run_starts_from_a_wam_jax_export(export_dir, tmp_path) -> None:
    """Encoder params and the target equal the exported encoder; the rest is the usual random init."""
    config = rf.tiny_config(rf.write_mixture(str(tmp_path / "data")))
    plain = _init(config)
    config.model.init_from = export_dir
    state = _init(config)
    exported = load_file(f"{export_dir}/{init_from.EXPORT_ENCODER}")
    enc = _flat(state.params["encoder"])
    assert set(enc) <= set(exported) and enc
    for k, v in enc.items():
        np.testing.assert_array_equal(v, exported[k])
    target = _flat(state.target)
    assert set(target) == set(exported)
    for k, v in target.items():
        np.testing.assert_array_equal(v, exported[k])
    # Not the random init (step 2 of the shared workdir is perturbed), and the predictor is untouched.
    assert any(not np.array_equal(v, _flat(plain.params["encoder"])[k]) for k, v in enc.items())
    for k, v in _flat(plain.params["predictor"]).items():
        np.testing.assert_array_equal(v, _flat(state.params["predictor"])[k])


def test_an_export_of_another_shape_is_named(export_dir, tmp_path) -> None:
    config = rf.tiny_config(rf.write_mixture(str(tmp_path / "data")))
    config.model.init_from = export_dir
    config.model.encoder.mlp_ratio = 2.0
    with pytest.raises(init_from.InitFromError, match=r"init_from=.*shapes \(file vs model\).*mlp/fc1/kernel"):
        _init(config)
    config.model.encoder.mlp_ratio = 4.0
    config.model.pool.kind = "mean"
    with pytest.raises(init_from.InitFromError, match=r"missing \['projector/"):
        _init(config)
    config.model.pool.kind = "none"
    config.model.stem = "conv"  # the export has the patch stem: refused, the flag named
    with pytest.raises(init_from.InitFromError, match=r"missing \['patch_embed/convs.*model.stem='conv'"):
        _init(config)


def test_init_scope_all_continues_a_run_on_its_frozen_encoder(export_dir, tmp_path_factory, tmp_path) -> None:
    """`model.init_scope='all'`: every variable (encoder, predictor, heads) from an export written
    with the predictor, matched by path although freezing the encoder moves it out of `params`;
    an encoder-only export and a changed shape are refused with the key named."""
    import orbax.checkpoint as ocp

    from wam_jax.inference import export

    workdir, _ = shared_workdir(tmp_path_factory)
    full = str(tmp_path / "full")
    export.export_model(workdir, full, step=2, with_predictor=True, platforms=("cpu",))
    saved = ocp.PyTreeCheckpointer().restore(f"{full}/{init_from.EXPORT_PARAMS}")
    want = {**_flat(saved["params"]), **_flat(saved["model_state"])}
    config = rf.tiny_config(rf.write_mixture(str(tmp_path / "data")))
    config.model.target = "frozen"
    config.model.init_from = full
    config.model.init_scope = "all"
    state = _init(config)
    got = {**_flat(state.params), **_flat(state.model_state)}
    assert "encoder" not in state.params and any(k.startswith("predictor/") for k in got)
    assert set(got) == set(want)
    for k, v in got.items():
        np.testing.assert_array_equal(v, want[k], err_msg=k)
    encoder = _flat(state.model_state["encoder"])
    for k, v in _flat(state.target).items():
        np.testing.assert_array_equal(v, encoder[k])

    config.model.action_dim += 1
    with pytest.raises(init_from.InitFromError, match=r"shapes \(file vs model\).*action"):
        _init(config)
    config.model.action_dim -= 1
    config.model.stem = "conv"  # another encoder architecture is refused, not half loaded
    with pytest.raises(init_from.InitFromError, match=r"encoder does not fit.*patch_embed/convs.*model.stem"):
        _init(config)
    config.model.stem = "patch"
    config.model.init_from = export_dir  # encoder only
    with pytest.raises(init_from.InitFromError, match="holds only the encoder.*--with_predictor"):
        _init(config)


def test_bad_paths_name_the_flag(tmp_path) -> None:
    config = rf.tiny_config(rf.write_mixture(str(tmp_path / "data")))
    config.model.init_from = str(tmp_path / "nowhere")
    with pytest.raises(init_from.InitFromError, match="--config.model.init_from=.*nowhere: no such file"):
        _init(config)
    (tmp_path / "empty").mkdir()
    config.model.init_from = str(tmp_path / "empty")
    with pytest.raises(init_from.InitFromError, match="without encoder.safetensors"):
        _init(config)
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 16)
    config.model.init_from = str(tmp_path / "bad.safetensors")
    with pytest.raises(init_from.InitFromError, match="not a readable safetensors file"):
        _init(config)


@pytest.mark.torch
def test_hugging_face_and_pytorch_vjepa2_checkpoints(tmp_path) -> None:
    """A `save_pretrained` V-JEPA 2 directory and a `torch.save`d state dict both initialize the
    encoder to exactly what the converter gives; a config of another architecture is refused
    naming the fields to set."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from tests.test_vjepa2_parity import _hf_model
    from wam_jax.models import vjepa2_convert

    hf_config, model = _hf_model("tubelet2")  # 64 wide, 2 layers, 4 heads, patch 8, tubelet 2, 32 px
    model.save_pretrained(tmp_path / "hf", safe_serialization=True)
    torch.save(model.state_dict(), tmp_path / "vjepa2.pt")
    config = rf.tiny_config(rf.write_mixture(str(tmp_path / "data")))
    config.model = vjepa2_convert.config_from_hf(hf_config, config.model)
    config.model.init_from = str(tmp_path / "hf")
    state = _init(config)
    from flax import nnx

    from wam_jax.models.encoder import VideoEncoder

    expected = vjepa2_convert.convert_state_dict(
        model.state_dict(), nnx.eval_shape(lambda: VideoEncoder(config.model, rngs=nnx.Rngs(0))))
    want = _flat(nnx.to_pure_dict(expected))
    got = _flat(state.params["encoder"])
    for k, v in want.items():
        np.testing.assert_allclose(got[k], v, rtol=0, atol=0)
    config.model.init_from = str(tmp_path / "vjepa2.pt")
    for k, v in _flat(_init(config).params["encoder"]).items():
        if k in want:
            np.testing.assert_array_equal(v, want[k])
    config.model.init_from = str(tmp_path / "hf")
    config.model.encoder.depth = 3
    with pytest.raises(init_from.InitFromError, match=r"set --config.model.encoder.depth=2 \(config has 3\)"):
        _init(config)


@pytest.mark.parametrize("variant", ["L", "H", "g"])
def test_vjepa2_ac_config_matches_the_released_encoders_and_needs_weights(variant) -> None:
    """configs/vjepa2_ac.py: V-JEPA 2's sizes (so `init_from` shape checks pass on the real
    checkpoints), a frozen encoder, and a clear error when no weights are given."""
    from configs import vjepa2_ac
    from wam_jax import config_utils

    config = vjepa2_ac.get_config(variant)
    config.data.mixture = "unused"
    config_utils.validate(config, needs_data=False)
    init_from.check_hf_config({"crop_size": 256, "patch_size": 16, "tubelet_size": 2,
                               "hidden_size": {"L": 1024, "H": 1280, "g": 1408}[variant],
                               "num_hidden_layers": {"L": 24, "H": 32, "g": 40}[variant],
                               "num_attention_heads": {"L": 16, "H": 16, "g": 22}[variant]}, config.model, "hf")
    assert config.model.target == "frozen" and config.model.pool.kind == "none"
    with pytest.raises(init_from.InitFromError, match="init_from must be set for this config"):
        init_from.load_encoder_state(config.model, None)
