"""`wam-synth`: generated (frames, actions) pairs written as a converted dataset, marked synthetic,
that the real loader mixes with recorded data."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from tests import runtime_fixtures as rf

# A tiny generator: a flow head (with the bridge), a frame decoder, one pooled latent of 16.
GENERATOR = {"model.flow_head.depth": 1, "model.flow_head.bridge": (2, 1, 1), "model.flow_head.sample_steps": 2,
             "model.pool.kind": "mean", "model.pool.dim": 16, "model.decoder.size": 32, "loss.recon": 1.0}


@pytest.fixture(scope="module")
def synth_workdir(tmp_path_factory) -> tuple[str, str]:
    """A tiny workdir whose model has a flow head (with the bridge) and a frame decoder."""
    from tests.test_world_model_api import make_tiny_workdir

    return make_tiny_workdir(str(tmp_path_factory.mktemp("synth")), steps=(1, 2), **GENERATOR)


def test_wam_synth_writes_generated_pairs_that_the_loader_mixes(synth_workdir, tmp_path):
    from data_pipelines import loader, records
    from launch import synthesize
    from tests.test_world_model_api import one_device_mesh
    from wam_jax import WorldModel

    workdir, mixture = synth_workdir
    robot, video = (p.rsplit(":", 1)[0] for p in mixture.split(","))
    out = str(tmp_path / "synthetic")
    ds = synthesize.main([f"--workdir={workdir}", f"--source={video}", f"--output={out}", "--episodes=5",
                          "--steps=3", "--goal_steps=2", "--batch=4", "--seed=1", "--latents"])
    assert ds["synthetic"] and ds["kind"] == "robot" and ds["num_episodes"] == 5 and ds["num_frames"] == 20
    with open(os.path.join(out, records.MANIFEST_JSON)) as f:
        manifest = json.load(f)
    assert manifest["synthetic"] and manifest["generator"]["step"] == 2 and manifest["generator"]["steps"] == 3
    assert manifest["generator"]["latents"] == [1, 16]  # one pooled token of 16

    # What was written is what the model generates: the start frame, then the decoded imagined
    # latents of the flow head's chunks; each frame's action the chunk step taken from it.
    wm = WorldModel.load(workdir, mesh=one_device_mesh())
    windows, names = synthesize.sample_windows(video, image_size=32, target_fps=10.0, length=3, count=5, seed=1)
    starts, goals = windows[:, 0], windows[:, -1]
    frames, actions, latents = synthesize.generate_episodes(wm, starts, goals, steps=3, seed=1, batch=4)
    z0 = wm.encode(starts[:4])
    z_h, chunk = wm.generate(z0, wm.encode(goals[:4]), sample=1 * 100_003)
    np.testing.assert_allclose(actions[:4], chunk, rtol=1e-5, atol=1e-5)  # h = 4 covers the 3 + 1 steps
    np.testing.assert_array_equal(frames[:4, 1:], wm.decode(z_h[:, :3]))
    np.testing.assert_allclose(latents[:4, 0], z0, rtol=1e-5, atol=1e-5)  # the start frame's encoding,
    np.testing.assert_allclose(latents[:4, 1:], z_h[:, :3], rtol=1e-5, atol=1e-5)  # then the imagined ones
    written = list(records.iter_episodes(records.shard_paths(out)))
    assert [e.meta["start"] for e in written] == names and all(e.meta["synthetic"] for e in written)
    np.testing.assert_allclose(np.stack([e.action for e in written]), actions, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.stack([e.latent for e in written]), latents, rtol=1e-5, atol=1e-5)
    from data_pipelines.transforms import decode_crop_resize

    first = decode_crop_resize(written[0].frames[0], (0.0, 0.0, 1.0, 1.0), 32).astype(int)
    assert np.abs(first - starts[0]).mean() < 4  # the real start frame, through JPEG

    # A chunk of recorded steps reduces as the loader reduces a stride: deltas summed, absolutes the last.
    from types import SimpleNamespace

    chunked = SimpleNamespace(dim=6, chunk=3, is_delta=np.array([True, False] * 3))
    steps = np.array([[1.0, 10.0, 2.0, 20.0, 3.0, 30.0]])
    np.testing.assert_array_equal(synthesize.recorded_rate(chunked, steps), [[6.0, 30.0]])
    np.testing.assert_array_equal(synthesize.recorded_rate(SimpleNamespace(chunk=1), steps[:, :2]), [[1.0, 10.0]])

    # The real loader mixes it by weight with the recorded robot data.
    config = rf.tiny_config(f"{robot}:0.5,{out}:0.5")
    it = loader.make_iterator(config)
    batch = next(it)
    assert set(np.asarray(batch["source_id"]).tolist()) <= {0, 1}
    assert np.asarray(batch["action_mask"])[np.asarray(batch["source_id"]) == 1].all()
    assert not np.asarray(batch["proprio_mask"])[np.asarray(batch["source_id"]) == 1].any()
    info = loader.mixture_info(config)
    assert [s["embodiment"] for s in info["sources"]] == ["square", "square"]  # one embodiment, two sources

    # benchmarks/synthetic_pairs.py reads both datasets through the generator.
    import sys

    sys.path.insert(0, os.path.join(rf.REPO, "benchmarks"))
    import synthetic_pairs

    report = synthetic_pairs.main([f"--workdir={workdir}", f"--synthetic={out}", f"--real={video}", "--episodes=3",
                                   f"--output={tmp_path / 'pairs.json'}"])
    assert [r["frames"] for r in report["rows"]] == ["synthetic", "recorded video"] and report["length"] == 4
    assert all(np.isfinite(list(v for v in r.values() if isinstance(v, float))).all() for r in report["rows"])


def test_wam_synth_refuses_a_model_without_decoder_or_flow_head_and_labels_recorded_frames(tmp_path_factory):
    """Generated frames need a flow head and a decoder; the control (`--frames=recorded`: the
    video's own frames, inverse-dynamics actions) runs on any model with an action space."""
    from data_pipelines import records
    from data_pipelines.transforms import decode_crop_resize
    from launch import synthesize
    from tests.test_world_model_api import one_device_mesh, shared_workdir
    from wam_jax import WorldModel

    workdir, mixture = shared_workdir(tmp_path_factory)
    video = mixture.split(",")[1].rsplit(":", 1)[0]
    with pytest.raises(ValueError, match="needs a flow head and a frame decoder.*no flow head and no decoder"):
        synthesize.main([f"--workdir={workdir}", f"--source={video}", "--output=unused"])
    out = str(tmp_path_factory.mktemp("recorded") / "labeled")
    ds = synthesize.main([f"--workdir={workdir}", f"--source={video}", f"--output={out}", "--frames=recorded",
                          "--episodes=3", "--steps=3", "--seed=2", "--latents"])
    assert ds["synthetic"] and ds["num_frames"] == 12
    with open(os.path.join(out, records.MANIFEST_JSON)) as f:
        assert json.load(f)["generator"]["actions"] == "inverse dynamics"
    windows, _ = synthesize.sample_windows(video, image_size=32, target_fps=10.0, length=5, count=3, seed=2)
    wm = WorldModel.load(workdir, mesh=one_device_mesh())
    written = list(records.iter_episodes(records.shard_paths(out)))
    z = wm.encode(windows)
    np.testing.assert_allclose(np.stack([e.action for e in written]), wm.infer_actions(z),
                               rtol=1e-5, atol=1e-4)  # frame t's action: inverse dynamics from t to t + 1
    np.testing.assert_allclose(np.stack([e.latent for e in written]), np.asarray(z)[:, :4], rtol=1e-5, atol=1e-5)
    got = np.stack([decode_crop_resize(f, (0.0, 0.0, 1.0, 1.0), 32) for f in written[1].frames]).astype(int)
    assert np.abs(got - windows[1, :4]).mean() < 4  # the recorded frames, through JPEG
    with pytest.raises(ValueError, match="--steps=0"):
        synthesize.main([f"--workdir={workdir}", f"--source={video}", "--output=unused", "--steps=0"])


def test_shuffled_actions_control_keeps_frames_and_latents_and_moves_every_label(synth_workdir, tmp_path):
    """`benchmarks/shuffle_actions.py`: each episode keeps its frames and latents and takes another
    episode's actions, of the same length, whole."""
    import sys

    from data_pipelines import records
    from launch import synthesize

    sys.path.insert(0, os.path.join(rf.REPO, "benchmarks"))
    import shuffle_actions

    rng = np.random.default_rng(0)
    lengths = np.array([3, 5, 3, 3, 7, 5, 3])
    perm = shuffle_actions.derangement(lengths, rng)
    assert sorted(perm.tolist()) == list(range(7)) and (lengths[perm] == lengths).all()
    assert (perm != np.arange(7)).sum() == 6 and perm[4] == 4  # the one length-7 episode has no partner

    workdir, mixture = synth_workdir
    video = mixture.split(",")[1].rsplit(":", 1)[0]
    src, out = str(tmp_path / "synthetic"), str(tmp_path / "shuffled")
    synthesize.main([f"--workdir={workdir}", f"--source={video}", f"--output={src}", "--episodes=6", "--steps=2",
                     "--goal_steps=2", "--latents"])
    ds = shuffle_actions.main([f"--source={src}", f"--output={out}", "--seed=3"])
    assert ds["synthetic"] and ds["num_episodes"] == 6 and ds["fps"] == 10.0
    before = {e.episode_id: e for e in records.iter_episodes(records.shard_paths(src))}
    after = list(records.iter_episodes(records.shard_paths(out)))
    for e in after:
        own, donor = before[e.episode_id], before[e.meta["actions_of"]]
        assert donor is not own and e.frames == own.frames
        np.testing.assert_array_equal(e.latent, own.latent)
        np.testing.assert_array_equal(e.action, donor.action)
    assert sorted(e.meta["actions_of"] for e in after) == sorted(before)  # every label used once
