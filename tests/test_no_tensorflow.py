"""Training, evaluation and export run where TensorFlow is not installed (the base install);
RLDS conversion says it needs the `tf` extra. TensorFlow's absence is simulated in a fresh
process by blocking its import, which is what a missing package looks like to every importer."""

from __future__ import annotations

import glob
import os
import subprocess
import sys

import pytest

from tests import runtime_fixtures as rf

# Runs `launch.MODULE.run()` with argv, TensorFlow and TFDS unimportable.
_RUN = """
import sys
sys.modules["tensorflow"] = None
sys.modules["tensorflow_datasets"] = None
module, *argv = sys.argv[1:]
sys.argv = [module, *argv]
import importlib
importlib.import_module("launch." + module).run()
assert "tensorflow" not in {m.split(".")[0] for m, v in sys.modules.items() if v is not None}
"""


def _run(module: str, *argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    return subprocess.run([sys.executable, "-c", _RUN, module, *argv], cwd=rf.REPO, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.timeout(400)
def test_train_eval_export_without_tensorflow_and_tensorboard_scalars(tmp_path):
    from tensorboard.backend.event_processing import event_accumulator

    data = rf.write_dataset(str(tmp_path / "data"), num_episodes=6)
    work = str(tmp_path / "w")
    out = _run("train", "--config=configs/base.py:tiny", f"--workdir={work}", f"--config.data.mixture={data}",
               "--config.model.image_size=32", "--config.model.patch_size=8", "--config.model.action_dim=2",
               "--config.model.proprio_dim=2", "--config.data.num_frames=4", "--config.data.global_batch_size=4",
               "--config.train.num_steps=3", "--config.train.log_every=1")
    assert out.returncode == 0, out.stderr[-3000:]
    (events,) = glob.glob(os.path.join(work, "events.out.tfevents.*"))
    acc = event_accumulator.EventAccumulator(events)
    acc.Reload()
    assert [e.step for e in acc.Scalars("loss")] == [1, 2, 3]
    assert "hparams" in acc.Tags()["tensors"]
    out = _run("eval", f"--workdir={work}", f"--data={data}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert os.path.exists(os.path.join(work, "eval", "metrics.json"))
    for f in ("encoder.jax_export", "predictor.jax_export"):  # written at the end of training
        assert os.path.exists(os.path.join(work, "export", f))


def test_rlds_conversion_names_the_tf_extra(tmp_path):
    out = _run("convert", "oxe", f"--input={tmp_path}", f"--output={tmp_path}/o")
    assert out.returncode != 0
    assert "wam-convert oxe: RLDS data is read and written with TensorFlow Datasets" in out.stderr
    assert "'.[tf]'" in out.stderr
