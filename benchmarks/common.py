"""Shared benchmark script plumbing: command-line flags, configs, synthetic batches, markdown
tables and JSON results. The host set-up and environment record are in `host`, timing and the
matmul peak in `measure`.

Every benchmark script in this directory prints markdown tables (pasted into BENCHMARKS.md) and
writes one JSON file holding the same rows plus `host.environment()`: machine, versions, command
line and load average, so every number can be traced to how it was taken.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from host import HOST_TUNING, REPO

RESULTS_DIR = os.path.join("benchmarks", "results")  # relative to the repository root


# ---------------------------------------------------------------------------------------------
# Synthetic inputs
# ---------------------------------------------------------------------------------------------


def synthetic_batch(config: Any, global_batch: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Random arrays of the batch schema (`data_pipelines.schema.batch_spec`): uint8 noise video,
    unit-normal actions/proprio, every mask true, embodiment/source ids in range."""
    import numpy as np

    from data_pipelines import schema

    spec = schema.batch_spec(
        global_batch or int(config.data.global_batch_size), int(config.data.num_frames),
        int(config.model.image_size), int(config.model.action_dim), int(config.model.proprio_dim),
        int(config.model.privileged_dim),
    )
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {}
    for k, (shape, dtype) in spec.items():
        if dtype == np.uint8:
            out[k] = rng.integers(0, 256, shape, dtype=np.uint8)
        elif dtype == np.bool_:
            out[k] = np.ones(shape, np.bool_)
        elif k == "embodiment_id":
            out[k] = rng.integers(0, int(config.model.num_embodiments), shape).astype(dtype)
        elif k == "source_id":
            out[k] = rng.integers(0, int(config.model.get("num_sources", 8)), shape).astype(dtype)
        elif k == "dt":
            out[k] = np.full(shape, 0.1, dtype)
        else:
            out[k] = rng.standard_normal(shape).astype(dtype)
    return out


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------

Column = tuple[str, str, str]  # (key, header, format spec or "" for str())


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column]) -> str:
    """A markdown table; missing values print as an em dash."""

    def cell(row: Mapping[str, Any], key: str, fmt: str) -> str:
        v = row.get(key)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "—"
        if fmt:
            try:
                return format(v, fmt)
            except (TypeError, ValueError):
                return str(v)
        return str(v)

    head = "| " + " | ".join(h for _, h, _ in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(cell(r, k, f) for k, _, f in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def write_json(path: str, payload: Mapping[str, Any]) -> str:
    """Writes `payload` (plus nothing else) as indented JSON, creating the directory."""
    d = os.path.dirname(path)
    if d:
        os.makedirs(d, exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=1, default=_json_default)
        f.write("\n")
    return path


def _json_default(x: Any) -> Any:
    try:
        import numpy as np

        if isinstance(x, np.generic):
            return x.item()
        if isinstance(x, np.ndarray):
            return x.tolist()
    except ImportError:
        pass
    if dataclasses.is_dataclass(x):
        return dataclasses.asdict(x)
    return str(x)


def default_json_path(name: str, quick: bool) -> str:
    return os.path.join(RESULTS_DIR, f"{name}{'_quick' if quick else ''}.json")


def save_result(args: argparse.Namespace, name: str, result: Mapping[str, Any]) -> str:
    """Writes `result` to `--json` (default `benchmarks/results/NAME[_TAG][_quick].json`) and says
    where; the tag is `--tag` when the script has one."""
    tag = getattr(args, "tag", "")
    path = write_json(args.json or default_json_path(name + (f"_{tag}" if tag else ""), args.quick), result)
    print(f"\nwrote {path}")
    return path


# Model / data flags the train-step scripts share, applied when set: flag -> config key.
MODEL_OVERRIDES = {"image_size": "model.image_size", "patch_size": "model.patch_size",
                   "num_frames": "data.num_frames", "dtype": "model.dtype", "remat": "model.remat"}


def load_config(config_path: str | None, preset: str, args: argparse.Namespace) -> Any:
    """`get_config(preset)` of a config file (`--config`) or of `configs/base.py`, with the
    `MODEL_OVERRIDES` flags of `args` that are set (flags a script lacks count as unset)."""
    if config_path:
        import importlib.util

        spec = importlib.util.spec_from_file_location("bench_config", config_path)
        if spec is None or spec.loader is None:
            raise FileNotFoundError(f"--config={config_path}: not a Python config file")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        c = mod.get_config(preset)
    else:
        from configs import base

        c = base.get_config(preset)
    for flag, key in MODEL_OVERRIDES.items():
        value = getattr(args, flag, None)
        if value:
            section, field = key.split(".")
            c[section][field] = value
    return c


def base_parser(description: str, name: str) -> argparse.ArgumentParser:
    """Flags every script shares: --quick, --json, --max_load, --wait."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes and few repetitions (smoke test)")
    p.add_argument("--json", default=None, help=f"result file (default {RESULTS_DIR}/{name}.json)")
    p.add_argument("--max_load", type=float, default=0.0,
                   help="wait until the 1-min load average is below this before each timing (0: don't wait)")
    p.add_argument("--wait", type=float, default=300.0, help="longest wait for --max_load, seconds")
    p.add_argument("--host_tuning", action="store_true",
                   help=f"re-run with {HOST_TUNING} in the environment (huge pages, one BLAS thread)")
    return p


def parse_list(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def parse_shapes(s: str, fields: str) -> list[tuple[int, ...]]:
    """'8:256:6:64,4:256:12:64' -> [(8, 256, 6, 64), ...]; each shape must have `fields`'s parts
    (e.g. 'B:L:heads:head_dim'), else a ValueError naming --shapes."""
    want = len(fields.split(":"))
    shapes = [tuple(int(x) for x in part.split(":")) for part in parse_list(s)]
    for shape in shapes:
        if len(shape) != want:
            raise ValueError(f"--shapes: expected {fields}, got {':'.join(map(str, shape))!r}")
    return shapes


def parse_mapping(s: str, cast: Callable[[str], Any] = int) -> dict[str, Any]:
    """'tiny=8,S=4' -> {'tiny': 8, 'S': 4}."""
    out: dict[str, Any] = {}
    for part in parse_list(s):
        if "=" not in part:
            raise ValueError(f"expected NAME=VALUE pairs separated by commas, got {part!r} in {s!r}")
        k, v = part.split("=", 1)
        out[k.strip()] = cast(v.strip())
    return out


def run_json_subprocess(args: Sequence[str], *, env: Mapping[str, str] | None = None,
                        timeout: float = 1800) -> dict[str, Any]:
    """Runs `python ARGS` from the repository root; its last stdout line must be one JSON object."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, *args], cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout,
        check=False,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.splitlines()[-20:])
        raise RuntimeError(f"benchmark subprocess {' '.join(args)} failed (exit {proc.returncode}):\n{tail}")
    return json.loads(lines[-1])
