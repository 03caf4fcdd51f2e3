"""`model.flow_head` + `loss.flow`: the flow-matching action stream draws both ways around an
obstacle where the regression head averages them into it; the sampler, the loss term's reach and
the configurations it refuses."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from tests.test_model import random_batch, tiny_config
from tests.test_objectives import _max_abs, _only, loss_and_grads
from wam_jax.models import flow_head
from wam_jax.models.action_head import PolicyHead
from wam_jax.models.world_model import WorldActionModel

H, D = 4, 8
# Two demonstrations from (0, -1) to (0, 1) around an obstacle of radius 0.5 at the origin: by
# the left or by the right, equally often. Waypoints (x, y) of the chunk.
RIGHT = np.array([[0.6, -0.6], [1.0, 0.0], [0.6, 0.6], [0.0, 1.0]], np.float32)
LEFT = RIGHT * np.array([-1.0, 1.0], np.float32)


def _demos(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(chunks `[n, 1, H, 2]`, side +1 / -1): a mode each, with a little noise."""
    side = rng.choice([-1.0, 1.0], size=n).astype(np.float32)
    chunks = np.where(side[:, None, None] > 0, RIGHT, LEFT) + 0.05 * rng.normal(size=(n, H, 2))
    return chunks[:, None].astype(np.float32), side


def _train(model: nnx.Module, loss_fn, steps: int = 400, batch: int = 256, seed: int = 0) -> None:
    opt = nnx.Optimizer(model, optax.adam(2e-3), wrt=nnx.Param)

    @nnx.jit
    def step(model, opt, chunks, key):
        loss, grads = nnx.value_and_grad(lambda m: loss_fn(m, chunks, key))(model)
        opt.update(model, grads)
        return loss

    rng = np.random.default_rng(seed)
    for i in range(steps):
        step(model, opt, jnp.asarray(_demos(rng, batch)[0]), jax.random.key(i))


def _ctx(n: int) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """The same start and goal latents for every example (what differs is only the mode)."""
    z_t = jnp.broadcast_to(jnp.linspace(-1.0, 1.0, D), (n, 1, 1, D))
    return z_t, -z_t, jnp.zeros((n, 1, 2)), jnp.zeros((n,), jnp.int32)


def _flow_loss(head, chunks, key):
    n = chunks.shape[0]
    k_noise, k_tau = jax.random.split(key)
    noise = jax.random.normal(k_noise, chunks.shape)
    tau = jax.random.uniform(k_tau, (n, 1))
    x_tau = (1 - tau[..., None, None]) * noise + tau[..., None, None] * chunks
    z_t, z_goal, proprio, emb = _ctx(n)
    return jnp.mean(jnp.square(head(z_t, z_goal, proprio, x_tau, tau, emb) - (chunks - noise)))


def _regression_loss(head, chunks, key):
    del key
    z_t, z_goal, _, emb = _ctx(chunks.shape[0])
    return jnp.mean(jnp.square(head(z_t, z_goal, emb) - chunks))


def _through_obstacle(chunks: np.ndarray) -> np.ndarray:
    """Per chunk: does a waypoint lie inside the obstacle (radius 0.5 at the origin)?"""
    return np.any(np.linalg.norm(chunks, axis=-1) < 0.5, axis=-1)


def test_flow_head_draws_both_modes_where_regression_averages_them():
    kw = dict(latent_dim=D, action_dim=2, num_embodiments=1, width=64, depth=2, heads=4, mlp_ratio=2.0,
              rngs=nnx.Rngs(0), scan=False)
    flow = flow_head.FlowActionHead(horizon=H, proprio_dim=2, **kw)
    _train(flow, _flow_loss)
    policy = PolicyHead(horizon=H, grid_hw=(1, 1), **kw)
    _train(policy, _regression_loss)

    n = 400
    z_t, z_goal, proprio, emb = _ctx(n)
    for method, steps in (("euler", 10), ("midpoint", 5)):
        drawn = np.asarray(jax.jit(lambda key, m=method, s=steps: flow_head.sample(
            flow, z_t, z_goal, proprio, emb, key, steps=s, method=m))(jax.random.key(1)))[:, 0]
        right = np.mean(drawn[:, 1, 0] > 0)  # which side the middle waypoint passes
        assert 0.3 <= right <= 0.7, (method, right)
        assert np.mean(_through_obstacle(drawn)) < 0.1, method
        near = np.minimum(np.abs(drawn - RIGHT).max(axis=(-2, -1)), np.abs(drawn - LEFT).max(axis=(-2, -1)))
        assert np.median(near) < 0.3, method  # each draw is one demonstration, not a blend
    mean_path = np.asarray(policy(z_t[:1], z_goal[:1], emb[:1]))[0, 0]
    assert _through_obstacle(mean_path[None]).all() and abs(mean_path[1, 0]) < 0.3


