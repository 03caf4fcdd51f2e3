"""One trainer per workdir: a lock file that names its holder, with heartbeats and stale takeover.

Two trainers writing one workdir (a relaunch while the old job still runs, two people sharing a
path) interleave checkpoints and metrics and rotate each other's checkpoints away. `acquire` is
called once per run (process 0 of a multi-process run; the others learn the outcome from it) and
writes `WORKDIR/lock.json`:

    {"host": ..., "pid": ..., "started": ..., "heartbeat": ..., "run_id": ...}

A daemon thread rewrites `heartbeat` every `HEARTBEAT_S` seconds while the run lives. An existing
lock is taken over, with a warning, when its holder is provably dead (same host, its pid gone) or
its heartbeat is older than `stale_after_s` (another host: it cannot be asked); otherwise
`WorkdirLockError` names the holder.

Atomicity: on a local or mounted filesystem the lock is hard-linked into place (fails if it exists)
and a stale lock is first renamed aside (one rename wins), so two racing trainers cannot both hold
it. On Cloud Storage (`gs://`) the lock is created with the `ifGenerationMatch=0` precondition
(gcsfs's `mode="create"`), which the service refuses if the object exists: atomic as well. Other
object stores (or `gs://` without gcsfs) have no create-if-absent through `etils.epath`: there the
lock is written, read back and checked for our `run_id`, which catches a relaunch of a live run
but not two trainers started within the same second; a warning says so.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

from etils import epath

from data_pipelines import paths

log = logging.getLogger(__name__)

LOCK_NAME = "lock.json"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0


class WorkdirLockError(RuntimeError):
    """Another live trainer holds the workdir."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _describe(holder: dict[str, Any], now: float) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(float(holder.get("started", 0))))
    beat = now - float(holder.get("heartbeat", 0))
    return (f"host {holder.get('host')!r}, pid {holder.get('pid')}, started {started}, "
            f"last heartbeat {beat:.0f}s ago")


def stale_reason(holder: dict[str, Any], now: float, stale_after_s: float) -> str | None:
    """Why `holder` no longer holds the lock, or None while it may still be running."""
    if holder.get("host") == socket.gethostname() and not _pid_alive(int(holder.get("pid", -1))):
        return f"its process {holder.get('pid')} on this host is gone"
    age = now - float(holder.get("heartbeat", 0))
    if age > stale_after_s:
        return f"its heartbeat is {age:.0f}s old (> {stale_after_s:.0f}s)"
    return None


class WorkdirLock:
    """A held lock; `release()` (or the end of the run) removes it if it is still ours."""

    def __init__(self, path: epath.Path, info: dict[str, Any], heartbeat_s: float = HEARTBEAT_S):
        self.path, self.info = path, info
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(heartbeat_s,), daemon=True,
                                        name="workdir-lock-heartbeat")
        self._thread.start()

    def _beat(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                holder = _read(self.path)
                if holder.get("run_id") != self.info["run_id"]:
                    log.error("the workdir lock %s was taken over by %s: another trainer may now write "
                              "this workdir", self.path, _describe(holder, time.time()))
                    return
                self.info["heartbeat"] = time.time()
                _write(self.path, self.info)
            except (OSError, ValueError) as e:  # a full disk must not kill the run from a side thread
                log.warning("could not refresh the workdir lock %s: %s", self.path, e)

    def release(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            if _read(self.path).get("run_id") == self.info["run_id"]:
                self.path.unlink()
        except (OSError, ValueError):
            pass


def _read(path: epath.Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not a workdir lock ({e})") from e


def _write(path: epath.Path, info: dict[str, Any]) -> None:
    paths.write_atomic(path, json.dumps(info))


def _create_exclusive(path: epath.Path, info: dict[str, Any]) -> bool:
    """True if we created the lock; False if it exists."""
    if not paths.is_url(path):
        # Written aside, then hard-linked into place: the lock appears whole or not at all, and
        # `link` fails if it exists (atomic create-if-absent on POSIX filesystems).
        tmp = os.fspath(path) + f".{info['run_id']}.tmp"
        with open(tmp, "w") as f:
            f.write(json.dumps(info))
        try:
            os.link(tmp, os.fspath(path))
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
        return True
    if _has_create_if_absent(path):
        import fsspec

        fs, key = fsspec.core.url_to_fs(os.fspath(path))  # the filesystem etils uses for gs://
        try:
            fs.pipe_file(key, json.dumps(info).encode(), mode="create")  # ifGenerationMatch=0
        except FileExistsError:  # gcsfs's reading of the service's 412 (precondition failed)
            return False
        return True
    if path.exists():
        return False
    _write(path, info)
    return _read(path).get("run_id") == info["run_id"]


def _has_create_if_absent(path: epath.Path) -> bool:
    """Cloud Storage through gcsfs: its uploads take the `ifGenerationMatch=0` precondition."""
    if not os.fspath(path).startswith(("gs://", "gcs://")):
        return False
    try:
        import gcsfs  # noqa: F401  (the `gcs` extra)
    except ImportError:
        return False
    return True


def acquire(workdir: str, *, stale_after_s: float = STALE_AFTER_S, heartbeat_s: float = HEARTBEAT_S
            ) -> WorkdirLock:
    """Takes the lock of `workdir` or raises `WorkdirLockError` naming the live holder."""
    root = epath.Path(workdir)
    root.mkdir(parents=True, exist_ok=True)
    path = root / LOCK_NAME
    now = time.time()
    info = {"host": socket.gethostname(), "pid": os.getpid(), "started": now, "heartbeat": now,
            "run_id": uuid.uuid4().hex}
    if paths.is_url(workdir) and not _has_create_if_absent(path):
        log.warning("%s: the workdir lock on an object store is checked by read-back, not created "
                    "atomically: two trainers started within a second of each other may both start", path)
    for _ in range(3):
        if _create_exclusive(path, info):
            return WorkdirLock(path, info, heartbeat_s)
        try:
            holder = _read(path)
        except FileNotFoundError:
            continue  # released between our attempt and the read: try again
        except ValueError as e:
            holder, why = {}, str(e)
        else:
            why = stale_reason(holder, now, stale_after_s)
        if why is None:
            raise WorkdirLockError(
                f"{workdir} is in use by another trainer ({_describe(holder, now)}). Wait for it, stop "
                f"it, or train in another --workdir; if it is dead on another host, delete {path} "
                f"(it is taken over by itself once its heartbeat is {stale_after_s:.0f}s old).")
        log.warning("taking over the workdir lock %s: %s (%s)", path, why,
                    _describe(holder, now) if holder else "unreadable")
        aside = root / f"{LOCK_NAME}.stale.{info['run_id']}"
        try:
            path.rename(aside)  # one racing trainer wins the rename; the other sees a fresh lock
            aside.unlink()
        except (FileNotFoundError, OSError):
            pass
    raise WorkdirLockError(f"{path}: could not take the workdir lock after 3 attempts (another trainer "
                           f"keeps taking it)")
