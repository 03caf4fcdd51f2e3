"""`examples/downstream_policy.py`: hindsight goals stay inside their episode, and the goal task
runs on exactly `wam-plan pusht`'s tasks (the demonstration's own actions reach every one)."""

from __future__ import annotations

import importlib.util
import json
import os

import jax
import numpy as np
import pytest

from tests.test_world_model_api import shared_workdir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _example():
    spec = importlib.util.spec_from_file_location("downstream_policy",
                                                  os.path.join(REPO, "examples", "downstream_policy.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hindsight_goals_stay_in_their_episode_and_cover_every_offset():
    dp = _example()
    episode = np.repeat([0, 1, 2], [12, 3, 7])
    spans = dp.hindsight_spans(episode, max_offset=5)
    assert spans.tolist() == [5] * 7 + [4, 3, 2, 1, 0] + [2, 1, 0] + [5, 5, 4, 3, 2, 1, 0]
    idx, goal = dp.sample_hindsight(np.random.default_rng(0), spans, 4000)
    assert (episode[idx] == episode[goal]).all()
    offsets = goal - idx
    assert offsets.min() == 1 and offsets.max() == 5 and set(offsets.tolist()) == {1, 2, 3, 4, 5}
    assert (offsets <= spans[idx]).all() and not np.isin(idx, np.flatnonzero(spans == 0)).any()


def test_the_goal_grid_sits_beside_the_frame_grid_from_the_same_cnn():
    dp = _example()
    cnn = dp.init_cnn(jax.random.key(0))
    frames, goals = (np.random.default_rng(s).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8) for s in (1, 2))
    grid = np.asarray(dp.pixel_grid(cnn, frames, goals))
    np.testing.assert_allclose(grid[..., :64], dp.apply_cnn(cnn, frames), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grid[..., 64:], dp.apply_cnn(cnn, goals), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(dp.pixel_grid(cnn, frames, None), dp.apply_cnn(cnn, frames))


@pytest.fixture(scope="module")
def pusht_small(tmp_path_factory) -> str:
    from data_pipelines.convert import pusht as pusht_demo

    out = str(tmp_path_factory.mktemp("pusht_bc") / "demo")
    sizes = pusht_demo.DemoSizes(labeled_episodes=3, video_episodes=1, test_episodes=2, steps=25, seed=2)
    pusht_demo.generate(out, sizes, workers=1, image_size=32, progress=False)
    return os.path.join(out, "converted")


def test_goal_task_scores_wam_plan_tasks_with_references(tmp_path_factory, tmp_path, pusht_small):
    from launch.pusht_tasks import make_tasks
    from wam_jax.inference import export

    exported = str(tmp_path / "export")
    export.export_model(shared_workdir(tmp_path_factory)[0], exported, platforms=("cpu",))
    out = tmp_path / "bc.json"
    dp = _example()
    results = dp.main([f"--export={exported}", f"--data={pusht_small}/pusht_labeled",
                       f"--test_data={pusht_small}/pusht_test", "--task=goal", "--goal_offset=25", "--steps=3",
                       "--batch_size=8", "--episodes=2", "--budget=25", f"--output={out}"])
    policies = ["features (frozen export)", "pixels (CNN from scratch)"]
    assert set(results) == {*policies, "hold still", "demonstration replay", "features vs pixels"}
    seeds = [t.seed for t in make_tasks(2, image_size=32, goal_offset=25)]  # wam-plan --episodes=2
    for name in [*policies, "hold still", "demonstration replay"]:
        assert [e["seed"] for e in results[name]["episode_records"]] == seeds, name
    assert results["demonstration replay"]["success_rate"] == 1.0  # every task is reachable in the budget
    assert results["hold still"]["success_rate"] == 0.0  # and these two need the block moved
    for name in policies:
        assert np.isfinite(results[name]["heldout_action_mae_px"]) and results[name]["train_s"] > 0
    assert results["features vs pixels"]["tasks"] == 2
    saved = json.loads(out.read_text())
    assert saved["args"]["task"] == "goal" and "episode_records" in saved["results"]["hold still"]


def test_flags_are_validated():
    dp = _example()
    for bad in ("--goal_offset=0", "--policies=pixel", "--policies=,", "--act_every=0"):
        with pytest.raises(SystemExit):
            dp.parse_args(["--export=x", bad])
    assert dp.parse_args(["--export=x", "--policies=features"]).policies == ["features"]
    x = np.random.default_rng(0).normal(3.0, 2.0, (50, 2))
    assert np.abs(dp.Normalizer(x)(x).mean(0)).max() < 1e-6 and not dp.Normalizer(x, off=True)(x).any()
