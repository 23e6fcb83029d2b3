"""Credentials in URLs: taken from the environment, never printed or written.

A storage or tracking URL may carry a password (``postgresql://user:pw@host/db``). raynas
writes such a URL only redacted (``postgresql://user:***@host/db``): in `config.yaml`, result
files, MLflow params, reports, progress and error lines. To keep the secret out of the config
file too, write ``${NAME}`` (or ``${NAME:-default}``) anywhere in the value: it is expanded from
the environment at the moment the URL is used, and saved as written. A resumed run whose saved
URL was redacted needs the URL again (``--set`` or ``${NAME}``).
"""

from __future__ import annotations

import os
import re
from typing import Any

from orchestrator.errors import UserInputError

MASK = "***"
_USERINFO = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@/\s]+)@"
)
_QUERY = re.compile(
    r"(?P<key>[?&;](?:password|passwd|pwd|token|secret|access_key|secret_key)=)[^&;\s]+", re.I
)
_VAR = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")


def redact(text: Any) -> Any:
    """`text` with every URL password (and password-like query value) replaced by ``***``;
    non-strings are returned as they are."""
    if not isinstance(text, str):
        return text
    text = _USERINFO.sub(
        lambda m: (
            m[0]
            if m["pw"] == MASK or _VAR.fullmatch(m["pw"])
            else f"{m['scheme']}{m['user']}:{MASK}@"
        ),
        text,
    )
    return _QUERY.sub(lambda m: f"{m['key']}{MASK}", text)


def redact_tree(data: Any) -> Any:
    """:func:`redact` applied to every string in nested dicts and lists."""
    if isinstance(data, dict):
        return {k: redact_tree(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [redact_tree(v) for v in data]
    return redact(data)


def is_redacted(text: str | None) -> bool:
    return isinstance(text, str) and f":{MASK}@" in text


def resolve(value: str | None, field: str) -> str | None:
    """The URL to connect with: ``${NAME}`` expanded from the environment. One clear line
    when a variable is unset or the saved URL lost its password to redaction."""
    if value is None:
        return None

    def expand(match: re.Match) -> str:
        name, default = match["name"], match["default"]
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        raise UserInputError(
            f"{field}: the environment variable {name} is not set (the value is {redact(value)}); "
            f"export {name}=... or give the value with --set {field}=..."
        )

    resolved = _VAR.sub(expand, value)
    if is_redacted(resolved):
        raise UserInputError(
            f"{field}={resolved}: the password was not saved (raynas never writes secrets); "
            f"give the URL again with --set {field}=..., or write ${{NAME}} in the config and "
            "export NAME"
        )
    return resolved
