"""Planner tests: CEM/MPPI find known optima, stay in bounds, shard over devices without changing results."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wam_jax.inference import planning

H, A = 3, 2


def quadratic(actions: jax.Array, target: jax.Array) -> jax.Array:
    """Anisotropic quadratic bowl with its minimum at `target` ([H, A])."""
    w = jnp.array([1.0, 4.0])
    return jnp.sum(w * jnp.square(actions - target[None]), axis=(1, 2))


def _target() -> jax.Array:
    return jnp.array([[0.3, -0.5], [0.7, 0.1], [-0.2, 0.9]], jnp.float32)


@pytest.mark.parametrize("method", ["cem", "mppi"])
def test_planner_finds_quadratic_optimum(method: str) -> None:
    cfg = planning.PlannerConfig(method=method, num_samples=128, num_elites=16, num_iterations=25,
                                 horizon=H, min_std=0.002)
    plan = planning.make_planner(quadratic, cfg, action_dim=A)
    bounds = planning.ActionBounds.symmetric(A, 1.0)
    res = plan(_target(), jax.random.key(0), bounds.lower, bounds.upper)
    np.testing.assert_allclose(np.asarray(res.actions), np.asarray(_target()), atol=0.03)
    assert float(res.best_energy) < 5e-3
    trace = np.asarray(res.energy_trace)
    assert trace.shape == (cfg.num_iterations,)
    assert trace[-1] < trace[0]  # the optimization made progress
    assert res.actions.shape == res.std.shape == res.best_actions.shape == (H, A)


@pytest.mark.parametrize("method", ["cem", "mppi"])
def test_planner_respects_bounds(method: str) -> None:
    """An optimum outside the box is reached at the box's face, never beyond."""
    cfg = planning.PlannerConfig(method=method, num_samples=64, num_elites=8, num_iterations=15, horizon=H)
    lower = jnp.array([-0.5, 0.0])
    upper = jnp.array([0.5, 0.2])
    target = jnp.full((H, A), 3.0)
    res = jax.jit(lambda k: planning.optimize(quadratic, target, k, lower, upper, cfg))(jax.random.key(1))
    acts = np.asarray(res.actions)
    assert np.all(acts >= np.asarray(lower) - 1e-6) and np.all(acts <= np.asarray(upper) + 1e-6)
    np.testing.assert_allclose(acts, np.broadcast_to(np.asarray(upper), (H, A)), atol=0.05)


def test_planner_compiles_once_across_contexts() -> None:
    traces = []

    def energy(actions, target):
        traces.append(1)
        return quadratic(actions, target)

    cfg = planning.PlannerConfig(num_samples=32, num_elites=4, num_iterations=3, horizon=H)
    plan = planning.make_planner(energy, cfg, action_dim=A)
    b = planning.ActionBounds.symmetric(A)
    plan(_target(), jax.random.key(0), b.lower, b.upper)
    plan(-_target(), jax.random.key(1), b.lower, b.upper)
    assert len(traces) == 1


def test_warm_start_is_used() -> None:
    """Starting at the optimum with a tiny std keeps the plan there (the mean is candidate 0)."""
    cfg = planning.PlannerConfig(num_samples=16, num_elites=4, num_iterations=2, horizon=H)
    b = planning.ActionBounds.symmetric(A)
    res = planning.optimize(quadratic, _target(), jax.random.key(0), b.lower, b.upper, cfg,
                            init_mean=_target(), init_std=jnp.full((H, A), 1e-4))
    np.testing.assert_allclose(np.asarray(res.best_actions), np.asarray(_target()), atol=1e-3)
    assert float(res.best_energy) < 1e-6


