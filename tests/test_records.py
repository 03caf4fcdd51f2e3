"""The converted-dataset format: frames in their own records (version 2), version 1 still read."""

from __future__ import annotations

import json
import os
import shutil

import msgpack
import numpy as np
import pytest

from data_pipelines import loader, records
from tests.converted_fixtures import write_converted_dataset
from tests.test_loader import _config


@pytest.fixture
def robot(tmp_path):
    return write_converted_dataset(str(tmp_path / "robot"), name="robot", episode_lengths=[30] * 4)


def _write_version_1(src: str, dst: str) -> None:
    """The same episodes in version 1: every frame inside its episode record."""
    from array_record.python import array_record_module

    os.makedirs(dst)
    with open(os.path.join(src, records.DATASET_JSON)) as f:
        info = json.load(f)
    for shard in info["shards"]:
        w = array_record_module.ArrayRecordWriter(os.path.join(dst, shard), "group_size:1")
        for ep in records.iter_episodes([os.path.join(src, shard)]):
            w.write(msgpack.packb({
                "episode_id": ep.episode_id, "frames": ep.frames, "wrist_frames": ep.wrist_frames,
                "action": records.encode_array(ep.action), "proprio": records.encode_array(ep.proprio),
                "language": ep.language, "narrations": ep.narrations, "fps": ep.fps, "meta": ep.meta,
            }, use_bin_type=True))
        w.close()
    shutil.copy(os.path.join(src, records.STATS_JSON), dst)
    records.write_json_atomic(os.path.join(dst, records.DATASET_JSON), {**info, "version": 1})


def test_episodes_round_trip_with_frames_in_their_own_shard(tmp_path):
    shard = os.path.join(tmp_path, records.shard_name(0, 1))
    w = records.ShardWriter(shard)
    eps = [records.Episode(episode_id=f"e{i}", frames=[bytes([i, t]) * 50 for t in range(5 + i)],
                           wrist_frames=[b"w%d" % t for t in range(5 + i)] if i == 1 else [],
                           action=np.full((5 + i, 2), i, np.float32), language="push", meta={"i": i},
                           privileged=np.full((5 + i, 3), -i, np.float32) if i == 2 else None,
                           latent=np.arange((5 + i) * 8, dtype=np.float32).reshape(5 + i, 2, 4) if i == 1 else None)
           for i in range(3)]
    for ep in eps:
        w.write(ep)
    w.close()
    assert sorted(os.listdir(tmp_path)) == ["episodes-00000-of-00001.array_record",
                                            "frames-00000-of-00001.array_record"]
    back = list(records.iter_episodes([shard]))
    for a, b in zip(eps, back, strict=True):
        assert (b.episode_id, b.frames, b.wrist_frames, b.language, b.meta, b.frame_ref) == (
            a.episode_id, a.frames, a.wrist_frames, a.language, a.meta, None)
        np.testing.assert_array_equal(a.action, b.action)
        assert (a.privileged is None) == (b.privileged is None)
        if a.privileged is not None:
            np.testing.assert_array_equal(a.privileged, b.privileged)
        assert (a.latent is None) == (b.latent is None)
        if a.latent is not None:  # a token grid per frame keeps its shape
            np.testing.assert_array_equal(a.latent, b.latent)
    reader = records.FrameReader(str(tmp_path), [os.path.basename(shard)])
    lazy = records.deserialize_episode(records.open_shards([shard])[2])
    for idx in ([3, 4, 5], [6, 0, 3, 3], [1, 5], []):  # a range, any order and repeats, a stride, none
        assert reader.frames(lazy, idx) == [eps[2].frames[i] for i in idx]
    with pytest.raises(ValueError, match="read without its frames"):
        records.ShardWriter(str(tmp_path / "other.array_record")).write(
            records.Episode("x", [], frame_ref=records.FrameRef("f", 0, 3)))
    with pytest.raises(ValueError, match="'y': latent has shape \\(2, 4\\), expected \\[3, ...\\]"):
        records.ShardWriter(str(tmp_path / "other2.array_record")).write(
            records.Episode("y", [b"a"] * 3, latent=np.zeros((2, 4), np.float32)))


def test_a_clip_reads_only_its_frames(robot, monkeypatch):
    """Each clip asks for its T = 4 frames and reads no more records than that (a whole episode
    would be 30 per clip)."""
    asked: list[int] = []
    reads: list[int] = []

    class Counting:
        def __init__(self, source):
            self.source = source

        def read(self, *args):  # (positions) or (begin, end): a clip's frames in one call
            reads.extend(args[0] if len(args) == 1 else range(*args))
            return self.source.read(*args)

    real_open, real_frames = records.FrameReader._open, records.FrameReader.frames

    def counting_open(self):
        real_open(self)
        self.sources = {n: Counting(s) for n, s in self.sources.items()}

    def counting_frames(self, ep, indices, wrist=False):
        asked.append(len(indices))
        return real_frames(self, ep, indices, wrist)

    monkeypatch.setattr(records.FrameReader, "_open", counting_open)
    monkeypatch.setattr(records.FrameReader, "frames", counting_frames)
    it = loader.make_iterator(_config(robot, frames=4), seed=0)
    for _ in range(3):
        next(it)
    assert len(asked) >= 12 and set(asked) == {4}
    assert len(reads) <= 4 * len(asked)  # reads of clips still in flight may be missing, never extra


def test_version_1_datasets_load_the_same_batches(robot, tmp_path):
    v1 = str(tmp_path / "v1")
    _write_version_1(robot, v1)
    assert not any(f.startswith("frames-") for f in os.listdir(v1))
    a, b = loader.make_iterator(_config(robot), seed=3), loader.make_iterator(_config(v1), seed=3)
    for _ in range(3):
        x, y = next(a), next(b)
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)
    assert [len(e) for e in records.iter_episodes(records.shard_paths(v1))] == [30] * 4


def test_a_bad_frames_shard_or_version_is_named(robot):
    info_path = os.path.join(robot, records.DATASET_JSON)
    frames = os.path.join(robot, "frames-00000-of-00002.array_record")
    with open(frames, "rb") as f:
        data = f.read()
    with open(frames, "r+b") as f:  # the damaged shard is named when the loader starts
        f.truncate(len(data) // 2)
    with pytest.raises(records.DatasetFormatError, match="frames-00000-of-00002.array_record: this shard cannot"):
        loader.make_iterator(_config(robot), seed=0)
    os.remove(frames)
    with pytest.raises(records.DatasetFormatError, match="'frames-00000-of-00002.array_record' does not exist"):
        records.read_dataset_info(robot)
    with open(info_path) as f:
        info = json.load(f)
    records.write_json_atomic(info_path, {**info, "version": records.FORMAT_VERSION + 1})
    with pytest.raises(records.DatasetFormatError, match="'version' is 3; this wam_jax reads versions 1 to 2"):
        records.read_dataset_info(robot)
