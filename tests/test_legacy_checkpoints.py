"""A workdir and an export written by an older layout of the library still load, with the same numbers.

The fixture (tests/fixtures/legacy_v1, see its README) holds a checkpoint, its export and the
latents / predictions that version computed; the config inside uses the old key layout (loss
weights under `config.model`).
"""

from __future__ import annotations

import os
import shutil

import jax
import numpy as np
import pytest

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "legacy_v1")


@pytest.fixture(scope="module")
def legacy(tmp_path_factory) -> str:
    """A copy of the fixture: loading must not depend on (or write into) the committed files."""
    root = str(tmp_path_factory.mktemp("legacy") / "legacy_v1")
    shutil.copytree(FIXTURE, root)
    return root


@pytest.fixture(scope="module")
def reference(legacy) -> dict[str, np.ndarray]:
    with np.load(os.path.join(legacy, "reference.npz")) as r:
        return {k: r[k] for k in r.files}


def _one_device():
    from wam_jax.inference.load import inference_mesh

    return inference_mesh(jax.devices()[:1])


@pytest.mark.parametrize("kind", ["workdir", "export"])
def test_world_model_reproduces_the_saved_numbers(legacy, reference, kind) -> None:
    from wam_jax import WorldModel

    wm = WorldModel.load(os.path.join(legacy, kind), mesh=_one_device())
    assert wm.step == 2 and wm.has_predictor and wm.kind == ("checkpoint" if kind == "workdir" else "export")
    z = np.asarray(wm.encode(reference["frames"]))
    np.testing.assert_allclose(z, reference["latents"], rtol=0, atol=1e-6)
    pred = np.asarray(wm.predict(z[:2], reference["actions"]))  # two context frames, two actions
    np.testing.assert_allclose(pred, reference["predicted"], rtol=0, atol=1e-5)
    # The old config's loss weights (then under `model`) land under `loss`.
    assert wm.config.loss.kl_weight == pytest.approx(1e-3) and wm.config.loss.rollout_k == 2
    assert "kl_weight" not in wm.config.model.latent_action
    # Datasets of that version recorded one key per action dimension: those name the dimensions.
    assert wm.action_space().action_names == ("vx", "vy")


def test_exported_encoder_reproduces_the_saved_numbers(legacy, reference) -> None:
    import wam_jax

    enc = wam_jax.load_encoder(os.path.join(legacy, "export"))
    np.testing.assert_allclose(enc(reference["frames"]), reference["latents"], rtol=0, atol=1e-6)
    example = np.load(os.path.join(legacy, "export", "example_input.npy"))
    expected = np.load(os.path.join(legacy, "export", "example_output.npy"))
    # Not bit for bit: XLA:CPU's kernels differ with the CPU's vector extensions (7e-7 apart here).
    np.testing.assert_allclose(enc(example), expected, rtol=0, atol=1e-6)
