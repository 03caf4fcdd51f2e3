"""`wam-convert oxe`: standardization, round trip, resumability, bad input, stats, throughput."""

from __future__ import annotations

import io
import json
import os
import time

import numpy as np
import pytest

from data_pipelines import records
from data_pipelines.convert import common as convert_common
from data_pipelines.convert import oxe as convert_oxe
from data_pipelines.convert import oxe_registry, oxe_spec
from data_pipelines.convert.rlds import RLDSDataset, RLDSFormatError, RLDSKeyError
from data_pipelines.convert.stats import RunningStats
from launch import convert as cli
from tests.rlds_fixtures import LAYOUTS, make_fixture

SIZE = 16


def _convert(fx, out, **kw) -> dict:
    kw.setdefault("options", convert_oxe.OXEOptions(image_size=SIZE, min_length=2))
    kw.setdefault("progress", False)
    return convert_oxe.convert(fx.path, str(out), **kw)


def _read(out) -> list[records.Episode]:
    return list(records.iter_episodes(records.shard_paths(str(out))))


def _decode(jpeg: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))


def _reference(img: np.ndarray, size: int) -> np.ndarray:
    """Independent center-crop + resize of the generated source frame."""
    from PIL import Image

    h, w = img.shape[:2]
    m = min(h, w)
    y0, x0 = (h - m) // 2, (w - m) // 2
    crop = Image.fromarray(img[y0 : y0 + m, x0 : x0 + m])
    return np.asarray(crop.resize((size, size), Image.Resampling.BICUBIC), np.float64)


def _source_index(ep: records.Episode, fx) -> int:
    ds = RLDSDataset(fx.path)
    shard = [os.path.basename(p) for p in ds.shard_paths].index(ep.meta["source_file"])
    return sum(ds.shard_lengths[:shard]) + ep.meta["source_index"]


def _check_against_source(eps, fx, *, image_tol=6.0):
    for ep in eps:
        src = fx.episodes[_source_index(ep, fx)]
        T = len(src.images)
        assert len(ep.frames) == T
        np.testing.assert_allclose(ep.action, src.action, atol=1e-5)
        np.testing.assert_allclose(ep.proprio, src.proprio, atol=1e-5)
        assert ep.language == src.language
        frames = np.stack([_decode(f) for f in ep.frames])
        assert frames.shape == (T, SIZE, SIZE, 3)
        ref = np.stack([_reference(im, SIZE) for im in src.images])
        err = np.abs(frames - ref).mean()
        assert err < image_tol, f"{ep.episode_id}: mean abs error {err:.2f}"
        if src.wrist is not None:
            wrist = np.stack([_decode(f) for f in ep.wrist_frames])
            wref = np.stack([_reference(im, SIZE) for im in src.wrist])
            # the wrist camera is half size (12x20): upsampling to 16 px magnifies JPEG error
            assert np.abs(wrist - wref).mean() < 1.5 * image_tol
        else:
            assert ep.wrist_frames == []


# ------------------------------------------------------------------------------ round trip
@pytest.mark.parametrize(
    "layout,file_format,encoding",
    [
        ("fractal20220817_data", "tfrecord", "jpeg"),  # dict action
        ("bridge_dataset", "array_record", "png"),  # flat action, episode metadata
        ("taco_play", "array_record", "jpeg"),  # wrist camera
        ("language_table", "tfrecord", "png"),  # language as code points
    ],
)
def test_round_trip(tmp_path, layout, file_format, encoding):
    fx = make_fixture(
        str(tmp_path / "src"),
        layout,
        num_episodes=5,
        length=5,
        file_format=file_format,
        encoding=encoding,
        image_hw=(24, 40),
        num_shards=2,
    )
    out = tmp_path / "out"
    manifest = _convert(fx, out, episodes_per_shard=2)
    info = records.read_dataset_info(str(out))
    assert info["num_episodes"] == 5 and info["num_frames"] == 25
    assert info["image_size"] == [SIZE, SIZE] and info["kind"] == "robot"
    assert len(info["shards"]) == 3 and manifest["num_skipped"] == 0
    eps = _read(out)
    assert len({e.episode_id for e in eps}) == 5
    _check_against_source(eps, fx, image_tol=6.0 if encoding == "png" else 8.0)


