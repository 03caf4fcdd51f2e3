"""Config handling: the file runs once, overrides parse by type, values validate in one place, and
saved configs come back in today's layout."""

from __future__ import annotations

import copy
import os

import ml_collections as mlc
import orbax.checkpoint as ocp
import pytest

from configs import base
from tests import runtime_fixtures as rf
from wam_jax import config_utils
from wam_jax.config_utils import ConfigError
from wam_jax.training import objectives

LEGACY_WORKDIR = os.path.join(rf.REPO, "tests", "fixtures", "legacy_v1", "workdir")


# -- loading a config file and its overrides -------------------------------------------------------


def _counting_config_file(tmp_path) -> tuple[str, str]:
    """A config file that appends a line to a log each time it runs."""
    log = tmp_path / "runs.log"
    path = tmp_path / "counting.py"
    path.write_text(
        "from configs import base\n\n"
        f"with open({str(log)!r}, 'a') as f:\n"
        "    f.write('imported\\n')\n\n\n"
        "def get_config(arg=None):\n"
        f"    with open({str(log)!r}, 'a') as f:\n"
        "        f.write(f'get_config {arg}\\n')\n"
        "    c = base.get_config(arg or 'tiny')\n"
        "    c.data.mixture = '/data/a:1'\n"
        "    return c\n"
    )
    return str(path), str(log)


def test_wam_train_runs_the_config_file_once(tmp_path):
    from launch import train as train_cli

    path, log = _counting_config_file(tmp_path)
    config, args = train_cli.parse_flags(["wam-train", f"--config={path}:small", f"--workdir={tmp_path}/w",
                                          "--config.train.num_steps=7"])
    with open(log) as f:
        assert f.read().splitlines() == ["imported", "get_config small"]
    assert config.model.preset == "small" and config.train.num_steps == 7 and args.workdir == f"{tmp_path}/w"


def test_overrides_parse_by_the_type_of_the_field(tmp_path):
    path, _ = _counting_config_file(tmp_path)
    config = config_utils.load_config(path, [
        "--config.train.num_steps", "12",  # the value as the next argument
        "--config.optim.lr=0.5",
        "--config.train.export_at_end=false",
        "--config.data.crop_scale=(0.5, 1.0)",
        "--config.model.target=frozen",
    ])
    assert config.train.num_steps == 12 and isinstance(config.train.num_steps, int)
    assert config.optim.lr == 0.5 and config.train.export_at_end is False
    assert config.data.crop_scale == (0.5, 1.0) and config.model.target == "frozen"
    with pytest.raises(AttributeError):  # locked: a typo in code cannot add a key silently
        config.train.num_stpes = 3


def test_split_overrides_keeps_values_with_their_flag():
    overrides, rest = config_utils.split_overrides(
        ["--workdir=w", "--config.a.b", "3", "--config=c.py", "--noconfig.flag", "--log_level", "INFO"])
    assert overrides == ["--config.a.b", "3", "--noconfig.flag"]
    assert rest == ["--workdir=w", "--config=c.py", "--log_level", "INFO"]


@pytest.mark.parametrize("source, fragment", [
    ("def get_config(:\n", "not valid Python"),
    ("X = 1\n", "defines no get_config"),
    ("def get_config():\n    return {}\n", "returned dict, expected a ConfigDict"),
    ("def get_config():\n    raise KeyError('variant')\n", r"get_config\(None\) failed: KeyError"),
    ("import not_a_module_anywhere\n", "failed to import: ModuleNotFoundError"),
])
def test_config_file_errors_name_the_file(tmp_path, source, fragment):
    path = tmp_path / "cfg.py"
    path.write_text(source)
    with pytest.raises(ConfigError, match=fragment) as e:
        config_utils.load_config_file(str(path))
    assert str(path) in str(e.value)


def test_unknown_and_mistyped_overrides(tmp_path):
    path, _ = _counting_config_file(tmp_path)
    with pytest.raises(ConfigError, match=r"'optim\.lrr'.*did you mean optim\.lr"):
        config_utils.load_config(path, ["--config.optim.lrr=1"])
    with pytest.raises(ConfigError, match=r"'train\.num_steps\.x'.*none, it is a value"):
        config_utils.load_config(path, ["--config.train.num_steps.x=1"])
    with pytest.raises(ConfigError, match=r"config\.train\.num_steps"):
        config_utils.load_config(path, ["--config.train.num_steps=many"])
    with pytest.raises(ConfigError, match=r"it moved to --config\.loss\.rollout_k"):
        config_utils.load_config(path, ["--config.model.rollout_k=3"])


