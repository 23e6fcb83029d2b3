"""Where datasets are looked for, and where downloads go.

Order: the configured `data.root`, then `$RAYNAS_DATA/<name>`, then system folders (Debian's
`/usr/share/datasets/<name>`), then a download into the cache when the network allows.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from trainables.errors import DataError

Found = TypeVar("Found")

SYSTEM_DATA_DIRS = (Path("/usr/share/datasets"),)
DOWNLOAD_TIMEOUT_S = 20.0


def candidate_dirs(
    root: str | None, folder: str, system_dirs: tuple[Path, ...] = SYSTEM_DATA_DIRS
) -> list[tuple[str, Path | None]]:
    """(label, path) pairs to try in order; path None marks an unset location."""
    candidates: list[tuple[str, Path | None]] = []
    if root is not None:
        candidates.append(("data.root", Path(root).expanduser()))
    env = os.environ.get("RAYNAS_DATA")
    candidates.append(("$RAYNAS_DATA", Path(env).expanduser() / folder if env else None))
    candidates.extend(("system", base / folder) for base in system_dirs)
    return candidates


def cache_dir(folder: str) -> Path:
    """Where downloads go: `$RAYNAS_DATA/<folder>`, else `~/.cache/raynas/<folder>`."""
    env = os.environ.get("RAYNAS_DATA")
    base = Path(env).expanduser() if env else Path.home() / ".cache" / "raynas"
    return base / folder


@contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def try_download(download: Callable[[], None]) -> str | None:
    """Run a download; return None on success or a short reason on failure.

    A closed network must fail fast, not hang a worker: sockets get a timeout.
    """
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            download()
    except Exception as exc:  # any network/HTTP/integrity failure is reported, not raised
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"{type(exc).__name__}: {reason}"[:160]
    return None


def locate(
    name: str,
    folder: str,
    root: str | None,
    find: Callable[[Path], Found | None],
    what: str,
    download: Callable[[Path], None] | None,
    hint: str,
    system_dirs: tuple[Path, ...] = SYSTEM_DATA_DIRS,
) -> tuple[Found, str]:
    """Search the candidate folders, then the download cache, then download (when given).

    `find(folder)` returns what it recognises in `folder` or None; `what` says what it looks for
    (for the error). Returns what was found and where; else one DataError line listing every
    place tried, followed by `hint`.
    """
    tried = []
    for label, path in candidate_dirs(root, folder, system_dirs):
        if path is None:
            tried.append(f"{label} (unset)")
            continue
        found = find(path)
        if found is not None:
            return found, str(path)
        tried.append(f"{path} (no {what})")
    target = cache_dir(folder)
    found = find(target)
    if found is not None:
        return found, str(target)
    if download is None:
        tried.append("download (disabled by data.download=false)")
    else:
        failure = try_download(lambda: download(target))
        found = find(target)
        if failure is None and found is not None:
            return found, f"{target} (downloaded)"
        tried.append(f"download to {target} ({failure or 'files missing after download'})")
    raise DataError(f"{name} not found; looked in: {'; '.join(tried)}. {hint}")
