"""Smoke tests: every benchmark script runs end to end with `--quick` and writes its JSON.

Each script runs as a subprocess (as users run it), on one simulated CPU device (memory_scaling
spawns its own 1- and 2-device workers), with a persistent XLA cache shared between runs where
the script supports it. The helpers in `benchmarks/common.py`, `host.py` and `measure.py` are
checked directly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

import common  # noqa: E402
import host  # noqa: E402
import measure  # noqa: E402

CACHE = os.path.join(tempfile.gettempdir(), "wam_jax_bench_smoke_xla_cache")


def _run(script: str, tmp_path, *extra: str, timeout: float = 600) -> dict:
    out = tmp_path / f"{script}.json"
    env = dict(os.environ)
    env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f)
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, os.path.join("benchmarks", f"{script}.py"), "--quick", f"--json={out}", *extra],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert "|---" in proc.stdout, f"{script} printed no table:\n{proc.stdout[-2000:]}"
    result = json.loads(out.read_text())
    assert result["benchmark"] == script
    env_rec = result["environment"]
    for key in ("cpu", "versions", "command", "load_average"):
        assert key in env_rec, key
    assert env_rec["versions"]["jax"]
    assert env_rec["command"].startswith(f"python benchmarks/{script}.py")
    return result


# ---------------------------------------------------------------------------------------------
# common.py, host.py, measure.py


def test_format_table_and_missing_values():
    rows = [{"a": "x", "b": 1.23456, "c": None}, {"a": "y", "b": float("nan")}]
    table = common.format_table(rows, [("a", "A", ""), ("b", "B", ".2f"), ("c", "C", ".1f")])
    lines = table.splitlines()
    assert lines[0] == "| A | B | C |"
    assert lines[2] == "| x | 1.23 | — |"
    assert lines[3] == "| y | — | — |"


def test_parse_mapping_and_errors():
    assert common.parse_mapping("tiny=8, S=4") == {"tiny": 8, "S": 4}
    with pytest.raises(ValueError, match="NAME=VALUE"):
        common.parse_mapping("tiny")


def test_time_fn_records_load_and_spread():
    import time

    calls = []
    t = measure.time_fn(lambda: (calls.append(1), time.sleep(0.002)), warmup=2, reps=5)
    assert len(calls) == 7
    s = t.summary()
    assert s["reps"] == 5 and 0.002 <= s["best_s"] <= s["median_s"] <= max(s["samples_s"]) + 1e-6
    assert len(s["load_before"]) == 3


def test_wait_for_quiet_times_out_and_says_so():
    r = host.wait_for_quiet(max_load=-1.0, timeout_s=0.0)  # <= 0: never waits
    assert r["quiet"] and r["waited_s"] == 0.0
    r = host.wait_for_quiet(max_load=1e-9, timeout_s=0.0, poll_s=0.0)
    assert set(r) == {"waited_s", "load", "quiet"}


def test_synthetic_batch_follows_the_schema():
    from configs import base
    from data_pipelines import schema

    c = base.get_config("tiny")
    batch = common.synthetic_batch(c, global_batch=3)
    schema.validate_batch(batch, num_frames=c.data.num_frames, image_size=c.model.image_size,
                          action_dim=c.model.action_dim, proprio_dim=c.model.proprio_dim)
    assert batch["video"].shape[0] == 3
    assert batch["embodiment_id"].max() < c.model.num_embodiments


# ---------------------------------------------------------------------------------------------
# The measured optimisation: bf16 matmul operands with f32 accumulation (model.matmul_dtype)


def _stack_loss(matmul_dtype: str):
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from wam_jax.models.blocks import BlockStack
    from wam_jax.models.ops import use_matmul_dtype
    from wam_jax.models.positions import grid_positions, rope_3d

    stack = use_matmul_dtype(BlockStack(2, 48, 4, 4.0, rngs=nnx.Rngs(0)), matmul_dtype)
    graph, params = nnx.split(stack, nnx.Param)
    x = jax.random.normal(jax.random.key(1), (2, 16, 48))
    rope = rope_3d(grid_positions(1, 4, 4), 12)

    def loss(p):
        return jnp.mean(jnp.square(nnx.merge(graph, p)(x, rope=rope)))

    return loss, params


def test_bf16_matmuls_track_f32_values_and_grads():
    import jax
    import numpy as np

    loss32, params = _stack_loss("")
    loss16, params16 = _stack_loss("bfloat16")
    l32, g32 = jax.jit(jax.value_and_grad(loss32))(params)
    l16, g16 = jax.jit(jax.value_and_grad(loss16))(params16)
    a = np.concatenate([np.ravel(v) for v in jax.tree.leaves(g32)])
    b = np.concatenate([np.ravel(v) for v in jax.tree.leaves(g16)])
    assert {v.dtype for v in jax.tree.leaves(g16)} == {np.dtype("float32")}
    assert abs(float(l16) - float(l32)) < 1e-3 * abs(float(l32))
    assert np.linalg.norm(a - b) / np.linalg.norm(a) < 2e-2  # bf16 operands: ~3 significant digits
    assert np.linalg.norm(a - b) > 0  # the bf16 path really ran


def test_bf16_matmuls_run_backward_in_bf16_too():
    import jax

    loss16, params = _stack_loss("bfloat16")
    hlo = jax.jit(jax.grad(loss16)).lower(params).as_text()
    dots = [ln for ln in hlo.splitlines() if "dot_general" in ln and "tensor<" in ln]
    mixed = [ln for ln in dots if "bf16" in ln.split("->")[0] and "xf32>" in ln.split("->")[-1]]
    # per block: qkv, proj, fc1, fc2 forward + 2 backward each = 12; 2 blocks (scanned: one body)
    assert len(mixed) >= 12, f"{len(mixed)} bf16 x bf16 -> f32 dots of {len(dots)}"


def test_matmul_dtype_default_and_bad_value():
    from flax import nnx

    from wam_jax.models import ops
    from wam_jax.models.blocks import BlockStack

    stack = BlockStack(1, 48, 4, 4.0, rngs=nnx.Rngs(0))
    ops.use_matmul_dtype(stack, "")
    assert all(getattr(m, "dot_general", None) is not ops.bf16_dot_general for _, m in nnx.iter_graph(stack))
    with pytest.raises(ValueError, match="matmul dtype"):
        ops.use_matmul_dtype(stack, "float16")


# ---------------------------------------------------------------------------------------------
# The scripts (each compiles a real train step or planner: slow on a shared 2-core machine)


@pytest.mark.slow
def test_train_step_quick(tmp_path):
    r = _run("train_step", tmp_path)
    (row,) = r["rows"]
    assert row["preset"] == "tiny" and row["step_ms"] > 0
    assert row["flops"] > 0 and 0 < row["mfu"] < 1.5
    assert set(r["peaks"]) == {"float32", "bfloat16"}
    assert row["mem_total_mib"] > row["mem_temp_mib"] > 0 and row["mem_argument_mib"] > 0


@pytest.mark.slow
def test_compile_time_quick(tmp_path):
    r = _run("compile_time", tmp_path, "--scan=on,unrolled")
    on, unrolled = r["rows"]
    assert on["compile_s"] > 0 and on["scan"] is True and on["scan_unroll"] == 1
    assert unrolled["scan_mode"] == "unrolled" and unrolled["scan"] is True and unrolled["scan_unroll"] == 0


@pytest.mark.slow
def test_memory_scaling_quick(tmp_path):
    r = _run("memory_scaling", tmp_path, f"--compile_cache={CACHE}")
    fsdp = {s["devices"]: s for s in r["scaling"] if s["mode"] == "fsdp"}
    assert fsdp[1]["ratio"] == pytest.approx(1.0)
    assert fsdp[2]["ratio"] < 1.2  # parameters + optimizer shard over 2 devices
    data = {s["devices"]: s for s in r["scaling"] if s["mode"] == "data"}
    assert data[2]["ratio"] == pytest.approx(2.0)  # replicated


@pytest.mark.slow
def test_planning_speed_quick(tmp_path):
    r = _run("planning_speed", tmp_path)
    (row,) = r["rows"]
    assert row["samples"] == 400 and row["iterations"] == 10 and row["plan_s"] > 0


def test_attention_quick(tmp_path):
    r = _run("attention", tmp_path)
    impls = [row["impl"] for row in r["rows"]]
    assert impls == ["jax dot_product_attention (xla)", "head_major_attention"]
    assert all(row["fwd_ms"] > 0 and row["fwd_bwd_ms"] > 0 for row in r["rows"])
    assert r["rows"][0]["speedup_fwd_bwd"] == 1.0


def test_gelu_quick(tmp_path):
    r = _run("gelu", tmp_path)
    impls = [row["impl"] for row in r["rows"]]
    assert impls == ["jax.nn.gelu exact (erfc)", "ops.gelu (erf)", "jax.nn.gelu tanh approx."]
    assert all(row["fwd_ms"] > 0 and row["fwd_bwd_ms"] > 0 for row in r["rows"])
    exact, ours, approx = r["rows"]
    assert exact["max_abs_diff"] == 0.0 and ours["max_abs_diff"] < 1e-5 < approx["max_abs_diff"]


@pytest.mark.slow
@pytest.mark.torch
def test_torch_peer_quick(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    r = _run("torch_peer", tmp_path)
    (row,) = r["rows"]
    assert row["processes"] == "per framework"
    assert row["jax_ms"] > 0 and row["torch_ms"] > 0 and row["speedup"] > 0
    assert row["torch_flops_counted"] > 0
    # every framework in this one process, as the earlier tables were measured
    (row,) = _run("torch_peer", tmp_path, "--in_process")["rows"]
    assert row["processes"] == "one" and row["jax_ms"] > 0 and row["torch_ms"] > 0


def test_video_ablation_config_arms_and_errors():
    from configs import video_ablation

    a = video_ablation.get_config("arm=a,labeled=2")
    b = video_ablation.get_config("arm=b,labeled=8")
    c = video_ablation.get_config("arm=c,labeled=8")
    assert a.data.mixture == "data/pusht/ablation/labeled_2"
    assert b.data.mixture == c.data.mixture == "data/pusht/ablation/labeled_8:0.5,data/pusht/converted/pusht_video:0.5"
    assert (a.model.latent_action.video_cond, b.model.latent_action.video_cond, c.model.latent_action.video_cond) == (
        "latent", "latent", "mask")
    # Same labeled clips per step in every arm; the video arms add as many video clips.
    assert (a.data.global_batch_size, b.data.global_batch_size, c.data.global_batch_size) == (8, 16, 16)
    assert video_ablation.get_config("arm=b,labeled=2,batch=4").data.global_batch_size == 8
    # Same model and optimizer in every arm: only the data and the video conditioning differ.
    for x in (b, c):
        assert x.model.encoder.to_dict() == a.model.encoder.to_dict() and x.optim.to_dict() == a.optim.to_dict()
    with pytest.raises(ValueError, match="arm='d'"):
        video_ablation.get_config("arm=d")
    with pytest.raises(ValueError, match="unknown argument 'L'"):
        video_ablation.get_config("L=3")
    # recipe=plan: the planning recipe's end-to-end encoder and learning rate, the same arms.
    pa, pb = (video_ablation.get_config(f"arm={x},labeled=2,recipe=plan") for x in "ab")
    assert pa.model.target == pb.model.target == "online" and pa.model.pool.kind == "mean" and pa.loss.sigreg > 0
    assert pa.optim.lr == pb.optim.lr == 5e-4 and a.optim.lr == 3e-3 and pa.model.patch_size == 16
    assert (pa.data.global_batch_size, pb.data.global_batch_size) == (8, 16) and pb.data.mixture == b.data.mixture.replace("_8", "_2")
    with pytest.raises(ValueError, match="recipe='big'"):
        video_ablation.get_config("recipe=big")


def test_video_ablation_table_has_one_cell_per_column():
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    import video_only_ablation as abl

    rows = [{"labeled": n, "arm": arm, "seed": s, "horizon": 2, "pred_l1": [0.1, 0.2], "copy_l1": [0.1, 0.2],
             "l1_vs_copy": [1.0 - 0.01 * s, 1.0], "latent_l1_vs_copy": [1.0, 1.0], "act_r2": 0.5,
             "rank_top1": 0.1, "rank_normalized": 0.4, "plan/planner/success": 0.0, "plan/planner/pos_error": 50.0}
            for n in (2, 8) for arm in "ab" for s in (0, 1)]
    agg = abl.aggregate(rows)
    assert len(agg) == 4 and all(r["seeds"] == 2 for r in agg)
    assert agg[0]["l1_vs_copy_h1"] == pytest.approx(0.995) and agg[0]["l1_vs_copy_h1_std"] == pytest.approx(0.005)
    lines = abl.table(agg).splitlines()
    assert len(lines) == 2 + len(agg)
    assert len({line.count("|") for line in lines}) == 1, lines


@pytest.mark.slow  # generates a small PushT set, trains 2 x 3 arms, evaluates and plans: ~3 min
def test_video_only_ablation_smoke(tmp_path):
    data = tmp_path / "pusht"
    runs = tmp_path / "runs"
    out = tmp_path / "ablation.json"
    env = dict(os.environ, JAX_PLATFORMS="cpu", SDL_VIDEODRIVER="dummy")
    env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f)
    proc = subprocess.run(
        [sys.executable, "benchmarks/video_only_ablation.py", "--smoke", f"--data={data}", "--generate=4,4,2,30",
         "--labeled=1,2", f"--runs={runs}", f"--json={out}", "--eval_clips=16"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1800, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "|---" in proc.stdout
    result = json.loads(out.read_text())
    assert result["benchmark"] == "video_only_ablation"
    assert {(r["labeled"], r["arm"]) for r in result["aggregate"]} == {(n, a) for n in (1, 2) for a in "abc"}
    for r in result["rows"]:
        assert len(r["l1_vs_copy"]) == 3 and all(v > 0 for v in r["l1_vs_copy"])
        assert 0.0 <= r["plan/planner/success"] <= 1.0
    assert os.path.exists(os.path.splitext(out)[0] + ".png")


def test_learning_quality_aggregate_gives_intervals_over_seeds_and_pooled_success():
    import learning_quality as lq

    recs = [{"seed": s, "l1_vs_copy_h1": 0.5 + 0.1 * s, "rank": 0.2, "plan_planner": s / 4,
             "plan_planner_wins": s, "plan_planner_episodes": 4} for s in range(3)]
    rows = {r["key"]: r for r in lq.aggregate(recs)}
    r = rows["l1_vs_copy_h1"]
    assert r["mean"] == pytest.approx(0.6)
    # t(0.975, 2) = 4.303; std 0.1; half-width 4.303 * 0.1 / sqrt(3)
    assert r["ci95"][1] - r["mean"] == pytest.approx(4.303 * 0.1 / 3 ** 0.5, rel=1e-3)
    assert np.isnan(lq.interval([0.2])[1]) and rows["rank"]["ci95"] == pytest.approx([0.2, 0.2])
    assert rows["plan_planner"]["pooled"]["wins"] == 3 and rows["plan_planner"]["pooled"]["episodes"] == 12
    assert "idm_r2" not in rows  # metrics no seed recorded are left out
    lines = lq.table(list(rows.values()), [0, 1, 2]).splitlines()
    assert len({line.count("|") for line in lines}) == 1 and "3/12" in lines[-1]


@pytest.mark.slow
def test_learning_quality_smoke(tmp_path):
    out = tmp_path / "lq.json"
    env = dict(os.environ, JAX_PLATFORMS="cpu", SDL_VIDEODRIVER="dummy")
    env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f)
    proc = subprocess.run(
        [sys.executable, "benchmarks/learning_quality.py", "--smoke", f"--data={tmp_path / 'pusht'}",
         f"--runs={tmp_path / 'runs'}", f"--json={out}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1800, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "|---" in proc.stdout
    result = json.loads(out.read_text())
    assert result["benchmark"] == "learning_quality" and len(result["seeds"]) == 2
    keys = {r["key"] for r in result["rows"]}
    assert {"l1_vs_copy_h1", "rank", "probe_block", "var_agent", "dist_rank_block", "energy_model_all",
            "energy_model_near", "plan_planner", "plan_hold"} <= keys


def test_plan_outcomes_splits_failures_and_pairs_runs(tmp_path):
    """`plan_outcomes.py`: never pushed = the block's errors unchanged; the failure split; the exact
    McNemar p of the discordant tasks (5 against 2: 0.45; 8 against 0: 0.0078)."""
    import plan_outcomes

    from launch.pusht_tasks import mcnemar_p

    assert mcnemar_p(5, 2) == pytest.approx(0.453, abs=1e-3)
    assert mcnemar_p(0, 8) == pytest.approx(2 / 256) and mcnemar_p(0, 0) == 1.0

    def ep(seed, success, pos, ang, start=(60.0, 30.0)):
        return {"seed": seed, "success": success, "pos_error": pos, "angle_error": ang,
                "start_pos_error": start[0], "start_angle_error": start[1]}

    a = [ep(0, True, 5, 5), ep(1, False, 60.2, 30.1), ep(2, False, 10, 40), ep(3, False, 30, 10), ep(4, False, 30, 30)]
    b = [ep(0, True, 5, 5), ep(1, True, 3, 2), ep(2, True, 4, 4), ep(3, False, 30, 10), ep(5, True, 1, 1)]
    paths = []
    for name, eps in (("a", a), ("b", b)):
        paths.append(str(tmp_path / f"{name}.json"))
        with open(paths[-1], "w") as f:
            json.dump({"results": {f"planner {name}": {"episode_records": eps}}}, f)
    out = plan_outcomes.main([*paths, f"--output={tmp_path / 'out.json'}"])
    first, second = out["rows"]
    assert (first["success"], first["never_pushed"], first["fail_angle_only"], first["fail_position_only"],
            first["fail_both"]) == (1, 1, 1, 1, 2)
    assert second["paired_with_reference"] == {"tasks": 4, "both": 1, "only_first": 0, "only_this": 2,
                                               "mcnemar_p": 0.5}
    assert json.loads((tmp_path / "out.json").read_text())["benchmark"] == "plan_outcomes"
    # Two seeds pooled (x is a under seed 0 and b under seed 1): a task seed counts once per seed;
    # every row paired with the named reference.
    seeds = [str(tmp_path / f"seed{k}.json") for k in (0, 1)]
    for path, (x, y) in zip(seeds, ((a, b), (b, a)), strict=True):
        with open(path, "w") as f:
            json.dump({"results": {"x": {"episode_records": x}, "y": {"episode_records": y},
                                   "x vs y": {"tasks": 4}}}, f)
    pooled = plan_outcomes.main([*seeds, "--pool=2", "--reference=y"])["rows"]
    assert [(r["controller"], r["tasks"], r["success"]) for r in pooled] == [("x", 10, 5), ("y", 10, 5)]
    assert pooled[0]["paired_with_reference"] == {"tasks": 8, "both": 2, "only_first": 2, "only_this": 2,
                                                  "mcnemar_p": 1.0}
    assert "paired_with_reference" not in pooled[1]
    for bad in ("--pool=3", "--reference=z"):
        with pytest.raises(SystemExit):
            plan_outcomes.main([*seeds, bad])


def test_angle_upper_bound_smoke(tmp_path):
    """`angle_upper_bound.py` end to end in miniature: the pixel ridge and the CNN on a shared test
    set, one decoder drawing from the true state and read back; both tables and the JSON."""
    out = tmp_path / "aub.json"
    env = dict(os.environ, JAX_PLATFORMS="cpu", SDL_VIDEODRIVER="dummy")
    env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f)
    proc = subprocess.run(
        [sys.executable, "benchmarks/angle_upper_bound.py", "--train_episodes=4", "--test_episodes=2",
         "--readers=cnn", "--decoders=upsample:8", "--steps=2", "--batch=8", f"--output={out}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sum(line.startswith("|---") for line in proc.stdout.splitlines()) == 2
    result = json.loads(out.read_text())
    assert result["benchmark"] == "angle_upper_bound" and result["test_episodes"] == 2
    assert [r["reader"] for r in result["rows"]] == ["pixels, ridge", "cnn"]
    assert {"agent_pos", "block_pos", "block_angle"} <= set(result["rows"][1])
    drawn = result["drawn_by_decoder"]
    assert drawn["train_episodes"] == 4 and [r["decoder"] for r in drawn["rows"]] == ["upsample:8"]
    assert drawn["rows"][0]["test_mse"] > 0
