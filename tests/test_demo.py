"""`./wam demo` re-run after a recipe (or data-size) change starts afresh instead of reusing the old run."""

from __future__ import annotations

from launch import demo
from tests import runtime_fixtures as rf
from wam_jax import config_utils

rf.enable_compile_cache()
session_mixture = rf.session_mixture  # shared session fixtures
session_config_file = rf.session_config_file
reference_run = rf.reference_run


def test_recipe_changes_name_what_differs_from_the_saved_run(tmp_path, session_config_file, reference_run):
    workdir, _ = reference_run
    assert demo.recipe_changes(workdir, config_utils.load_config(session_config_file)) == []
    # Operational settings (steps, logging, mesh) do not make another recipe; the loss does.
    same = config_utils.load_config(session_config_file, ["--config.train.num_steps=99", "--config.mesh.ici_data=1"])
    assert demo.recipe_changes(workdir, same) == []
    other = config_utils.load_config(session_config_file, ["--config.loss.policy=0.5", "--config.seed=3"])
    assert demo.recipe_changes(workdir, other) == ["loss.policy", "seed"]
    assert demo.recipe_changes(str(tmp_path / "fresh"), other) == []  # nothing saved: nothing to compare
