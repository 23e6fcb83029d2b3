"""Paths and URIs through pyarrow.fs: the one place a `s3://` / `gs://` / local location becomes a
filesystem and a path inside it.

Credentials and endpoints come from the environment as pyarrow reads them (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, ``AWS_DEFAULT_REGION``; Google's application
default credentials for ``gs://``); they are never part of a URI raynas writes.
"""

from __future__ import annotations

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