# -- validate: every value checked here, the flag named -------------------------------------------


@pytest.mark.parametrize("key, value, fragment", [
    ("model.target", "pretrained", "--config.model.target='pretrained': expected 'ema', 'frozen' or 'online'"),
    ("loss.sigreg", -0.1, "--config.loss.sigreg=-0.1: must be a finite number >= 0"),
    ("loss.policy", float("nan"), "--config.loss.policy=nan: must be a finite number >= 0"),
    ("loss.label_dropout", 1.5, "--config.loss.label_dropout=1.5: must be a fraction in [0, 1]"),
    ("loss.rollout_k", 0, "--config.loss.rollout_k=0: must be >= 1"),
    ("optim.grad_accum", 0, "--config.optim.grad_accum=0: must be >= 1"),
    ("data.global_batch_size", 0, "--config.data.global_batch_size=0: must be > 0"),
    ("data.num_frames", 1, "--config.data.num_frames=1: must be >= 2"),
    ("model.dtype", "int8", "--config.model.dtype='int8'"),
    ("data.mixture", " ", "--config.data.mixture=' ': is empty"),
    ("model.init_scope", "all", "--config.model.init_from='': is empty, but model.init_scope='all'"),
    ("loss.privileged", 1.0, "--config.loss.privileged=1.0: reads out a privileged state: set model.privileged_dim"),
])
def test_validate_names_the_flag(key, value, fragment):
    config = base.get_config("tiny")
    config.data.mixture = "/data/a:1"
    config_utils.validate(config)
    section, name = key.split(".")
    config[section][name] = value
    with pytest.raises(ConfigError) as e:
        config_utils.validate(config)
    assert fragment in str(e.value)


def test_validate_without_data_skips_only_the_mixture():
    config = base.get_config("tiny")  # data.mixture is empty in the base config
    config_utils.validate(config, needs_data=False)
    config.model.target = "pretrained"
    with pytest.raises(ConfigError, match="model.target"):
        config_utils.validate(config, needs_data=False)


# -- restore_config: saved configs in today's layout ----------------------------------------------