@pytest.mark.parametrize("method", ["cem", "mppi"])
@pytest.mark.parametrize("mesh_kind", ["planning", "explicit"])
def test_sharded_and_unsharded_planning_agree(method: str, mesh_kind: str) -> None:
    assert jax.device_count() == 8, "conftest provides 8 CPU devices"
    if mesh_kind == "planning":
        mesh = planning.planning_mesh()
    else:  # the training mesh type: jax.make_mesh defaults to Explicit axes
        mesh = jax.make_mesh((4, 2, 1), ("data", "fsdp", "tensor"))
    assert planning.num_sample_shards(mesh) == 8
    cfg = planning.PlannerConfig(method=method, num_samples=64, num_elites=8, num_iterations=6, horizon=H)
    b = planning.ActionBounds.symmetric(A)
    seen_shardings = []

    def energy(actions, target):
        seen_shardings.append(actions.aval)
        return quadratic(actions, target)

    ref = planning.make_planner(quadratic, cfg, action_dim=A)(_target(), jax.random.key(3), b.lower, b.upper)
    sharded_plan = planning.make_planner(energy, cfg, action_dim=A, mesh=mesh)
    out = sharded_plan(_target(), jax.random.key(3), b.lower, b.upper)
    np.testing.assert_allclose(np.asarray(out.actions), np.asarray(ref.actions), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(out.energy_trace), np.asarray(ref.energy_trace), rtol=1e-5, atol=1e-6)
    # The candidates really are split over 8 devices inside the compiled program.
    with jax.set_mesh(mesh):
        hlo = sharded_plan.lower(_target(), jax.random.key(3), b.lower, b.upper).compile().as_text()
    assert "f32[8,3,2]" in hlo, "expected per-device candidate blocks of 64/8 samples"


@pytest.mark.parametrize("mesh_kind", ["planning", "inference"])
def test_meshes_come_from_the_rules_table(mesh_kind: str) -> None:
    """Planning and inference meshes put every device on the axis the rules map their logical axis
    to (`samples` / `embed`); candidates then split 8 ways on either."""
    from wam_jax import sharding
    from wam_jax.inference.load import inference_mesh

    mesh, logical = ((planning.planning_mesh(), "samples") if mesh_kind == "planning"
                     else (inference_mesh(), "embed"))
    axis = sharding.logical_to_spec((logical,))[0]
    axis = axis if isinstance(axis, str) else axis[0]
    assert mesh.shape[axis] == 8 and mesh.size == 8
    assert planning.num_sample_shards(mesh) == 8
    with pytest.raises(ValueError, match="the rules replicate logical axis 'time'"):
        sharding.mesh_along("time")


def test_padded_num_samples_rounds_up_to_shards() -> None:
    mesh = planning.planning_mesh()
    assert planning.padded_num_samples(300, mesh) == 304
    assert planning.padded_num_samples(400, mesh) == 400
    assert planning.padded_num_samples(300, None) == 300


def test_presets_match_publications() -> None:
    v = planning.preset("vjepa2_ac")
    assert (v.method, v.num_samples, v.num_elites, v.num_iterations, v.horizon) == ("cem", 400, 10, 10, 2)
    d = planning.preset("dino_wm")
    assert (d.method, d.num_samples, d.num_elites, d.num_iterations, d.horizon) == ("cem", 300, 30, 30, 5)
    assert planning.preset("dino_wm", method="mppi").method == "mppi"
    with pytest.raises(ValueError, match="unknown planner preset"):
        planning.preset("nope")
    with pytest.raises(ValueError, match="num_elites"):
        planning.PlannerConfig(num_samples=4, num_elites=8)


def test_bounds_from_quantiles_normalize() -> None:
    b = planning.ActionBounds.from_quantiles([-2.0, 0.0], [2.0, 0.0], mean=[0.0, 0.0], std=[2.0, 1.0])
    np.testing.assert_allclose(np.asarray(b.lower), [-1.0, 0.0])
    assert float(b.upper[1]) > float(b.lower[1])  # degenerate dims get a non-zero width
    with pytest.raises(ValueError, match="mean"):
        planning.ActionBounds.from_quantiles([0.0], [1.0], mean=[0.0])


def test_latent_goal_energy() -> None:
    goal = jnp.ones((4, 3))
    pred = jnp.stack([jnp.ones((2, 4, 3)), jnp.zeros((2, 4, 3))])  # [S=2, H=2, N, D]
    e = planning.latent_goal_energy(pred, goal)
    np.testing.assert_allclose(np.asarray(e), [0.0, 1.0])
    pred2 = pred.at[1, 1].set(1.0)  # sample 1 reaches the goal at the last step only
    np.testing.assert_allclose(np.asarray(planning.latent_goal_energy(pred2, goal)), [0.0, 0.0])
    np.testing.assert_allclose(np.asarray(planning.latent_goal_energy(pred2, goal, steps="all")), [0.0, 0.5])
    pp = jnp.zeros((2, 2, 5))
    e = planning.latent_goal_energy(pred, goal, pred_proprio=pp, goal_proprio=jnp.ones(5), proprio_weight=2.0)
    np.testing.assert_allclose(np.asarray(e), [2.0, 3.0])


