"""Mixture parsing and validation: weights, registries, and errors that name what is wrong."""

from __future__ import annotations

import json
import os

import pytest

from configs import base
from data_pipelines import records
from data_pipelines.mixture import load_mixture, parse_mixture
from tests.converted_fixtures import write_converted_dataset


def _config(mixture: str, **model):
    c = base.get_config()
    c.data.mixture = mixture
    for k, v in model.items():
        c.model[k] = v
    return c


def test_parse_weights_default_and_normalize():
    assert parse_mixture("/a") == [("/a", 1.0)]
    assert parse_mixture(" /a:3 , /b ") == [("/a", 0.75), ("/b", 0.25)]
    assert parse_mixture("/a:0.8,/b:0.2") == [("/a", pytest.approx(0.8)), ("/b", pytest.approx(0.2))]


def test_parse_keeps_colons_inside_paths():
    assert parse_mixture("gs://bucket/ds") == [("gs://bucket/ds", 1.0)]
    assert parse_mixture("gs://bucket/a:1,gs://bucket/b:3") == [("gs://bucket/a", 0.25), ("gs://bucket/b", 0.75)]


@pytest.mark.parametrize("spec,match", [
    ("", "empty"),
    ("   ", "empty"),
    ("/a,,/b", "entry 1 is empty"),
    ("/a:abc", "'/a:abc'.*'abc' is not a number"),
    ("/a:1,/b:x2", "'/b:x2'"),
    ("/a:0", "'/a:0'.*> 0"),
    ("/a:-1", "'/a:-1'.*> 0"),
    ("/a:inf", "finite"),
    (":2", "empty dataset path"),
    ("/a,/a:2", "more than once"),
])
def test_parse_errors_name_the_entry(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_mixture(spec)


def test_registries_ids_and_stats(tmp_path):
    a = write_converted_dataset(str(tmp_path / "a"), name="a", embodiment="franka")
    b = write_converted_dataset(str(tmp_path / "b"), name="b", kind="video", embodiment="human")
    c = write_converted_dataset(str(tmp_path / "c"), name="c", embodiment="franka",
                                action_is_delta=[True, True, False])
    m = load_mixture(_config(f"{a}:2,{b},{c}"))
    assert [s.source_id for s in m.sources] == [0, 1, 2]
    assert m.embodiments == ("franka", "human")
    assert [s.embodiment_id for s in m.sources] == [0, 1, 0]
    assert m.weights == pytest.approx([0.5, 0.25, 0.25])
    assert m.sources[0].action_is_delta == (False, False, False)  # absent -> absolute
    assert m.sources[2].action_is_delta == (True, True, False)
    assert m.sources[1].action_dim == 0 and m.sources[1].kind == "video"
    assert m.sources[0].stat("action", "std").tolist() == [1000.0] * 3
    assert m.sources[1].stat("action", "mean") is None


def test_not_a_converted_dataset_names_the_path(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(records.DatasetFormatError, match=f"{plain}.*not a converted"):
        load_mixture(_config(str(plain)))
    with pytest.raises(records.DatasetFormatError, match="not a directory"):
        load_mixture(_config(str(tmp_path / "missing")))
    d = write_converted_dataset(str(tmp_path / "d"))
    info_path = os.path.join(d, records.DATASET_JSON)
    with open(info_path) as f:
        info = json.load(f)
    records.write_json_atomic(info_path, {**info, "format": "rlds"})
    with pytest.raises(records.DatasetFormatError, match="'format'"):
        load_mixture(_config(d))


def _edit(directory, **fields):
    path = os.path.join(directory, records.DATASET_JSON)
    with open(path) as f:
        info = json.load(f)
    info.update(fields)
    records.write_json_atomic(path, info)


def test_dataset_fields_are_validated(tmp_path):
    d = write_converted_dataset(str(tmp_path / "d"))
    _edit(d, kind="lidar")
    with pytest.raises(records.DatasetFormatError, match="'kind'"):
        load_mixture(_config(d))
    _edit(d, kind="robot", action_is_delta=[True])
    with pytest.raises(records.DatasetFormatError, match="action_is_delta.*3 booleans"):
        load_mixture(_config(d))
    _edit(d, action_is_delta=[True, False, False], fps=0)
    with pytest.raises(records.DatasetFormatError, match="'fps'"):
        load_mixture(_config(d))


def test_dims_above_model_dims_are_rejected(tmp_path):
    d = write_converted_dataset(str(tmp_path / "d"), action_dim=9)
    with pytest.raises(ValueError, match="action_dim is 9 but config.model.action_dim is 7"):
        load_mixture(_config(d))
    assert load_mixture(_config(d, action_dim=9)).sources[0].action_dim == 9


def test_missing_or_malformed_stats_are_rejected(tmp_path):
    d = write_converted_dataset(str(tmp_path / "d"))
    os.remove(os.path.join(d, records.STATS_JSON))
    with pytest.raises(records.DatasetFormatError, match="stats.json.*action.mean"):
        load_mixture(_config(d))
    records.write_json_atomic(os.path.join(d, records.STATS_JSON),
                              {"action": {"mean": [0, 0], "std": [1, 1, 1]}, "proprio": None})
    with pytest.raises(records.DatasetFormatError, match=r"action.mean has shape \[2\]"):
        load_mixture(_config(d))


def test_too_many_embodiments(tmp_path):
    dirs = [write_converted_dataset(str(tmp_path / f"e{i}"), name=f"e{i}", episode_lengths=[8])
            for i in range(3)]
    with pytest.raises(ValueError, match="3 embodiments.*num_embodiments is 2"):
        load_mixture(_config(",".join(dirs), num_embodiments=2))
    assert len(load_mixture(_config(",".join(dirs), num_embodiments=3)).embodiments) == 3


def test_dimension_names_recorded_or_derived(tmp_path):
    d = write_converted_dataset(str(tmp_path / "d"), action_dim=3, proprio_dim=2)
    src = load_mixture(_config(d)).sources[0]
    # converted before names were recorded: one key per dim names them, proprio is indexed
    assert src.action_names == ("a0", "a1", "a2") and src.proprio_names == ("proprio[0]", "proprio[1]")
    _edit(d, action_keys=["action"])  # one vector key: indexed
    assert load_mixture(_config(d)).sources[0].action_names == ("action[0]", "action[1]", "action[2]")
    _edit(d, action_names=["x", "y", "grip"], proprio_names=["px", "py"])
    src = load_mixture(_config(d)).sources[0]
    assert src.action_names == ("x", "y", "grip") and src.proprio_names == ("px", "py")
    _edit(d, action_names=["x", "y"])
    with pytest.raises(records.DatasetFormatError, match="'action_names'.*3 strings"):
        load_mixture(_config(d))
    video = write_converted_dataset(str(tmp_path / "v"), kind="video")
    assert load_mixture(_config(video)).sources[0].action_names == ()
