"""Writing run-directory files so that a reader never sees half of one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write `text` to `<path>.tmp`, then rename it over `path` (atomic on one filesystem)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def write_json_atomic(path: str | Path, data: Any, **dumps: Any) -> Path:
    """`data` as indented JSON, written with :func:`write_text_atomic`."""
    return write_text_atomic(path, json.dumps(data, indent=2, **dumps))
