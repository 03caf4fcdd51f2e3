"""WorldModel: loading (workdir latest/step, export dir), robot-unit actions, shapes, planning, errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import runtime_fixtures as rf

_CACHE: dict[str, str] = {}


def make_tiny_workdir(root: str, *, steps: tuple[int, ...] = (1, 2), stats: bool = True,
                      **overrides) -> tuple[str, str]:
    """A training workdir written by the real init + `Checkpointer` (no train-step compile).

    Steps differ by random weight offsets (`_perturbed`), so they are distinguishable; `overrides`
    are dotted config paths (`rf.tiny_config`). Returns (workdir, mixture string of its fixture
    datasets).
    """
    from data_pipelines import loader
    from wam_jax.training import checkpointing
    from wam_jax.training import train_step as ts

    mix = rf.write_mixture(os.path.join(root, "data"))
    config = rf.tiny_config(mix, **overrides)
    mesh = one_device_mesh()
    defs, shardings, abstract = ts.abstract_train_state(config, mesh)
    tx = ts.make_tx(config, defs, abstract.params)
    state = ts.init_train_state(config, defs, tx, shardings).to_dict()
    workdir = os.path.join(root, "workdir")
    ck = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
    info = loader.mixture_info(config) if stats else None
    for k in steps:
        ck.save(k, _perturbed(state, k), None, config, info)
    ck.close()
    return workdir, mix


def _perturbed(state: dict, k: int) -> dict:
    """Step 1: the initial state; step k > 1: weights + 0.05 * (k - 1) * N(0, 1).

    Random (not constant) offsets, so zero-initialized output layers become non-trivial and the
    actions visibly condition the predictions; optimizer moments stay as initialized.
    """
    out = dict(state)
    for name in ("params", "model_state", "target"):
        leaves, treedef = jax.tree.flatten(state[name])
        keys = jax.random.split(jax.random.key(k), max(len(leaves), 1))
        leaves = [x + 0.05 * (k - 1) * jax.random.normal(kk, x.shape, x.dtype)
                  if jnp.issubdtype(x.dtype, jnp.floating) else x for x, kk in zip(leaves, keys, strict=False)]
        out[name] = jax.tree.unflatten(treedef, leaves)
    return out


def shared_workdir(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """One tiny workdir per test session, shared by the WorldModel, export and eval tests."""
    if "workdir" not in _CACHE:
        root = str(tmp_path_factory.mktemp("wam_tiny"))
        _CACHE["workdir"], _CACHE["mixture"] = make_tiny_workdir(root)
    return _CACHE["workdir"], _CACHE["mixture"]


def one_device_mesh():
    from wam_jax.inference.load import inference_mesh

    return inference_mesh(jax.devices()[:1])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> str:
    return shared_workdir(tmp_path_factory)[0]


@pytest.fixture(scope="module")
def wm(workdir):
    from wam_jax import WorldModel

    return WorldModel.load(workdir, mesh=one_device_mesh())


def _frames(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------------------------
# Loading


def test_load_latest_and_given_step(workdir, wm) -> None:
    from wam_jax import WorldModel

    assert wm.step == 2 and wm.kind == "checkpoint" and wm.has_predictor
    first = WorldModel.load(workdir, step=1, mesh=one_device_mesh())
    assert first.step == 1
    f = _frames(1)
    assert not np.allclose(np.asarray(first.encode(f)), np.asarray(wm.encode(f)))
    with pytest.raises(FileNotFoundError, match=r"no checkpoint for step 7; available steps: \[1, 2\]"):
        WorldModel.load(workdir, step=7)
    # Loading WORKDIR/checkpoints directly is the same checkpoint.
    same = WorldModel.load(os.path.join(workdir, "checkpoints"), mesh=one_device_mesh())
    np.testing.assert_array_equal(np.asarray(same.encode(f)), np.asarray(wm.encode(f)))


def test_config_and_statistics_come_from_the_checkpoint(wm) -> None:
    assert wm.image_size == 32 and wm.latent_shape == (16, 64)
    space = wm.action_space()
    assert space.embodiment == "square" and space.dim == 2 and space.stride == 1
    assert space.is_delta.tolist() == [True, True]
    assert space.q01 is not None and np.all(space.q01 < space.q99)
    assert space.action_names == ("vx", "vy")  # the dataset's per-dimension names
    assert space.proprio_names == ("proprio[0]", "proprio[1]")  # none recorded: indexed
    with pytest.raises(ValueError, match="unknown embodiment 'arm'"):
        wm.action_space("arm")


def test_missing_path_errors(tmp_path) -> None:
    from wam_jax import WorldModel

    with pytest.raises(FileNotFoundError, match="does not exist"):
        WorldModel.load(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        WorldModel.load(str(tmp_path / "empty"))


def test_checkpoint_without_statistics_is_a_clear_error(workdir, tmp_path) -> None:
    import orbax.checkpoint as ocp

    from wam_jax import WorldModel, config_utils
    from wam_jax.inference import load
    from wam_jax.inference.artifacts import MissingStatisticsError
    from wam_jax.training import checkpointing

    # A copy of the workdir whose step 2 was saved with `stats=None` (Checkpointer writes {}).
    copy = str(tmp_path / "nostats")
    shutil.copytree(workdir, copy)
    ck = checkpointing.Checkpointer(os.path.join(copy, "checkpoints"), async_save=False)
    state = ck.manager.restore(2, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    shutil.rmtree(os.path.join(copy, "checkpoints", "2"))
    ck.manager.reload()
    config = config_utils.restore_config(load.read_checkpoint_meta(workdir, 2)[1])
    ck.save(2, state, None, config, None)
    ck.close()
    with pytest.raises(MissingStatisticsError, match=r"checkpoints/2 has no dataset statistics"):
        WorldModel.load(copy, mesh=one_device_mesh())


# ------------------------------------------------------------------------------------------------
# Encoding


def test_encode_shapes_and_batching(wm) -> None:
    f = _frames(3)
    z = np.asarray(wm.encode(f))
    assert z.shape == (3, 16, 64) and z.dtype == np.float32
    np.testing.assert_allclose(np.asarray(wm.encode(f[1])), z[1], atol=1e-6)
    zb = np.asarray(wm.encode(np.stack([f, f[::-1]])))
    assert zb.shape == (2, 3, 16, 64)
    np.testing.assert_allclose(zb[0], z, atol=1e-6)
    np.testing.assert_allclose(zb[1], z[::-1], atol=1e-6)
    # Latents are layer-normed per token (the predictor's space).
    np.testing.assert_allclose(z.mean(-1), 0.0, atol=1e-4)
    np.testing.assert_allclose(z.std(-1), 1.0, atol=1e-2)


def test_wrong_frame_size_needs_resize(wm) -> None:
    from wam_jax.inference.artifacts import resize_frames

    big = _frames(2, size=48)
    with pytest.raises(ValueError, match=r"48x48 pixels but the model expects 32x32"):
        wm.encode(big)
    z = np.asarray(wm.encode(big, resize=True))
    np.testing.assert_allclose(z, np.asarray(wm.encode(resize_frames(big, 32))), atol=1e-6)
    with pytest.raises(ValueError, match="dtype float32; expected uint8"):
        wm.encode(big.astype(np.float32))
    with pytest.raises(ValueError, match=r"shape \(32, 32\)"):
        wm.encode(np.zeros((32, 32), np.uint8))


# ------------------------------------------------------------------------------------------------
# Prediction and actions in robot units


def _reference_rollout(wm, z_ctx: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """The model called directly with actions normalized exactly as the loader does."""
    from flax import nnx

    from data_pipelines import transforms

    space = wm.action_space()
    a = transforms.normalize_actions(actions, space.mean, space.std, space.is_delta, space.stride)

    @nnx.jit
    def run(model, z, a):
        cond = model.embed_actions(a, None, jnp.full((1,), space.embodiment_id, jnp.int32))
        if z.shape[1] > 1:
            cond = jnp.concatenate([model.infer_latent_actions(z), cond], axis=1)
        return model.rollout(z, cond, k=a.shape[1])

    return np.asarray(run(wm._model(), jnp.asarray(z_ctx)[None], jnp.asarray(a)[None])[0])


def test_predict_one_step_and_rollout_match_the_model(wm) -> None:
    z = np.asarray(wm.encode(_frames(3)))
    actions = np.array([[1.0, -0.5], [0.2, 2.0], [-1.5, 0.3]], np.float32)  # robot units
    one = np.asarray(wm.predict(z[-1], actions[0]))
    assert one.shape == (16, 64)
    roll = np.asarray(wm.predict(z[-1], actions))
    assert roll.shape == (3, 16, 64)
    np.testing.assert_allclose(roll[0], one, atol=1e-5)
    np.testing.assert_allclose(roll, _reference_rollout(wm, z[-1:], actions), atol=1e-5)
    # Context of two frames: the observed transition is conditioned on its latent action.
    ctx = np.asarray(wm.predict(z[:2], actions[:2]))
    np.testing.assert_allclose(ctx, _reference_rollout(wm, z[:2], actions[:2]), atol=1e-5)
    # Batched latents share unbatched actions.
    rb = np.asarray(wm.predict(np.stack([z[-1:], z[:1]]), actions))
    assert rb.shape == (2, 3, 16, 64)
    np.testing.assert_allclose(rb[0], roll, atol=1e-5)
    # Actions really condition the prediction.
    other = np.asarray(wm.predict(z[-1], actions[0] + 3.0))
    assert np.abs(other - one).max() > 1e-4
    with pytest.raises(ValueError, match=r"expected \[\.\.\., 2\]"):
        wm.predict(z[-1], np.zeros(3))


def test_inverse_dynamics_and_policy_in_robot_units(wm) -> None:
    from data_pipelines import transforms

    space = wm.action_space()
    z = np.asarray(wm.encode(_frames(3)))
    a = wm.infer_actions(z)
    assert a.shape == (2, 2)
    model = wm._model()
    raw = np.asarray(model.inverse_dynamics(jnp.asarray(z[None, :-1]), jnp.asarray(z[None, 1:]),
                                            jnp.zeros((1,), jnp.int32)))[0]
    expected = transforms.denormalize_actions(raw, space.mean, space.std, space.is_delta, space.stride)
    np.testing.assert_allclose(a, expected, rtol=1e-5, atol=1e-5)
    chunk = wm.policy(z[0], z[-1])
    assert chunk.shape == (wm.config.model.policy_horizon, 2)
    assert wm.policy(z[:2], z[1:]).shape == (2, wm.config.model.policy_horizon, 2)
    assert wm.latent_actions(z).shape == (2, wm.config.model.latent_action.dim)


def test_action_space_round_trip() -> None:
    from wam_jax.inference.action_space import ActionSpace

    space = ActionSpace(embodiment="arm", embodiment_id=1, source="s", dim=2, model_dim=4,
                        mean=np.array([0.1, 2.0], np.float32), std=np.array([0.5, 1.0], np.float32),
                        q01=None, q99=None, is_delta=np.array([True, False]), stride=3)
    a = np.array([[0.6, 2.5], [-0.3, 1.0]], np.float32)
    x, mask = space.normalize(a)
    assert x.shape == mask.shape == (2, 4)
    assert mask[:, :2].all() and not mask[:, 2:].any()
    np.testing.assert_allclose(x[0, :2], [(0.6 - 0.3) / 1.5, 0.5], rtol=1e-6)  # delta dim: stride-summed
    np.testing.assert_allclose(space.denormalize(x), a, rtol=1e-5, atol=1e-6)
    b = space.bounds()  # no quantiles: mean ± 3 std, normalized
    np.testing.assert_allclose(np.asarray(b.lower), [-3.0, -3.0], atol=1e-5)


# ------------------------------------------------------------------------------------------------
# Planning


def test_plan_energy_matches_public_predict(wm) -> None:
    from wam_jax.inference import planning

    f = _frames(2, seed=3)
    cfg = planning.PlannerConfig(num_samples=32, num_elites=4, num_iterations=3, horizon=2)
    res = wm.plan(f[0], f[1], preset=cfg, key=0)
    space = wm.action_space()
    assert res.actions.shape == res.best_actions.shape == (2, 2)
    # Robot units, inside the dataset's q01/q99 box.
    assert np.all(res.actions >= space.q01 - 1e-4) and np.all(res.actions <= space.q99 + 1e-4)
    # The planner's energy of its best sequence is the L1 the public API gives for it.
    z0, zg = np.asarray(wm.encode(f[0])), np.asarray(wm.encode(f[1]))
    final = np.asarray(wm.predict(z0, res.best_actions))[-1]
    np.testing.assert_allclose(float(res.best_energy), np.abs(final - zg).mean(), rtol=1e-4)
    # Warm start in robot units is accepted; a wrong shape is rejected.
    wm.plan(f[0], f[1], preset=cfg, key=1, init_mean=res.actions)
    with pytest.raises(ValueError, match=r"init_mean has shape \(3, 2\); expected \[H, A\] = \[2, 2\]"):
        wm.plan(f[0], f[1], preset=cfg, init_mean=np.zeros((3, 2)))


def test_plan_with_context_proprio_scores_the_rollout_the_public_predict_gives(wm) -> None:
    """The planner's rollouts get the robot's proprio beside the context frame, as in training."""
    from wam_jax.inference import planning

    f = _frames(2, seed=5)
    cfg = planning.PlannerConfig(num_samples=32, num_elites=4, num_iterations=3, horizon=2)
    z0, zg = np.asarray(wm.encode(f[0])), np.asarray(wm.encode(f[1]))
    proprio = np.asarray(wm.action_space().proprio_mean) + 3.0
    res = wm.plan_latents(z0, zg, preset=cfg, key=0, context_proprio=proprio)
    with_p = np.asarray(wm.predict(z0, res.best_actions, proprio=proprio[None]))[-1]
    without = np.asarray(wm.predict(z0, res.best_actions))[-1]
    np.testing.assert_allclose(float(res.best_energy), np.abs(with_p - zg).mean(), rtol=1e-4)
    assert not np.allclose(with_p, without)  # the proprio reaches the prediction
    with pytest.raises(ValueError, match=r"context_proprio has shape \(2, 2\); expected \[P\] or \[C, P\] with C=1"):
        wm.plan_latents(z0, zg, preset=cfg, context_proprio=np.zeros((2, 2)))


def test_goal_image_of_wrong_size_is_rejected(wm) -> None:
    from wam_jax.inference import planning

    cfg = planning.PlannerConfig(num_samples=8, num_elites=2, num_iterations=1, horizon=2)
    with pytest.raises(ValueError, match=r"goal image are 40x40 pixels but the model expects 32x32"):
        wm.plan(_frames(1)[0], _frames(1, size=40)[0], preset=cfg)
    with pytest.raises(ValueError, match=r"goal has shape \(2, 32, 32, 3\); expected one uint8 image"):
        wm.plan(_frames(1)[0], _frames(2), preset=cfg)


# ------------------------------------------------------------------------------------------------
# Export directories


@pytest.fixture(scope="module")
def export_dirs(workdir, tmp_path_factory):
    from wam_jax.inference import export

    root = tmp_path_factory.mktemp("exports")
    full = str(root / "full")
    enc = str(root / "encoder_only")
    export.export_model(workdir, full, with_predictor=True, platforms=("cpu",))
    export.export_model(workdir, enc, platforms=("cpu",))
    return full, enc


def test_load_from_export_dir(wm, export_dirs) -> None:
    from wam_jax import WorldModel

    full, enc = export_dirs
    f = _frames(2)
    a = np.array([[0.5, -0.5]], np.float32)
    wf = WorldModel.load(full, mesh=one_device_mesh())
    assert wf.kind == "export" and wf.step == 2 and wf.has_predictor
    np.testing.assert_array_equal(np.asarray(wf.encode(f)), np.asarray(wm.encode(f)))
    z = np.asarray(wm.encode(f))
    np.testing.assert_allclose(np.asarray(wf.predict(z[0], a)), np.asarray(wm.predict(z[0], a)), atol=1e-6)
    np.testing.assert_allclose(wf.infer_actions(z), wm.infer_actions(z), atol=1e-6)
    we = WorldModel.load(enc, mesh=one_device_mesh())
    assert not we.has_predictor
    np.testing.assert_array_equal(np.asarray(we.encode(f)), np.asarray(wm.encode(f)))
    with pytest.raises(ValueError, match="encoder-only export; re-export with `wam-export --with_predictor`"):
        we.predict(z[0], a)
    with pytest.raises(ValueError, match="export directory"):
        WorldModel.load(full, step=1)


def test_missing_and_partial_export_dirs(export_dirs, tmp_path) -> None:
    from wam_jax import WorldModel
    from wam_jax.inference import artifacts, export
    from wam_jax.inference.artifacts import IncompleteExportError

    _, enc = export_dirs
    broken = str(tmp_path / "broken")
    shutil.copytree(enc, broken)
    os.remove(os.path.join(broken, artifacts.ENCODER_SAFETENSORS))
    with pytest.raises(IncompleteExportError, match=r"is partial: missing \['encoder.safetensors'\]"):
        WorldModel.load(broken)
    os.remove(os.path.join(broken, artifacts.EXPORT_JSON))  # interrupted before the manifest
    with pytest.raises(IncompleteExportError, match="has no export.json"):
        WorldModel.load(broken)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export.load_encoder(str(tmp_path / "missing"))


_LOAD_SCRIPT = r"""
import json, sys
import jax, numpy as np
from wam_jax import WorldModel
from wam_jax.inference import planning
from wam_jax.inference.load import inference_mesh