# ------------------------------------------------------------------------------ registry
@pytest.mark.parametrize("layout", LAYOUTS)
def test_standardization_per_registry_entry(tmp_path, layout):
    fx = make_fixture(str(tmp_path / "src"), layout, num_episodes=3, length=6)
    out = tmp_path / "out"
    _convert(fx, out)
    spec = oxe_registry.get_spec(layout)
    info = records.read_dataset_info(str(out))
    assert info["fps"] == spec.fps and info["embodiment"] == spec.embodiment
    assert info["action_dim"] == (2 if layout == "pusht" else 7)
    assert info["action_keys"] == list(spec.action_keys)
    # per-step EEF deltas are summed over a frame stride, the absolute gripper / target is not
    expected_delta = [False, False] if layout == "pusht" else [True] * 6 + [False]
    assert info["action_is_delta"] == expected_delta
    assert info["proprio_dim"] == fx.episodes[0].proprio.shape[1]
    assert info["privileged_dim"] is None  # no simulator state in these layouts (PushT's is optional)
    assert info["has_wrist"] == (layout in ("taco_play", "droid"))
    eps = _read(out)
    assert len(eps) == 3 and all(e.fps == spec.fps for e in eps)
    _check_against_source(eps, fx)
    if layout != "pusht":  # 7-d EEF delta + absolute gripper in {0, 1} or [0, 1], 1 = open
        grip = np.concatenate([e.action[:, 6] for e in eps])
        assert grip.min() >= 0.0 and grip.max() <= 1.0


def test_rel2abs_gripper_examples():
    f = oxe_spec.rel2abs_gripper
    # +1 close, -1 open, 0 no change -> 1 open, 0 closed
    np.testing.assert_array_equal(f(np.array([0, 0, 1, 0, -1, 0]))[:, 0], [1, 1, 0, 0, 1, 1])
    # first command 'open' -> it was closed before
    np.testing.assert_array_equal(f(np.array([0, -1, 0, 1]))[:, 0], [0, 1, 1, 0])
    np.testing.assert_array_equal(f(np.zeros(3))[:, 0], [1, 1, 1])  # no command: open


def test_binarize_gripper_examples():
    f = oxe_spec.binarize_gripper
    np.testing.assert_allclose(
        f(np.array([1.0, 0.97, 0.5, 0.3, 0.0, 0.6]))[:, 0], [1, 1, 0, 0, 0, 0.6], rtol=1e-6
    )


def test_bridge_alias_falls_back_to_matching_layout(tmp_path):
    """--dataset=bridge on a BridgeData V2 1.0.0 builder picks the 1.0.0 layout entry."""
    fx = make_fixture(str(tmp_path), "bridge_dataset", num_episodes=1, length=3)
    spec = oxe_registry.spec_for(RLDSDataset(fx.path), "bridge")
    assert spec.name == "bridge_dataset" and spec.image_keys == ("observation/image_0",)


def test_cli_user_spec(tmp_path):
    fx = make_fixture(str(tmp_path / "src"), "bridge_dataset", num_episodes=2, length=4)
    out = tmp_path / "out"
    manifest = cli.main(
        [
            "oxe",
            f"--input={fx.path}",
            f"--output={out}",
            "--dataset=my_widowx",
            "--image_key=observation/image_1",
            "--action_key=action[0:3]",
            "--action_key=action[6:7]:invert",
            "--proprio_key=observation/state[0:3]",
            "--privileged_key=observation/state[3:5]",
            "--privileged_key=observation/state[5:6]:cos_sin",
            "--language_key=language_instruction",
            "--fps=7",
            "--delta_dims=0:3",
            f"--image_size={SIZE}",
            "--workers=1",
            "--no_progress",
        ]
    )
    assert manifest["num_episodes"] == 2
    info = records.read_dataset_info(str(out))
    assert info["name"] == "my_widowx" and info["fps"] == 7.0
    assert info["action_dim"] == 4 and info["proprio_dim"] == 3
    assert info["action_keys"] == ["action[:3]", "action[6:7] (invert)"]
    assert info["action_is_delta"] == [True, True, True, False]
    ep = _read(out)[0]
    src = fx.episodes[_source_index(ep, fx)]
    np.testing.assert_allclose(ep.action[:, :3], src.action[:, :3], atol=1e-6)
    assert ep.language == src.language
    assert np.abs(_decode(ep.frames[0]).astype(float)).max() < 8  # image_1 is blank
    assert info["privileged_dim"] == 4
    assert info["privileged_names"] == ["observation/state[3]", "observation/state[4]",
                                        "observation/state[5:6] (cos_sin)[0]", "observation/state[5:6] (cos_sin)[1]"]
    angle = src.proprio[:, 5]
    np.testing.assert_allclose(ep.privileged, np.stack(
        [src.proprio[:, 3], src.proprio[:, 4], np.cos(angle), np.sin(angle)], axis=1), atol=1e-6)


