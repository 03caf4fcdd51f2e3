"""PushT: the simulator helpers, the success rule and the scripted policy (`sim`), and the demo
data generation + conversion end to end (`data_pipelines.convert.pusht`)."""

from __future__ import annotations

import inspect
import json
import math
import os

import numpy as np
import pytest

from data_pipelines import records
from data_pipelines.convert import ego4d_layout as ego4d
from data_pipelines.convert import pusht as pusht_demo
from sim import pusht
from sim.rollouts import rollout
from sim.success import is_success, pose_error


@pytest.fixture(scope="module")
def env():
    e = pusht.make_env()
    yield e
    e.close()


def test_reset_to_state_is_exact(env):
    state = [120.0, 380.0, 300.0, 200.0, 1.0]
    obs = pusht.reset_to_state(env, state)
    np.testing.assert_allclose(pusht.get_state(env), state, atol=1e-6)
    np.testing.assert_allclose(obs["agent_pos"], state[:2], atol=1e-6)
    # gym_pusht's own reset_to_state turns the T about its centre of gravity after placing it,
    # so the block ends up elsewhere: the reason for the helper.
    _, info = env.reset(options={"reset_to_state": state})
    assert np.linalg.norm(info["block_pose"][:2] - np.array(state[2:4])) > 20


def test_render_matches_gym_pixels(env):
    obs = pusht.reset_to_state(env, [200.0, 100.0, 250.0, 300.0, -0.5])
    img = pusht.render(env)
    assert img.shape == (96, 96, 3) and img.dtype == np.uint8
    np.testing.assert_array_equal(img, obs["pixels"])
    obs, *_ = env.step(np.array([260.0, 150.0], np.float32))
    np.testing.assert_array_equal(pusht.render(env), obs["pixels"])


def test_pose_error_and_success_rule():
    goal = pusht.GOAL_POSE
    assert is_success(goal, goal)
    pos, ang = pose_error([256 + 12, 256 - 9, goal[2]], goal)
    assert pos == pytest.approx(15.0) and ang == pytest.approx(0.0, abs=1e-9)
    # angles wrap: 350 degrees vs 5 degrees is 15 degrees apart
    assert pose_error([0, 0, math.radians(350)], [0, 0, math.radians(5)])[1] == pytest.approx(15.0)
    assert not is_success([256 + 21, 256, goal[2]], goal)  # 21 px
    assert not is_success([256, 256, goal[2] + math.radians(21)], goal)  # 21 degrees
    assert is_success([256 + 14, 256 + 14, goal[2] - math.radians(19)], goal)  # 19.8 px, 19 deg


def test_success_is_read_from_the_simulator(env):
    goal = pusht.goal_pose(env)
    pusht.reset_to_state(env, [60.0, 60.0, goal[0] + 5.0, goal[1], goal[2] + 0.1])
    assert is_success(pusht.block_pose(env), goal)
    pusht.reset_to_state(env, [60.0, 60.0, goal[0] + 40.0, goal[1], goal[2]])
    assert not is_success(pusht.block_pose(env), goal)


def test_scripted_policy_pushes_the_block_and_is_deterministic():
    env = pusht.make_env(obs_type="state")
    try:
        runs = [rollout(seed, 80, env=env) for seed in (11, 12, 13)]
        again = rollout(11, 80, env=env)
    finally:
        env.close()
    for r in runs:
        t = len(r.actions)
        assert r.images.shape == (t + 1, 96, 96, 3) and r.block_pose.shape == (t + 1, 3)
        assert r.actions.shape == (t, 2) and r.actions.dtype == np.float32
        assert np.all(r.actions >= pusht.WORKSPACE[0]) and np.all(r.actions <= pusht.WORKSPACE[1])
    moved = [np.linalg.norm(r.block_pose[-1, :2] - r.block_pose[0, :2]) for r in runs]
    turned = [abs(r.block_pose[-1, 2] - r.block_pose[0, 2]) for r in runs]
    assert min(max(m, 100 * a) for m, a in zip(moved, turned, strict=True)) > 10, (moved, turned)
    # Toward the goal on average, not just anywhere.
    before = np.mean([pose_error(r.block_pose[0], pusht.GOAL_POSE)[0] for r in runs])
    after = np.mean([pose_error(r.block_pose[-1], pusht.GOAL_POSE)[0] for r in runs])
    assert after < before
    np.testing.assert_array_equal(again.actions, runs[0].actions)
    np.testing.assert_array_equal(again.images, runs[0].images)
    assert not np.array_equal(runs[1].actions[:10], runs[2].actions[:10])