def test_receding_horizon_reaches_a_moving_goal() -> None:
    """MPC on a 1-D integrator: x += a; the energy is the final-state distance to the goal."""
    cfg = planning.PlannerConfig(num_samples=64, num_elites=8, num_iterations=8, horizon=4)
    goal = 2.0

    def energy(actions, x0):
        final = x0 + jnp.sum(actions[..., 0], axis=1)
        return jnp.abs(final - goal)

    plan = planning.make_planner(energy, cfg, action_dim=1)
    b = planning.ActionBounds.symmetric(1, 0.5)
    state = {"x": jnp.float32(0.0)}

    def plan_fn(obs, key, init_mean):
        return plan(obs, key, b.lower, b.upper, init_mean)

    def act(a):
        state["x"] = state["x"] + float(a[0])
        return float(state["x"])

    trace = planning.receding_horizon(plan_fn, lambda: state["x"], act, num_steps=10,
                                      key=jax.random.key(0), execute=2)
    assert len(trace.actions) == 10  # fixed budget, no early stop
    assert len(trace.plan_seconds) == 5
    assert abs(float(state["x"]) - goal) < 0.1
    assert trace.summary()["num_plans"] == 5


def test_shift_plan() -> None:
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    np.testing.assert_array_equal(planning.shift_plan(x, 1), [[2, 3], [4, 5], [4, 5]])
    np.testing.assert_array_equal(planning.shift_plan(x, 2, fill="zero"), [[4, 5], [0, 0], [0, 0]])


# ------------------------------------------------------------------------------------------------
# PushT closed-loop harness (launch/plan.py)


def test_pusht_tasks_and_harness_replay_reaches_the_goal() -> None:
    """Replaying the demonstration that defined a task reaches its goal exactly: the reset,
    stepping, budget and scoring of the harness are right; random actions do not."""
    from launch import plan, pusht_tasks
    from sim import pusht
    from sim.rollouts import rollout
    from sim.success import is_success

    tasks = pusht_tasks.make_tasks(2, image_size=32, goal_offset=25)
    assert len(tasks) == 2 and tasks[0].goal_image.shape == (32, 32, 3)
    assert all(not is_success(t.start_state[2:], t.goal_pose) for t in tasks)  # non-trivial
    again = pusht_tasks.make_tasks(2, image_size=32, goal_offset=25)  # deterministic: same tasks for every method
    for a, b in zip(tasks, again, strict=True):
        assert a.seed == b.seed and np.array_equal(a.start_state, b.start_state)
        assert np.array_equal(a.goal_image, b.goal_image)

    class Replay:
        name = "replay"

        def reset(self, task):
            self.actions = rollout(task.seed, 25, image_size=pusht.RENDER_SIZE).actions

        def act(self, frame, step, agent):
            assert frame.shape == (32, 32, 3) and frame.dtype == np.uint8 and agent.shape == (2,)
            return self.actions[step:step + 2]  # two at a time: the budget still counts env steps

    controllers = [Replay(), plan.RandomController(np.array([20, 20]), np.array([490, 490])),
                   plan.HoldStillController()]
    res = pusht_tasks.evaluate_controllers(controllers, tasks, budget=25, image_size=32, progress=False)
    assert res["replay"]["success_rate"] == 1.0 and res["replay"]["mean_pos_error"] < 1e-3
    assert res["random"]["success_rate"] == 0.0
    # Holding still leaves the block where it started: the final error is the start error.
    for e in res["hold still"]["episode_records"]:
        assert not e["success"] and abs(e["pos_error"] - e["start_pos_error"]) < 1.0
    assert res["replay"]["success_ci95"][1] == 1.0 and 0.0 < res["replay"]["success_ci95"][0] < 1.0
    assert "planner" not in pusht_tasks.format_results(res, "x") and "replay" in pusht_tasks.format_results(res, "x")


