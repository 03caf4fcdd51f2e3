"""Ego4D layout reading and `wam-convert ego4d` on real H.264 / VP9 mp4 files."""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from data_pipelines import records
from data_pipelines.convert import common as convert_common
from data_pipelines.convert import ego4d as convert_ego4d
from data_pipelines.convert import ego4d_layout as ego4d
from data_pipelines.convert import ego4d_writer as w
from tests import ego4d_fixtures as fx

OPTS = convert_ego4d.Ego4DOptions(target_fps=10.0, image_size=32, chunk_seconds=2.0)


def _decode(jpeg: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))


def _episodes(out: str) -> dict[str, records.Episode]:
    return {ep.episode_id: ep for ep in records.iter_episodes(records.shard_paths(out))}


def _by_video(eps: dict[str, records.Episode]) -> dict[str, list[records.Episode]]:
    out: dict[str, list[records.Episode]] = {}
    for ep in sorted(eps.values(), key=lambda e: (e.meta["uid"], e.meta["chunk_index"])):
        out.setdefault(ep.meta["uid"], []).append(ep)
    return out


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> str:
    r = str(tmp_path_factory.mktemp("ego4d"))
    fx.make_ego4d_root(r)
    return r


@pytest.fixture(scope="module")
def converted(root, tmp_path_factory) -> tuple[str, dict]:
    out = str(tmp_path_factory.mktemp("conv") / "ego4d")
    manifest = convert_ego4d.convert(root, out, options=OPTS, workers=1, videos_per_shard=2, progress=False)
    return out, manifest


# ---------------------------------------------------------------------------------------------
# Layout


def test_layout_reader(root):
    layout = ego4d.Ego4DLayout.open(root)
    assert layout.metadata_path == os.path.join(root, "ego4d.json")
    assert layout.detect_video_dir() == "full_scale"
    entries = {e.uid: e for e in layout.entries("full_scale")}
    assert set(entries) == {"vid-h264", "vid-vp9", "vid-vfr", "vid-dur"}
    assert entries["vid-h264"].fps == 30.0 and entries["vid-h264"].width == 160
    assert [entries[u].split for u in ("vid-h264", "vid-vp9", "vid-vfr", "vid-dur")] == [
        "train", "val", "test", "train"]
    narr = layout.narrations()
    assert narr["vid-h264"] == sorted(fx.NARRATIONS_H264)
    with open(os.path.join(root, "v2", "annotations", "narration.json")) as f:
        raw = json.load(f)
    item = raw["vid-h264"]["narration_pass_1"]["narrations"][0]
    assert {"timestamp_sec", "narration_text", "timestamp_frame", "annotation_uid"} <= set(item)


def test_layout_errors(tmp_path):
    with pytest.raises(ego4d.Ego4DLayoutError, match="no ego4d.json"):
        ego4d.Ego4DLayout.open(str(tmp_path))
    (tmp_path / "ego4d.json").write_text(json.dumps({"videos": [{"duration_sec": 3}]}))
    with pytest.raises(ego4d.Ego4DLayoutError, match=r"videos\[0\] has no string field 'video_uid'"):
        ego4d.Ego4DLayout.open(str(tmp_path))
    (tmp_path / "ego4d.json").write_text("{not json")
    with pytest.raises(ego4d.Ego4DLayoutError, match="not valid JSON"):
        ego4d.Ego4DLayout.open(str(tmp_path))


def test_split_rule():
    assert ego4d.video_split({"split_em": None, "split_fho": "train"}) == "train"
    assert ego4d.video_split({"split_em": "val", "split_fho": "train"}) == "val"
    assert ego4d.video_split({"split_em": "val", "split_av": "test"}) == "test"
    assert ego4d.video_split({}) == "train"


# ---------------------------------------------------------------------------------------------
# Conversion


