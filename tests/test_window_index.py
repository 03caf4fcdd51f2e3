"""Window index: counts, flat-index lookup, stride rounding, held-out split, episode table."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest

from data_pipelines import records
from data_pipelines.window_index import (
    EpisodeTable,
    build_window_index,
    frame_stride,
    heldout_mask,
    read_episode_table,
)
from tests.converted_fixtures import write_converted_dataset


def _table(lengths, prefix="ep"):
    return EpisodeTable(np.asarray(lengths, np.int64), [f"{prefix}{i}" for i in range(len(lengths))])


@pytest.mark.parametrize("source_fps,target_fps,stride", [
    (10, 10, 1), (30, 10, 3), (15, 10, 2), (25, 10, 3), (5, 10, 1), (50, 10, 5), (12.4, 10, 1),
])
def test_frame_stride_rounds_half_up(source_fps, target_fps, stride):
    assert frame_stride(source_fps, target_fps) == stride


@pytest.mark.parametrize("source_fps,target_fps", [(0, 10), (10, 0), (float("nan"), 10), (-5, 10)])
def test_frame_stride_rejects_bad_rates(source_fps, target_fps):
    with pytest.raises(ValueError, match="fps"):
        frame_stride(source_fps, target_fps)


def test_counts_lookup_and_too_short():
    # T=4 at stride 2 covers 7 frames: windows per episode = max(0, L - 6).
    index = build_window_index(_table([5, 12, 3, 9, 7]), num_frames=4, fps=20.0, target_fps=10.0,
                               split="train", heldout_fraction=0.0)
    assert index.stride == 2 and index.span == 7 and index.dt == pytest.approx(0.1)
    assert len(index) == 6 + 3 + 1
    assert index.num_too_short == 2 and index.num_split_episodes == 5
    expected = [(1, s) for s in range(6)] + [(3, s) for s in range(3)] + [(4, 0)]
    assert [index.lookup(i) for i in range(len(index))] == expected
    np.testing.assert_array_equal(index.frame_indices(3), [3, 5, 7, 9])
    with pytest.raises(IndexError):
        index.lookup(len(index))


@pytest.mark.parametrize("stride_fps", [10.0, 20.0, 30.0])
def test_lookup_matches_brute_force(stride_fps):
    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 40, size=200)
    index = build_window_index(_table(lengths), num_frames=5, fps=stride_fps, target_fps=10.0,
                               split="train", heldout_fraction=0.0)
    span = index.span
    brute = [(e, s) for e, n in enumerate(lengths) for s in range(max(0, n - span + 1))]
    assert len(index) == len(brute)
    picks = rng.integers(0, len(brute), size=300)
    assert [index.lookup(int(i)) for i in picks] == [brute[i] for i in picks]
    # every frame of every window exists in its episode
    for i in picks:
        e, s = index.lookup(int(i))
        assert index.frame_indices(s)[-1] < lengths[e]


def test_index_memory_is_per_episode_not_per_window():
    index = build_window_index(_table([10**7] * 50), num_frames=16, fps=30.0, target_fps=10.0,
                               split="train", heldout_fraction=0.0)
    assert len(index) == 50 * (10**7 - 45)
    assert index.record.shape == (50,) and index.offsets.shape == (51,)
    assert index.lookup(len(index) - 1) == (49, 10**7 - 46)


def test_heldout_split_is_stable_disjoint_and_near_fraction():
    ids = [f"episode_{i}" for i in range(4000)]
    held = heldout_mask(ids, 0.1)
    assert abs(held.mean() - 0.1) < 0.02
    # a pure function of the id: independent of order and of the other ids
    perm = np.random.default_rng(1).permutation(len(ids))
    np.testing.assert_array_equal(heldout_mask([ids[i] for i in perm], 0.1), held[perm])
    digest = int.from_bytes(hashlib.sha256(b"episode_7").digest()[:8], "little") / 2.0**64
    assert held[7] == (digest < 0.1)
    table = _table([20] * 4000, prefix="episode_")
    train = build_window_index(table, num_frames=4, fps=10, target_fps=10, split="train", heldout_fraction=0.1)
    evals = build_window_index(table, num_frames=4, fps=10, target_fps=10, split="eval", heldout_fraction=0.1)
    assert set(train.record.tolist()).isdisjoint(evals.record.tolist())
    assert len(train.record) + len(evals.record) == 4000
    assert not heldout_mask(ids, 0.0).any()
    with pytest.raises(ValueError, match="heldout_fraction"):
        heldout_mask(ids, 1.0)


def test_build_rejects_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        build_window_index(_table([10]), num_frames=4, fps=10, target_fps=10, split="test", heldout_fraction=0)
    with pytest.raises(ValueError, match="num_frames"):
        build_window_index(_table([10]), num_frames=1, fps=10, target_fps=10, split="train", heldout_fraction=0)


def test_episode_table_scan_equals_dataset_json_fields(tmp_path):
    lengths = [3, 9, 14, 1, 7]
    scanned = write_converted_dataset(str(tmp_path / "scan"), episode_lengths=lengths, num_shards=3)
    listed = write_converted_dataset(str(tmp_path / "listed"), episode_lengths=lengths, num_shards=3,
                                     index_in_json=True)
    a, b = read_episode_table(scanned), read_episode_table(listed)
    np.testing.assert_array_equal(a.lengths, lengths)
    np.testing.assert_array_equal(b.lengths, lengths)
    assert a.episode_ids == b.episode_ids == [f"toy-ep{e:04d}" for e in range(5)]


def test_episode_table_rejects_inconsistent_dataset_json(tmp_path):
    d = write_converted_dataset(str(tmp_path / "d"), episode_lengths=[5, 6, 7])
    path = os.path.join(d, records.DATASET_JSON)
    with open(path) as f:
        info = json.load(f)
    info["num_episodes"] = 4
    records.write_json_atomic(path, info)
    with pytest.raises(records.DatasetFormatError, match="num_episodes"):
        read_episode_table(d)
    info["num_episodes"] = 3
    info["episode_lengths"], info["episode_ids"] = [5, 6], ["a", "b"]
    records.write_json_atomic(path, info)
    with pytest.raises(records.DatasetFormatError, match="episode_lengths"):
        read_episode_table(d)
