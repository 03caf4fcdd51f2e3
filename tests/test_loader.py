"""Grain loader: batch schema, exact resume, process sharding, mixing, stride/dt, normalization,
held-out split, bad inputs, multiprocess workers and device prefetch."""

from __future__ import annotations

import collections

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import base
from data_pipelines import loader, records, schema
from data_pipelines.transforms import NORM_CLIP
from tests.converted_fixtures import PROPRIO_SCALE, decode_windows, write_converted_dataset


def _config(mixture: str, *, batch: int = 4, frames: int = 4, image_size: int = 16, heldout: float = 0.0,
            workers: int = 0, jitter: float = 0.1):
    c = base.get_config()
    c.data.mixture = mixture
    c.data.global_batch_size = batch
    c.data.num_frames = frames
    c.data.num_workers = workers
    c.data.read_threads = 2
    c.data.heldout_fraction = heldout
    c.data.color_jitter = jitter
    c.model.image_size = image_size
    return c


def _take(it, n):
    return [next(it) for _ in range(n)]


def _assert_batches_equal(xs, ys):
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


@pytest.fixture(scope="module")
def robot(tmp_path_factory):
    return write_converted_dataset(str(tmp_path_factory.mktemp("robot")), name="robot",
                                   episode_lengths=[10] * 8)


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return write_converted_dataset(str(tmp_path_factory.mktemp("video")), name="video", kind="video",
                                   fps=30.0, episode_lengths=[40, 25, 60], index_in_json=True)


def test_batches_follow_the_schema(robot, video):
    c = _config(f"{robot},{video}", batch=6, heldout=0.3)
    for split in ("train", "eval"):
        it = loader.make_iterator(c, split=split)
        batch = next(it)
        schema.validate_batch(batch, num_frames=4, image_size=16, action_dim=c.model.action_dim,
                              proprio_dim=c.model.proprio_dim)
        it.close()


def test_exact_resume_from_get_state(robot, video):
    c = _config(f"{robot}:0.7,{video}:0.3")
    it = loader.make_iterator(c)
    _take(it, 5)
    state = it.get_state()
    expected = _take(it, 4)
    resumed = loader.make_iterator(c)
    resumed.set_state(state)
    _assert_batches_equal(_take(resumed, 4), expected)
    # a fresh iterator replays from the start: the first batches differ from the resumed ones
    fresh = _take(loader.make_iterator(c), 1)[0]
    assert not np.array_equal(fresh["video"], expected[0]["video"])


def test_same_seed_same_stream_other_seed_other_stream(robot):
    c = _config(robot)
    a = _take(loader.make_iterator(c, seed=1), 3)
    _assert_batches_equal(_take(loader.make_iterator(c, seed=1), 3), a)
    b = _take(loader.make_iterator(c, seed=2), 3)
    assert decode_windows(a[0]) + decode_windows(a[1]) != decode_windows(b[0]) + decode_windows(b[1])


def test_resume_through_orbax_checkpoint_and_device_prefetch(robot, video, tmp_path):
    c = _config(f"{robot},{video}")
    mesh = jax.make_mesh((len(jax.devices()),), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

    def place(batch):
        return jax.tree.map(lambda x: jax.device_put(x, sharding), batch)

    it = loader.device_prefetch(loader.make_iterator(c), place, size=2)
    _take(it, 3)
    mngr = ocp.CheckpointManager(str(tmp_path / "ckpt"))
    mngr.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
    mngr.wait_until_finished()
    expected = [jax.device_get(b) for b in _take(it, 3)]

    restored = loader.device_prefetch(loader.make_iterator(c), place, size=2)
    mngr.restore(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(restored)))
    got = [jax.device_get(b) for b in _take(restored, 3)]
    _assert_batches_equal(got, expected)
    # the saved state points after the 3 consumed batches, not after the 2 prefetched ones
    plain = loader.make_iterator(c)
    _take(plain, 3)
    _assert_batches_equal([next(plain)], [expected[0]])
    mngr.close()
    it.close()
    restored.close()


def test_device_prefetch_passes_everything_through_in_order(robot):
    c = _config(robot)
    host = _take(loader.make_iterator(c), 5)
    for size in (0, 1, 3):
        got = _take(loader.device_prefetch(loader.make_iterator(c), lambda b: b, size), 5)
        _assert_batches_equal(got, host)
    finite = loader.device_prefetch(iter([{"x": 1}, {"x": 2}]), lambda b: b, 4)
    assert [b["x"] for b in finite] == [1, 2]
    with pytest.raises(TypeError, match="get_state"):
        loader.device_prefetch(iter([{"x": 1}]), lambda b: b, 1).get_state()