def test_sampler_integrates_a_known_velocity():
    """With a velocity that is exactly constant in x (what a perfectly trained head predicts for
    a one-point distribution at c: v = c - x_0, here checked through the head's own signature), one
    Euler step lands on c; the step count and method are validated."""

    class Const(nnx.Module):
        horizon, action_dim, bridge = 2, 3, None

        def __call__(self, z_t, z_goal, proprio, x, tau, emb, future=None):
            # On the straight path from x_0 to c, x_tau = (1 - tau) x_0 + tau c: v = (c - x) / (1 - tau).
            return (2.0 - x) / (1.0 - tau[..., None, None])

    z = jnp.zeros((3, 2, 1, 4))
    out = flow_head.sample(Const(), z, z, jnp.zeros((3, 2, 1)), jnp.zeros((3,), jnp.int32), jax.random.key(0),
                           steps=4, method="euler")
    np.testing.assert_allclose(np.asarray(out), 2.0, atol=1e-5)
    assert out.shape == (3, 2, 2, 3)
    with pytest.raises(ValueError, match="flow sampler 'heun'"):
        flow_head.sample(Const(), z, z, jnp.zeros((3, 2, 1)), jnp.zeros((3,), jnp.int32), jax.random.key(0),
                         steps=4, method="heun")
    with pytest.raises(ValueError, match="flow sampling steps must be >= 1"):
        flow_head.sample(Const(), z, z, jnp.zeros((3, 2, 1)), jnp.zeros((3,), jnp.int32), jax.random.key(0),
                         steps=0)


def _cfg(**extra):
    return tiny_config(**{"model.target": "online", "model.pool.kind": "mean", "model.pool.dim": 16,
                          "model.flow_head.depth": 1, "loss.flow": 1.0, **extra})


def test_flow_loss_trains_the_flow_head_and_the_encoder_only():
    cfg = _cfg()
    # AdaLN-zero blocks start as the identity, so at init the action tokens do not see the context
    # yet; a head that has trained a little passes gradient to z.
    model = _opened(WorldActionModel(cfg.model, rngs=nnx.Rngs(0)))
    batch = random_batch(cfg, labeled=2)
    _, metrics, grads = loss_and_grads(_only(cfg, "flow"))(model, model.make_target_encoder(), batch,
                                                           jax.random.key(0))
    assert float(metrics["loss/flow"]) > 0
    assert _max_abs(grads["flow_head"]) > 0 and _max_abs(grads["encoder"]) > 0
    assert _max_abs(grads["predictor"]) == 0.0 and _max_abs(grads["policy_head"]) == 0.0
    unlabeled = random_batch(cfg, labeled=0)  # no actions: the term and its gradient are zero
    _, metrics, grads = loss_and_grads(_only(cfg, "flow"))(model, model.make_target_encoder(), unlabeled,
                                                           jax.random.key(0))
    assert float(metrics["loss/flow"]) == 0.0 and _max_abs(grads["flow_head"]) == 0.0


def test_world_model_flow_policy_and_refused_configurations():
    from wam_jax.models import vag

    cfg = _cfg()
    model = WorldActionModel(cfg.model, rngs=nnx.Rngs(0))
    z = jnp.ones((2, 3, 1, 16))
    chunk = vag.flow_policy(model, z, z[:, 0], jax.random.key(0), steps=2)
    assert chunk.shape == (2, 3, cfg.model.policy_horizon, cfg.model.action_dim)
    other = vag.flow_policy(model, z, z[:, 0], jax.random.key(1), steps=2)
    assert not np.allclose(np.asarray(chunk), np.asarray(other))  # a draw, not a regression
    with pytest.raises(ValueError, match=r"'proprio' has shape \(2, 3\)"):
        vag.flow_policy(model, z, z[:, 0], jax.random.key(0), proprio=jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match="model.flow_head: expected depth >= 0"):
        WorldActionModel(_cfg(**{"model.flow_head.sampler": "rk4"}).model, rngs=nnx.Rngs(0))
    plain_cfg = _cfg(**{"model.flow_head.depth": 0})
    plain = WorldActionModel(plain_cfg.model, rngs=nnx.Rngs(0))
    assert plain.flow_head is None
    with pytest.raises(ValueError, match="this model has no flow head"):
        vag.flow_policy(plain, z, z[:, 0], jax.random.key(0))
    with pytest.raises(ValueError, match=r"loss.flow > 0 needs the flow head: set model.flow_head.depth"):
        loss_and_grads(_only(plain_cfg, "flow"))(plain, plain.make_target_encoder(), random_batch(plain_cfg),
                                                 jax.random.key(0))


