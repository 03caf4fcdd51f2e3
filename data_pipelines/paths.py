"""Where files live: local paths and object-store URLs (`gs://bucket/...`), one set of rules.

Workdirs, checkpoints, metrics, evaluation results and exports are read and written through
`etils.epath`, so a `gs://` path works wherever a local one does (gcsfs without TensorFlow,
`tf.io.gfile` with it; Orbax writes the arrays through TensorStore). Converted datasets and
converter inputs are ArrayRecord / TFRecord shards, which their readers open as local files
(ArrayRecord's C++ reader, Grain's TFRecord reader): for those the convention is MaxText's, a
Cloud Storage FUSE mount, and `local_only` says so instead of failing on a mangled path.
"""

from __future__ import annotations

import os
import uuid

GCSFUSE_HINT = ("mount the bucket with Cloud Storage FUSE (`gcsfuse --implicit-dirs BUCKET /mnt/BUCKET`) "
                "and give the path under the mount (`/mnt/BUCKET/...`)")


class LocalPathRequired(ValueError):
    """A reader that opens local files only was given an object-store URL."""


def is_url(path: str | os.PathLike) -> bool:
    """`gs://...`, `s3://...` and the like: paths `os.path` must not touch."""
    return "://" in os.fspath(path)


def absolute(path: str | os.PathLike) -> str:
    """An absolute local path (`~` expanded); URLs unchanged (`abspath` would turn `gs://b/x` into
    `/cwd/gs:/b/x`)."""
    path = os.fspath(path)
    return path if is_url(path) else os.path.abspath(os.path.expanduser(path))


def local_only(path: str | os.PathLike, what: str) -> str:
    """`path` itself when local; `LocalPathRequired` naming `what` (the flag or field) for a URL."""
    path = os.fspath(path)
    if is_url(path):
        raise LocalPathRequired(f"{what}: {path} must be a local path (its ArrayRecord / TFRecord shards "
                                f"go through readers and writers of local files only); {GCSFUSE_HINT}")
    return path


def write_atomic(path: str | os.PathLike, data: bytes | str) -> None:
    """Whole or not at all: local files through a temporary name (unique to the writer, so two
    processes writing the same file never share one) renamed into place; an object store's single
    upload is whole already (and a rename there is a copy and a delete)."""
    from etils import epath

    path = epath.Path(path)
    data = data.encode() if isinstance(data, str) else data
    if is_url(path):
        path.write_bytes(data)
        return
    tmp = path.parent / f"{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.write_bytes(data)
    tmp.replace(path)
