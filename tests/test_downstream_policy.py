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


def _example(name: str = "downstream_policy"):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "examples", f"{name}.py"))
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


def test_synthetic_rows_join_the_batch_at_their_weight_with_goals_in_their_episode():
    dp = _example()
    real_ep, syn_ep = np.repeat(np.arange(10), 12), np.repeat(np.arange(20), 6)
    real = (np.arange(120.0)[:, None], np.ones((120, 2), np.float32), -np.arange(120.0)[:, None],
            dp.hindsight_spans(real_ep, 5))
    synthetic = (1000.0 + np.arange(120.0)[:, None], 1000.0 - np.arange(120.0)[:, None], dp.hindsight_spans(syn_ep, 2))
    rng = np.random.default_rng(0)
    x, g, prop, y = (np.concatenate(c) for c in zip(*(dp.goal_batch(rng, 64, real, synthetic, 0.3)
                                                      for _ in range(50)), strict=True))
    assert len(x) == 50 * 64
    is_syn = x[:, 0] >= 1000
    assert 0.27 < is_syn.mean() < 0.33  # the weight's share of rows
    i, gi = x[:, 0] - 1000 * is_syn, g[:, 0] - 1000 * is_syn
    assert ((g[:, 0] >= 1000) == is_syn).all()  # a synthetic frame's goal is synthetic,
    eps = np.where(is_syn, syn_ep[gi.astype(int) % 120], real_ep[gi.astype(int)])
    assert (eps == np.where(is_syn, syn_ep[i.astype(int)], real_ep[i.astype(int)])).all()  # in its own episode
    assert set((gi - i)[is_syn].astype(int).tolist()) == {1, 2} and (gi - i)[~is_syn].max() == 5
    np.testing.assert_array_equal(y[:, 0], np.where(is_syn, 1000 - i, -i))  # each row its own label
    assert (prop[is_syn] == 0).all() and (prop[~is_syn] == 1).all()  # generated episodes have no proprio
    x0 = dp.goal_batch(np.random.default_rng(1), 64, real)[0]
    assert (x0[:, 0] < 1000).all() and len(x0) == 64


def test_stride_labels_reduce_as_the_loader_does():
    pd = _example("policy_data")
    a = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [4.0, 40.0]], np.float32)
    got = pd.stride_labels(a, 3, np.array([True, False]))
    np.testing.assert_array_equal(got, [[6.0, 30.0], [9.0, 40.0], [7.0, 40.0], [4.0, 40.0]])  # held / nothing added
    np.testing.assert_array_equal(pd.stride_labels(a, 1, np.array([True, False])), a)


def test_synthetic_latents_of_the_exports_model_train_the_features_policy(tmp_path_factory, tmp_path, pusht_small):
    """`wam-synth --latents` of the export's own model: its latents are checked against the
    export (the start frames re-encode to them) and train the features policy; a dataset from
    another encoder, at another stride, without latents or not synthetic is refused by name."""
    import wam_jax
    from launch import synthesize
    from tests.test_synthesize import GENERATOR
    from tests.test_world_model_api import make_tiny_workdir
    from wam_jax.inference import export

    workdir, mixture = make_tiny_workdir(str(tmp_path_factory.mktemp("generator")), **GENERATOR)
    video = mixture.split(",")[1].rsplit(":", 1)[0]
    syn, plain = str(tmp_path / "synthetic"), str(tmp_path / "no_latents")
    common = [f"--workdir={workdir}", f"--source={video}", "--episodes=6", "--steps=3", "--goal_steps=2"]
    synthesize.main([*common, f"--output={syn}", "--latents"])
    synthesize.main([*common, f"--output={plain}", "--frames=recorded"])
    exported, other = str(tmp_path / "export"), str(tmp_path / "export_step1")
    export.export_model(workdir, exported, platforms=("cpu",))
    export.export_model(workdir, other, step=1, platforms=("cpu",))
    dp = _example()
    encoder = wam_jax.load_encoder(exported)
    kw = dict(image_size=32, label_stride=1, demo_fps=10.0, action_dim=2)
    data = dp.load_synthetic(syn, encoder, **kw)
    assert data["latent"].shape == (24, 1, 16) and data["action"].shape == (24, 2) and data["start_gap"] < 0.05
    for path, enc, over, match in (
            (syn, wam_jax.load_encoder(other), {}, "not this export's"),
            (syn, encoder, {"label_stride": 2}, "pass --label_stride=1"),
            (syn, encoder, {"action_dim": 3}, "2 action dims, the demonstrations have 3"),
            (plain, encoder, {}, "without latents; write it with `wam-synth --latents`"),
            (f"{pusht_small}/pusht_labeled", encoder, {}, "not a synthetic dataset")):
        with pytest.raises(ValueError, match=match):
            dp.load_synthetic(path, enc, **{**kw, **over})

    results = dp.main([f"--export={exported}", f"--data={pusht_small}/pusht_labeled", "--task=goal",
                       "--policies=features", "--proprio=off", f"--synthetic={syn}:0.4", "--steps=3",
                       "--batch_size=8", "--episodes=1", "--budget=5"])
    feats = results["features (frozen export)"]
    assert feats["synthetic"]["frames"] == 24 and feats["synthetic"]["weight"] == 0.4
    assert np.isfinite(feats["final_train_loss"]) and len(feats["episode_records"]) == 1


def test_flags_are_validated(capsys):
    dp = _example()
    for bad in ("--goal_offset=0", "--policies=pixel", "--policies=,", "--act_every=0", "--label_stride=0"):
        with pytest.raises(SystemExit):
            dp.parse_args(["--export=x", bad])
    assert dp.parse_args(["--export=x", "--policies=features"]).policies == ["features"]
    ok = ["--export=x", "--task=goal", "--policies=features", "--proprio=off"]
    assert dp.parse_args([*ok, "--synthetic=d:0.3"]).synthetic_weight == 0.3
    assert dp.parse_args([*ok, "--synthetic=d"]).synthetic_weight == 0.5
    for bad in ("--synthetic=d:2", "--synthetic=d:x"):
        with pytest.raises(SystemExit):
            dp.parse_args([*ok, bad])
        assert "WEIGHT must be a number between 0 and 1" in capsys.readouterr().err
    for drop in ok[1:]:  # the goal task, the features policy alone, no proprio
        with pytest.raises(SystemExit):
            dp.parse_args([x for x in ok if x != drop] + ["--synthetic=d"])
        assert f"--synthetic needs {drop}" in capsys.readouterr().err
    x = np.random.default_rng(0).normal(3.0, 2.0, (50, 2))
    assert np.abs(dp.Normalizer(x)(x).mean(0)).max() < 1e-6 and not dp.Normalizer(x, off=True)(x).any()
