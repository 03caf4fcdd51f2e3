"""Export round trip: jax.export artifacts load without Flax and match the in-framework model."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import runtime_fixtures as rf
from tests.test_world_model_api import one_device_mesh, shared_workdir


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> str:
    return shared_workdir(tmp_path_factory)[0]


@pytest.fixture(scope="module")
def exported(workdir, tmp_path_factory) -> str:
    from wam_jax.inference import export

    out = str(tmp_path_factory.mktemp("export") / "out")
    export.export_model(workdir, out, with_predictor=True)  # every platform: cpu, cuda, tpu
    return out


@pytest.fixture(scope="module")
def wm(workdir):
    from wam_jax import WorldModel

    return WorldModel.load(workdir, mesh=one_device_mesh())


def _frames(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_export_layout_and_manifest(exported) -> None:
    from wam_jax.inference import export

    manifest = export.read_manifest(exported)
    assert manifest["format"] == export.FORMAT and manifest["step"] == 2 and manifest["with_predictor"]
    for name in export.REQUIRED_FILES + export.PREDICTOR_FILES:
        assert os.path.exists(os.path.join(exported, name)), name
    assert set(manifest["encoder"]["platforms"]) == {"cpu", "cuda", "tpu"}
    with open(os.path.join(exported, export.PREPROCESSING_JSON)) as f:
        pre = json.load(f)
    assert pre["input"]["shape"] == ["b", "t", 32, 32, 3] and pre["input"]["dtype"] == "uint8"
    assert pre["output"]["shape"] == ["b", "t", 16, 64]
    assert pre["normalization"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    with open(os.path.join(exported, export.CONFIG_JSON)) as f:
        assert json.load(f)["model"]["image_size"] == 32
    with open(os.path.join(exported, export.STATS_JSON)) as f:
        assert json.load(f)["embodiments"][0] == "square"


def test_load_encoder_matches_the_framework_exactly(exported, wm) -> None:
    import wam_jax

    enc = wam_jax.load_encoder(exported)
    frames = _frames((3, 32, 32, 3))
    np.testing.assert_array_equal(enc(frames), np.asarray(wm.encode(frames)))
    # Symbolic batch and time: other shapes run without re-export.
    batch = _frames((2, 5, 32, 32, 3), seed=1)
    out = enc(batch)
    assert out.shape == (2, 5, 16, 64)
    np.testing.assert_array_equal(out, np.asarray(wm.encode(batch)))
    np.testing.assert_array_equal(enc(frames[0]), np.asarray(wm.encode(frames[0])))
    with pytest.raises(ValueError, match="expects 32x32"):
        enc(_frames((1, 40, 40, 3)))
    assert enc(_frames((1, 40, 40, 3)), resize=True).shape == (1, 16, 64)


_NO_FLAX_SCRIPT = r"""
import json, os, sys
import jax, numpy as np
from safetensors.numpy import load_file
out = sys.argv[1]
exp = jax.export.deserialize(bytearray(open(os.path.join(out, "encoder.jax_export"), "rb").read()))
params = load_file(os.path.join(out, "encoder.safetensors"))
x = np.load(os.path.join(out, "example_input.npy"))
y = np.asarray(exp.call(params, x))
expected = np.load(os.path.join(out, "example_output.npy"))
y3 = np.asarray(exp.call(params, np.concatenate([x, x[:1]])[:, :1]))  # another batch/time size
import wam_jax  # the package itself is import-light
enc = wam_jax.load_encoder(out)
z = enc(x)
print(json.dumps({"flax": "flax" in sys.modules, "models": "wam_jax.models" in sys.modules,
                  "api": "wam_jax.inference.world_model_api" in sys.modules,
                  "exact": bool(np.array_equal(y, expected)), "shape3": list(y3.shape),
                  "loader_exact": bool(np.array_equal(z, expected)), "in_tree": str(exp.in_tree)[:40]}))
"""


def test_exported_encoder_runs_in_a_fresh_process_without_flax(exported) -> None:
    env = rf.cli_env(num_devices=1)
    proc = subprocess.run([sys.executable, "-c", _NO_FLAX_SCRIPT, exported], env=env, cwd=rf.REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["flax"] is False and report["models"] is False and report["api"] is False
    assert report["exact"] and report["loader_exact"]
    assert report["shape3"] == [3, 1, 16, 64]


def test_exported_predictor_matches_the_model(exported, wm) -> None:
    from safetensors.numpy import load_file

    from wam_jax.inference import export

    with open(os.path.join(exported, export.PREDICTOR_EXPORT), "rb") as f:
        exp = jax.export.deserialize(bytearray(f.read()))
    params = load_file(os.path.join(exported, export.PREDICTOR_SAFETENSORS))
    z = np.asarray(wm.encode(_frames((3, 32, 32, 3))))[None]  # [1, 3, N, D]
    robot = np.array([[[0.5, -1.0], [1.5, 0.2], [-0.7, 0.9]]], np.float32)
    space = wm.action_space()
    a, mask = space.normalize(robot)
    out = np.asarray(exp.call(params, z, a, mask, np.zeros((1,), np.int32)))
    assert out.shape == z.shape
    model = wm._model()
    cond = model.embed_actions(jnp.asarray(a), jnp.asarray(mask), jnp.zeros((1,), jnp.int32))
    np.testing.assert_allclose(out, np.asarray(model.predict(jnp.asarray(z), cond)), atol=1e-5)
    # Its first output is WorldModel.predict's one-step prediction from frame 0.
    np.testing.assert_allclose(out[0, 0], np.asarray(wm.predict(z[0, 0], robot[0, 0])), atol=1e-5)


def test_export_refuses_to_overwrite_and_cli(workdir, exported, tmp_path) -> None:
    from launch import export as cli
    from wam_jax.inference import export

    with pytest.raises(FileExistsError, match="already exists; pass --overwrite"):
        export.export_model(workdir, exported)
    out = str(tmp_path / "cli_out")
    with pytest.raises(SystemExit) as e:
        cli.run([f"--workdir={workdir}", f"--output={out}", "--platforms=cpu"])
    assert e.value.code == 0
    assert export.read_manifest(out)["with_predictor"] is False
    with pytest.raises(SystemExit) as e:
        cli.run([f"--workdir={tmp_path / 'missing'}", f"--output={tmp_path / 'x'}"])
    assert e.value.code == 2
