"""How the inference console scripts (`wam-plan`, `wam-replay`, `wam-synth`) end: a user error
(a missing file, a bad flag value, an incomplete export) prints one line naming it and exits with
status 2; anything else is a bug and keeps its traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn


def run_main(prog: str, main: Callable[[Sequence[str]], Any], argv: Sequence[str] | None = None, *,
             value_errors: bool = True) -> NoReturn:
    """Runs `main(argv)` (default: the command line) and exits; `value_errors=False` lets a
    ValueError keep its traceback."""
    from wam_jax.inference.artifacts import IncompleteExportError, MissingStatisticsError

    errors: tuple[type[BaseException], ...] = (FileNotFoundError, MissingStatisticsError, IncompleteExportError)
    if value_errors:
        errors = (*errors, ValueError)
    try:
        main(list(sys.argv[1:] if argv is None else argv))
    except errors as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(2)
    sys.exit(0)
