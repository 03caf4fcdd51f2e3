"""One name per action / proprio dimension, from the converter to the eval table and plots, and
results before decorations: a plot that fails never loses metrics.json.

The datasets are real conversions (`wam-convert oxe`) of a PushT-layout RLDS builder, once with the
flags for one's own robot (a 2-d action stored under one key) and once through the registry entry
(one name per dimension); a tiny model trains on both and is evaluated with plots.
"""

from __future__ import annotations

import json
import logging
import os

import pytest

from data_pipelines import records
from data_pipelines.convert.oxe_spec import parse_part
from launch import convert as convert_cli
from tests import runtime_fixtures as rf
from tests.rlds_fixtures import make_fixture

rf.enable_compile_cache()

OWN = {"action": ["action[0]", "action[1]"], "proprio": ["observation/state[0]", "observation/state[1]"]}
REGISTRY = {"action": ["target_x", "target_y"], "proprio": ["observation/state[0]", "observation/state[1]"]}


def _convert(fixture_path: str, out: str, *flags: str) -> str:
    convert_cli.main(["oxe", f"--input={fixture_path}", f"--output={out}", "--image_size=32", "--workers=1",
                      "--no_progress", *flags])
    return out


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("names")
    fx = make_fixture(str(root / "rlds"), "pusht", num_episodes=6, length=10, image_hw=(32, 32))
    own = _convert(fx.path, str(root / "myrobot"), "--dataset=myrobot", "--image_key=observation/image",
                   "--action_key=action", "--proprio_key=observation/state", "--language_key=language_instruction")
    registry = _convert(fx.path, str(root / "pusht"))
    return {"myrobot": own, "pusht": registry}


@pytest.fixture(scope="module")
def trained(datasets, tmp_path_factory) -> str:
    """A tiny model trained on both conversions, with the periodic (in-memory) eval at the end."""
    from wam_jax.inference import periodic_eval
    from wam_jax.training import trainer

    mixture = f"{datasets['myrobot']},{datasets['pusht']}"
    cfg = rf.tiny_config(mixture, **{"train.eval_every": 8, "train.eval_max_clips": 8, "data.heldout_fraction": 0.3})
    workdir = str(tmp_path_factory.mktemp("run"))
    trainer.train(cfg, workdir, periodic_eval=periodic_eval.PeriodicEval(cfg, workdir))
    return workdir


def test_converter_records_one_name_per_dimension(datasets):
    own = records.read_dataset_info(datasets["myrobot"])
    assert own["action_keys"] == ["action"] and own["action_dim"] == 2
    assert own["action_names"] == OWN["action"] and own["proprio_names"] == OWN["proprio"]
    reg = records.read_dataset_info(datasets["pusht"])
    assert reg["action_names"] == REGISTRY["action"] and reg["proprio_names"] == REGISTRY["proprio"]


@pytest.mark.parametrize("key, width, names", [
    ("action", 2, ["action[0]", "action[1]"]),
    ("action/gripper", 1, ["action/gripper"]),
    ("action[6:7]:invert", 1, ["action[6]"]),
    ("observation/state[2:]", 3, ["observation/state[2]", "observation/state[3]", "observation/state[4]"]),
    ("action[0:6]:rel2abs_gripper", 1, ["action[:6]"]),  # a transform that changes the width
])
def test_part_names(key, width, names):
    assert parse_part(key).dim_names(width) == names


def test_names_travel_to_the_checkpoint_eval_table_and_plots(trained, datasets, tmp_path):
    from wam_jax import WorldModel
    from wam_jax.inference import eval_report, evaluation

    wm = WorldModel.load(trained)
    by_name = {s["name"]: s for s in wm.info["sources"]}
    assert by_name["myrobot"]["action_names"] == OWN["action"]
    assert by_name["pusht"]["action_names"] == REGISTRY["action"]
    # The periodic eval of the in-memory model wrote its metrics with the names.
    with open(os.path.join(trained, evaluation.EVAL_DIR, "step_8", evaluation.METRICS_JSON)) as f:
        periodic = json.load(f)
    assert periodic["step"] == 8 and periodic["per_source"]["myrobot"]["num_clips"] > 0

    data = f"{datasets['myrobot']},{datasets['pusht']}"
    r = evaluation.evaluate(trained, data=data, output_dir=str(tmp_path), num_perturbations=2)
    assert r["action"]["myrobot"]["dims"] == OWN["action"]
    assert r["action"]["pusht"]["dims"] == REGISTRY["action"]
    assert {os.path.basename(p) for p in r["plots"]} == {"prediction_l1.png", "action_mae.png"}
    assert all(os.path.getsize(p) > 1000 for p in r["plots"])
    table = eval_report.format_table(r)
    for name in OWN["action"] + REGISTRY["action"]:
        assert name in table, name


def test_a_failing_plot_is_a_warning_and_metrics_are_complete(trained, datasets, tmp_path, monkeypatch, caplog,
                                                              capsys):
    from launch import eval as eval_cli
    from wam_jax.inference import eval_report, evaluation

    def broken(results, path):
        raise ValueError("The number of FixedLocator locations (2) does not match the number of labels (1)")

    monkeypatch.setitem(eval_report.PLOTS, "action_mae.png", broken)
    with caplog.at_level(logging.WARNING, logger=eval_report.__name__):
        r = evaluation.evaluate(trained, data=datasets["myrobot"], output_dir=str(tmp_path / "lib"),
                                num_perturbations=2)
    assert [os.path.basename(p) for p in r["plots"]] == ["prediction_l1.png"]
    assert "action_mae.png" in caplog.text and "FixedLocator" in caplog.text
    with open(r["metrics_path"]) as f:
        saved = json.load(f)
    assert saved["action"]["myrobot"]["mae"] == pytest.approx(r["action"]["myrobot"]["mae"])
    assert saved["num_clips"] == r["num_clips"] > 0 and set(saved["per_source"]) == {"myrobot"}

    # The CLI prints the table and writes metrics.json first, then survives the failing plot.
    out = tmp_path / "cli"
    with pytest.raises(SystemExit) as e:
        eval_cli.run([f"--workdir={trained}", f"--data={datasets['myrobot']}", f"--output={out}",
                      "--num_perturbations=2", "--max_clips=8"])
    assert e.value.code == 0
    printed = capsys.readouterr().out
    assert "action[1]" in printed and "metrics:" in printed and "action_mae.png" not in printed
    assert os.path.exists(out / "metrics.json") and os.path.exists(out / "prediction_l1.png")