# ------------------------------------------------------------------------------ resumability
def test_resume_redoes_interrupted_shard_and_keeps_finished(tmp_path):
    fx = make_fixture(
        str(tmp_path / "src"), "fractal20220817_data", num_episodes=6, length=4, num_shards=3
    )
    out = tmp_path / "out"
    _convert(fx, out, episodes_per_shard=2)
    full = {e.episode_id: e for e in _read(out)}
    names = records.read_dataset_info(str(out))["shards"]
    assert len(names) == 3
    # Simulate a kill while shard 1 was being written: its final file and result are gone,
    # a partial .tmp is left behind, and dataset.json was never (re)written.
    victim = os.path.join(out, names[1])
    os.remove(victim)
    os.remove(os.path.join(out, convert_common.PROGRESS_DIR, names[1] + ".json"))
    with open(victim + ".tmp", "wb") as f:
        f.write(b"partial")
    os.remove(os.path.join(out, records.DATASET_JSON))
    kept = {n: os.stat(os.path.join(out, n)).st_mtime_ns for n in (names[0], names[2])}

    manifest = _convert(fx, out, episodes_per_shard=2)
    assert manifest["this_run"]["shards_written"] == 1
    assert manifest["this_run"]["shards_resumed"] == 2
    assert {n: os.stat(os.path.join(out, n)).st_mtime_ns for n in kept} == kept
    assert not os.path.exists(victim + ".tmp")
    again = {e.episode_id: e for e in _read(out)}
    assert again.keys() == full.keys()
    for k, e in again.items():
        assert e.frames == full[k].frames
        np.testing.assert_array_equal(e.action, full[k].action)
    stats = records.read_stats(str(out))
    assert stats["action"]["count"] == 24


def test_resume_with_other_settings_is_refused(tmp_path):
    fx = make_fixture(str(tmp_path / "src"), "pusht", num_episodes=2, length=3)
    out = tmp_path / "out"
    _convert(fx, out)
    with pytest.raises(convert_common.ConversionError, match="image_size"):
        _convert(fx, out, options=convert_oxe.OXEOptions(image_size=SIZE * 2))


# ------------------------------------------------------------------------------ bad input
def test_missing_features_json(tmp_path):
    fx = make_fixture(str(tmp_path / "src"), "pusht", num_episodes=1)
    os.remove(os.path.join(fx.path, "features.json"))
    with pytest.raises(RLDSFormatError, match="features.json"):
        _convert(fx, tmp_path / "out")
    assert not os.path.exists(tmp_path / "out")


def test_unknown_image_key_lists_available_keys(tmp_path):
    fx = make_fixture(str(tmp_path / "src"), "droid", num_episodes=1, length=3)
    out = tmp_path / "out"
    with pytest.raises(RLDSKeyError) as err:
        cli.main(
            [
                "oxe",
                f"--input={fx.path}",
                f"--output={out}",
                "--image_key=observation/image",
                "--no_progress",
            ]
        )
    msg = str(err.value)
    assert "'observation/image'" in msg
    for key in (
        "observation/exterior_image_1_left",
        "observation/wrist_image_left",
        "action_dict/cartesian_velocity",
    ):
        assert key in msg
    assert not os.path.exists(out)


def test_unregistered_dataset_needs_keys(tmp_path):
    fx = make_fixture(str(tmp_path / "src"), "pusht", num_episodes=1)
    with pytest.raises(KeyError, match="no standardization registered for dataset 'mystery'"):
        _convert(fx, tmp_path / "out", dataset="mystery")


