"""The training view rendered on the accelerator (`config.data.augment_on='device'`): the same
clips as the host path, from the same random stream, in the batch layout the step expects."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest

from configs import base
from data_pipelines import loader, schema
from tests import runtime_fixtures as rf
from tests.converted_fixtures import write_converted_dataset
from wam_jax import config_utils, sharding
from wam_jax.training import device_views

rf.enable_compile_cache()
session_mixture = rf.session_mixture  # shared session fixtures
session_config_file = rf.session_config_file
reference_run = rf.reference_run


def _config(data: str, augment_on: str, *, batch: int = 8, image_size: int = 24) -> Any:
    c = base.get_config()
    c.data.mixture = data
    c.data.global_batch_size = batch
    c.data.num_frames = 3
    c.data.target_fps = 10.0
    c.data.heldout_fraction = 0.0
    c.data.crop_scale = (0.3, 1.0)  # small crops: the resize upsamples and downsamples
    c.data.color_jitter = 0.4
    c.data.augment_on = augment_on
    c.model.image_size = image_size
    c.model.action_dim = 3
    c.model.proprio_dim = 4
    return c


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_converted_dataset(str(tmp_path_factory.mktemp("views") / "toy"), image_size=(40, 56),
                                   texture=True, episode_lengths=(12,) * 6)


def _first_batch(config) -> dict[str, np.ndarray]:
    it = loader.make_iterator(config, seed=3)
    try:
        return next(it)
    finally:
        it.close()


@pytest.mark.parametrize("jitter", [0.4, 0.0])
def test_device_views_render_the_host_clips_in_the_step_layout(dataset, jitter):
    """Same seed: the device path ships stored frames and views that render (on 8 devices, batch
    sharded) to the host path's clips within rounding; every other key is equal and the step
    sees no view key."""
    host_config, dev_config = _config(dataset, "host"), _config(dataset, "device")
    host_config.data.color_jitter = dev_config.data.color_jitter = jitter
    host, raw = _first_batch(host_config), _first_batch(dev_config)
    assert raw["video"].shape == (8, 3, 40, 56, 3) and raw[schema.VIEW_KEY].shape == (8, schema.VIEW_WIDTH)
    views = raw[schema.VIEW_KEY]
    assert (views[:, 2] - views[:, 0] < 0.9).any()  # real crops
    assert (np.abs(views[:, 4:] - 1) > 0.1).any() == (jitter > 0)

    mesh = sharding.make_mesh(dev_config.mesh)
    placed = device_views.batch_placer(dev_config, mesh, 8)(raw)
    assert set(placed) == set(host) and schema.VIEW_KEY not in placed
    for k, v in placed.items():
        assert v.sharding.is_equivalent_to(sharding.batch_sharding(mesh, v.ndim), v.ndim), k
        if k != "video":
            np.testing.assert_array_equal(np.asarray(v), host[k], err_msg=k)
    diff = np.abs(np.asarray(placed["video"]).astype(int) - host["video"].astype(int))
    assert placed["video"].dtype == np.uint8 and placed["video"].shape == host["video"].shape
    # the resize agrees within one level; the jitter's factors (up to 1.4 each) can scale that
    assert diff.max() <= (3 if jitter else 1) and diff.mean() < 0.25, (diff.max(), diff.mean())


def test_host_mode_places_unchanged(dataset):
    config = _config(dataset, "host")
    batch = _first_batch(config)
    placed = device_views.batch_placer(config, sharding.make_mesh(config.mesh), 8)(batch)
    for k, v in batch.items():
        np.testing.assert_array_equal(np.asarray(placed[k]), v)


def test_identity_view_is_the_frame():
    rng = np.random.default_rng(0)
    video = rng.integers(0, 256, (2, 3, 16, 16, 3), dtype=np.uint8)
    views = np.tile(schema.view_vector((0.0, 0.0, 1.0, 1.0), None), (2, 1))
    np.testing.assert_array_equal(np.asarray(device_views.render_views(video, views, 16)), video)
    with pytest.raises(ValueError, match=r"expected \[2, 7\]"):
        device_views.render_views(video, views[:, :4], 16)


def test_evaluation_keeps_the_host_view(dataset):
    config = _config(dataset, "device")
    config.data.heldout_fraction = 0.5
    it = loader.make_iterator(config, split="eval", seed=0)
    try:
        batch = next(it)
    finally:
        it.close()
    assert schema.VIEW_KEY not in batch and batch["video"].shape[2:4] == (24, 24)


def test_device_views_need_one_stored_size_and_a_known_mode(tmp_path, dataset):
    other = write_converted_dataset(str(tmp_path / "other"), name="other", image_size=(32, 32))
    config = _config(f"{dataset},{other}", "device")
    with pytest.raises(ValueError, match=r"augment_on='device'.*other \[32, 32\]"):
        loader.make_iterator(config, seed=0)
    config = _config(dataset, "gpu")
    with pytest.raises(config_utils.ConfigError, match=r"--config.data.augment_on='gpu'"):
        config_utils.validate(config)



def test_a_training_run_with_device_views_follows_the_host_run(tmp_path, session_mixture, reference_run):
    """`trainer.train` with the views rendered on the (8 simulated) devices: the same batches
    within rounding, so the host-rendered reference run's losses."""
    from wam_jax.training import metrics, trainer

    cfg = rf.tiny_config(session_mixture, **{"data.augment_on": "device"})
    workdir = str(tmp_path / "run")
    trainer.train(cfg, workdir)
    reference_dir, _ = reference_run

    def losses(d: str) -> np.ndarray:
        return np.asarray([r["loss"] for r in metrics.read_jsonl(os.path.join(d, metrics.METRICS_JSONL)) if "loss" in r])

    got, want = losses(workdir), losses(reference_dir)
    assert len(got) == len(want) == rf.tiny_config(session_mixture).train.num_steps
    # the first step sees the same batch within rounding; training then amplifies the difference
    np.testing.assert_allclose(got[0], want[0], rtol=3e-3)
    np.testing.assert_allclose(got, want, rtol=6e-2)
