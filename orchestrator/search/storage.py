"""Optuna's RDB storage, surviving a database restart.

:class:`RetryingRDBStorage` is :class:`optuna.storages.RDBStorage` (so Optuna still wraps it in
its trial cache) whose every call is retried while the database is unreachable: a lost
connection, a refused one, a server shutting down (SQLAlchemy's ``OperationalError`` /
``InterfaceError`` / an invalidated connection, also when Optuna re-raised it as
``StorageInternalError``). It waits with exponential backoff (0.25 s doubling to 8 s) for at most
``retry_seconds`` (60 s) per outage, says once that it is waiting and once that the database
is back, and then ends in one line naming the (redacted) URL. Pooled connections are checked
before use (``pool_pre_ping``), so those a restart left dead are replaced, not used.

Opening the storage is not retried: a database that is unreachable when the search starts
is a configuration error, reported at once.

A write whose commit reached the database just before the connection broke is retried like
any other: setting attributes and values is idempotent, and a trial state that had already
been set counts as set; only a trial *creation* can then happen twice, leaving one extra
RUNNING trial with no ``arch_id`` (never evaluated, never counted).
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from typing import Any

from optuna.storages import RDBStorage

from orchestrator.errors import UserInputError
from orchestrator.secrets import redact

RETRY_SECONDS = 60.0
FIRST_DELAY = 0.25
MAX_DELAY = 8.0


class StudyStorageError(UserInputError):
    """The Optuna storage cannot be opened, does not fit the config, or stopped answering."""


def transient(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it) is a lost or refused database connection."""
    from sqlalchemy import exc as sa_exc

    seen: BaseException | None = exc
    for _ in range(8):  # the cause chain: StorageInternalError <- OperationalError <- driver
        if seen is None:
            return False
        if isinstance(seen, sa_exc.OperationalError | sa_exc.InterfaceError | sa_exc.TimeoutError):
            return True
        if isinstance(seen, sa_exc.DBAPIError) and seen.connection_invalidated:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _first_line(exc: BaseException) -> str:
    from sqlalchemy import exc as sa_exc

    cause: BaseException = exc
    while not isinstance(cause, sa_exc.DBAPIError) and cause.__cause__ is not None:
        cause = cause.__cause__
    text = str(getattr(cause, "orig", None) or cause).strip().splitlines()
    return f"{type(cause).__name__}: {redact(text[0]) if text else ''}"


# the RDBStorage methods that talk to the database (Optuna's trial cache calls the private ones)
_RETRIED = (
    "create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr",
    "get_study_id_from_name", "get_study_name_from_id", "get_study_directions",
    "get_study_user_attrs", "get_study_system_attrs", "get_all_studies", "create_new_trial",
    "_create_new_trial", "set_trial_param", "_set_trial_param", "get_trial_param",
    "get_trial_id_from_study_id_trial_number", "get_trial_number_from_id",
    "set_trial_state_values", "set_trial_intermediate_value", "set_trial_user_attr",
    "set_trial_system_attr", "get_trial_user_attrs", "get_trial_system_attrs", "get_trial",
    "get_all_trials", "_get_trials", "get_n_trials", "get_best_trial", "_get_best_trial_id",
    "record_heartbeat", "_get_stale_trial_ids",
)  # fmt: skip


class RetryingRDBStorage(RDBStorage):
    """RDBStorage that waits out a database outage of up to `retry_seconds` per call.

    `shown_url` is how messages name the storage (default: the URL redacted); `notify` gets
    the two lines an outage prints (default: ``print``). `outages` counts outages so far.
    """

    def __init__(
        self,
        url: str,
        *,
        retry_seconds: float = RETRY_SECONDS,
        shown_url: str | None = None,
        notify: Callable[[str], None] | None = None,
        engine_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.retry_seconds = float(retry_seconds)
        self.shown_url = shown_url or redact(url)
        self.notify = notify
        self.outages = 0
        self._local = threading.local()
        super().__init__(
            url, engine_kwargs={"pool_pre_ping": True, **(engine_kwargs or {})}, **kwargs
        )

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        state.pop("_local", None)
        state["notify"] = None
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__(state)
        self._local = threading.local()

    def _say(self, line: str) -> None:
        if self.notify is not None:
            self.notify(line)
        else:
            print(line, flush=True)

    def _call(self, method: Callable[..., Any], name: str, args: tuple, kwargs: dict) -> Any:
        if getattr(self._local, "busy", False):  # a call inside a call: the outer one retries
            return method(self, *args, **kwargs)
        import optuna

        self._local.busy = True
        started: float | None = None
        delay = FIRST_DELAY
        try:
            while True:
                try:
                    result = method(self, *args, **kwargs)
                except optuna.exceptions.UpdateFinishedTrialError:
                    # the first attempt's commit landed before its connection broke
                    landed = started is not None and name == "set_trial_state_values"
                    if not (landed and self._state_is(args, kwargs)):
                        raise
                    result = True
                except Exception as exc:
                    if not transient(exc):
                        raise
                    now = time.monotonic()
                    if started is None:
                        started = now
                        self.outages += 1
                        self._say(
                            f"[storage] {self.shown_url} is not answering ({_first_line(exc)}); "
                            f"retrying for up to {self.retry_seconds:g} s"
                        )
                    elapsed = now - started
                    if elapsed >= self.retry_seconds:
                        raise StudyStorageError(
                            f"search.storage={self.shown_url!r}: the database did not answer for "
                            f"{elapsed:.0f} s ({_first_line(exc)}); the archive and the study "
                            "hold every candidate evaluated so far: rerun to continue once the "
                            "database is back"
                        ) from None
                    time.sleep(min(delay, self.retry_seconds - elapsed))
                    delay = min(delay * 2, MAX_DELAY)
                    continue
                if started is not None:
                    self._say(
                        f"[storage] {self.shown_url} is answering again, after "
                        f"{time.monotonic() - started:.1f} s"
                    )
                return result
        finally:
            self._local.busy = False

    def _state_is(self, args: tuple, kwargs: dict) -> bool:
        trial_id = kwargs.get("trial_id", args[0] if args else None)
        state = kwargs.get("state", args[1] if len(args) > 1 else None)
        return trial_id is not None and RDBStorage.get_trial(self, trial_id).state == state


def _retrying(name: str) -> Callable[..., Any]:
    method = getattr(RDBStorage, name)

    @functools.wraps(method)
    def call(self: RetryingRDBStorage, *args: Any, **kwargs: Any) -> Any:
        return self._call(method, name, args, kwargs)

    return call


for _name in _RETRIED:
    setattr(RetryingRDBStorage, _name, _retrying(_name))
