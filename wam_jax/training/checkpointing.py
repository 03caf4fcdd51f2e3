"""Orbax `CheckpointManager` wrapper: train state + data iterator + config + dataset statistics.

One checkpoint step directory (`WORKDIR/checkpoints/<step>/`) holds

- `state`:  params, EMA/frozen target, optimizer state, step, RNG (sharded arrays, OCDBT),
- `data`:   the Grain iterator state, one JSON file per process (`process_i-of-n.json`); the
            trainer saves the device-prefetch iterator, whose state is the position right after
            the last batch the step consumed,
- `config`: the full ml_collections config as JSON,
- `stats`:  the dataset statistics and mixture description (`loader.mixture_info`).

Saves are asynchronous (the step loop keeps running while arrays are written) and atomic (Orbax
writes `<step>.orbax-checkpoint-tmp-*` and renames it when complete). Restores go through an
abstract target that carries a sharding for every leaf, so a checkpoint written on 8 devices
restores onto 4, 1 or a different mesh shape.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import checkpoint_managers as policies

from data_pipelines import paths

log = logging.getLogger(__name__)

ITEMS = ("state", "data", "config", "stats")
_TMP_RE = re.compile(r"^(\d+)\.orbax-checkpoint-tmp")


class CheckpointMismatchError(ValueError):
    """The workdir's checkpoint belongs to a different model; the message lists the paths."""


def _flat_paths(tree: Any) -> dict[str, tuple[int, ...]]:
    """'params/encoder/blocks/mlp/kernel' -> shape, for arrays and Orbax ArrayMetadata alike."""
    out: dict[str, tuple[int, ...]] = {}

    def key_str(k) -> str:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                return str(getattr(k, attr))
        return str(k)

    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))[0]
    for path, x in leaves:
        if x is None or not hasattr(x, "shape"):
            continue
        out["/".join(key_str(k) for k in path)] = tuple(x.shape)
    return out


def describe_mismatch(saved: Mapping[str, tuple], expected: Mapping[str, tuple], limit: int = 12) -> str:
    missing = sorted(set(expected) - set(saved))
    unexpected = sorted(set(saved) - set(expected))
    shapes = sorted(k for k in set(saved) & set(expected) if tuple(saved[k]) != tuple(expected[k]))
    parts = []
    if shapes:
        parts.append(
            "shape differs: "
            + ", ".join(f"{k} (checkpoint {list(saved[k])}, model {list(expected[k])})" for k in shapes[:limit])
            + (f" and {len(shapes) - limit} more" if len(shapes) > limit else "")
        )
    if missing:
        parts.append("missing in checkpoint: " + ", ".join(missing[:limit]) + (f" and {len(missing) - limit} more" if len(missing) > limit else ""))
    if unexpected:
        parts.append("not in model: " + ", ".join(unexpected[:limit]) + (f" and {len(unexpected) - limit} more" if len(unexpected) > limit else ""))
    return "; ".join(parts)


def _config_diff(saved: Mapping[str, Any] | None, current: Mapping[str, Any], prefix: str = "") -> list[str]:
    if not isinstance(saved, Mapping):
        return []
    out = []
    for k in sorted(set(saved) | set(current)):
        a, b = saved.get(k), current.get(k)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += _config_diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: checkpoint {a!r}, now {b!r}")
    return out


def config_to_json(config: Any) -> dict[str, Any]:
    """ConfigDict -> plain JSON-able dict (tuples become lists)."""
    return json.loads(config.to_json_best_effort()) if hasattr(config, "to_json_best_effort") else dict(config)


class CheckpointWriteError(OSError):
    """A checkpoint could not be written; the message names the directory and what was kept."""


def _is_closed_loop_report(unraisable: Any) -> bool:
    """TensorStore's callbacks into the event loop of an Orbax save that already failed."""
    frames, tb = [], unraisable.exc_traceback
    while tb is not None:
        frames.append(tb.tb_frame.f_code.co_name)
        tb = tb.tb_next
    return (unraisable.exc_type is RuntimeError and str(unraisable.exc_value) == "Event loop is closed"
            and "call_soon_threadsafe" in frames)


def _quiet_closed_loop_reports() -> None:
    """When a write fails (disk full), Orbax closes the save's event loop while TensorStore still
    completes the other chunks' writes; each completion reports "Event loop is closed" through
    `sys.unraisablehook`, hundreds of tracebacks that bury the one line naming the failure (and
    interleave with it). Those reports, and only those, are dropped; the failure itself is raised
    at the next save (`_write_errors`)."""
    previous = sys.unraisablehook
    if getattr(previous, "_wam_quiet_closed_loop", False):
        return

    def hook(unraisable: Any) -> None:
        if not _is_closed_loop_report(unraisable):
            previous(unraisable)

    hook._wam_quiet_closed_loop = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