# ------------------------------------------------------------------------------ stats
def test_stats_json_matches_numpy(tmp_path):
    fx = make_fixture(str(tmp_path / "src"), "droid", num_episodes=5, length=7, num_shards=3)
    out = tmp_path / "out"
    _convert(fx, out, episodes_per_shard=2)
    stats = records.read_stats(str(out))
    for key in ("action", "proprio"):
        x = np.concatenate([getattr(e, key) for e in fx.episodes]).astype(np.float64)
        s = stats[key]
        np.testing.assert_allclose(s["mean"], x.mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(s["std"], x.std(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(
            s["q01"], np.quantile(x, 0.01, axis=0, method="hazen"), atol=1e-6
        )
        np.testing.assert_allclose(
            s["q99"], np.quantile(x, 0.99, axis=0, method="hazen"), atol=1e-6
        )


def test_running_stats_merge_is_order_free_and_bounded():
    rng = np.random.default_rng(0)
    x = rng.standard_t(df=3, size=(20000, 3))
    parts = np.array_split(x, 13)
    merged = RunningStats(max_points=1024)
    for p in parts[::-1]:
        s = RunningStats(max_points=1024)
        s.update(p)
        merged.merge(RunningStats.from_json(json.loads(json.dumps(s.to_json()))))
    np.testing.assert_allclose(merged.mean, x.mean(0), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(merged.std, x.std(0), rtol=1e-9)
    for q in (0.01, 0.5, 0.99):
        # a compressed sketch: rank error of a few 1/max_points
        ranks = (x < merged.quantile(q)).mean(0)
        assert np.all(np.abs(ranks - q) < 4 / 1024), (q, ranks)
    with pytest.raises(ValueError, match="dims"):
        merged.update(np.zeros((2, 4)))


# ------------------------------------------------------------------------------ CLI, parallel
def test_cli_lazy_imports_and_subcommands(capsys):
    parser = cli.build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["bogus"])
    assert "invalid choice" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.run(["oxe", "--help"])
    assert "--image_key" in capsys.readouterr().out


def test_parallel_workers_match_serial(tmp_path):
    fx = make_fixture(str(tmp_path / "src"), "bridge", num_episodes=6, length=3, num_shards=3)
    _convert(fx, tmp_path / "a", workers=1)
    _convert(fx, tmp_path / "b", workers=2)
    a = {e.episode_id: e for e in _read(tmp_path / "a")}
    b = {e.episode_id: e for e in _read(tmp_path / "b")}
    assert a.keys() == b.keys() and len(a) == 6
    for k in a:
        assert a[k].frames == b[k].frames
    assert records.read_stats(str(tmp_path / "a")) == records.read_stats(str(tmp_path / "b"))


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_throughput(tmp_path_factory, workers):
    """Converter throughput on 50 fractal-like episodes (30 steps, 256x320 JPEG -> 64 px)."""
    root = tmp_path_factory.mktemp("tp")
    fx = make_fixture(
        str(root / "src"),
        "fractal20220817_data",
        num_episodes=50,
        length=30,
        image_hw=(256, 320),
        num_shards=4,
    )
    t0 = time.perf_counter()
    manifest = convert_oxe.convert(
        fx.path,
        str(root / f"out{workers}"),
        workers=workers,
        options=convert_oxe.OXEOptions(image_size=64),
        progress=False,
    )
    dt = time.perf_counter() - t0
    assert manifest["num_episodes"] == 50 and manifest["num_frames"] == 1500
    print(
        f"\nthroughput workers={workers}: {50 / dt:.1f} episodes/s, {1500 / dt:.0f} frames/s "
        f"({dt:.2f} s wall, load {os.getloadavg()[0]:.2f})"
    )


def test_converted_dataset_feeds_the_loader(tmp_path):
    """End to end: an OXE conversion is accepted by the mixture loader and yields batches."""
    from configs import base
    from data_pipelines import loader

    fx = make_fixture(str(tmp_path / "src"), "fractal20220817_data", num_episodes=4, length=8)
    out = tmp_path / "out"
    _convert(fx, out)
    config = base.get_config()
    config.model.image_size = SIZE
    config.data.mixture = str(out)
    config.data.num_frames = 4
    config.data.target_fps = 3.0
    config.data.global_batch_size = 2
    config.data.heldout_fraction = 0.0
    batch = next(iter(loader.make_dataset(config, split="train")))
    assert batch["video"].shape == (2, 4, SIZE, SIZE, 3)
    assert batch["action"].shape == (2, 3, config.model.action_dim)
    assert batch["action_mask"][..., :7].all() and np.isfinite(batch["action"]).all()
    assert batch["proprio_mask"][..., :8].all()


def test_episode_level_language(tmp_path):
    """Language stored in episode_metadata (no step-level instruction) is found and kept."""
    from data_pipelines.convert import rlds_writer as W

    feats = W.rlds_features(
        {"image": W.image((20, 20, 3), "png"), "state": W.tensor((2,))},
        W.tensor((2,)),
        episode_metadata={"language_instruction": W.text()},
    )
    episodes = [
        W.episode_from_steps(
            [
                {
                    "observation": {
                        "image": np.full((20, 20, 3), 10 * t, np.uint8),
                        "state": np.zeros(2, np.float32),
                    },
                    "action": np.full(2, t, np.float32),
                }
                for t in range(3)
            ],
            episode_metadata={"language_instruction": f"push it {e}"},
        )
        for e in range(2)
    ]
    src = str(tmp_path / "pusht" / "0.1.0")
    W.write_rlds_dataset(src, "pusht", "0.1.0", feats, episodes, file_format="array_record")
    spec = oxe_registry.spec_for(RLDSDataset(src))
    assert spec.language_keys == ("episode_metadata/language_instruction",)
    convert_oxe.convert(
        src, str(tmp_path / "out"), progress=False, options=convert_oxe.OXEOptions(image_size=SIZE)
    )
    eps = sorted(_read(tmp_path / "out"), key=lambda e: e.episode_id)
    assert [e.language for e in eps] == ["push it 0", "push it 1"]
    np.testing.assert_array_equal(eps[1].action[:, 0], [0, 1, 2])


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.run(["oxe", f"--input={tmp_path / 'nowhere'}", f"--output={tmp_path / 'out'}", "--no_progress"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("wam-convert: error:") and "nowhere" in err
    assert "Traceback" not in err