def test_dataset_files(converted):
    out, manifest = converted
    info = records.read_dataset_info(out)
    assert info["kind"] == "video" and info["embodiment"] == "ego4d"
    assert info["image_size"] == [32, 32] and info["fps"] == 10.0
    assert info["action_dim"] is None and info["proprio_dim"] is None and info["privileged_dim"] is None
    assert records.read_stats(out) == {"action": None, "proprio": None, "privileged": None}
    assert manifest["videos"]["converted"] == 4 and manifest["num_skipped"] == 0
    assert manifest["throughput"]["decoded_frames"] == 180 + 100 + 120 + 90
    assert manifest["throughput"]["decoded_frames_per_s"] > 0
    for ep in _episodes(out).values():
        assert ep.action is None and ep.proprio is None and ep.fps == 10.0
        assert len(ep) <= 20  # chunk_seconds * target_fps
        assert _decode(ep.frames[0]).shape == (32, 32, 3)


@pytest.mark.parametrize("uid", ["vid-h264", "vid-vp9"])
def test_round_trip_matches_decoded_source(root, converted, uid):
    """Frames read back from the shards equal the source frames nearest each target time
    (decoded independently, resized and cropped with PIL) within JPEG / resampling-filter noise."""
    out, _ = converted
    chunks = _by_video(_episodes(out))[uid]
    got = np.stack([_decode(f) for ep in chunks for f in ep.frames]).astype(np.float32)
    ref, targets = fx.reference_frames(os.path.join(root, "v2", "full_scale", f"{uid}.mp4"), 10.0, 32)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    err = np.abs(got - ref.astype(np.float32)).mean(axis=(1, 2, 3))
    assert err.max() < 4.0, err
    # A frame one source step away is measurably worse: the comparison can tell frames apart.
    shifted = np.abs(got[1:] - ref[:-1].astype(np.float32)).mean(axis=(1, 2, 3))
    assert shifted.mean() > 1.5 * err.mean()
    starts = [ep.meta["chunk_start_sec"] for ep in chunks]
    assert starts == pytest.approx([targets[i] for i in range(0, len(targets), 20)])


def test_narrations_attached_relative_to_chunk(converted):
    out, _ = converted
    chunks = _by_video(_episodes(out))["vid-h264"]  # 6 s at 10 fps -> chunks [0,2) [2,4) [4,6)
    assert [len(c) for c in chunks] == [20, 20, 20]
    got = [[(round(n["t"], 3), n["text"]) for n in c.narrations] for c in chunks]
    assert got == [
        [(0.5, "#C C opens the drawer")],
        [(0.25, "#C C picks a spoon"), (0.95, "#C C closes the drawer")],
        [(1.1, "#C C walks to the sink")],
    ]
    assert [c.meta["video_start_sec"] for c in chunks] == pytest.approx([0.0, 2.0, 4.0])


def test_header_durations_disagree_decoded_timestamps_win(root, converted):
    path = os.path.join(root, "v2", "full_scale", "vid-dur.mp4")
    assert w.probe_video(path)["duration_sec"] == pytest.approx(1.2, abs=0.05)  # the header lies
    out, manifest = converted
    chunks = _by_video(_episodes(out))["vid-dur"]
    assert sum(len(c) for c in chunks) == 30  # 90 frames at 30 fps = 3 s -> 30 frames at 10 fps
    row = next(r for r in manifest["videos"]["table"] if r["uid"] == "vid-dur")
    assert row["header_duration"] == pytest.approx(1.2, abs=0.05)
    assert row["decoded_seconds"] == pytest.approx(89 / 30, abs=1e-3)


