"""`wam-train` on bad input: one clear line naming the file / flag / key / path, exit status 2."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from launch import train as train_cli
from tests import runtime_fixtures as rf
from wam_jax import sharding
from wam_jax.training import checkpointing
from wam_jax.training import train_step as ts

rf.enable_compile_cache()


@pytest.fixture(scope="module")
def mixture(tmp_path_factory):
    return rf.write_mixture(str(tmp_path_factory.mktemp("data")))


@pytest.fixture
def config_file(tmp_path, mixture):
    return rf.write_config_file(str(tmp_path / "cfg.py"), rf.tiny_config(mixture))


def _fails(argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        train_cli.run(["wam-train", *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("wam-train: error: ")
    assert "Traceback" not in err
    return err


def test_missing_config_file(tmp_path, capsys):
    err = _fails([f"--config={tmp_path}/nope.py", f"--workdir={tmp_path}/w"], capsys)
    assert f"{tmp_path}/nope.py" in err and "does not exist" in err


def test_malformed_config_file(tmp_path, capsys):
    bad = tmp_path / "bad.py"
    bad.write_text("def get_config(:\n    return None\n")
    err = _fails([f"--config={bad}", f"--workdir={tmp_path}/w"], capsys)
    assert str(bad) in err and "not valid Python" in err and "line 1" in err


def test_config_file_without_get_config(tmp_path, capsys):
    bad = tmp_path / "empty.py"
    bad.write_text("X = 1\n")
    err = _fails([f"--config={bad}", f"--workdir={tmp_path}/w"], capsys)
    assert "get_config" in err and str(bad) in err


def test_unknown_override_key(config_file, tmp_path, capsys):
    err = _fails([f"--config={config_file}", f"--workdir={tmp_path}/w", "--config.model.encoder.widht=8"], capsys)
    assert "'model.encoder.widht'" in err and "did you mean model.encoder.width" in err


def test_override_of_the_wrong_type(config_file, tmp_path, capsys):
    err = _fails([f"--config={config_file}", f"--workdir={tmp_path}/w", "--config.train.num_steps=many"], capsys)
    assert "config.train.num_steps" in err


def test_missing_workdir(config_file, capsys):
    err = _fails([f"--config={config_file}"], capsys)
    assert "--workdir" in err


def test_mesh_sizes_do_not_multiply_to_device_count(config_file, tmp_path, capsys):
    err = _fails([f"--config={config_file}", f"--workdir={tmp_path}/w", "--config.mesh.ici_data=3",
                  "--config.mesh.ici_fsdp=2"], capsys)
    assert "--config.mesh.ici_data=3" in err and "--config.mesh.ici_fsdp=2" in err
    assert "multiply to 6" in err and "8 devices" in err


def test_mesh_with_two_fill_axes(config_file, tmp_path, capsys):
    err = _fails([f"--config={config_file}", f"--workdir={tmp_path}/w", "--config.mesh.ici_data=-1",
                  "--config.mesh.ici_fsdp=-1"], capsys)
    assert "at most one" in err and "--config.mesh.ici_data=-1" in err


def test_global_batch_not_divisible_by_data_parallel_size(config_file, tmp_path, capsys):
    err = _fails([f"--config={config_file}", f"--workdir={tmp_path}/w", "--config.data.global_batch_size=12"],
                 capsys)
    assert "--config.data.global_batch_size=12" in err and "data-parallel size 8" in err


def test_mixture_path_that_is_not_a_converted_dataset(config_file, tmp_path, capsys):
    raw = tmp_path / "raw_videos"
    raw.mkdir()
    (raw / "clip.mp4").write_bytes(b"\x00" * 16)
    err = _fails([f"--config={config_file}", f"--workdir={tmp_path}/w", f"--config.data.mixture={raw}"], capsys)
    assert str(raw) in err and "dataset.json" in err


def test_incomplete_multiprocess_flags(config_file, tmp_path, capsys):
    err = _fails([f"--config={config_file}", f"--workdir={tmp_path}/w", "--coordinator=127.0.0.1:1234"], capsys)
    assert "--num_processes" in err and "--process_id" in err


def _checkpoint_of(config, workdir: str, steps) -> None:
    """Checkpoints of `config`'s model at `steps` (initial parameters, step counter set)."""
    mesh = sharding.make_mesh(config.mesh)
    built = ts.build(config, mesh)
    state = built.init(config)
    ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"))
    for s in steps:
        d = state.to_dict()
        d["step"] = jax.device_put(jnp.asarray(s, jnp.int32), built.shardings.step)
        ckpt.save(s, d, None, config, {})
    ckpt.close()