def test_wam_plan_cli_on_a_tiny_workdir(tmp_path_factory, capsys, monkeypatch) -> None:
    from launch import plan
    from tests.test_world_model_api import shared_workdir
    from wam_jax import WorldModel

    workdir, _ = shared_workdir(tmp_path_factory)
    out = str(tmp_path_factory.mktemp("plan") / "pusht.json")
    record = plan.main(["pusht", f"--workdir={workdir}", "--episodes=1", "--budget=3", "--samples=16",
                        "--iterations=2", "--horizon=2", "--devices=1", f"--output={out}"])
    res = record["results"]
    assert set(res) == {"planner (dino_wm)", "hold still", "policy", "random"}
    planner = res["planner (dino_wm)"]
    assert planner["num_plans"] == 3 and planner["episodes"] == 1 and planner["plan_s_first"] > 0
    assert record["planner"]["num_samples"] == 16 and record["planner"]["horizon"] == 2
    assert "success" in capsys.readouterr().out
    with open(out) as f:
        assert json.load(f)["budget"] == 3
    # Warm start from the policy head: same harness, the planner starts each plan from its chunk.
    record = plan.main(["pusht", f"--workdir={workdir}", "--episodes=1", "--budget=2", "--samples=8",
                        "--iterations=1", "--horizon=6", "--devices=1", "--baselines=none",
                        "--warm_start=policy", f"--output={out}"])
    assert record["warm_start"] == "policy"
    assert record["results"]["planner (dino_wm, policy warm start)"]["num_plans"] == 2
    # Searching target walks from the agent instead of the action box (from the policy's chunk),
    # with the cost over every predicted step.
    plan_latents, steps_seen = WorldModel.plan_latents, []

    def spy(self, *args, **kwargs):
        steps_seen.append(kwargs["steps"])
        return plan_latents(self, *args, **kwargs)

    monkeypatch.setattr(WorldModel, "plan_latents", spy)
    record = plan.main(["pusht", f"--workdir={workdir}", "--episodes=1", "--budget=2", "--samples=8",
                        "--iterations=1", "--horizon=3", "--devices=1", "--baselines=none", "--actions=walk",
                        "--warm_start=policy", "--cost_steps=all", f"--output={out}"])
    assert record["actions"] == "walk" and record["cost_steps"] == "all" and steps_seen == ["all", "all"]
    assert record["results"]["planner (dino_wm, policy warm start, walk 50 px, latent cost on all steps)"][
        "num_plans"] == 2
    # The oracle start: each plan begins at the demonstration's actions still ahead, as model actions.
    inits = []

    def spy_init(self, *args, **kwargs):
        inits.append(np.asarray(kwargs["init_mean"]))
        return plan_latents(self, *args, **kwargs)

    monkeypatch.setattr(WorldModel, "plan_latents", spy_init)
    record = plan.main(["pusht", f"--workdir={workdir}", "--episodes=1", "--budget=2", "--samples=8",
                        "--iterations=1", "--horizon=3", "--devices=1", "--baselines=none",
                        "--warm_start=demonstration", f"--output={out}"])
    assert record["results"]["planner (dino_wm, demonstration warm start)"]["num_plans"] == len(inits)
    from launch.pusht_tasks import make_tasks

    wm = WorldModel.load(workdir)
    space = wm.action_space()
    (task,) = make_tasks(1, image_size=wm.image_size)
    assert 3 * space.frame_stride <= len(task.demo_actions)
    np.testing.assert_allclose(inits[0], space.from_env_steps(task.demo_actions[:3 * space.frame_stride]),
                               rtol=1e-6)