frames = np.zeros((2, 32, 32, 3), np.uint8)
for path in sys.argv[1:]:
    wm = WorldModel.load(path, mesh=inference_mesh(jax.devices()[:1]))
    z = wm.encode(frames)
    if wm.has_predictor:
        wm.predict(z[-1], np.zeros(2, np.float32))
        wm.plan(frames[0], frames[1], preset=planning.PlannerConfig(num_samples=4, num_elites=2,
                                                                    num_iterations=1, horizon=1))
print(json.dumps(sorted(m for m in sys.modules if m.startswith("wam_jax.training"))))
"""


def test_loading_for_inference_builds_no_optimizer(workdir, export_dirs) -> None:
    """Loading, encoding, predicting and planning import neither the train step nor the optimizer
    module (optax itself is imported by `flax.nnx`, so only our optimizer code can be absent)."""
    full, enc = export_dirs
    proc = subprocess.run([sys.executable, "-c", _LOAD_SCRIPT, workdir, full, enc], env=rf.cli_env(num_devices=1),
                          cwd=rf.REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    training = json.loads(proc.stdout.strip().splitlines()[-1])
    forbidden = {f"wam_jax.training.{m}" for m in ("train_step", "optim", "objectives", "trainer")}
    assert not forbidden & set(training), training
