"""Object-store run directories: a local working copy kept in step with the store.

Stages read and write a local folder (the *workspace*) exactly as they do for a local run
directory. For ``run_dir: s3://bucket/prefix`` (or ``gs://``) that folder is a mirror under
``$RAYNAS_RUN_CACHE`` (default ``~/.cache/raynas/runs/<scheme>/<bucket>/<prefix>``), and:

* when a driver takes the run directory, the mirror is made an exact copy of the store (the store
  is the truth: a resumed run on another machine starts from what the store holds);
* every file written through :mod:`orchestrator.files` (result files, the archive, Pareto files,
  the report, the tracking state) is uploaded before the write returns. An object store shows
  an object only once its upload completes, so readers see the old file or the new one, never
  half of one; the archive is therefore in the store before the study is told of a trial;
* when a stage ends, everything else it wrote (checkpoints, exports, plots, logs) is uploaded,
  and only then its ``result.json``: a stage is complete in the store only when all its files are;
* Ray Train writes checkpoints straight into the store (``storage_path``) from whichever node
  holds rank 0, and resumes from there; the driver downloads the stage folder when training ends.

Locking. An object store cannot lock. The rule: one driver per run directory. A driver holds a
*lease* object (``.raynas.lease``: host, pid, renewed-at) that it renews every
:data:`LEASE_RENEW_S`; another driver refuses the run directory while the lease was renewed
within :data:`LEASE_S`, unless its holder is a process of the same host that has ended (so a
driver killed on another machine blocks the run directory for at most a minute). Two drivers started in
the same instant are not detected; clocks of the hosts are assumed to agree within seconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.fs as pafs

from orchestrator.errors import UserInputError
from trainables.storage import (
    Location,
    StorageError,
    download_file,
    first_line,
    is_remote,
    object_version,
    open_location,
    upload_file,
)

LEASE_FILE = ".raynas.lease"
LEASE_S = 60.0
LEASE_RENEW_S = 15.0
STATE_FILE = ".raynas.mirror.json"  # each synced file's local (size, mtime) and store version
CACHE_ENV = "RAYNAS_RUN_CACHE"
#: files the workspace owns: a pull leaves them as they are (the driver's log is open while the
#: store is read); stage ends upload them, so the store holds the latest driver's log
WORKSPACE_OWNED = ("raynas.log",)


class RunDirBusy(UserInputError):
    """Another driver holds the run directory."""


def workspace_of(run_path: str) -> Path:
    """The local folder stages work in: the run directory itself, or its mirror."""
    if not is_remote(run_path):
        return Path(run_path.removeprefix("file://")).expanduser().resolve()
    scheme, rest = run_path.split("://", 1)
    base = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "raynas" / "runs")
    return base.expanduser().resolve() / scheme / rest.strip("/")


def _hidden(relative: str) -> bool:
    """Temporary and bookkeeping files (any path component starting with '.') stay local."""
    return any(part.startswith(".") for part in relative.split("/"))


class Mirror:
    """The workspace of one object-store run directory and the store it mirrors."""

    def __init__(self, run_path: str) -> None:
        self.uri = run_path.rstrip("/")
        self.store: Location = open_location(self.uri, "run_dir")
        self.local = workspace_of(self.uri)
        # relative path -> [local size, local mtime ns, store version] as of the last sync
        self._state: dict[str, list] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ listing
    def _remote_files(self, under: str = "") -> dict[str, pafs.FileInfo]:
        base = self.store.child(under) if under else self.store.path
        try:
            infos = self.store.filesystem.get_file_info(
                pafs.FileSelector(base, recursive=True, allow_not_found=True)
            )
        except OSError as exc:
            raise StorageError(
                f"run_dir={self.uri!r}: cannot list the store ({first_line(exc)}); check the "
                "endpoint and the credentials in the environment (AWS_ENDPOINT_URL, "
                "AWS_ACCESS_KEY_ID, ...)"
            ) from None
        prefix = self.store.path.rstrip("/") + "/"
        return {
            info.path[len(prefix) :]: info
            for info in infos
            if info.type == pafs.FileType.File and info.path.startswith(prefix)
        }

    def _local_files(self, under: str = "") -> dict[str, os.stat_result]:
        root = self.local / under if under else self.local
        if not root.is_dir():
            return {}
        found = {}
        for path in root.rglob("*"):
            if path.is_file():
                relative = path.relative_to(self.local).as_posix()
                if not _hidden(relative):
                    found[relative] = path.stat()
        return found

    @staticmethod
    def _mark(stat: os.stat_result, version: str) -> list:
        return [stat.st_size, stat.st_mtime_ns, version]

    def _in_step(self, relative: str, stat: os.stat_result | None, info: pafs.FileInfo) -> bool:
        """Whether the workspace copy is what was last synced with this store object."""
        mark = self._known().get(relative)
        if stat is None or mark is None or mark[:2] != [stat.st_size, stat.st_mtime_ns]:
            return False
        return info.size == stat.st_size and mark[2] == object_version(self.store, info.path)

    def _save_state(self) -> None:
        self.local.mkdir(parents=True, exist_ok=True)
        tmp = self.local / f"{STATE_FILE}.tmp"
        tmp.write_text(json.dumps(self._state))
        tmp.replace(self.local / STATE_FILE)

    # ------------------------------------------------------------------ store -> workspace
    def pull(self, under: str = "") -> int:
        """Make the workspace (or its folder `under`) an exact copy of the store; returns how
        many files were downloaded."""
        remote = self._remote_files(under)
        local = self._local_files(under)
        fetched = 0
        versions = {}
        for relative, info in remote.items():
            if _hidden(relative) or relative in WORKSPACE_OWNED:
                continue
            if self._in_step(relative, local.get(relative), info):
                versions[relative] = self._known()[relative][2]
                continue
            versions[relative] = object_version(self.store, info.path)
            download_file(self.store, info.path, self.local / relative)
            fetched += 1
        for relative in set(local) - set(remote) - set(WORKSPACE_OWNED):
            (self.local / relative).unlink()
        with self._lock:
            known = self._known()
            for key in [k for k in known if not under or k.startswith(under.rstrip("/") + "/")]:
                del known[key]
            for relative, version in versions.items():
                known[relative] = self._mark((self.local / relative).stat(), version)
            self._save_state()
        return fetched

    def _known(self) -> dict[str, list[int]]:
        if not self._state and (self.local / STATE_FILE).is_file():
            try:
                self._state = json.loads((self.local / STATE_FILE).read_text())
            except (OSError, ValueError):
                self._state = {}
        return self._state

    def fetch(self, relative: str) -> Path | None:
        """One file of the store into the workspace (None when the store has none)."""
        path = self.store.child(relative)
        if not self.store.exists(path):
            return None
        download_file(self.store, path, self.local / relative)
        return self.local / relative

    # ------------------------------------------------------------------ workspace -> store
    def push(self, path: Path) -> None:
        """Upload one workspace file (no-op for files outside it and for hidden ones)."""
        try:
            relative = Path(path).resolve().relative_to(self.local).as_posix()
        except ValueError:
            return
        if _hidden(relative) or not (self.local / relative).is_file():
            return
        self._upload(relative)

    def _upload(self, relative: str) -> None:
        source = self.local / relative
        stat = source.stat()
        target = self.store.child(relative)
        try:
            upload_file(self.store, source, target)
            version = object_version(self.store, target)
        except OSError as exc:
            raise StorageError(
                f"run_dir={self.uri!r}: cannot write {relative} ({first_line(exc)})"
            ) from None
        with self._lock:
            self._known()[relative] = self._mark(stat, version)
            self._save_state()

    def sync(self, under: str = "", last: tuple[str, ...] = ()) -> int:
        """Upload every workspace file (under `under`) that changed since it was last synced,
        the files in `last` after all others; returns how many were uploaded."""
        known = self._known()
        changed = [
            relative
            for relative, stat in sorted(self._local_files(under).items())
            if (known.get(relative) or [None, None])[:2] != [stat.st_size, stat.st_mtime_ns]
        ]
        changed.sort(key=lambda relative: relative in last)
        for relative in changed:
            self._upload(relative)
        return len(changed)

    def remove(self, relative: str) -> None:
        """Delete a file or folder from the store (the workspace side is the caller's)."""
        path = self.store.child(relative)
        info = self.store.info(path)
        if info.type == pafs.FileType.File:
            self.store.filesystem.delete_file(path)
        elif info.type == pafs.FileType.Directory:
            self.store.filesystem.delete_dir(path)
        with self._lock:
            known = self._known()
            for key in [k for k in known if k == relative or k.startswith(relative + "/")]:
                del known[key]
            self._save_state()

    def storage_path(self, relative: str = "") -> tuple[str, pafs.FileSystem]:
        """(path, filesystem) of a folder in the store, as Ray Train's `storage_path` /
        `storage_filesystem` take them."""
        return (self.store.child(relative) if relative else self.store.path), self.store.filesystem

    def local_path(self, store_path: str) -> Path:
        """The workspace path of a path in the store (as Ray Train reports them)."""
        prefix = self.store.path.rstrip("/") + "/"
        if not store_path.startswith(prefix):
            raise ValueError(f"{store_path} is not inside the run directory {self.uri}")
        return self.local / store_path[len(prefix) :]

    # ------------------------------------------------------------------ lease
    def _lease_path(self) -> str:
        return self.store.child(LEASE_FILE)

    def _read_lease(self) -> dict | None:
        try:
            with self.store.filesystem.open_input_stream(self._lease_path()) as source:
                return json.loads(source.read())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return None

    def _write_lease(self, me: dict) -> None:
        with self.store.filesystem.open_output_stream(self._lease_path()) as out:
            out.write(json.dumps({**me, "renewed": time.time()}).encode())

    @contextlib.contextmanager
    def lease(self) -> Iterator[None]:
        """Hold the run directory's lease while the block runs (see the module's rule)."""
        me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}
        held = self._read_lease()
        if held is not None and (held.get("host"), held.get("pid")) != (me["host"], me["pid"]):
            age = time.time() - float(held.get("renewed", 0))
            if age < LEASE_S and not _dead_here(held):
                raise RunDirBusy(
                    f"run directory {self.uri} is in use by another raynas driver (host "
                    f"{held.get('host')}, pid {held.get('pid')}, lease renewed {age:.0f} s ago); "
                    f"wait for it to finish or stop it (its lease lapses {LEASE_S:.0f} s after "
                    "it stops), or choose another run_dir"
                )
        try:
            self._write_lease(me)
        except OSError as exc:
            raise StorageError(
                f"run_dir={self.uri!r}: cannot write to the store ({first_line(exc)}); check the "
                "endpoint, the bucket and the credentials in the environment"
            ) from None
        stop = threading.Event()

        def renew() -> None:
            while not stop.wait(LEASE_RENEW_S):
                with contextlib.suppress(OSError):
                    self._write_lease(me)

        thread = threading.Thread(target=renew, name="raynas-lease", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=5)
            with contextlib.suppress(OSError):
                self.store.filesystem.delete_file(self._lease_path())


