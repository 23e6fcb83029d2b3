"""The run directory: where every stage reads its inputs and writes its outputs."""

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

from orchestrator.config.schema import RunConfig
from orchestrator.errors import UserInputError
from orchestrator.files import write_json_atomic, write_text_atomic
from orchestrator.secrets import redact_tree

LOCK_FILE = ".raynas.lock"
OWNER_FILE = ".raynas.lock.owner"


class RunDirBusy(UserInputError):
    """Another driver holds the run directory."""


def _local_path(config: RunConfig) -> Path:
    if "://" in config.run_path:
        raise UserInputError(
            f"run_dir={config.run_path!r}: remote run directories are not supported by this version yet"
        )
    return Path(config.run_path).resolve()


@contextlib.contextmanager
def lock(config: RunConfig) -> Iterator[Path]:
    """Hold the run directory for this driver: a second `raynas run`/`search`/... on it ends
    in one line naming the holder (host, pid). The lock is an OS file lock, so it is released
    when the holder exits, however it exits."""
    from filelock import FileLock, Timeout

    path = _local_path(config)
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
    """Create the (local) run directory and write the resolved `config.yaml` into it, with
    any password in a URL redacted (``${NAME}`` references are kept as written)."""
    path = _local_path(config)
    path.mkdir(parents=True, exist_ok=True)
    data = redact_tree(config.model_dump(mode="json"))
    write_text_atomic(path / "config.yaml", yaml.safe_dump(data, sort_keys=False))
    return path
