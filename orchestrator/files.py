"""Writing run-directory files so that a reader never sees half of one.

Every file is written to a temporary file with a unique name beside it, flushed to disk
(fsync), renamed over the target (atomic on one filesystem) and the folder is synced, so two
writers never share a temporary file and a crash leaves either the old or the new content.
When the run directory is in an object store, the file is then uploaded there before the write
returns (``orchestrator.mirror``).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from orchestrator import mirror


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A unique temporary path beside `path`; when the block succeeds it is synced and renamed
    over `path`, when it fails it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    sync_folder(path.parent)
    mirror.written(path)


def sync_folder(folder: str | Path) -> None:
    """fsync a folder so a rename inside it survives a crash (a no-op where unsupported)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write `text` to `path` through :func:`atomic_path`."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json_atomic(path: str | Path, data: Any, **dumps: Any) -> Path:
    """`data` as indented JSON, written with :func:`write_text_atomic`."""
    return write_text_atomic(path, json.dumps(data, indent=2, **dumps))


def remove(path: str | Path) -> None:
    """Delete a run-directory file (and its copy in the store, for an object-store run dir)."""
    Path(path).unlink(missing_ok=True)
    mirror.removed(path)