def test_behaviour_mix_is_a_function_of_the_seed_and_random_pushes_move_the_block():
    from sim.rollouts import behaviour_of

    kinds = [behaviour_of(s, 0.5) for s in range(400)]
    assert kinds == [behaviour_of(s, 0.5) for s in range(400)]
    assert 0.4 < kinds.count("random") / 400 < 0.6
    assert {behaviour_of(s, 0.0) for s in range(50)} == {"scripted"}
    assert {behaviour_of(s, 1.0) for s in range(50)} == {"random"}
    env = pusht.make_env(obs_type="state")
    try:
        runs = [rollout(seed, 60, env=env, behaviour="random") for seed in (1, 2, 3, 4)]
        again = rollout(1, 60, env=env, behaviour="random")
    finally:
        env.close()
    np.testing.assert_array_equal(again.actions, runs[0].actions)
    assert all(r.behaviour == "random" for r in runs)
    assert all(np.all((r.actions >= pusht.WORKSPACE[0]) & (r.actions <= pusht.WORKSPACE[1])) for r in runs)
    moved = [np.linalg.norm(r.block_pose[-1, :2] - r.block_pose[0, :2]) for r in runs]
    assert max(moved) > 20, moved
    with pytest.raises(ValueError, match="behaviour"):
        rollout(1, 5, behaviour="expert")


def test_sim_imports_neither_data_pipelines_nor_wam_jax():
    """`sim` sits below both the data generator and the planning evaluation that use it."""
    import subprocess
    import sys

    code = ("import sys, sim.pusht, sim.rollouts, sim.scripted_policy, sim.success; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'data_pipelines', 'wam_jax', 'launch'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def _count_steps(report: dict, part: str) -> int:
    return report[part]["steps"] + report[part]["episodes"]  # frames = steps + 1 per episode


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("pusht") / "demo")
    sizes = pusht_demo.DemoSizes(labeled_episodes=3, video_episodes=3, test_episodes=2, steps=25, seed=1)
    report = pusht_demo.generate(out, sizes, workers=1, image_size=32, progress=False)
    return out, sizes, report


def test_generation_writes_a_tfds_builder_dir(small_demo):
    import tensorflow_datasets as tfds

    out, sizes, report = small_demo
    builder = tfds.builder_from_directory(os.path.join(out, "rlds", "pusht", "0.1.0"))
    assert builder.info.name == "pusht"
    assert builder.info.splits["train"].num_examples == sizes.labeled_episodes
    steps = builder.info.features["steps"].feature
    assert steps["observation"]["image"].shape == (96, 96, 3)
    assert steps["observation"]["state"].shape == (2,)
    assert steps["observation"]["block_pose"].shape == (3,)
    assert steps["action"].shape == (2,)
    ep = next(iter(tfds.as_numpy(builder.as_dataset(split="train").take(1))))
    st = list(ep["steps"])  # RLDS: steps is a nested dataset
    assert st[0]["language_instruction"].decode() == pusht_demo.LANGUAGE
    assert st[0]["is_first"] and st[-1]["is_last"] and not st[0]["is_last"]
    assert st[0]["observation"]["image"].shape == (96, 96, 3)
    assert 2 <= len(st) <= sizes.steps + 1  # one step per action, plus the final observation
    assert sum(1 for _ in tfds.as_numpy(builder.as_dataset(split="train"))) == sizes.labeled_episodes
    test = tfds.builder_from_directory(os.path.join(out, "rlds_test", "pusht", "0.1.0"))
    assert test.info.splits["train"].num_examples == sizes.test_episodes


def test_generation_writes_an_ego4d_layout(small_demo):
    out, sizes, _ = small_demo
    layout = ego4d.Ego4DLayout.open(os.path.join(out, "ego4d"))
    assert layout.detect_video_dir() == "full_scale"
    entries = layout.entries("full_scale")
    assert len(entries) == sizes.video_episodes
    assert all(e.fps == pusht.CONTROL_FPS and e.width == 96 for e in entries)
    for e in entries:
        assert os.path.isfile(layout.video_path(e, "full_scale"))
    assert set(layout.narrations()) == {e.uid for e in entries}


def test_generation_converts_with_the_real_converters(small_demo):
    out, sizes, report = small_demo
    conv = os.path.join(out, "converted")
    labeled = records.read_dataset_info(os.path.join(conv, "pusht_labeled"))
    assert labeled["kind"] == "robot" and labeled["embodiment"] == "pusht"
    assert labeled["num_episodes"] == sizes.labeled_episodes and labeled["action_dim"] == 2
    assert labeled["proprio_dim"] == 2 and labeled["image_size"] == [32, 32]
    assert labeled["num_frames"] == _count_steps(report, "labeled")
    test = records.read_dataset_info(os.path.join(conv, "pusht_test"))
    assert test["num_episodes"] == sizes.test_episodes
    video = records.read_dataset_info(os.path.join(conv, "pusht_video"))
    assert video["kind"] == "video" and video["embodiment"] == "pusht" and video["fps"] == 10.0
    assert video["num_episodes"] == sizes.video_episodes
    assert video["num_frames"] == _count_steps(report, "video")  # every rendered frame kept at 10 fps
    ep = next(records.iter_episodes(records.shard_paths(os.path.join(conv, "pusht_labeled"))))
    assert ep.language == pusht_demo.LANGUAGE and ep.action.shape == (len(ep), 2)
    stats = records.read_stats(os.path.join(conv, "pusht_labeled"))
    assert len(stats["action"]["mean"]) == 2
    # The simulator's block pose rides along as the privileged state: x, y, cos / sin of the angle.
    assert labeled["privileged_dim"] == 4
    assert labeled["privileged_names"] == ["block_x", "block_y", "block_cos", "block_sin"]
    assert len(stats["privileged"]["mean"]) == 4
    (rollout,) = pusht_demo.generate_rollouts(sizes.seeds()["labeled"][:1], sizes.steps,
                                              random_fraction=sizes.random_fraction)
    pose = rollout.block_pose
    np.testing.assert_allclose(ep.privileged, np.concatenate(
        [pose[:, :2], np.cos(pose[:, 2:]), np.sin(pose[:, 2:])], axis=1), rtol=1e-5, atol=1e-4)
    with open(os.path.join(out, "generation.json")) as f:
        saved = json.load(f)
    assert saved["converted_dirs"]["pusht_video"]["episodes"] == sizes.video_episodes