def test_workdir_with_a_checkpoint_of_an_incompatible_model(mixture, tmp_path, capsys):
    workdir = str(tmp_path / "w")
    _checkpoint_of(rf.tiny_config(mixture), workdir, [4])
    cfg_file = rf.write_config_file(str(tmp_path / "cfg.py"), rf.tiny_config(mixture))
    err = _fails([f"--config={cfg_file}", f"--workdir={workdir}", "--config.model.predictor.width=96"], capsys)
    assert "different model" in err and workdir in err
    assert re.search(r"params/\S+/kernel \(checkpoint \[[0-9, ]+\], model \[[0-9, ]+\]\)", err), err
    assert "predictor.width: checkpoint 64, now 96" in err


def test_half_written_checkpoint_falls_back_to_the_last_complete_one(mixture, tmp_path, caplog):
    cfg = rf.tiny_config(mixture, **{"train.num_steps": 4})
    workdir = str(tmp_path / "w")
    _checkpoint_of(cfg, workdir, [4, 8])
    ckpts = os.path.join(workdir, "checkpoints")
    # step 8's arrays were never fully written; a step-12 save was cut off mid-way
    shutil.rmtree(os.path.join(ckpts, "8", "state", "d"))
    shutil.copytree(os.path.join(ckpts, "4"), os.path.join(ckpts, "12.orbax-checkpoint-tmp"))
    cfg_file = rf.write_config_file(str(tmp_path / "cfg.py"), cfg)
    with caplog.at_level(logging.WARNING), pytest.raises(SystemExit) as e:
        train_cli.run(["wam-train", f"--config={cfg_file}", f"--workdir={workdir}"])
    assert e.value.code == 0
    assert "checkpoint step 12" in caplog.text and "not completely written" in caplog.text
    assert "checkpoint step 8" in caplog.text and "falling back to step 4" in caplog.text
    assert "resuming from step 4" in caplog.text


def test_unknown_flag_and_flag_value_of_the_wrong_type(config_file, tmp_path, capsys):
    err = _fails([f"--config={config_file}", f"--workdir={tmp_path}/w", "--wrokdir=x"], capsys)
    assert "--wrokdir=x" in err
    err = _fails([f"--config={config_file}", f"--workdir={tmp_path}/w", "--num_processes=two"], capsys)
    assert "--num_processes" in err and "'two'" in err


def test_compile_names_missing_flags_and_bad_keys(config_file, capsys):
    from launch import compile as compile_cli

    for argv, fragment in ((["--topology=cpu:8"], "--config=configs/NAME.py[:ARG] is required"),
                           ([f"--config={config_file}"], "--topology=NAME is required"),
                           ([f"--config={config_file}", "--topology=v5p-7"], "--topology='v5p-7'"),
                           ([f"--config={config_file}", "--topology=cpu:8", "--config.mesh.ici_dat=2"],
                            "did you mean mesh.ici_data")):
        with pytest.raises(SystemExit) as e:
            compile_cli.run(["wam-compile", *argv])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("wam-compile: error: ") and fragment in err, err


def test_console_script_reports_errors(tmp_path):
    """The installed `wam-train` script (and `python -m launch.train`) share the error path."""
    exe = os.path.join(os.path.dirname(sys.executable), "wam-train")
    cmd = [exe] if os.path.exists(exe) else [sys.executable, "-m", "launch.train"]
    out = subprocess.run([*cmd, f"--config={tmp_path}/missing.py", f"--workdir={tmp_path}/w"], cwd=rf.REPO,
                         env=rf.cli_env(1), capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert "missing.py" in out.stderr and "does not exist" in out.stderr


@pytest.mark.parametrize("script", ["launch/tpu_pod.sh", "launch/slurm_gpu.sbatch"])
def test_launcher_scripts_parse(script):
    out = subprocess.run(["bash", "-n", os.path.join(rf.REPO, script)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_tpu_pod_script_names_missing_settings():
    env = {k: v for k, v in os.environ.items() if k not in ("TPU_NAME", "ZONE")}
    out = subprocess.run(["bash", os.path.join(rf.REPO, "launch/tpu_pod.sh"), "train"], capture_output=True,
                         text=True, env=env)
    assert out.returncode != 0 and "TPU_NAME" in out.stderr


def test_slurm_script_needs_arguments():
    out = subprocess.run(["bash", os.path.join(rf.REPO, "launch/slurm_gpu.sbatch")], capture_output=True, text=True)
    assert out.returncode == 2 and "usage: sbatch" in out.stderr
