"""Evaluation on fixture data: metrics agree with direct computations, files and table are written."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from tests.test_world_model_api import one_device_mesh, shared_workdir


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return shared_workdir(tmp_path_factory)


@pytest.fixture(scope="module")
def heldout(setup, tmp_path_factory):
    from wam_jax.inference import evaluation

    workdir, _ = setup
    out = str(tmp_path_factory.mktemp("eval"))
    return evaluation.evaluate(workdir, output_dir=out, mesh=one_device_mesh(), num_perturbations=4)


def test_heldout_eval_writes_metrics_plots_and_groups(heldout) -> None:
    r = heldout
    assert r["step"] == 2 and r["horizon"] == 3 and r["num_clips"] > 0
    with open(r["metrics_path"]) as f:
        saved = json.load(f)
    assert saved["prediction"]["l1"] == pytest.approx(r["prediction"]["l1"])
    assert {os.path.basename(p) for p in r["plots"]} == {"prediction_l1.png", "action_mae.png"}
    assert all(os.path.getsize(p) > 1000 for p in r["plots"])
    assert set(r["per_kind"]) == {"robot", "video"}
    assert set(r["per_source"]) == {"square_robot", "square_video"}
    # Action metrics only where there are labels; prediction metrics everywhere.
    assert "action" in r["per_kind"]["robot"] and "action" not in r["per_kind"]["video"]
    assert "prediction" in r["per_kind"]["video"]
    # Latent-action conditioning: the same rollout as l1 on action-free clips (they are conditioned
    # on latent actions anyway), a different one on labeled clips (real actions there).
    vid, rob = r["per_kind"]["video"]["prediction"], r["per_kind"]["robot"]["prediction"]
    assert vid["latent_l1"] == pytest.approx(vid["l1"], rel=1e-5)
    assert rob["latent_l1"] != pytest.approx(rob["l1"], rel=1e-5)
    assert len(r["prediction"]["latent_l1_vs_copy"]) == 3
    # Shuffled actions: identical on action-free clips (nothing to shuffle), different on labeled ones.
    assert vid["shuffled_l1"] == pytest.approx(vid["l1"], rel=1e-5)
    assert rob["shuffled_l1"] != pytest.approx(rob["l1"], rel=1e-5)
    assert rob["shuffled_vs_true"] == pytest.approx([s / t for s, t in zip(rob["shuffled_l1"], rob["l1"], strict=True)])
    assert r["per_kind"]["robot"]["num_clips"] + r["per_kind"]["video"]["num_clips"] == r["num_clips"]
    act = r["action"]["square"]
    assert act["dims"] == ["vx", "vy"] and len(act["mae"]) == len(act["r2"]) == 2
    rk = r["ranking"]
    assert rk["num_candidates"] == 5 and 1.0 <= rk["mean_rank"] <= 5.0
    h = r["health"]
    assert 1.0 <= h["effective_rank"] <= 64 and h["target_std"] > 0
    assert 1 <= h["latent_action_codes_used"] <= h["latent_action_num_codes"]


def test_format_table(heldout) -> None:
    from wam_jax.inference import eval_report

    table = eval_report.format_table(heldout)
    for needle in ("copy-last-frame L1", "IDM R^2", "Action ranking", "effective rank", "[robot]", "square_video"):
        assert needle in table, needle


def test_metrics_match_direct_computation(setup, tmp_path) -> None:
    """Copy baseline and inverse-dynamics MAE recomputed from the public API on the same clips
    (the loader's eval stream: the one data path of evaluation)."""
    from data_pipelines import loader, transforms
    from wam_jax import WorldModel
    from wam_jax.inference import evaluation

    workdir, mix = setup
    robot_dir = mix.split(",")[0].rsplit(":", 1)[0]
    r = evaluation.evaluate(workdir, data=robot_dir, max_clips=8, batch_size=8, output_dir=str(tmp_path),
                            plots=False, mesh=one_device_mesh(), num_perturbations=2)
    assert r["num_clips"] == 8 and r["num_batches"] == 1
    wm = WorldModel.load(workdir, mesh=one_device_mesh())
    batch = next(iter(loader.make_dataset(wm.config, split="eval", data=robot_dir, max_clips=8, trained=wm.info)))
    assert batch["timestep_mask"].all()  # 8 clips: one full batch, no padding
    z = np.asarray(wm.encode(batch["video"]))  # [8, T, N, D]
    copy = np.abs(z[:, :1] - z[:, 1:]).mean(axis=(0, 2, 3))
    np.testing.assert_allclose(r["prediction"]["copy_l1"], copy, rtol=1e-4)
    first = loader.eval_sources(wm.config, data=robot_dir)[0]
    src, stride = first.source, first.index.stride
    truth = transforms.denormalize_actions(batch["action"], src.stat("action", "mean"), src.stat("action", "std"),
                                           src.action_is_delta, stride)
    pred = wm.infer_actions(z)
    np.testing.assert_allclose(r["action"]["square"]["mae"], np.abs(pred - truth).mean(axis=(0, 1)), rtol=1e-3)
    # Rolling out is only as good as the model; the table still reports the baseline next to it.
    assert len(r["prediction"]["l1"]) == len(copy) == 3


def test_cli_and_bad_workdir(setup, tmp_path, capsys) -> None:
    from launch import eval as cli

    workdir, mix = setup
    robot_dir = mix.split(",")[0].rsplit(":", 1)[0]
    with pytest.raises(SystemExit) as e:
        cli.run([f"--workdir={workdir}", f"--data={robot_dir}", "--max_clips=8", "--no_plots",
                 f"--output={tmp_path}", "--num_perturbations=2"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "copy-last-frame L1" in out and os.path.exists(tmp_path / "metrics.json")
    assert "[eval] batch 1/" in out and "ETA" in out  # progress while evaluating
    with pytest.raises(SystemExit) as e:
        cli.run([f"--workdir={tmp_path / 'nope'}"])
    assert e.value.code == 2
    assert "wam-eval: error:" in capsys.readouterr().err


@pytest.mark.slow
def test_on_a_workdir_written_by_the_trainer(tmp_path) -> None:
    """The whole consumer side on a real `trainer.train` workdir: load, evaluate, export, reload."""
    from tests import runtime_fixtures as rf
    from wam_jax import WorldModel
    from wam_jax.inference import evaluation, export
    from wam_jax.training import trainer

    mix = rf.write_mixture(str(tmp_path / "data"))
    config = rf.tiny_config(mix, **{"train.num_steps": 2, "mesh.ici_data": 1, "mesh.ici_fsdp": -1})
    workdir = str(tmp_path / "run")
    trainer.train(config, workdir)
    wm = WorldModel.load(workdir, mesh=one_device_mesh())
    assert wm.step == 2 and wm.action_space().embodiment == "square"
    r = evaluation.evaluate(workdir, mesh=one_device_mesh(), plots=False, num_perturbations=2)
    assert r["step"] == 2 and set(r["per_kind"]) == {"robot", "video"}
    out = str(tmp_path / "export")
    export.export_model(workdir, out, with_predictor=True, platforms=("cpu",))
    frames = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(export.load_encoder(out)(frames), np.asarray(wm.encode(frames)))
