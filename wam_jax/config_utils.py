"""Config files as code: loading `configs/*.py[:arg]`, checking overrides, validating values.

ml_collections does the parsing (`config_flags.DEFINE_config_file`); this module turns its
failure modes (missing file, a Python error in the file, an unknown `--config.a.b` key, a value of
the wrong type) into one `ConfigError` that names the file / key and what was expected.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections as mlc


class ConfigError(ValueError):
    """A config file or `--config.*` override is unusable; the message says which and why."""


def split_config_arg(spec: str) -> tuple[str, str | None]:
    """'configs/pretrain.py:variant=L' -> ('configs/pretrain.py', 'variant=L')."""
    path, sep, arg = spec.partition(".py:")
    if sep:
        return path + ".py", arg
    return spec, None


def check_config_file(spec: str) -> None:
    """Loads the config file once to turn its failures into a clear ConfigError."""
    path, arg = split_config_arg(spec)
    if not path.endswith(".py"):
        raise ConfigError(f"--config={spec}: expected a Python config file (configs/NAME.py[:ARG])")
    if not os.path.isfile(path):
        raise ConfigError(f"--config={spec}: config file {path!r} does not exist (cwd {os.getcwd()})")
    module_spec = importlib.util.spec_from_file_location("_wam_config_check", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as e:
        raise ConfigError(f"config file {path!r} is not valid Python: {e.msg} (line {e.lineno})") from e
    except Exception as e:
        raise ConfigError(f"config file {path!r} failed to import: {type(e).__name__}: {e}") from e
    if not callable(getattr(module, "get_config", None)):
        raise ConfigError(f"config file {path!r} defines no get_config(arg) function")
    try:
        config = module.get_config(arg) if arg is not None else module.get_config()
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(f"config file {path!r}: get_config({arg!r}) failed: {type(e).__name__}: {e}") from e
    if not isinstance(config, mlc.ConfigDict):
        raise ConfigError(f"config file {path!r}: get_config() returned {type(config).__name__}, expected a ConfigDict")


def check_overrides(config: mlc.ConfigDict, argv: Sequence[str], flag: str = "config") -> None:
    """Every `--config.a.b=...` must name an existing key; suggests the closest ones otherwise."""
    prefix = f"--{flag}."
    for arg in argv:
        if not arg.startswith(prefix):
            continue
        key = arg[len(prefix):].split("=", 1)[0]
        node: Any = config
        walked = []
        for part in key.split("."):
            if isinstance(node, mlc.ConfigDict | Mapping) and part in node:
                node = node[part]
                walked.append(part)
                continue
            parent = ".".join(walked) or "<root>"
            options = sorted(node.keys()) if isinstance(node, mlc.ConfigDict | Mapping) else []
            close = difflib.get_close_matches(part, options, n=3)
            hint = f"; did you mean {', '.join('.'.join([*walked, c]) for c in close)}?" if close else ""
            raise ConfigError(
                f"unknown config key {key!r} in {arg!r}: {parent} has no field {part!r}"
                f" (fields: {', '.join(options) if options else 'none, it is a value'}){hint}"
            )


def validate(config: mlc.ConfigDict) -> None:
    """Value checks the runtime relies on, with the flag to fix in every message."""

    def need(cond: bool, key: str, msg: str) -> None:
        if not cond:
            raise ConfigError(f"--config.{key}={_get(config, key)!r}: {msg}")

    need(int(config.train.num_steps) > 0, "train.num_steps", "must be > 0")
    need(int(config.train.log_every) > 0, "train.log_every", "must be > 0")
    need(int(config.train.checkpoint_every) >= 0, "train.checkpoint_every", "must be >= 0 (0 = only at the end)")
    need(int(config.train.max_to_keep) >= 1, "train.max_to_keep", "must be >= 1")
    need(int(config.data.global_batch_size) > 0, "data.global_batch_size", "must be > 0")
    need(int(config.optim.grad_accum) >= 1, "optim.grad_accum", "must be >= 1")
    need(int(config.data.num_frames) >= 2, "data.num_frames", "must be >= 2 (a clip has T-1 transitions)")
    need(bool(str(config.data.mixture).strip()), "data.mixture",
         "is empty; set it to converted datasets 'DIR[:weight],DIR[:weight]' (see `wam-convert`)")
    need(str(config.model.dtype) in ("float32", "bfloat16", "float16"), "model.dtype",
         "expected 'float32', 'bfloat16' or 'float16'")
    need(str(config.model.target) in ("ema", "frozen"), "model.target", "expected 'ema' or 'frozen'")


def _get(config: Any, dotted: str) -> Any:
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def flat_hparams(config: mlc.ConfigDict, prefix: str = "") -> dict[str, Any]:
    """Flattened scalar config values (TensorBoard hparams)."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        name = f"{prefix}{k}"
        if isinstance(v, mlc.ConfigDict | Mapping):
            out.update(flat_hparams(v, name + "."))
        elif isinstance(v, bool | int | float | str):
            out[name] = v
        else:
            out[name] = str(v)
    return out