def test_fps_resampling_picks_nearest_frame_by_timestamp(tmp_path):
    """Index-coded videos (25 fps, and variable frame rate) resampled to 10 fps: each output
    frame is the source frame nearest in time, not every k-th frame by index."""
    rng = np.random.default_rng(0)
    vfr = np.cumsum(np.r_[0.0, rng.uniform(0.015, 0.07, 99)])
    writer = w.Ego4DLayoutWriter(str(tmp_path / "in"))
    writer.add_video("cfr25", fx.index_coded_frames(100), 25.0, codec="vp9")
    writer.add_video("vfr", fx.index_coded_frames(100), 30.0, timestamps=vfr)
    writer.finish()
    out = str(tmp_path / "out")
    opts = convert_ego4d.Ego4DOptions(target_fps=10.0, image_size=16, chunk_seconds=100.0)
    convert_ego4d.convert(str(tmp_path / "in"), out, options=opts, progress=False)
    eps = _by_video(_episodes(out))
    for uid, times in (("cfr25", np.arange(100) / 25.0), ("vfr", vfr)):
        got = [fx.read_index(_decode(f)) for f in eps[uid][0].frames]
        targets = np.arange(0.0, times[-1] + 1e-9, 0.1)
        want = [fx.nearest_index(times, t) for t in targets]
        assert got == want, uid
    assert len(eps["vfr"][0]) == int(vfr[-1] / 0.1) + 1
    # By index, a 25 fps source at 10 fps would take every 2.5th frame; the VFR one has no fixed
    # step at all. Check the VFR answer really differs from a constant-stride pick.
    stride = [round(i * 30 / 10) for i in range(len(got))]
    assert got != stride[: len(got)]


def test_chunking_and_min_chunk_frames(root, tmp_path):
    opts = convert_ego4d.Ego4DOptions(target_fps=10.0, image_size=16, chunk_seconds=2.5, min_chunk_frames=12)
    out = str(tmp_path / "o")
    convert_ego4d.convert(root, out, uids=["vid-h264", "vid-vp9"], options=opts, progress=False)
    eps = _by_video(_episodes(out))
    assert [len(c) for c in eps["vid-h264"]] == [25, 25]  # 60 frames: 25 + 25 + tail of 10 dropped
    assert [len(c) for c in eps["vid-vp9"]] == [25, 15]  # 4 s: 40 frames


def test_uid_and_split_filtering(root, tmp_path):
    def uids_of(out):
        return {ep.meta["uid"] for ep in _episodes(out).values()}

    opts = convert_ego4d.Ego4DOptions(image_size=16)
    convert_ego4d.convert(root, str(tmp_path / "a"), uids=["vid-vp9", "vid-dur"], options=opts, progress=False)
    assert uids_of(str(tmp_path / "a")) == {"vid-vp9", "vid-dur"}
    convert_ego4d.convert(root, str(tmp_path / "b"), split="val", options=opts, progress=False)
    assert uids_of(str(tmp_path / "b")) == {"vid-vp9"}
    convert_ego4d.convert(root, str(tmp_path / "c"), split="train", options=opts, progress=False)
    assert uids_of(str(tmp_path / "c")) == {"vid-h264", "vid-dur"}
    uid_file = tmp_path / "uids.txt"
    uid_file.write_text("# wanted\nvid-vfr, vid-h264\n")
    assert ego4d.parse_uids(None, str(uid_file)) == ["vid-vfr", "vid-h264"]
    convert_ego4d.convert(root, str(tmp_path / "d"), uids=ego4d.parse_uids(None, str(uid_file)),
                          split="test", options=opts, progress=False)
    assert uids_of(str(tmp_path / "d")) == {"vid-vfr"}
    with pytest.raises(ego4d.Ego4DLayoutError, match="not in videos"):
        convert_ego4d.convert(root, str(tmp_path / "e"), uids=["nope"], options=opts, progress=False)
    with pytest.raises(ego4d.Ego4DLayoutError, match="no full_scale entries selected"):
        convert_ego4d.convert(root, str(tmp_path / "f"), uids=["vid-vp9"], split="train", options=opts,
                              progress=False)
    assert not os.path.exists(tmp_path / "e") and not os.path.exists(tmp_path / "f")


# ---------------------------------------------------------------------------------------------
# Bad input


@pytest.fixture(scope="module")
def bad_root(tmp_path_factory) -> str:
    r = str(tmp_path_factory.mktemp("ego4d_bad"))
    fx.make_ego4d_root(r, bad=True)
    return r