class Checkpointer:
    """Async, atomic checkpoints of one training run, with resume and fall-back logic."""

    def __init__(
        self,
        directory: str,
        *,
        max_to_keep: int = 3,
        keep_period: int = 0,
        async_save: bool = True,
    ):
        self.directory = paths.absolute(directory)
        keep = [policies.LatestN(n=max_to_keep if max_to_keep > 0 else None)]
        if keep_period and keep_period > 0:
            keep.append(policies.EveryNSteps(interval_steps=int(keep_period)))
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policies.AnyPreservationPolicy(policies=keep),
            enable_async_checkpointing=async_save,
            create=True,
            cleanup_tmp_directories=False,  # we report interrupted saves before discarding them
        )
        import grain.checkpoint as gc

        handlers = {
            "state": ocp.StandardCheckpointHandler(),
            "data": gc.CheckpointHandler(),
            "config": ocp.JsonCheckpointHandler(),
            "stats": ocp.JsonCheckpointHandler(),
        }
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)
        _quiet_closed_loop_reports()
        self._damaged: list[int] = []  # complete-looking steps newer than the one restored

    # -- inspection -------------------------------------------------------------------------

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def incomplete_steps(self) -> list[tuple[int, str]]:
        """Interrupted saves: Orbax temporary directories (or step dirs without a commit marker)."""
        out = []
        root = epath.Path(self.directory)
        if not root.is_dir():
            return out
        complete = set(self.all_steps())
        for name in sorted(p.name for p in root.iterdir()):
            m = _TMP_RE.match(name)
            if m:
                out.append((int(m.group(1)), str(root / name)))
            elif name.isdigit() and int(name) not in complete:
                out.append((int(name), str(root / name)))
        return out

    def saved_config(self, step: int) -> dict[str, Any] | None:
        """The config saved with `step` as written (JSON); `config_utils.restore_config` rebuilds it."""
        try:
            return self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
        except Exception:  # noqa: BLE001 - an unreadable config only loses the diff in error messages
            return None

    def _model_config_diff(self, step: int, config: Any) -> list[str]:
        """`model` values that differ between the checkpoint's config (in today's layout, so keys
        added or moved since are not reported) and `config`."""
        from wam_jax import config_utils

        saved = self.saved_config(step)
        try:
            restored = config_utils.restore_config(saved or {})
        except config_utils.ConfigError:
            return []
        return _config_diff(config_to_json(restored.model), config_to_json(config.model))

    def check_compatible(self, step: int, abstract_state: Mapping[str, Any], config: Any = None) -> None:
        """Raises CheckpointMismatchError naming the parameter paths that differ from the model."""
        meta = self.manager.item_metadata(step)["state"]
        tree = getattr(meta, "tree", meta)
        if tree is None:
            raise OSError(f"checkpoint step {step} in {self.directory} has no readable state metadata")
        sections = ("params", "model_state", "target")
        saved = {k: v for k, v in _flat_paths({s: tree.get(s) for s in sections}).items()}
        expected = _flat_paths({s: abstract_state[s] for s in sections})
        problem = describe_mismatch(saved, expected)
        if problem:
            diff = self._model_config_diff(step, config) if config is not None else []
            raise CheckpointMismatchError(
                f"{self.directory} holds a checkpoint (step {step}) of a different model: {problem}"
                + (f". Model config differences: {'; '.join(diff[:12])}" if diff else "")
                + ". Use a fresh --workdir, or the config this checkpoint was trained with."
            )

    # -- save / restore ---------------------------------------------------------------------

    def save(
        self,
        step: int,
        state: Mapping[str, Any],
        data_iterator: Any,
        config: Any,
        stats: Mapping[str, Any] | None,
        *,
        force: bool = True,
    ) -> bool:
        import grain.checkpoint as gc

        if step in self._damaged:
            self._set_aside(step)
            self._damaged.remove(step)
        items: dict[str, Any] = {
            "state": ocp.args.StandardSave(dict(state)),
            "config": ocp.args.JsonSave(config_to_json(config)),
            "stats": ocp.args.JsonSave(_jsonable(stats or {})),
        }
        if data_iterator is not None:
            items["data"] = gc.CheckpointSave(data_iterator)
        with self._write_errors(f"step {step}"):
            return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

    @contextlib.contextmanager
    def _write_errors(self, what: str):
        """A failed write (disk full, permission denied; an async save fails at the next save or
        wait) becomes `CheckpointWriteError` naming the directory, the error and the last complete
        checkpoint, which is kept: Orbax finalizes a step only once it is fully written and
        deletes older ones only after that."""
        try:
            yield
        except CheckpointWriteError:
            raise
        except Exception as e:  # noqa: BLE001 - Orbax and TensorStore report OS errors as ValueError etc.
            try:  # an earlier save still in flight may yet complete: report what is really kept
                self.manager.wait_until_finished()
            except Exception:  # noqa: BLE001 - the error being reported is the one that matters
                pass
            last = self.last_complete()
            kept = (f"the last complete checkpoint, step {last}, is kept" if last is not None
                    else "no checkpoint was completed")
            raise CheckpointWriteError(
                f"could not write a checkpoint ({what}) in {self.directory}: {os_error_text(e)}; {kept}. "
                f"Free space or fix permissions, then re-run the same command to resume.") from e

    def last_complete(self) -> int | None:
        """The newest complete step as the directory shows it (the manager's own list can be stale
        after a failed async save); what every error message names as kept."""
        root = epath.Path(self.directory)
        steps = [int(p.name) for p in root.iterdir() if p.name.isdigit()] if root.exists() else []
        return max(steps, default=None)

    def has_data_state(self, step: int) -> bool:
        """Whether this process's iterator state exists (it does not after a process-count change)."""
        name = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
        return (epath.Path(self.directory) / str(step) / "data" / name).exists()

    def restore(self, step: int, abstract_state: Mapping[str, Any], data_iterator: Any):
        """(state dict, stats dict, data restored?) of one step, onto the abstract target's shardings."""
        import grain.checkpoint as gc

        items: dict[str, Any] = {
            "state": ocp.args.StandardRestore(dict(abstract_state)),
            "stats": ocp.args.JsonRestore(),
        }
        restore_data = data_iterator is not None and self.has_data_state(step)
        if restore_data:
            items["data"] = gc.CheckpointRestore(data_iterator)
        out = self.manager.restore(step, args=ocp.args.Composite(**items))
        return out["state"], out["stats"], restore_data

    def restore_latest(
        self, abstract_state: Mapping[str, Any], data_iterator: Any, config: Any = None
    ):
        """Restores the newest complete checkpoint; None when there is none.

        Interrupted saves are reported and skipped; a checkpoint that fails to read falls back to
        the previous one with a warning. An incompatible model is an error, not a fall-back.
        Returns (step, state dict, stats dict, data restored?) or None.
        """
        for step, path in self.incomplete_steps():
            log.warning(
                "checkpoint step %d at %s was not completely written (interrupted save); ignoring it", step, path
            )
        steps = self.all_steps()
        failures: list[str] = []
        for i, step in enumerate(reversed(steps)):
            try:
                self.check_compatible(step, abstract_state, config)
                state, stats, data_restored = self.restore(step, abstract_state, data_iterator)
            except CheckpointMismatchError:
                raise
            except Exception as e:  # noqa: BLE001 - any read failure means "damaged": try an older one
                msg = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
                failures.append(f"step {step}: {msg}")
                older = steps[-i - 2] if i + 1 < len(steps) else None
                if older is not None:
                    log.warning("checkpoint step %d in %s could not be restored (%s); falling back to step %d",
                                step, self.directory, msg, older)
                continue
            if failures or self.incomplete_steps():
                log.warning("resuming from step %d, the last complete checkpoint in %s", step, self.directory)
            self._damaged = [s for s in steps if s > step]
            return step, state, stats, data_restored
        if failures:
            # Every checkpoint failing points at a systematic problem, not a torn write: do not
            # silently start over on top of them.
            raise OSError(f"no checkpoint in {self.directory} could be restored: " + "; ".join(failures))
        return None

    def _set_aside(self, step: int) -> None:
        """Renames a damaged step directory (kept for inspection) before this run saves that step again."""
        from jax.experimental import multihost_utils

        if jax.process_index() == 0:
            src = epath.Path(self.directory) / str(step)
            dst = src.parent / f"{src.name}.damaged-{int(time.time())}"
            if src.exists():
                src.rename(dst)
                log.warning("moved the damaged checkpoint %s to %s", src, dst)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"wam_jax_set_aside_{step}")
        self.manager.reload()

    def wait(self) -> None:
        with self._write_errors("finishing the last save"):
            self.manager.wait_until_finished()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self.manager.close()


def os_error_text(e: BaseException) -> str:
    """The OS error inside a (long) Orbax / TensorStore message, e.g. 'No space left on device
    (errno 28)' from "...: No space left on device [os_error_code='28']"; else its first line."""
    text = str(e)
    m = re.search(r"([^:\]\[]+?)\s*\[os_error_code='?(\d+)'?\]", text)
    if m:
        return f"{m.group(1).strip()} (errno {m.group(2)})"
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror} (errno {e.errno}){f': {e.filename}' if e.filename else ''}"
    return text.splitlines()[0][:300] if text else type(e).__name__


def _jsonable(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    return x
