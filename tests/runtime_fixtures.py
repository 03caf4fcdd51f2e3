"""Shared fixtures of the runtime tests: tiny converted datasets and tiny train configs.

The datasets are written in the real converted format (`data_pipelines.records.ShardWriter`,
`dataset.json`, `stats.json`): a square moving on a plain background, its velocity as the
action and its position as proprio, so the loader, the model and the loss all see real data.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

import numpy as np
from PIL import Image

from data_pipelines import records

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Persistent XLA cache shared by the runtime tests and their subprocesses: the same tiny train
# step is compiled by several tests (and by every run of the kill/resume test).
COMPILE_CACHE = os.path.join(tempfile.gettempdir(), "wam_jax_test_xla_cache")


def enable_compile_cache() -> None:
    import jax

    os.makedirs(COMPILE_CACHE, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", COMPILE_CACHE)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def _jpeg(frame: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def moving_square_episode(rng: np.random.Generator, length: int, size: int) -> tuple[list[bytes], np.ndarray, np.ndarray]:
    """JPEG frames of a square bouncing around, float32 actions [T, 2] (velocity), proprio [T, 2].

    The square moves by an odd number of pixels per axis every frame (reflected at the walls, which
    an odd step can never cancel), so no two consecutive frames are identical: a static transition
    makes the latent-action path numerically ill-conditioned (see the runtime report), which would
    turn the exact 1-vs-8-device comparisons into a test of rounding noise.
    """
    side = max(3, size // 4)  # wider than what a random resized crop (area >= 0.8) can cut off
    hi = size - side
    pos = rng.integers(0, hi + 1, 2)
    vel = rng.choice([-3, -1, 1, 3], 2)
    bg = rng.integers(0, 80, 3)
    color = rng.integers(150, 256, 3)
    frames, actions, proprio = [], [], []
    for _ in range(length):
        img = np.empty((size, size, 3), np.uint8)
        img[:] = bg
        img[pos[0] : pos[0] + side, pos[1] : pos[1] + side] = color
        frames.append(_jpeg(img))
        proprio.append(pos / size)
        if rng.random() < 0.3:
            vel = rng.choice([-3, -1, 1, 3], 2)
        nxt = pos + vel
        for d in range(2):
            if nxt[d] > hi:
                nxt[d], vel[d] = 2 * hi - nxt[d], -vel[d]
            elif nxt[d] < 0:
                nxt[d], vel[d] = -nxt[d], -vel[d]
        actions.append((nxt - pos).astype(np.float32))
        pos = nxt
    return frames, np.asarray(actions, np.float32), np.asarray(proprio, np.float32)


def write_dataset(
    directory: str,
    *,
    kind: str = "robot",
    num_episodes: int = 6,
    length: int = 12,
    image_size: int = 32,
    fps: float = 10.0,
    seed: int = 0,
    num_shards: int = 2,
    name: str | None = None,
) -> str:
    """A converted dataset (robot: actions + proprio; video: frames only) under `directory`."""
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    shards = [records.shard_name(i, num_shards) for i in range(num_shards)]
    writers = [records.ShardWriter(os.path.join(directory, s)) for s in shards]
    all_a, all_p = [], []
    total = 0
    for e in range(num_episodes):
        frames, actions, proprio = moving_square_episode(rng, length, image_size)
        robot = kind == "robot"
        ep = records.Episode(
            episode_id=f"{name or kind}-{e:04d}",
            frames=frames,
            action=actions if robot else None,
            proprio=proprio if robot else None,
            language="push the square" if robot else "",
            fps=fps,
            meta={"source": "runtime_fixtures"},
        )
        writers[e % num_shards].write(ep)
        total += length
        if robot:
            all_a.append(actions)
            all_p.append(proprio)
    for w in writers:
        w.close()

    def stat(x: np.ndarray) -> dict[str, list[float]]:
        return {
            "mean": x.mean(0).tolist(),
            "std": x.std(0).tolist(),
            "q01": np.quantile(x, 0.01, axis=0).tolist(),
            "q99": np.quantile(x, 0.99, axis=0).tolist(),
        }

    robot = kind == "robot"
    info = {
        "format": records.FORMAT_NAME,
        "version": records.FORMAT_VERSION,
        "name": name or f"square_{kind}",
        "kind": kind,
        "embodiment": "square" if robot else "none",
        "num_episodes": num_episodes,
        "num_frames": total,
        "image_size": [image_size, image_size],
        "fps": fps,
        "action_dim": 2 if robot else 0,
        "proprio_dim": 2 if robot else 0,
        "action_keys": ["vx", "vy"] if robot else [],
        "action_is_delta": [True, True] if robot else [],
        "shards": shards,
    }
    records.write_json_atomic(os.path.join(directory, records.DATASET_JSON), info)
    stats = {
        "action": stat(np.concatenate(all_a)) if robot else None,
        "proprio": stat(np.concatenate(all_p)) if robot else None,
    }
    records.write_json_atomic(os.path.join(directory, records.STATS_JSON), stats)
    records.write_json_atomic(
        os.path.join(directory, records.MANIFEST_JSON),
        {"num_episodes": num_episodes, "skipped": [], "source": "tests/runtime_fixtures.py"},
    )
    return directory


def loader_batches(config, n: int) -> list[dict[str, np.ndarray]]:
    """The first `n` host batches of `config`'s training stream (process 0 of 1)."""
    from data_pipelines import loader

    it = loader.make_iterator(config, split="train", process_index=0, process_count=1, seed=int(config.seed))
    try:
        return [next(it) for _ in range(n)]
    finally:
        it.close()