def test_process_shards_are_disjoint_and_cover_every_window(robot):
    # 8 episodes x 7 windows = 56 windows; 2 processes x 14 batches of 2 = one epoch.
    c = _config(robot, batch=4)
    seen = []
    for pid in range(2):
        it = loader.make_iterator(c, process_index=pid, process_count=2)
        seen.append([w for b in _take(it, 14) for w in decode_windows(b)])
    everything = {(e, s) for e in range(8) for s in range(7)}
    assert len(set(seen[0])) == len(seen[0]) == 28
    assert set(seen[0]).isdisjoint(seen[1])
    assert set(seen[0]) | set(seen[1]) == everything


def test_epochs_cover_all_windows_then_reshuffle(robot):
    c = _config(robot, batch=4)
    it = loader.make_iterator(c)
    first = [w for b in _take(it, 14) for w in decode_windows(b)]
    second = [w for b in _take(it, 14) for w in decode_windows(b)]
    assert len(set(first)) == len(set(second)) == 56
    assert first != second


def test_mixture_weights_are_respected(robot, video):
    c = _config(f"{robot}:0.8,{video}:0.2", batch=40, image_size=8)
    it = loader.make_iterator(c)
    ids = np.concatenate([b["source_id"] for b in _take(it, 50)])
    assert ids.shape == (2000,)
    assert abs((ids == 0).mean() - 0.8) < 0.03
    emb = np.concatenate([b["embodiment_id"] for b in _take(it, 5)])
    assert set(emb.tolist()) == {0, 1}


def test_stride_and_dt_follow_each_source_rate(tmp_path):
    slow = write_converted_dataset(str(tmp_path / "slow"), name="slow", fps=5.0, episode_lengths=[20] * 2)
    same = write_converted_dataset(str(tmp_path / "same"), name="same", fps=10.0, episode_lengths=[20] * 2)
    fast = write_converted_dataset(str(tmp_path / "fast"), name="fast", fps=30.0, episode_lengths=[40] * 2)
    c = _config(f"{slow},{same},{fast}", batch=12, frames=5)
    info = loader.mixture_info(c)
    assert [s["stride"] for s in info["sources"]] == [1, 1, 3]
    assert [s["dt"] for s in info["sources"]] == pytest.approx([0.2, 0.1, 0.1])
    batch = next(loader.make_iterator(c))
    frames = np.rint(batch["proprio"][..., 0] * PROPRIO_SCALE)  # [B, T] source frame indices
    steps = np.diff(frames, axis=1)
    want_stride = {0: 1, 1: 1, 2: 3}
    want_dt = {0: 0.2, 1: 0.1, 2: 0.1}
    for i, sid in enumerate(batch["source_id"].tolist()):
        assert set(steps[i].tolist()) == {want_stride[sid]}
        assert batch["dt"][i] == pytest.approx(want_dt[sid])
    assert set(batch["source_id"].tolist()) == {0, 1, 2}


# The stats of `_stride2_robot`'s dataset; its recorded action at frame f is (d + 1) * (f + 1) in
# dim d and its proprio dim 0 the frame index.
MEAN, STD = [1.0, -2.0, 0.5], [2.0, 4.0, 0.25]
PMEAN, PSTD = [0.5, 0.0, 1.0], [10.0, 1.0, 2.0]


def _stride2_robot(tmp_path) -> str:
    """A 20 fps robot dataset: at a 10 fps target each transition spans two recorded actions."""
    return write_converted_dataset(
        str(tmp_path / "r"), name="r", fps=20.0, episode_lengths=[30, 30], action_dim=3, proprio_dim=3,
        action_is_delta=[True, True, False],
        stats={"action": {"mean": MEAN, "std": STD}, "proprio": {"mean": PMEAN, "std": PSTD}})