@pytest.mark.parametrize("uid,reason", [
    ("vid-trunc", "truncated_video"),
    ("vid-corrupt", "corrupt_video"),
    ("vid-missing", "missing_video"),
])
def test_bad_video_skipped_and_reported(bad_root, tmp_path, uid, reason):
    out = str(tmp_path / "o")
    manifest = convert_ego4d.convert(bad_root, out, uids=["vid-vp9", uid],
                                     options=convert_ego4d.Ego4DOptions(image_size=16), progress=False)
    assert manifest["skipped_by_reason"] == {reason: 1}
    assert manifest["skipped"][0]["item"] == uid and uid in manifest["skipped"][0]["detail"]
    assert manifest["videos"]["converted"] == 1 and manifest["videos"]["skipped"] == 1
    assert {ep.meta["uid"] for ep in _episodes(out).values()} == {"vid-vp9"}
    row = next(r for r in manifest["videos"]["table"] if r["uid"] == uid)
    assert row["status"] == "skipped" and row["reason"] == reason


def test_truncated_faststart_mp4_fails_mid_decode_and_is_skipped(tmp_path):
    """An mp4 with its index in front, cut short: it opens, then fails part way through."""
    writer = w.Ego4DLayoutWriter(str(tmp_path / "in"))
    path = writer.add_video("cut", w.moving_shapes(90, 96, 128, seed=5), 30.0, faststart=True)
    writer.add_video("ok", w.moving_shapes(30, 96, 128, seed=6), 30.0)
    writer.finish()
    w.truncate_file(path, 0.5)
    manifest = convert_ego4d.convert(str(tmp_path / "in"), str(tmp_path / "o"),
                                     options=convert_ego4d.Ego4DOptions(image_size=16), progress=False)
    assert manifest["skipped_by_reason"] == {"truncated_video": 1}
    row = next(r for r in manifest["videos"]["table"] if r["uid"] == "cut")
    assert 0 < row["decoded_frames"] < 90  # really decoded part of it before failing
    assert manifest["num_episodes"] == 1


def test_no_valid_videos_clear_error_and_nothing_left(bad_root, tmp_path):
    out = tmp_path / "nothing"
    with pytest.raises(convert_common.NoValidEpisodesError, match="no valid episodes") as e:
        convert_ego4d.convert(bad_root, str(out), uids=["vid-trunc", "vid-corrupt", "vid-missing"],
                              options=convert_ego4d.Ego4DOptions(image_size=16), progress=False)
    msg = str(e.value)
    assert "truncated_video" in msg and "corrupt_video" in msg and "missing_video" in msg
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# Resume, parallel, clips, CLI


def test_resume_keeps_finished_shards_and_redoes_interrupted(root, tmp_path):
    out = str(tmp_path / "o")
    kw = dict(options=convert_ego4d.Ego4DOptions(image_size=16), videos_per_shard=1, progress=False)
    first = convert_ego4d.convert(root, out, **kw)
    before = {k: ep.frames for k, ep in _episodes(out).items()}
    shards = records.read_dataset_info(out)["shards"]
    assert len(shards) == 4
    # Simulate a kill while the second shard was being written.
    victim = shards[1]
    os.replace(os.path.join(out, victim), os.path.join(out, victim + ".tmp"))
    os.remove(os.path.join(out, convert_common.PROGRESS_DIR, victim + ".json"))
    second = convert_ego4d.convert(root, out, **kw)
    assert second["this_run"]["shards_written"] == 1 and second["this_run"]["shards_resumed"] == 3
    assert not os.path.exists(os.path.join(out, victim + ".tmp"))
    assert {k: ep.frames for k, ep in _episodes(out).items()} == before
    assert second["num_frames"] == first["num_frames"]
    assert second["throughput"]["decoded_frames"] == first["throughput"]["decoded_frames"]
    # Other settings into the same directory are refused rather than mixed.
    with pytest.raises(convert_common.ConversionError, match="different settings"):
        convert_ego4d.convert(root, out, options=convert_ego4d.Ego4DOptions(image_size=24),
                              videos_per_shard=1, progress=False)