def test_generation_is_deterministic_and_rerun_is_a_no_op(small_demo, tmp_path):
    out, sizes, report = small_demo
    again = pusht_demo.generate(out, sizes, workers=1, image_size=32, progress=False)
    assert again == report  # kept, not regenerated
    with pytest.raises(FileExistsError, match="--overwrite"):
        pusht_demo.generate(out, pusht_demo.DemoSizes(1, 0, 0, 10, 1), image_size=32, progress=False)
    # The action-free videos too, byte for byte.
    redo = str(tmp_path / "v.mp4")
    list(pusht_demo.generate_rollouts(sizes.seeds()["video"][:1], sizes.steps,
                                      noise_scale=pusht_demo.VIDEO_NOISE_SCALE, video_paths=[redo]))
    with open(redo, "rb") as f, open(os.path.join(out, "ego4d", "v2", "full_scale", "pusht-00000.mp4"), "rb") as g:
        assert f.read() == g.read()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not ours")
    with pytest.raises(FileExistsError, match="other data"):
        pusht_demo.generate(str(foreign), pusht_demo.DemoSizes(1, 0, 0, 10, 1), image_size=32, progress=False)
    assert (foreign / "notes.txt").exists()
    # An interrupted generation (our parts, no generation.json) is redone without --overwrite.
    partial = tmp_path / "partial"
    (partial / "rlds").mkdir(parents=True)
    small = pusht_demo.generate(str(partial), pusht_demo.DemoSizes(0, 1, 0, 5, 2), image_size=16, progress=False)
    assert small["converted_dirs"]["pusht_video"]["episodes"] == 1
    # A finished generation of other sizes: an error, unless replace_stale (the demo's own dir).
    other = pusht_demo.DemoSizes(0, 2, 0, 5, 2)
    with pytest.raises(FileExistsError, match="other sizes"):
        pusht_demo.generate(str(partial), other, image_size=16, progress=False)
    assert pusht_demo.generate(str(partial), other, image_size=16, progress=False,
                               replace_stale=True)["converted_dirs"]["pusht_video"]["episodes"] == 2
    with pytest.raises(FileExistsError, match="other data"):  # never what is not a generation's
        pusht_demo.generate(str(foreign), other, image_size=16, progress=False, replace_stale=True)
    # Same seed, same episode, whatever the worker count and chunk (5 seeds in chunks of 2: three
    # tasks over 2 processes), yielded lazily in seed order.
    seeds = sizes.seeds()
    stream = pusht_demo.generate_rollouts(seeds["labeled"] + seeds["test"], sizes.steps, workers=2, chunk=2)
    assert inspect.isgenerator(stream)
    rs = list(stream)
    assert [r.seed for r in rs] == seeds["labeled"] + seeds["test"]
    eps = list(records.iter_episodes(records.shard_paths(os.path.join(out, "converted", "pusht_labeled"))))
    assert len(eps) == len(seeds["labeled"])
    for ep, r in zip(eps, rs, strict=False):
        np.testing.assert_allclose(ep.action[:-1], r.actions, atol=1e-6)
        np.testing.assert_allclose(ep.proprio, r.agent_pos, atol=1e-4)


def test_cli_validation(tmp_path):
    import argparse

    parser = argparse.ArgumentParser()
    pusht_demo.add_arguments(parser)
    args = parser.parse_args([f"--output={tmp_path / 'x'}", "--labeled_episodes=0", "--video_episodes=0",
                              "--test_episodes=0"])
    with pytest.raises(SystemExit, match="nothing to generate"):
        pusht_demo.main(args)
    args = parser.parse_args([f"--output={tmp_path / 'x'}", "--steps=1"])
    with pytest.raises(SystemExit, match="--steps"):
        pusht_demo.main(args)
    args = parser.parse_args([f"--output={tmp_path / 'x'}", "--random_fraction=1.5"])
    with pytest.raises(SystemExit, match="--random_fraction"):
        pusht_demo.main(args)
