"""`wam-convert oxe` on damaged input: corrupt images, empty, short and unreadable episodes are
skipped, counted and named in the manifest; a dataset with nothing valid is an error."""

from __future__ import annotations

import os

import pytest

from data_pipelines.convert import common as convert_common
from data_pipelines.convert import oxe as convert_oxe
from data_pipelines.convert.rlds import RLDSDataset
from tests.rlds_fixtures import make_fixture
from tests.test_convert_oxe import SIZE, _check_against_source, _convert, _read


def test_corrupt_jpeg_is_skipped_and_counted(tmp_path):
    fx = make_fixture(
        str(tmp_path / "src"), "bridge", num_episodes=4, length=4, faults={2: "corrupt_image"}
    )
    out = tmp_path / "out"
    manifest = _convert(fx, out)
    assert manifest["num_episodes"] == 3
    assert manifest["skipped_by_reason"] == {"corrupt_image": 1}
    (skip,) = manifest["skipped"]
    assert "step 1" in skip["detail"] and "observation/image" in skip["detail"]
    _check_against_source(_read(out), fx)


def test_empty_episode_is_skipped_and_counted(tmp_path):
    fx = make_fixture(
        str(tmp_path / "src"),
        "kuka",
        num_episodes=3,
        length=4,
        faults={0: "empty"},
        file_format="array_record",
    )
    manifest = _convert(fx, tmp_path / "out")
    assert manifest["num_episodes"] == 2
    assert manifest["skipped_by_reason"] == {"empty_episode": 1}


def test_episode_shorter_than_clip_is_skipped_and_counted(tmp_path):
    fx = make_fixture(
        str(tmp_path / "src"), "language_table", num_episodes=4, length=6, faults={1: 3, 3: 5}
    )
    manifest = _convert(
        fx, tmp_path / "out", options=convert_oxe.OXEOptions(image_size=SIZE, min_length=5)
    )
    assert manifest["num_episodes"] == 3
    assert manifest["skipped_by_reason"] == {"too_short": 1}
    assert "3 steps < --min_length 5" in manifest["skipped"][0]["detail"]
    assert sorted(len(e) for e in _read(tmp_path / "out")) == [5, 6, 6]


def test_dataset_with_no_valid_episodes(tmp_path):
    fx = make_fixture(
        str(tmp_path / "src"),
        "taco_play",
        num_episodes=3,
        length=4,
        faults={0: "empty", 1: "corrupt_image", 2: 1},
    )
    out = tmp_path / "out"
    with pytest.raises(convert_common.NoValidEpisodesError) as err:
        _convert(fx, out, episodes_per_shard=1)
    msg = str(err.value)
    assert "no valid episodes" in msg and "3 item(s) skipped" in msg
    assert "empty_episode" in msg and "corrupt_image" in msg and "too_short" in msg
    assert not os.path.exists(out)


def test_truncated_tfrecord_shard_is_skipped_and_counted(tmp_path):
    fx = make_fixture(str(tmp_path / "src"), "bridge", num_episodes=6, length=3, num_shards=2)
    ds = RLDSDataset(fx.path)
    path = ds.shard_paths[1]
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])  # shard 1 (3 episodes) breaks in its second record
    manifest = _convert(fx, tmp_path / "out", episodes_per_shard=2)
    assert manifest["num_episodes"] == 4
    assert manifest["skipped_by_reason"] == {"corrupt_record": 2}
    assert {s["item"] for s in manifest["skipped"]} == {
        f"{os.path.basename(path)}#1",
        f"{os.path.basename(path)}#2",
    }
    assert "unreadable" in manifest["skipped"][0]["detail"]
