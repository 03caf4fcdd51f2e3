"""`cost='scene'`: the latent directions the robot's state explains, fitted and removed; the frame
sample they are fitted on; and the planner's energy without them."""

from __future__ import annotations

import os

import numpy as np
import pytest

from data_pipelines import records
from data_pipelines.frame_sample import sample_frames
from tests.converted_fixtures import write_converted_dataset
from wam_jax.inference.probes import distance_rank
from wam_jax.inference.state_subspace import explained_share, fit_state_subspace, remove_subspace


def _agent_dominated(n: int = 800, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(latents [n, 16], agent [n, 2], block [n, 2]): a large smooth nonlinear code of the agent
    plus a small linear code of the block, rotated so that no coordinate holds either alone."""
    rng = np.random.default_rng(seed)
    agent, block = rng.uniform(0, 1, (n, 2)), rng.uniform(0, 1, (n, 2))
    a = agent * 2.0
    agent_code = np.stack([a[:, 0], a[:, 1], a[:, 0] ** 2, a[:, 0] * a[:, 1], a[:, 1] ** 2, a[:, 0] ** 3], 1)
    z = np.concatenate([3.0 * agent_code, 0.5 * block, 0.01 * rng.normal(size=(n, 8))], axis=1)
    q, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    return z @ q, agent, block


def test_removing_the_state_subspace_leaves_the_block():
    """Before: the latent distance ranks pairs by the agent; after removing what a cubic of the
    agent explains, by the block, which the fit never saw."""
    z, agent, block = _agent_dominated()
    basis = fit_state_subspace(z, agent)
    assert basis.shape[0] == 16 and 1 <= basis.shape[1] <= 9
    np.testing.assert_allclose(basis.T @ basis, np.eye(basis.shape[1]), atol=1e-5)
    assert explained_share(z, basis) > 0.9
    assert distance_rank(z, agent) > 0.6 > distance_rank(z, block)
    rest = remove_subspace(z, basis)
    assert distance_rank(rest, block) > 0.8 and distance_rank(rest, agent) < 0.2
    np.testing.assert_allclose(remove_subspace(rest, basis), rest, atol=1e-5)  # a projection


def test_fit_refuses_what_it_cannot_fit():
    z, agent, _ = _agent_dominated(100)
    with pytest.raises(ValueError, match="100 latents but 99 proprio rows"):
        fit_state_subspace(z, agent[:99])
    with pytest.raises(ValueError, match="10 frames; need at least 64"):
        fit_state_subspace(z[:10], agent[:10])
    with pytest.raises(ValueError, match="the proprio is constant"):
        fit_state_subspace(z, np.ones_like(agent))


def test_sample_frames_pairs_each_frame_with_its_proprio(tmp_path):
    """Fixture frames have red = 7 t and green = 13 e; proprio = (t, e, 0, 0)."""
    d = write_converted_dataset(str(tmp_path / "robot"), episode_lengths=(12, 9, 14), image_size=(24, 24))
    frames, proprio = sample_frames(d, image_size=16, count=20, seed=3)
    assert frames.shape == (20, 16, 16, 3) and frames.dtype == np.uint8 and proprio.shape == (20, 4)
    np.testing.assert_allclose(frames[:, 8, 8, 0], (proprio[:, 0] * 7) % 256, atol=3)
    np.testing.assert_allclose(frames[:, 8, 8, 1], (proprio[:, 1] * 13) % 256, atol=3)
    assert len({tuple(p[:2]) for p in proprio}) == 20  # without replacement
    assert len(sample_frames(d, image_size=16, count=1000)[0]) == 35  # all there are
    video = write_converted_dataset(str(tmp_path / "video"), kind="video")
    with pytest.raises(records.DatasetFormatError, match=r"video/dataset.json: no proprio \(proprio_dim 0\)"):
        sample_frames(video, image_size=16)


def test_scene_cost_plans_without_the_state_directions(tmp_path_factory):
    """wam-plan's fit on the training mixture's first dataset; the scene energy is the latent L1
    after removing the basis; a missing or misshapen basis is named."""
    from launch.plan import scene_subspace
    from tests.test_world_model_api import one_device_mesh, shared_workdir
    from wam_jax import WorldModel

    workdir, mixture = shared_workdir(tmp_path_factory)
    wm = WorldModel.load(workdir, mesh=one_device_mesh())
    basis, info = scene_subspace(wm, None, 64, 0)
    assert info["data"] == os.path.abspath(mixture.split(",")[0].rsplit(":", 1)[0]) and info["frames"] == 64
    assert basis.shape == (info["latent_dim"], info["rank"]) and 0 < info["variance_share"] <= 1
    frames, _ = sample_frames(info["data"], image_size=wm.image_size, count=2, seed=1)
    z = np.asarray(wm.encode(frames))
    cfg = wm.planner_config("vjepa2_ac", num_samples=8, num_elites=2, num_iterations=2)
    res = wm.plan_latents(z[0], z[1], preset=cfg, cost="scene", scene_basis=basis)
    final = np.asarray(wm.predict(z[0], res.best_actions))[-1]
    want = np.abs(remove_subspace(final.reshape(1, -1), basis) - remove_subspace(z[1].reshape(1, -1), basis)).mean()
    assert float(res.best_energy) == pytest.approx(float(want), rel=1e-3, abs=1e-5)
    plain = wm.plan_latents(z[0], z[1], preset=cfg)
    assert float(plain.best_energy) != pytest.approx(float(res.best_energy), rel=1e-3)
    with pytest.raises(ValueError, match="cost='scene' needs scene_basis"):
        wm.plan_latents(z[0], z[1], preset=cfg, cost="scene")
    with pytest.raises(ValueError, match=r"scene_basis has shape \(5, 2\); expected \[N \* D, r\]"):
        wm.plan_latents(z[0], z[1], preset=cfg, cost="scene", scene_basis=np.zeros((5, 2)))