def write_mixture(root: str, image_size: int = 32) -> str:
    """A labeled robot dataset plus a video-only one; returns the `config.data.mixture` string."""
    robot = write_dataset(os.path.join(root, "robot"), kind="robot", image_size=image_size, seed=1)
    video = write_dataset(os.path.join(root, "video"), kind="video", image_size=image_size, seed=2)
    return f"{robot}:0.5,{video}:0.5"


def tiny_config(mixture: str, **overrides):
    """The `tiny` preset at 32x32, 4 frames, on a 2x4 data x fsdp mesh.

    `num_steps` stays 8 in every test (the schedules are compiled in as constants), so all
    tests share one compiled step through the persistent cache; tests run fewer steps by
    calling the step themselves or stop early.
    """
    from configs import base

    c = base.get_config("tiny")
    c.model.image_size = 32
    c.model.patch_size = 8
    c.model.action_dim = 2
    c.model.proprio_dim = 2
    c.data.mixture = mixture
    c.data.num_frames = 4
    c.data.global_batch_size = 8
    c.data.num_workers = 0
    c.data.prefetch = 2
    c.optim.warmup_steps = 2
    c.optim.lr = 1e-3
    c.mesh.ici_data = 2
    c.mesh.ici_fsdp = 4
    c.train.num_steps = 8
    c.train.log_every = 1
    c.train.checkpoint_every = 3
    c.train.export_at_end = False
    for key, value in overrides.items():
        node = c
        parts = key.split(".")
        for p in parts[:-1]:
            node = node[p]
        node[parts[-1]] = value
    return c


def write_config_file(path: str, config) -> str:
    """A config file (Python, `get_config()`) reproducing `config`, for CLI / subprocess tests."""
    with open(path, "w") as f:
        f.write(
            '"""Test config written by tests/runtime_fixtures.py."""\n'
            "import json\nimport ml_collections\n\n"
            f"_JSON = {config.to_json_best_effort()!r}\n\n"
            "def _tuples(x):\n"
            "    return {k: _tuples(v) for k, v in x.items()} if isinstance(x, dict) else "
            "tuple(x) if isinstance(x, list) else x\n\n"
            "def get_config(arg=None):\n"
            "    return ml_collections.ConfigDict(_tuples(json.loads(_JSON)))\n"
        )
    return path


