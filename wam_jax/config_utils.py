"""Config files as code: loading `configs/*.py[:arg]`, applying overrides, validating values.

    config = load_config("configs/pusht_small.py", ["--config.train.num_steps=50"])
    validate(config)

The file runs once. ml_collections parses the `--config.a.b=value` overrides (by the type of the
field they replace); this module turns every failure (missing file, a Python error in the file,
an unknown key, a value of the wrong type, a value out of range) into one `ConfigError` that names
the file / flag and what was expected. `restore_config` rebuilds the config of a saved run in
today's layout.
"""

from __future__ import annotations

import argparse
import difflib
import importlib.util
import math
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections as mlc

_OVERRIDE = re.compile(r"^--?(no)?config\.")


class ConfigError(ValueError):
    """A config file or `--config.*` override is unusable; the message says which and why."""


class FlagParser(argparse.ArgumentParser):
    """argparse for the entry points that take a config: a bad flag raises ConfigError (one line,
    exit status 2 in the entry points' `run`) instead of printing usage and exiting."""

    def __init__(self, prog: str, description: str | None, epilog: str) -> None:
        super().__init__(prog=prog, description=description, epilog=epilog, allow_abbrev=False,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
        self.add_argument("--config", metavar="configs/NAME.py[:ARG]", help="experiment config file (required)")

    def error(self, message: str):
        raise ConfigError(message)

    def parse(self, argv: Sequence[str]) -> tuple[list[str], argparse.Namespace]:
        """(`--config.a.b=...` overrides, the other flags) of argv (program name first); --config
        is required."""
        overrides, rest = split_overrides(list(argv)[1:])
        args = self.parse_args(rest)
        if args.config is None:
            raise ConfigError("--config=configs/NAME.py[:ARG] is required")
        return overrides, args


def split_config_arg(spec: str) -> tuple[str, str | None]:
    """'configs/pretrain.py:variant=L' -> ('configs/pretrain.py', 'variant=L')."""
    path, sep, arg = spec.partition(".py:")
    if sep:
        return path + ".py", arg
    return spec, None


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(`--config.a.b[=value]` overrides, every other argument) of a command line.

    An override written `--config.a.b VALUE` keeps its value with it.
    """
    overrides: list[str] = []
    rest: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if _OVERRIDE.match(arg):
            overrides.append(arg)
            if "=" not in arg and i + 1 < len(args) and not args[i + 1].startswith("-"):
                overrides.append(args[i + 1])
                i += 1
        else:
            rest.append(arg)
        i += 1
    return overrides, rest


def load_config_file(spec: str) -> mlc.ConfigDict:
    """Runs the config file `PATH.py[:ARG]` and returns `get_config([ARG])`, or a clear ConfigError."""
    path, arg = split_config_arg(spec)
    if not path.endswith(".py"):
        raise ConfigError(f"--config={spec}: expected a Python config file (configs/NAME.py[:ARG])")
    if not os.path.isfile(path) and not os.path.isabs(path):
        # `configs/NAME.py` also from outside the repository root: the shipped configs directory.
        shipped = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), path)
        path = shipped if os.path.isfile(shipped) else path
    if not os.path.isfile(path):
        raise ConfigError(f"--config={spec}: config file {path!r} does not exist (cwd {os.getcwd()})")
    module_name = "_wam_config_" + re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
    module_spec = importlib.util.spec_from_file_location(module_name, path)
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
    return config


def apply_overrides(config: mlc.ConfigDict, overrides: Sequence[str]) -> mlc.ConfigDict:
    """`config` with `--config.a.b=value` overrides applied (parsed by the field's type), locked."""
    from absl import flags
    from ml_collections import config_flags

    check_overrides(config, overrides)
    argv = ["wam", *overrides]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_dict("config", config, flag_values=fv, lock_config=True, sys_argv=argv)
    try:
        rest = fv(argv)
    except flags.Error as e:
        raise ConfigError(str(e)) from e
    if len(rest) > 1:
        raise ConfigError(f"unexpected argument(s) {' '.join(rest[1:])!r} after the --config.* overrides")
    return fv.config


def load_config(spec: str, overrides: Sequence[str] = ()) -> mlc.ConfigDict:
    """The config of `--config=PATH.py[:ARG]` with its `--config.a.b=value` overrides applied."""
    return apply_overrides(load_config_file(spec), overrides)


def check_overrides(config: mlc.ConfigDict, argv: Sequence[str]) -> None:
    """Every `--config.a.b=...` must name an existing key; suggests the closest ones otherwise."""
    for arg in argv:
        m = _OVERRIDE.match(arg)
        if not m:
            continue
        key = arg[m.end():].split("=", 1)[0]
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
            if key in RENAMED_KEYS:
                hint = f"; it moved to --config.{RENAMED_KEYS[key]}"
            raise ConfigError(
                f"unknown config key {key!r} in {arg!r}: {parent} has no field {part!r}"
                f" (fields: {', '.join(options) if options else 'none, it is a value'}){hint}"
            )


def validate(config: mlc.ConfigDict, *, needs_data: bool = True) -> None:
    """Value checks the run relies on, with the flag to fix in every message. Each value is checked
    either here or, for the architecture (e.g. `image_size % patch_size`), only in the model, so
    that a model built without this function is checked too. `needs_data=False` (an ahead-of-time
    compile) skips the check of the data mixture."""

    def need(cond: bool, key: str, msg: str) -> None:
        if not cond:
            raise ConfigError(f"--config.{key}={_get(config, key)!r}: {msg}")

    need(int(config.train.num_steps) > 0, "train.num_steps", "must be > 0")
    need(int(config.train.log_every) > 0, "train.log_every", "must be > 0")
    need(int(config.train.checkpoint_every) >= 0, "train.checkpoint_every", "must be >= 0 (0 = only at the end)")
    need(int(config.train.max_to_keep) >= 1, "train.max_to_keep", "must be >= 1")
    need(int(config.train.max_nonfinite_steps) >= 1, "train.max_nonfinite_steps", "must be >= 1")
    need(int(config.data.global_batch_size) > 0, "data.global_batch_size", "must be > 0")
    need(int(config.optim.grad_accum) >= 1, "optim.grad_accum", "must be >= 1")
    need(int(config.data.max_bad_records) >= 0, "data.max_bad_records", "must be >= 0 (0 = stop at the first)")
    need(int(config.data.num_frames) >= 2, "data.num_frames", "must be >= 2 (a clip has T-1 transitions)")
    need(str(config.data.stride_actions) in ("reduce", "chunk"), "data.stride_actions",
         "expected 'reduce' (one action per transition) or 'chunk' (the stride's recorded actions concatenated)")
    need(str(config.data.augment_on) in ("host", "device"), "data.augment_on",
         "expected 'host' (the loader renders the crop and jitter) or 'device' (the accelerator does)")
    if needs_data:
        need(bool(str(config.data.mixture).strip()), "data.mixture",
             "is empty; set it to converted datasets 'DIR[:weight],DIR[:weight]' (see `wam-convert`)")
    need(str(config.model.dtype) in ("float32", "bfloat16", "float16"), "model.dtype",
         "expected 'float32', 'bfloat16' or 'float16'")
    need(str(config.model.target) in ("ema", "frozen", "online"), "model.target",
         "expected 'ema', 'frozen' or 'online'")
    need(str(config.model.init_scope) in ("encoder", "all"), "model.init_scope",
         "expected 'encoder' (the encoder from model.init_from) or 'all' (every variable of a wam_jax export "
         "written with its predictor)")
    need(str(config.model.init_scope) != "all" or bool(str(config.model.init_from).strip()), "model.init_from",
         "is empty, but model.init_scope='all' starts every variable from it; set it to a wam_jax export "
         "written with its predictor (a run's WORKDIR/export)")
    for name in ("ssl", "tf", "roll", "align", "align_u", "bottleneck", "act", "act_pred", "policy", "kl_weight",
                 "encoder_from_heads", "sigreg", "vic_var", "vic_cov", "recon", "recon_fg", "flow", "privileged"):
        need(math.isfinite(float(config.loss[name])) and float(config.loss[name]) >= 0, f"loss.{name}",
             "must be a finite number >= 0 (0 = off)")
    need(int(config.model.privileged_dim) >= 0, "model.privileged_dim", "must be >= 0 (0 = no privileged readout)")
    need(float(config.loss.privileged) == 0 or int(config.model.privileged_dim) > 0, "loss.privileged",
         "reads out a privileged state: set model.privileged_dim to the data's privileged_dim (PushT: 4)")
    need(0.0 <= float(config.loss.label_dropout) <= 1.0, "loss.label_dropout", "must be a fraction in [0, 1]")
    need(int(config.loss.rollout_k) >= 1, "loss.rollout_k", "must be >= 1 (steps of the rollout term)")
    need(int(config.loss.sigreg_projections) >= 1, "loss.sigreg_projections", "must be >= 1")
    need(int(config.loss.sigreg_knots) >= 3, "loss.sigreg_knots", "must be >= 3 (trapezoid rule)")
    need(str(config.loss.collapse_samples) in ("step", "all"), "loss.collapse_samples",
         "expected 'step' (per time step) or 'all' (every frame of the batch)")


# Keys that moved since checkpoints were first written: old dotted path -> new dotted path.
RENAMED_KEYS: dict[str, str] = {
    "model.latent_action.kl_weight": "loss.kl_weight",
    "model.latent_action.label_dropout": "loss.label_dropout",
    "model.rollout_k": "loss.rollout_k",
}


def restore_config(saved: Mapping[str, Any]) -> mlc.ConfigDict:
    """The config a checkpoint or export was trained with, in today's layout.

    Old runs saved fewer keys (defaults added later) and some at paths that moved since: this starts
    from `configs.base.get_config(<saved model preset>)`, moves renamed keys (`RENAMED_KEYS`) and
    writes every saved value over it, so new keys get base's default and nothing else needs one.
    JSON lists come back as tuples (ml_collections saves tuples as lists).
    """
    from configs import base

    if "model" not in saved or not isinstance(saved["model"], Mapping):
        raise ConfigError("the saved config has no 'model' section; cannot rebuild the model")
    try:
        config = base.get_config(str(saved["model"].get("preset", "tiny")))
    except ValueError:  # a preset since renamed: the saved encoder / predictor sizes replace it
        config = base.get_config()
    values = _tuples(saved)
    for old, new in RENAMED_KEYS.items():
        if _has(config, new) and not _has(config, old) and _has(values, old):
            value = _pop(values, old)
            if not _has(values, new):
                _put(values, new, value)
    _merge(config, values)
    return config


def _tuples(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {k: _tuples(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return tuple(_tuples(v) for v in x)
    return x


def _has(node: Any, dotted: str) -> bool:
    for part in dotted.split("."):
        if not isinstance(node, mlc.ConfigDict | Mapping) or part not in node:
            return False
        node = node[part]
    return True


def _pop(tree: dict[str, Any], dotted: str) -> Any:
    *parents, leaf = dotted.split(".")
    for part in parents:
        tree = tree[part]
    return tree.pop(leaf)


def _put(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[leaf] = value


def _merge(config: mlc.ConfigDict, values: Mapping[str, Any]) -> None:
    """Writes `values` into `config` recursively; a saved value replaces base's even if its type differs."""
    for k, v in values.items():
        if isinstance(v, Mapping) and isinstance(config.get(k), mlc.ConfigDict):
            _merge(config[k], v)
            continue
        if k in config:
            try:
                config[k] = v
                continue
            except TypeError:
                del config[k]  # the saved run's type wins over today's default's
        config[k] = mlc.ConfigDict(v) if isinstance(v, Mapping) else v


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