def _saved_legacy_config() -> dict:
    """The config the pre-split layout saved with its checkpoint, read as the loader reads it."""
    ckpt_dir = os.path.join(LEGACY_WORKDIR, "checkpoints")
    with ocp.CheckpointManager(ckpt_dir, item_names=("config",)) as manager:
        out = manager.restore(2, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    return dict(out["config"])


def _at(tree, dotted: str):
    for part in dotted.split("."):
        tree = tree[part]
    return tree


def _paths(tree, prefix: str = "") -> set[str]:
    out: set[str] = set()
    for k, v in tree.items():
        if isinstance(v, mlc.ConfigDict | dict):
            out |= _paths(v, f"{prefix}{k}.")
        else:
            out.add(f"{prefix}{k}")
    return out


def test_restore_legacy_checkpoint_config_keeps_every_saved_value():
    saved = _saved_legacy_config()
    config = config_utils.restore_config(saved)
    today = base.get_config(saved["model"]["preset"])
    assert _paths(config) == _paths(today)  # today's layout: no stale keys, none missing
    moved = {old: new for old, new in config_utils.RENAMED_KEYS.items() if config_utils._has(today, new)}
    for path in _paths(saved):
        want = _at(saved, path)
        got = _at(config, moved.get(path, path))
        assert got == (tuple(want) if isinstance(want, list) else want), path
    assert config.data.crop_scale == (0.8, 1.0) and isinstance(config.data.crop_scale, tuple)
    assert config.model.image_size == 32 and config.mesh.ici_fsdp == 4


def test_restore_fills_keys_older_runs_did_not_save_from_base():
    saved = _saved_legacy_config()
    del saved["model"]["latent_action"]["video_cond"]
    del saved["train"]["export_at_end"]
    del saved["model"]["scan_unroll"]
    config = config_utils.restore_config(saved)
    today = base.get_config("tiny")
    assert config.model.latent_action.video_cond == today.model.latent_action.video_cond
    assert config.train.export_at_end == today.train.export_at_end
    assert config.model.scan_unroll == today.model.scan_unroll


def test_restore_moves_renamed_keys_to_where_the_base_config_has_them():
    saved = _saved_legacy_config()
    saved["model"]["latent_action"]["kl_weight"] = 0.02
    saved["model"]["latent_action"]["label_dropout"] = 0.25
    saved["model"]["rollout_k"] = 3
    for name in ("kl_weight", "label_dropout", "rollout_k"):
        saved["loss"].pop(name, None)  # an old run saved them under model only
    config = config_utils.restore_config(copy.deepcopy(saved))
    today = base.get_config("tiny")
    for old, new in config_utils.RENAMED_KEYS.items():
        where = new if config_utils._has(today, new) else old
        assert _at(config, where) == _at(saved, old), (old, new)
        assert config_utils._has(config, old) == config_utils._has(today, old)


def test_restore_keeps_the_saved_preset_sizes():
    saved = _saved_legacy_config()
    saved["model"]["preset"] = "small"
    saved["model"]["encoder"]["depth"] = 3
    config = config_utils.restore_config(saved)
    assert config.model.encoder.depth == 3 and config.model.encoder.width == 64


def test_restore_without_a_model_section_fails_clearly():
    with pytest.raises(ConfigError, match="no 'model' section"):
        config_utils.restore_config({"train": {}})


def test_restore_a_config_of_a_preset_no_longer_defined():
    saved = _saved_legacy_config()
    saved["model"]["preset"] = "retired"
    config = config_utils.restore_config(saved)
    assert config.model.preset == "retired" and config.model.encoder.width == 64


def test_shipped_configs_load_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert config_utils.load_config("configs/pusht_small.py").model.action_dim == 2
    with pytest.raises(config_utils.ConfigError, match="does not exist"):
        config_utils.load_config("configs/no_such_config.py")


def test_the_two_stage_planning_recipe():
    """`pusht_plan.py:encoder` trains the encoder with the frame decoder; `:predictor` continues
    from its export with the encoder frozen and refuses to start without it."""
    enc = config_utils.load_config("configs/pusht_plan.py:encoder")
    assert (enc.model.target, enc.loss.recon, enc.model.decoder.size, enc.data.stride_actions) == (
        "online", 10.0, 64, "chunk")
    with pytest.raises(ConfigError, match="model.init_from"):
        config_utils.validate(config_utils.load_config("configs/pusht_plan.py:predictor"))
    pred = config_utils.load_config("configs/pusht_plan.py:tiny,predictor", ["--config.model.init_from=/runs/enc/export"])
    config_utils.validate(pred)
    assert (pred.model.target, pred.model.init_scope, pred.loss.recon, pred.model.decoder.size) == (
        "frozen", "all", 0.0, 64)
    assert pred.model.encoder.width == base.get_config("tiny").model.encoder.width
    with pytest.raises(ValueError, match="at most one preset"):
        config_utils.load_config("configs/pusht_plan.py:tiny,small")


def test_the_autoencoder_stage_trains_only_reconstruction_and_sigreg():
    """`pusht_plan.py:autoencoder` (stage 0) asks the encoder for every frame, labeled or not,
    and nothing but the decoder's picture of it (SIGReg keeps the latent's shape)."""
    ae = config_utils.load_config("configs/pusht_plan.py:tiny,autoencoder")
    config_utils.validate(ae)
    weighted = {t for t in objectives.LOSS_TERMS if float(ae.loss.get(t, 0.0)) > 0}
    assert weighted == {"recon", "sigreg"}
    assert "pusht_video" in ae.data.mixture and ae.data.num_frames == 2
    # Its export starts stage 1 or 2: the same action space as theirs.
    enc = config_utils.load_config("configs/pusht_plan.py:tiny,encoder")
    assert (ae.model.action_dim, ae.model.decoder.size) == (enc.model.action_dim, enc.model.decoder.size)


def test_the_privileged_option_reads_the_block_pose_in_every_stage():
    """`pusht_plan.py:...,privileged` asks stage 1 for the simulator's block pose (4 dims) and keeps
    the readout in stage 2, whose export-loaded model must have it; other terms as without it."""
    for stage in ("encoder", "predictor"):
        with_it = config_utils.load_config(f"configs/pusht_plan.py:tiny,{stage},privileged")
        without = config_utils.load_config(f"configs/pusht_plan.py:tiny,{stage}")
        assert (with_it.model.privileged_dim, with_it.loss.privileged) == (4, 3.0)
        assert (without.model.privileged_dim, without.loss.privileged) == (0, 0.0)
        with_it.model.privileged_dim, with_it.loss.privileged = 0, 0.0
        assert with_it.to_dict() == without.to_dict()