def cli_env(num_devices: int = 8, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["JAX_PLATFORMS"] = "cpu"
    flags = " ".join(f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f)
    env["XLA_FLAGS"] = (flags + f" --xla_force_host_platform_device_count={num_devices}").strip()
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env["JAX_COMPILATION_CACHE_DIR"] = COMPILE_CACHE
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "1"
    env.update(extra or {})
    return env


def run_cli(args: Sequence[str], *, num_devices: int = 8, timeout: float = 300, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess:
    """`python -m launch.train ARGS` in a subprocess (own device count), output captured."""
    return subprocess.run(
        [sys.executable, "-m", "launch.train", *args],
        cwd=REPO,
        env=env or cli_env(num_devices),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def losses(workdir: str) -> dict[int, float]:
    """step -> loss from WORKDIR/metrics.jsonl."""
    out = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            rec = json.loads(line)
            if "loss" in rec:
                out[int(rec["step"])] = float(rec["loss"])
    return out


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, interval: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return False


# ---------------------------------------------------------------------------------------------
# A deliberately small model honouring the model contract (encoder + make_target_encoder +
# ema_source + trainable_filter), for tests of the step's mechanics (gradient accumulation)
# that must compare exact per-example-mean losses. Everything else runs the real model.
# ---------------------------------------------------------------------------------------------


def _tiny_linear(din: int, dout: int, names, rngs):
    from flax import nnx

    return nnx.Linear(din, dout, kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(), names),
                      rngs=rngs)


def make_mechanics_model(model_cfg, rngs):
    """Patch-linear encoder + action-conditioned linear predictor; loss: L1 to the next target."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from wam_jax import sharding

    class Encoder(nnx.Module):
        def __init__(self, cfg, rngs):
            d, p = cfg.encoder.width, cfg.patch_size
            self.p = p
            self.inp = _tiny_linear(p * p * 3, d, ("patch", "embed"), rngs)
            self.out = _tiny_linear(d, d, ("embed", "mlp"), rngs)

        def __call__(self, video):
            b, t, h, w, c = video.shape
            p = self.p
            x = video.astype(jnp.float32) / 255.0
            x = x.reshape(b, t, h // p, p, w // p, p, c).transpose(0, 1, 2, 4, 3, 5, 6)
            x = x.reshape(b, t, (h // p) * (w // p), p * p * c)
            x = sharding.constrain(self.inp(x), ("batch", "time", "tokens", "embed"))
            return self.out(jax.nn.gelu(x))

    class MechanicsModel(nnx.Module):
        def __init__(self, cfg, rngs):
            self.encoder = Encoder(cfg, rngs)
            d = cfg.encoder.width
            self.act = _tiny_linear(cfg.action_dim, d, ("act", "embed"), rngs)
            self.pred = _tiny_linear(d, d, ("embed", "mlp"), rngs)

        def make_target_encoder(self):
            return nnx.clone(self.encoder)

        def ema_source(self):
            return self.encoder

    return MechanicsModel(model_cfg, rngs)


def mechanics_loss_fn(model, target, batch, key, loss_cfg, step):
    """Mean over examples of an L1 prediction error (so micro-batch means average exactly)."""
    import jax
    import jax.numpy as jnp

    z = model.encoder(batch["video"])
    zt = jax.lax.stop_gradient(target(batch["video"]))
    a = model.act(batch["action"])[:, :, None, :]
    err = jnp.abs(model.pred(z[:, :-1] + a) - zt[:, 1:]).mean()
    return err, {"loss/tf": err}


# ---------------------------------------------------------------------------------------------
# Session fixtures (import them into a test module to use them): one dataset, one config file
# and one uninterrupted reference run shared by the end-to-end and multi-process tests.
# ---------------------------------------------------------------------------------------------

try:
    import pytest
except ImportError:  # the fixtures module is also importable outside pytest
    pytest = None

if pytest is not None:

    @pytest.fixture(scope="session")
    def session_mixture(tmp_path_factory) -> str:
        return write_mixture(str(tmp_path_factory.mktemp("runtime_data")))

    @pytest.fixture(scope="session")
    def session_config_file(tmp_path_factory, session_mixture) -> str:
        return write_config_file(str(tmp_path_factory.mktemp("runtime_cfg") / "tiny.py"), tiny_config(session_mixture))

    @pytest.fixture(scope="session")
    def reference_run(tmp_path_factory, session_config_file):
        """`python -m launch.train` on 1 process x 8 devices, uninterrupted: (workdir, completed process)."""
        workdir = str(tmp_path_factory.mktemp("reference_run"))
        out = run_cli([f"--config={session_config_file}", f"--workdir={workdir}"], timeout=900)
        assert out.returncode == 0, out.stderr[-3000:]
        return workdir, out
