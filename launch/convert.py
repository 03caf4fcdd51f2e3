"""`wam-convert` / `python -m launch.convert`: convert a source dataset into wam_jax episodes.

    wam-convert oxe   --input=BUILDER_DIR --output=DIR [--dataset=NAME] [--image_size=64] ...
    wam-convert ego4d --input=EGO4D_ROOT  --output=DIR ...
    wam-convert pusht --output=DIR ...

Each subcommand is a module exposing `add_arguments(parser)` and `main(args)`. The modules are
imported only when their subcommand runs (their `--help` included), so one converter's heavy or
missing dependencies never break another's command line.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Sequence
from typing import Any

# subcommand -> (module, one-line help)
CONVERTERS: dict[str, tuple[str, str]] = {
    "oxe": ("data_pipelines.convert.oxe", "an RLDS builder dir (Open X-Embodiment dataset)"),
    "ego4d": ("data_pipelines.convert.ego4d", "an Ego4D download (videos + narrations)"),
    "pusht": ("data_pipelines.convert.pusht", "generate PushT demonstrations"),
}


# RLDS is read and written through TensorFlow Datasets, which needs TensorFlow (the `tf` extra).
NEEDS_TENSORFLOW = ("oxe", "pusht")


def _has_tensorflow() -> bool:
    try:
        return importlib.util.find_spec("tensorflow") is not None
    except ValueError:  # its sys.modules entry is None: the import is blocked
        return False


def _load(command: str) -> Any:
    module_name = CONVERTERS[command][0]
    if command in NEEDS_TENSORFLOW and not _has_tensorflow():
        raise SystemExit(f"wam-convert {command}: RLDS data is read and written with TensorFlow Datasets, "
                         "which needs TensorFlow; install the tf extra: pip install -c requirements.lock "
                         "-e '.[tf]' (./wam demo and ./wam test install it)")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):
            raise SystemExit(
                f"wam-convert {command}: converter module {module_name} is not available ({e})"
            ) from e
        raise
    for fn in ("add_arguments", "main"):
        if not callable(getattr(module, fn, None)):
            raise SystemExit(f"wam-convert {command}: {module_name} has no {fn}() function")
    return module


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser; only `command`'s arguments are loaded (its module is imported)."""
    parser = argparse.ArgumentParser(
        prog="wam-convert",
        description="Convert a source dataset into wam_jax episode shards "
        "(dataset.json, stats.json, manifest.json, ArrayRecord shards).",
    )
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(CONVERTERS) + "}")
    sub.required = True
    for name, (_, help_text) in CONVERTERS.items():
        p = sub.add_parser(name, help=help_text, description=f"wam-convert {name}: {help_text}")
        if name == command:
            _load(name).add_arguments(p)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors that describe bad input: printed as one line, not a traceback."""
    from data_pipelines import paths, records
    from data_pipelines.convert import common as convert_common
    from data_pipelines.convert import ego4d_layout as ego4d
    from data_pipelines.convert import rlds

    return (convert_common.ConversionError, ego4d.Ego4DLayoutError, records.DatasetFormatError,
            rlds.RLDSFormatError, rlds.RLDSKeyError, paths.LocalPathRequired, FileExistsError, FileNotFoundError)


def main(argv: Sequence[str]) -> Any:
    """Parses `argv` (without the program name) and runs the converter; returns its summary."""
    argv = list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    if command not in CONVERTERS:
        command = None  # argparse reports the missing / unknown subcommand
    args = build_parser(command).parse_args(argv)
    return _load(args.command).main(args)


def run(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point (`wam-convert`): exit 0 on success, 2 with one line on bad input."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        main(argv)
    except _user_errors() as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        # one line, even for a message that quotes a multi-line library error (e.g. protobuf's)
        msg = " ".join(line.strip() for line in str(msg).splitlines())
        print(f"wam-convert: error: {msg}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    run()