def test_probe_pusht_on_a_tiny_workdir(tmp_path_factory) -> None:
    """`wam-eval --probe=pusht`'s work: fresh simulator episodes at the model's frame size, ridge
    probes for the trained encoder, a random-init one, pixels, and the trained latents without the
    directions the proprio explains (`wam-plan --cost=scene`'s), each on held-out episodes."""
    from launch import probe
    from launch.plan import scene_subspace
    from tests.test_world_model_api import shared_workdir
    from wam_jax import WorldModel
    from wam_jax.inference import load

    workdir, _ = shared_workdir(tmp_path_factory)
    restored = load.restore(workdir)
    basis, _ = scene_subspace(WorldModel.from_restored(restored), None, 64, 0)
    res = probe.probe_pusht(restored, episodes=4, scene_basis=basis)
    assert set(res["probes"]) == {"trained encoder", "random-init encoder", "pixels", "trained, agent removed"}
    s = int(restored.config.model.image_size)
    assert res["probes"]["pixels"]["feature_dim"] == s * s * 3
    n, d = restored.target.latent_shape
    assert res["probes"]["trained encoder"]["feature_dim"] == n * d == res["probes"]["trained, agent removed"][
        "feature_dim"]
    for r in res["probes"].values():
        assert set(r["r2"]) == set(probe.TARGETS) and r["test_groups"] == 1
        assert all(np.isfinite(v) for v in r["r2"].values())
        assert set(r["variance_explained"]) == set(r["distance_rank"]) == {"agent", "block"}
    assert np.isfinite(res["probes"]["pixels"]["variance_explained"]["block"])
    assert "block pos" in probe.format_probe(res) and "dist rank" in probe.format_probe(res)