def test_adaptive_pool_3d_bins_like_torch():
    """5 frames of a 2 x 2 grid to (2, 1, 1): frames 0-2 and 2-4 (overlapping bins), the grid averaged."""
    x = np.random.default_rng(0).normal(size=(3, 5, 4, 6)).astype(np.float32)
    out = np.asarray(flow_head.adaptive_pool_3d(jnp.asarray(x), (2, 2), (2, 1, 1)))
    np.testing.assert_allclose(out[:, 0], x[:, 0:3].mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out[:, 1], x[:, 2:5].mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
    same = np.asarray(flow_head.adaptive_pool_3d(jnp.asarray(x), (2, 2), (5, 2, 2)))
    np.testing.assert_allclose(same, x.reshape(3, 20, 6), rtol=1e-6)
    with pytest.raises(ValueError, match="do not form the 3 x 3 grid"):
        flow_head.adaptive_pool_3d(jnp.asarray(x), (3, 3), (1, 1, 1))


def _opened(model):
    """The flow head's AdaLN blocks moved off their zero init (as after some training), so the
    action tokens read the context."""
    blocks = nnx.state(model.flow_head.blocks, nnx.Param)
    nnx.update(model.flow_head.blocks, jax.tree.map(
        lambda x: x + 0.05 * jax.random.normal(jax.random.key(1), x.shape, x.dtype), blocks))
    return model


def test_paired_generation_is_self_consistent_and_the_bridge_is_read():
    from wam_jax.models import vag

    cfg = _cfg(**{"model.flow_head.bridge": (2, 1, 1), "model.flow_head.sample_steps": 3})
    model = _opened(WorldActionModel(cfg.model, rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(0)
    z_t, z_goal = (jnp.asarray(rng.normal(size=(2, 1, 16)), jnp.float32) for _ in range(2))
    latents, chunk = nnx.jit(lambda m, key: vag.generate_paired(m, z_t, z_goal, key))(model, jax.random.key(0))
    h, a = cfg.model.policy_horizon, cfg.model.action_dim
    assert latents.shape == (2, h, 1, 16) and chunk.shape == (2, h, a)
    # The pair: the predictor rolled out again under the returned actions gives the returned latents.
    again = model.rollout(z_t[:, None], model.embed_actions(chunk), k=h)
    np.testing.assert_allclose(np.asarray(again), np.asarray(latents), atol=1e-5)
    # Unknown proprio is one input: absent, or zeros under a false mask (the training loss's form).
    emb, p = jnp.zeros((2,), jnp.int32), cfg.model.proprio_dim
    absent = vag.imagine(model, z_t[:, None], chunk[:, None], emb)
    masked = vag.imagine(model, z_t[:, None], chunk[:, None], emb, jnp.full((2, 1, p), 3.0), jnp.zeros((2, 1, p), bool))
    np.testing.assert_allclose(np.asarray(masked), np.asarray(absent), atol=1e-6)
    np.testing.assert_allclose(np.asarray(absent[:, 0]), np.asarray(latents), atol=1e-5)
    # The bridge is read: other imagined futures, another velocity.
    x, tau = jnp.zeros((2, 1, h, a)), jnp.full((2, 1), 0.5)
    args = (z_t[:, None], z_goal[:, None], jnp.zeros((2, 1, cfg.model.proprio_dim)), x, tau, jnp.zeros((2,), jnp.int32))
    v_none = model.flow_head(*args)
    v_future = model.flow_head(*args, jnp.ones((2, 1, h, 1, 16)))
    assert float(jnp.max(jnp.abs(v_none - v_future))) > 1e-4
    np.testing.assert_allclose(np.asarray(model.flow_head(*args, jnp.zeros((2, 1, h, 1, 16)))), np.asarray(v_none))
    # Trained through the loss: the bridge's map learns, the predictor does not.
    _, metrics, grads = loss_and_grads(_only(cfg, "flow"))(model, model.make_target_encoder(), random_batch(cfg),
                                                           jax.random.key(0))
    assert float(metrics["loss/flow"]) > 0 and _max_abs(grads["flow_head"]["bridge_in"]) > 0
    assert _max_abs(grads["predictor"]) == 0.0


@pytest.fixture(scope="module")
def flow_workdir(tmp_path_factory) -> str:
    """A tiny workdir whose model has a flow head with the bridge."""
    from tests.test_world_model_api import make_tiny_workdir

    return make_tiny_workdir(str(tmp_path_factory.mktemp("flow")), steps=(1,), **{
        "model.flow_head.depth": 1, "model.flow_head.bridge": (2, 1, 1), "model.flow_head.sample_steps": 2})[0]


def test_world_model_samples_chunks_from_the_flow_head_and_wam_plan_runs_it(flow_workdir, tmp_path_factory):
    """`WorldModel.policy(sample=SEED)`: robot-unit chunks from the flow head (with the bridge and
    the agent's proprio), the same for the same seed and another for another; `wam-plan
    --baselines=flow` runs them in the PushT harness (with `--planner=off`, the heads alone); a
    model without the head says so."""
    from launch import plan
    from tests.test_world_model_api import one_device_mesh, shared_workdir
    from wam_jax import WorldModel

    workdir = flow_workdir
    wm = WorldModel.load(workdir, mesh=one_device_mesh())
    assert wm.has_flow_head
    space = wm.action_space()
    frames = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    z = wm.encode(frames)
    agent = np.full((space.proprio_dim,), 100.0, np.float32)
    a = wm.policy(z[0], z[1], sample=3, proprio=agent)
    assert a.shape == (wm.spec.policy_horizon, space.dim) and np.isfinite(a).all()
    np.testing.assert_array_equal(a, wm.policy(z[0], z[1], sample=3, proprio=agent))
    assert not np.allclose(a, wm.policy(z[0], z[1], sample=4, proprio=agent))
    assert wm.policy(z, z[1], sample=0).shape == (2, wm.spec.policy_horizon, space.dim)  # batched, no proprio
    record = plan.main(["pusht", f"--workdir={workdir}", "--episodes=1", "--budget=2", "--samples=8",
                        "--iterations=1", "--horizon=2", "--devices=1", "--baselines=flow",
                        f"--output={tmp_path_factory.mktemp('plan') / 'p.json'}"])
    assert record["results"]["flow policy"]["episodes"] == 1
    heads = plan.main(["pusht", f"--workdir={workdir}", "--episodes=1", "--budget=2", "--devices=1", "--planner=off",
                       "--baselines=flow,policy", f"--output={tmp_path_factory.mktemp('plan') / 'h.json'}"])
    assert set(heads["results"]) == {"flow policy", "policy"}  # the heads alone, no planner
    with pytest.raises(ValueError, match="--planner=off with --baselines=none"):
        plan.main(["pusht", f"--workdir={workdir}", "--planner=off", "--baselines=none"])
    plain = WorldModel.load(shared_workdir(tmp_path_factory)[0], mesh=one_device_mesh())
    assert not plain.has_flow_head
    with pytest.raises(ValueError, match="this model has no flow head"):
        plain.policy(z[0], z[1], sample=0)


def test_wam_replay_compares_imagined_and_real_latents(flow_workdir, tmp_path_factory, capsys):
    """`wam-replay pusht`: per horizon step, imagined vs real latents after executing the chunk,
    for the flow head's draws and the policy head's chunk, next to copy-last; closed-loop success
    of both with --budget; a model without a flow head is refused with the flag to set."""
    from launch import replay
    from tests.test_world_model_api import shared_workdir

    out = tmp_path_factory.mktemp("replay") / "r.json"
    record = replay.main(["pusht", f"--workdir={flow_workdir}", "--episodes=1", "--draws=2", "--budget=2",
                          f"--output={out}"])
    h = 4  # the tiny config's policy horizon
    flow, head = record["replay"]["flow head"], record["replay"]["policy head"]
    assert flow["num_chunks"] == 2 and head["num_chunks"] == 1
    for r in (flow, head):
        assert len(r["ratio"]) == h and all(c > 0 for c in r["copy_l1"])
        np.testing.assert_allclose(r["ratio"], np.asarray(r["imagined_l1"]) / np.asarray(r["copy_l1"]), rtol=1e-6)
    assert set(record["closed_loop"]) == {"flow policy", "policy"} and out.exists()
    assert "imagined vs real latents" in capsys.readouterr().out
    with pytest.raises(ValueError, match="has no flow head; train it with model.flow_head.depth"):
        replay.main(["pusht", f"--workdir={shared_workdir(tmp_path_factory)[0]}", "--episodes=1"])


def test_wam_eval_reports_the_flow_heads_action_error(flow_workdir):
    """`wam-eval` on a model with a flow head: one draw's first-action MAE per dim beside the
    policy head's, in the results and the printed table."""
    import os

    from wam_jax.inference import eval_report, evaluation

    robot = os.path.join(os.path.dirname(flow_workdir), "data", "robot")
    res = evaluation.evaluate(flow_workdir, data=robot, max_clips=16, plots=False)
    act = next(iter(res["action"].values()))
    assert len(act["flow_mae"]) == len(act["dims"]) and np.isfinite(act["flow_mae"]).all()
    assert act["flow_mae_mean"] > 0 and act["flow_mae"] != act["policy_mae"]
    assert "flow MAE" in eval_report.format_table(res)