def test_action_normalization_padding_and_masks(tmp_path):
    mean, std, pmean, pstd = MEAN, STD, PMEAN, PSTD
    robot = _stride2_robot(tmp_path)
    video = write_converted_dataset(str(tmp_path / "v"), name="v", kind="video", episode_lengths=[30])
    c = _config(f"{robot},{video}", batch=8, frames=4)
    batch = next(loader.make_iterator(c))
    a_dim, p_dim = c.model.action_dim, c.model.proprio_dim
    assert batch["action"].shape == (8, 3, a_dim) and batch["proprio"].shape == (8, 4, p_dim)
    for i in range(8):
        if batch["source_id"][i] == 1:
            assert not batch["action_mask"][i].any() and not batch["proprio_mask"][i].any()
            assert not batch["action"][i].any() and not batch["proprio"][i].any()
            assert batch["timestep_mask"][i].all()
            continue
        assert batch["action_mask"][i, :, :3].all() and not batch["action_mask"][i, :, 3:].any()
        assert batch["proprio_mask"][i, :, :3].all() and not batch["proprio_mask"][i, :, 3:].any()
        assert not batch["action"][i, :, 3:].any() and not batch["proprio"][i, :, 3:].any()
        # recover the clip's frames from proprio dim 0 (raw value = frame index)
        frames = np.rint(batch["proprio"][i, :, 0] * pstd[0] + pmean[0]).astype(int)
        np.testing.assert_array_equal(np.diff(frames), [2, 2, 2])
        for k in range(3):
            f = frames[k]
            raw = [(d + 1) * (f + 1) + (d + 1) * (f + 2) for d in range(2)] + [3 * (f + 2)]  # sum, sum, last
            want = [(raw[0] / 2 - mean[0]) / std[0], (raw[1] / 2 - mean[1]) / std[1],
                    (raw[2] - mean[2]) / std[2]]
            np.testing.assert_allclose(batch["action"][i, k, :3], np.clip(want, -NORM_CLIP, NORM_CLIP),
                                       rtol=1e-6)
        assert np.abs(batch["action"][i]).max() <= NORM_CLIP
        assert np.abs(batch["action"][i, :, 2]).max() == NORM_CLIP  # |(60 - 0.5) / 0.25| clipped
    assert set(batch["source_id"].tolist()) == {0, 1}


def test_chunked_stride_actions_feed_every_recorded_action(tmp_path):
    """`data.stride_actions='chunk'`: a transition's action is its stride's recorded actions in time
    order, each normalized as one step (no summing), and the inference action space inverts it,
    unrolling a chunk into one action per recorded step."""
    from wam_jax.inference.action_space import action_spaces_from_info

    mean, std, pmean, pstd = MEAN, STD, PMEAN, PSTD
    robot = _stride2_robot(tmp_path)
    c = _config(robot, batch=4, frames=4)
    c.data.stride_actions = "chunk"
    batch = next(loader.make_iterator(c))
    assert batch["action_mask"][:, :, :6].all() and not batch["action_mask"][:, :, 6:].any()
    for i in range(4):
        frames = np.rint(batch["proprio"][i, :, 0] * pstd[0] + pmean[0]).astype(int)
        for k in range(3):
            raw = np.array([[(d + 1) * (f + 1) for d in range(3)] for f in (frames[k], frames[k] + 1)])
            want = np.clip((raw - mean) / std, -NORM_CLIP, NORM_CLIP).reshape(-1)
            np.testing.assert_allclose(batch["action"][i, k, :6], want, rtol=1e-6)
    info = loader.mixture_info(c)
    assert info["sources"][0]["action_chunk"] == 2
    space = action_spaces_from_info(info, c.model.action_dim, "test")["r"]
    assert space.dim == 6 and space.chunk == 2 and space.frame_stride == 2
    assert space.action_names[:4] == ("a0@0", "a1@0", "a2@0", "a0@1")  # the fixture names its dims a0..a2
    robot_units = np.array([[3.0, 4.0, 0.6, 6.0, 7.0, 0.9]])  # inside the ±5 std clip
    norm, _ = space.normalize(robot_units)
    np.testing.assert_allclose(norm[0, :6], ((robot_units.reshape(2, 3) - mean) / std).reshape(-1), rtol=1e-6)
    np.testing.assert_allclose(space.denormalize(norm), robot_units, rtol=1e-6)
    np.testing.assert_array_equal(space.to_env_steps(robot_units), [[3.0, 4.0, 0.6], [6.0, 7.0, 0.9]])
    np.testing.assert_allclose(space.from_env_steps(space.to_env_steps(robot_units)), robot_units, rtol=1e-6)
    low, high = space.step_box()  # one recorded action's box (the fixture has no quantiles: mean ± 2 std)
    np.testing.assert_allclose(low, np.subtract(mean, 2 * np.asarray(std)))
    np.testing.assert_allclose(high, np.add(mean, 2 * np.asarray(std)))
    c.model.action_dim = 5  # 2 x 3 dims do not fit
    with pytest.raises(ValueError, match="raise it to at least 6"):
        next(loader.make_iterator(c))


