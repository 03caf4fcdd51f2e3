"""RLDS writer (genuine TFDS builder dirs) and the TF-free reader."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from data_pipelines.convert import rlds_writer as W
from data_pipelines.convert.rlds import RLDSDataset, RLDSFormatError, RLDSKeyError, lookup
from tests.rlds_fixtures import make_fixture, moving_shapes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _toy_features(encoding: str = "png", dict_action: bool = True):
    action = (
        {"world_vector": W.tensor((3,)), "open_gripper": W.tensor((), np.bool_)}
        if dict_action
        else W.tensor((7,))
    )
    return W.rlds_features(
        {"image": W.image((12, 16, 3), encoding), "state": W.tensor((2,))},
        action,
        language_instruction=True,
        episode_metadata={"file_path": W.text()},
    )


def _toy_episodes(n: int, lengths=None, dict_action: bool = True):
    for e in range(n):
        T = lengths[e] if lengths else 3 + e
        steps = []
        for t in range(T):
            act = (
                {"world_vector": np.full(3, t, np.float32), "open_gripper": t % 2 == 0}
                if dict_action
                else np.arange(7, dtype=np.float32) + t
            )
            steps.append(
                {
                    "observation": {
                        "image": moving_shapes(e, t, 12, 16),
                        "state": np.array([e, t], np.float32),
                    },
                    "action": act,
                    "language_instruction": f"task {e}",
                }
            )
        yield W.episode_from_steps(steps, episode_metadata={"file_path": f"ep{e}"})


@pytest.mark.parametrize("file_format", ["tfrecord", "array_record"])
def test_writer_output_is_a_tfds_builder_dir(tmp_path, file_format):
    import tensorflow_datasets as tfds

    out = str(tmp_path / "toy" / "1.0.0")
    W.write_rlds_dataset(
        out,
        "toy",
        "1.0.0",
        _toy_features(),
        _toy_episodes(5),
        file_format=file_format,
        num_shards=2,
    )
    files = sorted(os.listdir(out))
    assert "features.json" in files and "dataset_info.json" in files
    shards = [f for f in files if f.startswith(f"toy-train.{file_format}-")]
    assert shards == [f"toy-train.{file_format}-0000{i}-of-00002" for i in range(2)]
    assert not [f for f in os.listdir(tmp_path / "toy") if f.startswith(".rlds_build")]

    builder = tfds.builder_from_directory(out)
    assert builder.info.name == "toy" and str(builder.info.version) == "1.0.0"
    assert builder.info.splits["train"].num_examples == 5
    assert sum(builder.info.splits["train"].shard_lengths) == 5
    with open(os.path.join(out, "dataset_info.json")) as f:
        assert json.load(f)["fileFormat"] == file_format
    steps = builder.info.features["steps"]
    assert isinstance(steps, tfds.features.Dataset)
    assert set(steps.feature.keys()) >= {
        "observation",
        "action",
        "is_first",
        "is_last",
        "is_terminal",
        "reward",
        "discount",
        "language_instruction",
    }


def test_writer_refuses_to_overwrite(tmp_path):
    out = str(tmp_path / "d")
    W.write_rlds_dataset(out, "toy", "1.0.0", _toy_features(), _toy_episodes(1))
    with pytest.raises(FileExistsError, match="already exists"):
        W.write_rlds_dataset(out, "toy", "1.0.0", _toy_features(), _toy_episodes(1))
    W.write_rlds_dataset(out, "toy", "1.0.0", _toy_features(), _toy_episodes(2), overwrite=True)
    assert len(RLDSDataset(out)) == 2


@pytest.mark.parametrize("file_format", ["tfrecord", "array_record"])
@pytest.mark.parametrize("dict_action", [True, False])
def test_reader_round_trip(tmp_path, file_format, dict_action):
    out = str(tmp_path / "d")
    lengths = [3, 0, 5, 4]
    W.write_rlds_dataset(
        out,
        "toy",
        "1.0.0",
        _toy_features("png", dict_action),
        _toy_episodes(4, lengths, dict_action),
        file_format=file_format,
        num_shards=3,
    )
    ds = RLDSDataset(out)
    assert len(ds) == 4 and ds.file_format == file_format
    got = list(ds.episodes())
    assert [len(ep["steps"]["is_first"]) for _, ep in got] == lengths
    for e, ((shard, idx), ep) in enumerate(got):
        assert ds.shard_of(e) == (shard, idx)
        st = ep["steps"]
        T = lengths[e]
        imgs = st["observation"]["image"]
        assert imgs.shape == (T, 12, 16, 3) and imgs.dtype == np.uint8
        for t in range(T):  # PNG: lossless
            np.testing.assert_array_equal(imgs[t], moving_shapes(e, t, 12, 16))
        np.testing.assert_array_equal(st["observation"]["state"][:, 1], np.arange(T))
        if dict_action:
            np.testing.assert_array_equal(st["action"]["world_vector"][:, 0], np.arange(T))
            np.testing.assert_array_equal(st["action"]["open_gripper"], np.arange(T) % 2 == 0)
        else:
            assert st["action"].shape == (T, 7)
            np.testing.assert_array_equal(st["action"][:, 0], np.arange(T))
        assert list(st["language_instruction"]) == [f"task {e}"] * T
        assert ep["episode_metadata"]["file_path"] == f"ep{e}"
        if T:
            assert st["is_first"][0] and st["is_last"][-1] and st["is_terminal"][-1]
            assert st["is_first"].sum() == 1 and st["is_last"].sum() == 1
            assert st["reward"][-1] == 1.0 and st["discount"].tolist() == [1.0] * T


def test_reader_jpeg_within_tolerance_and_raw_bytes(tmp_path):
    fx = make_fixture(str(tmp_path), "bridge", num_episodes=2, length=4, image_hw=(32, 40))
    ds = RLDSDataset(fx.path)
    for (s, i), ep in ds.episodes():
        e = sum(ds.shard_lengths[:s]) + i
        imgs = ep["steps"]["observation"]["image"]
        err = np.abs(imgs.astype(float) - fx.episodes[e].images.astype(float)).mean()
        assert err < 4.0, err
    (_, raw), *_ = list(ds.episodes(decode_images=False))
    frames = raw["steps"]["observation"]["image"]
    assert frames.dtype == object and frames[0][:2] == b"\xff\xd8"  # JPEG SOI marker


def test_array_record_random_access_matches_iteration(tmp_path):
    fx = make_fixture(
        str(tmp_path),
        "language_table",
        num_episodes=5,
        length=3,
        file_format="array_record",
        num_shards=2,
    )
    ds = RLDSDataset(fx.path)
    seq = [ep for _, ep in ds.episodes()]
    for i in (4, 0, 2):
        np.testing.assert_array_equal(ds[i]["steps"]["action"], seq[i]["steps"]["action"])
    with pytest.raises(IndexError):
        ds[5]
    tf_ds = RLDSDataset(make_fixture(str(tmp_path / "t"), "pusht", num_episodes=1).path)
    with pytest.raises(TypeError, match="array_record"):
        tf_ds[0]


def test_zlib_tensors_and_keys_containing_slashes(tmp_path):
    fx = make_fixture(str(tmp_path), "kuka", num_episodes=2, length=3)
    ds = RLDSDataset(fx.path)
    assert "observation/clip_function_input/base_pose_tool_reached" in ds.step_keys
    _, ep = next(ds.episodes())
    pose = lookup(ep["steps"], "observation/clip_function_input/base_pose_tool_reached")
    assert pose.shape == (3, 7) and pose.dtype == np.float32
    np.testing.assert_allclose(pose, fx.episodes[0].proprio[:, :7])


@pytest.mark.parametrize("missing", ["features.json", "dataset_info.json"])
def test_missing_metadata_file_is_named(tmp_path, missing):
    fx = make_fixture(str(tmp_path), "pusht", num_episodes=1)
    os.remove(os.path.join(fx.path, missing))
    with pytest.raises(RLDSFormatError, match=missing):
        RLDSDataset(fx.path)


def test_not_a_directory_and_unknown_split(tmp_path):
    with pytest.raises(RLDSFormatError, match="not a directory"):
        RLDSDataset(str(tmp_path / "nope"))
    fx = make_fixture(str(tmp_path), "pusht", num_episodes=1)
    with pytest.raises(RLDSFormatError, match=r"no split 'test'.*\['train'\]"):
        RLDSDataset(fx.path, split="test")


def test_unknown_key_lists_available_keys(tmp_path):
    fx = make_fixture(str(tmp_path), "taco_play", num_episodes=1)
    ds = RLDSDataset(fx.path)
    with pytest.raises(RLDSKeyError) as err:
        ds.step_leaf("observation/rgb")
    msg = str(err.value)
    assert "observation/rgb_static" in msg and "action/rel_actions_world" in msg


def test_missing_shard_file_is_reported(tmp_path):
    fx = make_fixture(str(tmp_path), "pusht", num_episodes=2, num_shards=2)
    shard = next(f for f in os.listdir(fx.path) if "-00001-of-" in f)
    os.remove(os.path.join(fx.path, shard))
    with pytest.raises(RLDSFormatError, match="do not exist"):
        RLDSDataset(fx.path)


@pytest.mark.parametrize("file_format", ["tfrecord", "array_record"])
def test_reading_does_not_import_tensorflow(tmp_path, file_format):
    fx = make_fixture(str(tmp_path), "droid", num_episodes=2, length=3, file_format=file_format)
    code = (
        "import sys\n"
        "from data_pipelines.convert.rlds import RLDSDataset\n"
        f"ds = RLDSDataset({fx.path!r})\n"
        "n = sum(len(ep['steps']['is_first']) for _, ep in ds.episodes())\n"
        "assert n == 6, n\n"
        "print('tensorflow' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": REPO},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_writer_rejects_more_shards_than_episodes(tmp_path):
    out = str(tmp_path / "d")
    with pytest.raises(ValueError, match="num_shards=3 exceeds the number of episodes"):
        W.write_rlds_dataset(out, "toy", "1.0.0", _toy_features(), _toy_episodes(2), num_shards=3)
    assert not os.path.exists(out) and os.listdir(tmp_path) == []


def test_truncated_tfrecord_shard_names_file_and_record(tmp_path):
    fx = make_fixture(str(tmp_path), "pusht", num_episodes=3, num_shards=1)
    (shard,) = [f for f in os.listdir(fx.path) if ".tfrecord-" in f]
    path = os.path.join(fx.path, shard)
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) * 2 // 3])
    ds = RLDSDataset(fx.path)
    with pytest.raises(RLDSFormatError, match=rf"{shard}: record \d is unreadable"):
        list(ds.episodes())