def test_probe_pusht_reads_the_tokens_a_pooled_latent_is_made_of(tmp_path_factory) -> None:
    """For pooled latents the probe adds the trained encoder's tokens before pooling: does the
    encoder see what the pooled latent lacks?"""
    from launch import probe
    from tests.test_world_model_api import make_tiny_workdir
    from wam_jax.inference import load

    workdir, _ = make_tiny_workdir(str(tmp_path_factory.mktemp("pooled")), steps=(1,),
                                   **{"model.pool.kind": "mean", "model.pool.dim": 16,
                                      "model.decoder.size": 8, "loss.recon": 1.0})
    restored = load.restore(workdir)
    res = probe.probe_pusht(restored, episodes=4)
    enc = restored.target
    gh, gw = enc.grid
    assert res["probes"]["trained, tokens unpooled"]["feature_dim"] == gh * gw * enc.width
    assert res["probes"]["trained encoder"]["feature_dim"] == 16
    assert all(np.isfinite(v) for v in res["probes"]["trained, tokens unpooled"]["r2"].values())
    # What the decoder draws from fresh frames' latents, under the frames (wam-eval's PNG).
    from PIL import Image

    from wam_jax import WorldModel

    wm = WorldModel.from_restored(restored)
    s = wm.image_size
    frames, _, _ = probe.pusht_frames(3, image_size=s, stride=50, steps=60)
    grid = probe.reconstruction_grid(wm, frames)
    assert grid.shape == (2 * s, len(frames) * s, 3) and grid.dtype == np.uint8
    np.testing.assert_array_equal(grid[:s], np.concatenate(list(frames), 1))
    drawn = wm.decode(wm.encode(frames[:, None]))[0, 0]  # 8 x 8, drawn at s x s below its frame
    np.testing.assert_array_equal(grid[s:, :s][:: s // 8, :: s // 8], drawn)
    path = probe.write_reconstructions(wm, str(tmp_path_factory.mktemp("png") / "r.png"), episodes=2)
    assert Image.open(path).size == (3 * 2 * s, 3 * 2 * s)


def test_energy_agreement_scores_rank_order_and_the_chosen_outcome() -> None:
    """An energy that orders candidates as the outcome does scores Spearman 1 and picks the best;
    a reversed one scores -1 and picks the worst; a constant one is undefined (nan), not 0."""
    from launch import energy_agreement

    cost = np.array([30.0, 10.0, 50.0, 20.0])
    res = energy_agreement.score_task(cost, {"model energy": cost * 2 + 1, "latent energy": -cost,
                                             "pixels": np.ones(4)})
    assert res["rho/model energy"] == 1.0 and res["chosen/model energy"] == 10.0 == res["best"]
    assert res["rho/latent energy"] == -1.0 and res["chosen/latent energy"] == 50.0
    assert np.isnan(res["rho/pixels"]) and res["rho/model vs latent energy"] == -1.0
    assert res["median"] == 25.0
    demo = np.tile([[300.0, 200.0]], (5, 1))
    acts = energy_agreement.candidates(np.random.default_rng(0), np.array([100.0, 400.0]), np.array([50.0, 60.0]),
                                       np.array([450.0, 470.0]), 9, 5, demo)
    assert acts.shape == (9, 5, 2) and (acts >= [50, 60]).all() and (acts <= [450, 470]).all()
    # Rows 1, 4, 7 start near the agent (a 25-px random walk); rows 2, 5, 8 are the demonstration
    # with noise growing from 0 (row 2 is the demonstration itself).
    assert np.linalg.norm(acts[1::3, 0] - [100.0, 400.0], axis=-1).max() < 120
    np.testing.assert_allclose(acts[2], demo)
    assert 0 < np.abs(acts[5] - demo).mean() < np.abs(acts[8] - demo).mean()


def test_energy_agreement_on_a_tiny_workdir(tmp_path_factory) -> None:
    from launch import energy_agreement
    from launch.plan import scene_subspace
    from tests.test_world_model_api import shared_workdir
    from wam_jax import WorldModel

    workdir, _ = shared_workdir(tmp_path_factory)
    wm = WorldModel.load(workdir)
    res = energy_agreement.energy_agreement(wm, tasks=2, num_candidates=6, horizon=2,
                                            scene_basis=scene_subspace(wm, None, 64, 0)[0])
    assert res["tasks"] == 2 and len(res["per_task"]) == 2
    # Spearman is nan where an energy or the outcome is constant (the tiny model at stride 1 moves
    # the block little in 2 steps); otherwise in [-1, 1].
    for name in ("model energy", "latent energy", "scene model energy", "scene latent energy",
                 "pixels"):  # "decoded energy": tests/test_decoder.py
        rho = res["summary"][f"rho/{name}"]["mean"]
        assert np.isnan(rho) or -1.0 <= rho <= 1.0
        assert res["summary"]["best"]["mean"] <= res["summary"][f"chosen/{name}"]["mean"]
    assert res["summary"]["prediction error"]["mean"] > 0 and res["summary"]["block 20 px"]["mean"] > 0
    assert "scene latent energy" in energy_agreement.format_agreement(res)


def test_walk_decoder_moves_the_target_from_the_agent_in_bounded_steps() -> None:
    """`--actions=walk`: variables in [-1, 1] are per-step moves of the target (step_px at most),
    from the agent; a chunk model's recorded steps are interpolated from the previous target."""
    from launch import plan
    from wam_jax.inference.action_space import ActionSpace

    def space_of(chunk: int) -> ActionSpace:
        d = 2 * chunk
        return ActionSpace(embodiment="pusht", embodiment_id=0, source="s", dim=d, model_dim=d, mean=np.zeros(d),
                           std=np.ones(d), q01=np.full(d, 20.0), q99=np.full(d, 490.0), is_delta=np.zeros(d, bool),
                           stride=1 if chunk > 1 else 5, chunk=chunk)

    space = space_of(2)
    dec = plan.walk_decoder(space, 50.0)
    assert (dec.dim, dec.lower, dec.upper) == (2, -1.0, 1.0)
    u = jnp.asarray([[[1.0, 0.0], [1.0, -1.0], [0.0, 0.0]]])  # [S=1, H=3, 2]
    out = np.asarray(dec.fn(u, jnp.asarray([100.0, 30.0])))
    assert out.shape == (1, 3, 4)
    # step 1: target 150,30 (half-way 125,30 first); step 2: 200,20 clipped at the box's 20 (175,25 first)
    np.testing.assert_allclose(out[0, 0], [125.0, 30.0, 150.0, 30.0])
    np.testing.assert_allclose(out[0, 1], [175.0, 25.0, 200.0, 20.0])
    np.testing.assert_allclose(out[0, 2], [200.0, 20.0, 200.0, 20.0])
    np.testing.assert_allclose(np.asarray(plan.walk_decoder(space_of(1), 50.0).fn(u, jnp.asarray([100.0, 30.0])))[0],
                               [[150.0, 30.0], [200.0, 20.0], [200.0, 20.0]])
    # encode (the policy warm start): the moves that reproduce a plan inside the box, clipped to a step
    np.testing.assert_allclose(dec.encode(out[0], np.asarray([100.0, 30.0])), [[1.0, 0.0], [1.0, -0.2], [0.0, 0.0]])
    far = np.asarray([[125.0, 30.0, 400.0, 30.0]])
    np.testing.assert_allclose(dec.encode(far, np.asarray([100.0, 30.0])), [[1.0, 0.0]])