def _dead_here(holder: dict) -> bool:
    """Whether a lease's holder is a process of this host that no longer runs."""
    if holder.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(holder.get("pid", 0)), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError, TypeError):
        return False
    return False


# ---------------------------------------------------------------------- the driver's mirror
_active: Mirror | None = None


@contextlib.contextmanager
def active(mirror: Mirror | None) -> Iterator[Mirror | None]:
    """Make `mirror` the one :func:`written` uploads to while the block runs."""
    global _active
    previous, _active = _active, mirror
    try:
        yield mirror
    finally:
        _active = previous


def current() -> Mirror | None:
    return _active


def for_workers(path: str | Path | None) -> str | None:
    """A workspace path as the Ray workers of any node can read it: the store URI when the run
    directory is in an object store (``trainables.storage.local_folder`` fetches it there), else
    the path itself."""
    if path is None:
        return None
    if _active is None:
        return str(path)
    try:
        relative = Path(path).resolve().relative_to(_active.local).as_posix()
    except ValueError:
        return str(path)
    return f"{_active.uri}/{relative}"


def written(path: str | Path) -> None:
    """Called by :mod:`orchestrator.files` after each complete write."""
    if _active is not None:
        _active.push(Path(path))


def removed(path: str | Path) -> None:
    """A workspace file the caller deleted: delete it from the store too."""
    if _active is None:
        return
    try:
        relative = Path(path).resolve().relative_to(_active.local).as_posix()
    except ValueError:
        return
    _active.remove(relative)
