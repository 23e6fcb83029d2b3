"""The run directory: where every stage reads its inputs and writes its outputs.

A local run directory is used in place. An object-store one (``s3://``, ``gs://``) is worked on
through its local mirror (``orchestrator.mirror``): taken with a lease instead of a file lock,
copied from the store when the driver takes it, and uploaded as stages write.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import yaml

from orchestrator import mirror
from orchestrator.config.schema import RunConfig
from orchestrator.files import write_json_atomic, write_text_atomic
from orchestrator.mirror import Mirror, RunDirBusy
from orchestrator.secrets import redact_tree
from trainables.storage import is_remote

LOCK_FILE = ".raynas.lock"
OWNER_FILE = ".raynas.lock.owner"

__all__ = ["RunDirBusy", "fetch", "lock", "prepare"]


def fetch(run_dir: str, *files: str) -> Path:
    """The local folder of `run_dir` with `files` (relative) copied from the store when it is an
    object-store one: what a reader of a run directory (``--resume``, report) opens."""
    if not is_remote(run_dir):
        return Path(run_dir).resolve()
    store = Mirror(run_dir)
    for name in files:
        store.fetch(name)
    return store.local


@contextlib.contextmanager
def lock(config: RunConfig) -> Iterator[Path]:
    """Hold the run directory for this driver: a second `raynas run`/`search`/... on it ends
    in one line naming the holder (host, pid). Locally the lock is an OS file lock, released
    when the holder exits, however it exits; an object-store run directory is held by a lease
    (``orchestrator.mirror``), and its mirror is made a copy of the store first."""
    if not config.remote:
        with _file_lock(config.workspace) as path:
            yield path
        return
    store = Mirror(config.run_path)
    with store.lease(), _file_lock(store.local) as path, mirror.active(store):
        fetched = store.pull()
        if fetched:
            print(f"[raynas] {fetched} files copied from {config.run_path}", flush=True)
        yield path


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[Path]:
    from filelock import FileLock, Timeout

    path.mkdir(parents=True, exist_ok=True)
    file_lock = FileLock(str(path / LOCK_FILE))
    try:
        file_lock.acquire(timeout=0)
    except Timeout:
        owner = _owner(path)
        raise RunDirBusy(
            f"run directory {path} is in use by another raynas driver ({owner}); wait for it to "
            "finish or stop it, or choose another run_dir"
        ) from None
    try:
        write_json_atomic(
            path / OWNER_FILE,
            {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                "command": " ".join(
                    os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv)
                )[:300],
            },
        )
        yield path
    finally:
        (path / OWNER_FILE).unlink(missing_ok=True)
        file_lock.release()


def _owner(path: Path) -> str:
    try:
        owner = json.loads((path / OWNER_FILE).read_text())
        return f"host {owner['host']}, pid {owner['pid']}, since {owner['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"


def prepare(config: RunConfig) -> Path:
    """Create the run directory (its workspace) and write the resolved `config.yaml` into it,
    with any password in a URL redacted (``${NAME}`` references are kept as written)."""
    path = config.workspace
    path.mkdir(parents=True, exist_ok=True)
    data = redact_tree(config.model_dump(mode="json"))
    write_text_atomic(path / "config.yaml", yaml.safe_dump(data, sort_keys=False))
    return path
