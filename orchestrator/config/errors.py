"""Turn pydantic validation errors into lines a user can act on.

Each line names the field path, the value given and what is allowed, e.g.
  `search.strategy: got 'nsgaii'; allowed: 'nsga2', 'evolution', 'tpe', 'random' or 'gp'`
  `data.vall_size: unknown key; allowed keys: name, root, ...; did you mean 'val_size'?`
"""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationError


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The BaseModel inside `annotation` (unwrapping Optional, list[...], dict[..., ...])."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, list, tuple, dict):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None


def model_at(root: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class that holds the field at `loc` (list indices are skipped)."""
    model: type[BaseModel] | None = root
    for part in loc:
        if model is None:
            return None
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        model = _model_in(field.annotation)
    return model


def dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<top level>"


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _allowed(message: str) -> str:
    # pydantic words literal errors as "Input should be 'a', 'b' or 'c'"
    for prefix in ("Input should be ", "Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            message = message[len(prefix) :]
            return f"allowed: {message}" if prefix == "Input should be " else message
    return message


def format_errors(error: ValidationError, root: type[BaseModel]) -> list[str]:
    lines = []
    for item in error.errors(include_url=False):
        loc = tuple(item["loc"])
        path = dotted(loc)
        if item["type"] == "extra_forbidden":
            holder = model_at(root, loc[:-1])
            key = str(loc[-1])
            allowed = sorted(holder.model_fields) if holder is not None else []
            line = f"{path}: unknown key"
            if allowed:
                line += f"; allowed keys: {', '.join(allowed)}"
                close = difflib.get_close_matches(key, allowed, n=1)
                if close:
                    line += f"; did you mean {close[0]!r}?"
            lines.append(line)
        elif item["type"] == "missing":
            lines.append(f"{path}: required key is missing")
        else:
            given = f"got {_show(item['input'])}; " if loc else ""
            lines.append(f"{path}: {given}{_allowed(item['msg'])}")
    return lines
