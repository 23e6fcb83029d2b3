"""Paths and URIs through pyarrow.fs: the one place a `s3://` / `gs://` / local location becomes a
filesystem and a path inside it.

Credentials and endpoints come from the environment as pyarrow reads them (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, ``AWS_DEFAULT_REGION``; Google's application
default credentials for ``gs://``); they are never part of a URI raynas writes.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

from trainables.errors import UserInputError

REMOTE_SCHEMES = ("s3", "gs", "gcs", "hdfs", "abfs", "abfss")


class StorageError(UserInputError):
    """A location cannot be opened, read or written."""


def is_remote(uri: str | os.PathLike) -> bool:
    """Whether `uri` names an object store (or another non-local pyarrow filesystem)."""
    text = str(uri)
    return "://" in text and not text.startswith("file://")


@dataclass(frozen=True)
class Location:
    """A filesystem and a path inside it, plus the URI as the user wrote it (for messages)."""

    filesystem: pafs.FileSystem
    path: str
    uri: str

    def child(self, *parts: str) -> str:
        return "/".join([self.path.rstrip("/"), *(p.strip("/") for p in parts)])

    def info(self, path: str | None = None) -> pafs.FileInfo:
        return self.filesystem.get_file_info(path or self.path)

    def exists(self, path: str) -> bool:
        return self.info(path).type == pafs.FileType.File

    def kind(self, path: str) -> pafs.FileType:
        return self.info(path).type

    @property
    def local(self) -> bool:
        return isinstance(self.filesystem, pafs.LocalFileSystem)


def open_location(uri: str | os.PathLike, what: str = "path") -> Location:
    """A local path or a URI pyarrow.fs understands (``s3://``, ``gs://``, ``hdfs://``,
    ``file://``); one line naming `what` when it cannot be opened."""
    text = str(uri)
    try:
        if "://" in text:
            filesystem, path = pafs.FileSystem.from_uri(text)
        else:
            filesystem, path = pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(text))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError, ValueError) as exc:
        scheme = text.split("://", 1)[0] if "://" in text else "local"
        raise StorageError(
            f"{what}={text!r} is not a usable path or URI ({first_line(exc)}); allowed: a local "
            f"path or {', '.join(s + '://' for s in REMOTE_SCHEMES[:2])} (scheme {scheme!r})"
        ) from None
    return Location(filesystem, path.rstrip("/") or path, text)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


def download_file(location: Location, path: str, target: Path) -> None:
    """Copy one file of `location` to the local `target` through a temporary name beside it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.download")
    with location.filesystem.open_input_stream(path) as source, open(partial, "wb") as out:
        shutil.copyfileobj(source, out, length=1 << 20)
    partial.replace(target)


def upload_file(location: Location, source: Path, path: str) -> None:
    """Copy the local `source` to `path` of `location`. An object store makes the object visible
    only when the upload completes, so a reader sees the old object or the new one whole."""
    with open(source, "rb") as data, location.filesystem.open_output_stream(path) as out:
        shutil.copyfileobj(data, out, length=1 << 20)


FETCH_CACHE_ENV = "RAYNAS_FETCH_CACHE"
VERSIONS_FILE = ".raynas.versions.json"


def fetch_cache(uri: str) -> Path:
    """Where this node keeps its copy of the store folder `uri`."""
    scheme, rest = uri.split("://", 1)
    base = os.environ.get(FETCH_CACHE_ENV) or Path.home() / ".cache" / "raynas" / "fetched"
    return Path(base).expanduser().resolve() / scheme / rest.strip("/")


def object_version(location: Location, path: str) -> str:
    """What changes whenever an object's content does: its ETag (a HEAD request) where the
    store gives one, else its size and modification time."""
    try:
        with location.filesystem.open_input_file(path) as handle:
            etag = handle.metadata().get("ETag")
    except OSError:
        etag = None
    if etag:
        return etag.decode() if isinstance(etag, bytes) else str(etag)
    info = location.info(path)
    return f"{info.size}:{info.mtime_ns}"


def local_folder(folder: str | os.PathLike) -> Path:
    """A folder a worker reads (a checkpoint, a dense model): in place when it is local; when it
    is in an object store, this node's copy of it, downloaded once and again only when an object
    in the store changed (their versions are kept beside the copy). Safe for several processes
    of one node at once."""
    text = str(folder)
    if not is_remote(text):
        return Path(text)
    from filelock import FileLock

    location = open_location(text, "folder")
    try:
        infos = location.filesystem.get_file_info(
            pafs.FileSelector(location.path, recursive=True, allow_not_found=True)
        )
        files = {
            info.path[len(location.path) + 1 :]: object_version(location, info.path)
            for info in infos
            if info.type == pafs.FileType.File
        }
    except OSError as exc:
        raise StorageError(f"{text}: cannot read the store ({first_line(exc)})") from None
    if not files:
        raise StorageError(f"{text}: no such folder in the store")
    target = fetch_cache(text)
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.with_name(f".{target.name}.lock"))):
        try:
            if json.loads((target / VERSIONS_FILE).read_text()) == files:
                return target
        except (OSError, ValueError):
            pass
        staging = target.with_name(f".{target.name}.{os.getpid()}.partial")
        shutil.rmtree(staging, ignore_errors=True)
        for relative in files:
            download_file(location, location.child(relative), staging / relative)
        (staging / VERSIONS_FILE).write_text(json.dumps(files))
        shutil.rmtree(target, ignore_errors=True)
        staging.replace(target)
    return target