def test_reduced_actions_execute_as_the_stride_they_sum(tmp_path):
    """`data.stride_actions` reduced (one action per transition): executing a model action gives
    `stride` recorded steps whose delta dims add up to it (the loader fed their sum) and whose
    absolute dims hold it."""
    from wam_jax.inference.action_space import action_spaces_from_info

    c = _config(_stride2_robot(tmp_path), batch=4, frames=4)
    space = action_spaces_from_info(loader.mixture_info(c), c.model.action_dim, "test")["r"]
    assert space.stride == 2 and space.chunk == 1 and list(space.is_delta) == [True, True, False]
    steps = space.to_env_steps(np.array([[3.0, -4.0, 0.6], [1.0, 2.0, -0.2]]))
    np.testing.assert_allclose(steps, [[1.5, -2.0, 0.6], [1.5, -2.0, 0.6], [0.5, 1.0, -0.2], [0.5, 1.0, -0.2]])
    # Back to model actions as the loader reduces recorded steps: deltas summed, absolute dims' last.
    np.testing.assert_allclose(space.from_env_steps(steps), [[3.0, -4.0, 0.6], [1.0, 2.0, -0.2]])
    np.testing.assert_allclose(space.from_env_steps([[1, 1, 0.1], [2, 3, 0.7]]), [[3, 4, 0.7]])
    with pytest.raises(ValueError, match="whole number"):
        space.from_env_steps(steps[:3])


def test_eval_view_is_deterministic_center_crop(tmp_path):
    d = write_converted_dataset(str(tmp_path / "d"), image_size=(24, 40), episode_lengths=[12] * 6)
    c = _config(d, batch=2, heldout=0.5)
    a = list(loader.make_iterator(c, split="eval"))
    _assert_batches_equal(list(loader.make_iterator(c, split="eval", seed=123)), a)
    video = a[0]["video"].astype(int)
    # flat fixture frames: the center crop is the frame colour everywhere (R = 7 t, G = 13 e)
    for i, (e, s) in enumerate(decode_windows(a[0])):
        for k in range(4):
            assert np.abs(video[i, k] - [(7 * (s + k)) % 256, (13 * e) % 256, 128]).max() <= 3


def test_train_augmentation_is_consistent_across_the_clip(tmp_path):
    # every frame of an episode is the same image, so one crop + one jitter per clip means
    # bit-identical frames within a clip, while clips of the same episode differ
    d = write_converted_dataset(str(tmp_path / "d"), texture=True, static=True, image_size=(48, 48),
                                episode_lengths=[12, 12])
    c = _config(d, batch=8, frames=4, image_size=16, jitter=0.3)
    c.data.crop_scale = (0.3, 0.6)
    batch = next(loader.make_iterator(c))
    v = batch["video"].astype(int)
    for i in range(8):
        for k in range(1, 4):
            np.testing.assert_array_equal(v[i, k], v[i, 0])
    episodes = [e for e, _ in decode_windows(batch)]
    same = [(i, j) for i in range(8) for j in range(i + 1, 8) if episodes[i] == episodes[j]]
    assert same and all(np.abs(v[i, 0] - v[j, 0]).mean() > 2 for i, j in same)
    # without augmentation (eval view) clips of one episode are identical
    evals = next(loader.make_iterator(_config(d, batch=2, frames=4, image_size=16, heldout=0.9),
                                      split="eval"))
    assert [e for e, _ in decode_windows(evals)] == [0, 0]  # eval is in order: episode 0 first
    np.testing.assert_array_equal(evals["video"][0], evals["video"][1])


