"""Every entry point answers `--help` with its usage and exit status 0, and is a console script."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib

import pytest

from tests import runtime_fixtures as rf

# console script -> (module, flags its usage must list)
ENTRY_POINTS = {
    "wam-train": ("launch.train", ("--config", "--workdir", "--config.a.b")),
    "wam-convert": ("launch.convert", ("oxe", "ego4d", "pusht")),
    "wam-eval": ("launch.eval", ("--workdir", "--data")),
    "wam-export": ("launch.export", ("--workdir", "--output")),
    "wam-plan": ("launch.plan", ("--workdir", "--episodes")),
    "wam-replay": ("launch.replay", ("--workdir", "--draws", "--budget")),
    "wam-synth": ("launch.synthesize", ("--workdir", "--source", "--output", "--goal_steps")),
    "wam-compile": ("launch.compile", ("--config", "--topology")),
}


def _help(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args, "--help"], cwd=rf.REPO, env=rf.cli_env(1),
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("script", sorted(ENTRY_POINTS))
def test_help_prints_usage_and_exits_0(script):
    module, flags = ENTRY_POINTS[script]
    out = _help(module)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith(f"usage: {script} "), out.stdout[:300]
    for flag in flags:
        assert flag in out.stdout, (flag, out.stdout)
    assert "Traceback" not in out.stderr


def test_help_wins_over_missing_required_flags():
    """`--help` next to an incomplete command line still prints the usage (no 'is required')."""
    out = _help("launch.train", "--config.train.num_steps=3")
    assert out.returncode == 0 and out.stdout.startswith("usage: wam-train ")
    out = _help("launch.compile", "--config=configs/pusht_small.py")
    assert out.returncode == 0 and out.stdout.startswith("usage: wam-compile ")


def test_every_entry_point_is_a_console_script():
    with open(os.path.join(rf.REPO, "pyproject.toml"), "rb") as f:
        scripts = tomllib.load(f)["project"]["scripts"]
    assert scripts == {name: f"{module}:run" for name, (module, _) in ENTRY_POINTS.items()}