def test_parallel_workers_match_serial(root, converted, tmp_path):
    out = str(tmp_path / "par")
    convert_ego4d.convert(root, out, options=OPTS, workers=2, videos_per_shard=2, progress=False)
    serial = _episodes(converted[0])
    parallel = _episodes(out)
    assert serial.keys() == parallel.keys()
    for k in serial:
        assert serial[k].frames == parallel[k].frames and serial[k].narrations == parallel[k].narrations


def test_clips_layout_offsets_narrations(tmp_path):
    frames = w.moving_shapes(150, 96, 128, seed=3)  # 5 s parent video
    writer = w.Ego4DLayoutWriter(str(tmp_path / "in"))
    writer.add_video("parent", None, 30.0, split="val", narrations=[(1.0, "before"), (2.5, "inside"), (4.5, "after")])
    writer.add_clip("clip-1", "parent", frames[60:120], 30.0, video_start_sec=2.0)
    writer.finish()
    layout = ego4d.Ego4DLayout.open(str(tmp_path / "in"))
    assert layout.detect_video_dir() == "clips"
    out = str(tmp_path / "o")
    convert_ego4d.convert(str(tmp_path / "in"), out, split="val",
                          options=convert_ego4d.Ego4DOptions(image_size=16), progress=False)
    (ep,) = _episodes(out).values()
    assert ep.meta["uid"] == "clip-1" and ep.meta["video_uid"] == "parent"
    assert [(round(n["t"], 3), n["text"]) for n in ep.narrations] == [(0.5, "inside")]
    assert records.read_dataset_info(out)["video_dir"] == "clips"


def test_cli_arguments_and_main(root, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    convert_ego4d.add_arguments(parser)
    out = str(tmp_path / "cli")
    args = parser.parse_args([f"--input={root}", f"--output={out}", "--uids=vid-h264", "--image_size=16",
                              "--target_fps=5", "--chunk_seconds=60", "--workers=1", "--no_progress",
                              "--name=ego4d_small", "--embodiment=video"])
    manifest = convert_ego4d.main(args)
    info = records.read_dataset_info(out)
    assert info["name"] == "ego4d_small" and info["embodiment"] == "video" and info["fps"] == 5.0
    assert manifest["num_episodes"] == 1 and manifest["num_frames"] == 30
    assert manifest["args"]["uids"] == "vid-h264"
    assert "frames/s" in capsys.readouterr().out


def test_options_validation():
    with pytest.raises(ValueError, match="target_fps"):
        convert_ego4d.Ego4DOptions(target_fps=0)
    with pytest.raises(ValueError, match="image_size"):
        convert_ego4d.Ego4DOptions(image_size=4)


def test_writer_broken_file_makers(tmp_path):
    path = str(tmp_path / "a.mp4")
    w.encode_video(path, w.moving_shapes(30, 64, 64), 30.0)
    assert ego4d.mp4_structure_problem(path) is None
    copy = str(tmp_path / "b.mp4")
    shutil.copy(path, copy)
    w.truncate_file(copy, 0.7)
    assert ego4d.mp4_structure_problem(copy) == "truncated"
    w.write_corrupt_file(copy)
    assert ego4d.mp4_structure_problem(copy) == "corrupt"
    with pytest.raises(ValueError, match="even"):
        w.encode_video(path, np.zeros((2, 63, 64, 3), np.uint8), 30.0)


def test_writer_vp9_encoding_is_reproducible(tmp_path):
    """Same frames, same bytes (96 px wide: a size whose chroma rows FFmpeg may pad)."""
    frames = w.moving_shapes(40, 96, 96, fps=10, seed=5)
    blobs = []
    for i in range(3):
        path = str(tmp_path / f"{i}.mp4")
        w.encode_video(path, frames, 10.0, codec="vp9")
        with open(path, "rb") as f:
            blobs.append(f.read())
    assert blobs[0] == blobs[1] == blobs[2]