def test_heldout_split_is_disjoint_and_eval_covers_it_once(tmp_path):
    lengths = [9] * 40
    d = write_converted_dataset(str(tmp_path / "d"), episode_lengths=lengths, index_in_json=True)
    c = _config(d, batch=5, heldout=0.25)
    info = loader.mixture_info(c)["sources"][0]
    n_eval = info["eval"]["num_windows"]
    assert info["eval"]["num_split_episodes"] + info["train"]["num_split_episodes"] == 40
    assert 0 < n_eval and n_eval % 5  # the last batch needs padding

    evals, padded = [], 0
    for b in loader.make_iterator(c, split="eval"):
        valid = b["timestep_mask"].all(axis=1)
        padded += int((~b["timestep_mask"].any(axis=1)).sum())
        assert not b["action_mask"][~valid].any() and not b["proprio_mask"][~valid].any()
        evals += [w for w, ok in zip(decode_windows(b), valid, strict=True) if ok]
    assert len(evals) == len(set(evals)) == n_eval and padded == -n_eval % 5
    eval_episodes = {e for e, _ in evals}

    n_train = info["train"]["num_windows"]
    it = loader.make_iterator(c)
    train = [w for b in _take(it, n_train // 5 + 1) for w in decode_windows(b)]
    train_episodes = {e for e, _ in train}
    assert eval_episodes.isdisjoint(train_episodes)
    assert eval_episodes | train_episodes == set(range(40))


def test_eval_is_split_across_processes(tmp_path):
    d = write_converted_dataset(str(tmp_path / "d"), episode_lengths=[9] * 40, index_in_json=True)
    c = _config(d, batch=10, heldout=0.25)
    per_process = []
    for pid in range(2):
        batches = list(loader.make_iterator(c, split="eval", process_index=pid, process_count=2))
        per_process.append({w for b in batches for w, ok in zip(decode_windows(b), b["timestep_mask"].all(1),
                                                                   strict=True) if ok})
        assert all(b["video"].shape[0] == 5 for b in batches)
    single = {w for b in loader.make_iterator(c, split="eval") for w, ok in
              zip(decode_windows(b), b["timestep_mask"].all(1), strict=True) if ok}
    assert per_process[0].isdisjoint(per_process[1])
    assert per_process[0] | per_process[1] == single


def test_bad_inputs_fail_clearly(tmp_path, robot):
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(records.DatasetFormatError, match=str(plain)):
        loader.make_dataset(_config(f"{robot},{plain}"))
    with pytest.raises(ValueError, match=r"'.*:x0\.5'.*not a number"):
        loader.make_dataset(_config(f"{robot}:x0.5"))
    with pytest.raises(ValueError, match="global_batch_size=6 is not divisible by process_count=4"):
        loader.make_dataset(_config(robot, batch=6), process_count=4)
    with pytest.raises(ValueError, match="process_index"):
        loader.make_dataset(_config(robot), process_index=2, process_count=2)
    with pytest.raises(ValueError, match="split"):
        loader.make_dataset(_config(robot), split="test")
    with pytest.raises(ValueError, match="no held-out clips"):
        loader.make_dataset(_config(robot, heldout=0.0), split="eval")
    short = write_converted_dataset(str(tmp_path / "short"), episode_lengths=[3, 3])
    with pytest.raises(ValueError, match=f"{short}: no training clips"):
        loader.make_dataset(_config(f"{robot},{short}"))


def test_mixture_info_is_json_and_complete(robot, video):
    import json

    c = _config(f"{robot}:3,{video}", heldout=0.3)
    info = json.loads(json.dumps(loader.mixture_info(c)))
    assert info["weights"] == pytest.approx([0.75, 0.25])
    assert info["embodiments"] == ["robot", "video"]
    assert info["stats"][0]["action"]["std"] == [PROPRIO_SCALE] * 3 and info["stats"][1]["action"] is None
    assert [s["stride"] for s in info["sources"]] == [1, 3]
    src = info["sources"][0]
    assert src["train"]["num_windows"] + src["eval"]["num_windows"] == 8 * 7


def _examples(batches):
    """Multiset of examples (source id + exact bytes of every field) of a list of batches."""
    out = collections.Counter()
    for b in batches:
        for i in range(b["video"].shape[0]):
            out[tuple(b[k][i].tobytes() for k in schema.BATCH_KEYS)] += 1
    return out


def test_multiprocess_workers_match_and_resume(robot, video):
    c = _config(f"{robot},{video}", workers=2)
    it = loader.make_iterator(c)
    first = _take(it, 3)
    state = it.get_state()
    expected = _take(it, 3)
    it.close()
    resumed = loader.make_iterator(c)
    resumed.set_state(state)
    _assert_batches_equal(_take(resumed, 3), expected)
    resumed.close()
    # workers own strided slices of the same element stream: the first 6 batches hold exactly the
    # examples of the first 6 in-process batches (regrouped), augmentation included
    inproc = _take(loader.make_iterator(_config(f"{robot},{video}")), 6)
    assert _examples(first + expected) == _examples(inproc)


@pytest.mark.slow
def test_device_prefetch_over_workers_resumes_exactly(robot, video):
    c = _config(f"{robot},{video}", workers=2)
    ref = loader.make_iterator(c)
    expected = _take(ref, 6)[3:]
    ref.close()
    it = loader.device_prefetch(loader.make_iterator(c), lambda b: b, 2)
    _take(it, 3)
    state = it.get_state()
    _assert_batches_equal(_take(it, 2), expected[:2])
    it.close()
    resumed = loader.device_prefetch(loader.make_iterator(c), lambda b: b, 2)
    resumed.set_state(state)
    _assert_batches_equal(_take(resumed, 3), expected)
    resumed.close()


def test_mixture_info_names_every_dimension(robot):
    src = loader.mixture_info(_config(robot))["sources"][0]
    assert src["action_names"] == ["a0", "a1", "a2"]
    assert src["proprio_names"] == [f"proprio[{i}]" for i in range(4)]


def test_eval_of_other_data_whole_capped_and_padded(robot, tmp_path):
    """`data=` reads every episode of other datasets (heldout ignored), `max_clips` caps the
    total (earlier sources first), the tail is padded to full batches, processes split it."""
    other = write_converted_dataset(str(tmp_path / "o"), name="other", episode_lengths=[6] * 3)
    c = _config(robot, batch=4, heldout=0.5)
    sources = loader.eval_sources(c, data=f"{other},{robot}")
    assert [e.num_clips for e in sources] == [9, 56]  # 3 x 3 and 8 x 7 windows: no held-out split
    capped = loader.eval_sources(c, data=f"{other},{robot}", max_clips=11)
    assert [e.num_clips for e in capped] == [9, 2]
    batches = list(loader.make_iterator(c, split="eval", data=f"{other},{robot}", max_clips=11))
    valid = np.concatenate([b["timestep_mask"].all(1) for b in batches])
    assert len(batches) == 3 and valid.sum() == 11 and not valid[11:].any()
    ids = np.concatenate([b["source_id"] for b in batches])[valid]
    assert ids.tolist() == [0] * 9 + [1] * 2
    halves = [list(loader.make_iterator(c, split="eval", data=other, process_index=i, process_count=2))
              for i in range(2)]
    assert sum(int(b["timestep_mask"].all(1).sum()) for h in halves for b in h) == 9
    with pytest.raises(ValueError, match="trained="):
        loader.make_dataset(c, data=other)


def test_eval_normalizes_with_the_trained_statistics(robot, tmp_path):
    """Clips of a dataset the model never saw are fed with the statistics (and embodiment id) it
    was trained with for that embodiment: the trained source at the same path, else the first
    labeled one of the embodiment; an unknown embodiment gets no actions."""
    c = _config(robot, batch=4)
    trained = loader.mixture_info(c)
    mean, std = [1.0, 2.0, 3.0], [10.0, 20.0, 30.0]
    other = write_converted_dataset(str(tmp_path / "o"), name="other", embodiment="robot", episode_lengths=[6] * 2,
                                    stats={"action": {"mean": mean, "std": std},
                                           "proprio": {"mean": [5.0] * 4, "std": [7.0] * 4}})
    stranger = write_converted_dataset(str(tmp_path / "s"), name="stranger", episode_lengths=[6] * 2)
    norms = [e.norm for e in loader.eval_sources(c, data=f"{other},{stranger},{robot}", trained=trained)]
    assert norms[0].action_std.tolist() == [PROPRIO_SCALE] * 3 and norms[0].embodiment_id == 0
    assert norms[1].action_mean is None and norms[1].proprio_mean is None
    own = loader.eval_sources(c, data=other)[0].norm  # without `trained`: the dataset's own
    assert own.action_std.tolist() == std
    batch = next(loader.make_iterator(c, split="eval", data=other, trained=trained))
    first = next(loader.make_iterator(c, split="eval", data=other))
    # action[t, d] = (d + 1) * (t + 1), the same clips: only the statistics differ
    np.testing.assert_allclose(batch["action"][..., :3] * PROPRIO_SCALE,
                               (first["action"][..., :3] * std + mean), rtol=1e-5)
    assert batch["action_mask"][..., :3].all()
    unknown = next(loader.make_iterator(c, split="eval", data=stranger, trained=trained))
    assert not unknown["action_mask"].any() and not unknown["proprio_mask"].any()
    assert (unknown["embodiment_id"] == 0).all()
