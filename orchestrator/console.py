"""What a raynas command shows on the console, and where everything else goes.

The console gets raynas's own progress (`== raynas: stage ...`, `[supernet] epoch ...` lines, also
when a Ray worker prints them), its tables, errors (ERROR and above from any logger, Ray's raylet
messages), warnings logged by raynas's modules and UserWarnings raised in them.

Everything else - the logging of Ray, Ray Train/Tune, MLflow, alembic, Optuna and torch, Python
warnings from libraries, and what Ray's worker processes print (Ray Train's reports, DDP's
warnings, Ray core's C++ log lines) - goes to `<run_dir>/raynas.log`, and with `-v` to the
console as well (worker output then in Ray's own `(Actor pid=...)` form).

`setup_logging` is called by the CLI once it knows the run directory; `ensure_ray` calls
`capture_ray` / `capture_worker_output` around `ray.init`. Without `setup_logging` (a library
user, a test calling a stage) nothing is changed.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

LOG_FILE = "raynas.log"
OWN_PACKAGES = ("orchestrator", "trainables", "search_spaces")
# raynas's progress lines: `[supernet] epoch 1/8 ...`, `[search] ...`, `[mole] ...`
PROGRESS_LINE = re.compile(r"^\[[a-z][a-z0-9_-]*\] ")
# a UserWarning raised in raynas's modules, as a worker process prints it
OWN_WARNING_LINE = re.compile(
    r"(^|[/\\])(" + "|".join(OWN_PACKAGES) + r")[/\\][^:]*\.py:\d+: (\w+\.)*\w*Warning: "
)
# Ray Train's controller deciding what a worker group failure leads to (RETRY or RAISE)
FAILURE_POLICY_LINE = re.compile(r"^\[FailurePolicy\] (\w+)")
# libraries that install their own console handlers; theirs are removed, their records propagate
_OWN_HANDLER_LOGGERS = ("ray", "mlflow", "alembic", "sqlalchemy.engine", "huey", "optuna")
_WORKER_LOGGER = "raynas.workers"
_RAY_HANDLER = "ray_print_logs"  # the name Ray gives its log_to_driver printer


class _State:
    active = False
    verbose = False
    handlers: list[logging.Handler] = []
    showwarning = None
    env_set: list[str] = []


_state = _State()


class RunLogHandler(logging.Handler):
    """Appends to `<run_dir>/raynas.log` once the run directory exists, holding earlier records
    in memory until then (a command that fails before creating its run directory creates none)."""

    BUFFER = 10_000

    def __init__(self, path: Path):
        super().__init__(logging.DEBUG)
        self.path = path
        self._file: logging.FileHandler | None = None
        self._pending: list[logging.LogRecord] = []

    def setFormatter(self, fmt: logging.Formatter | None) -> None:
        super().setFormatter(fmt)
        if self._file is not None:
            self._file.setFormatter(fmt)

    def emit(self, record: logging.LogRecord) -> None:
        if self._file is None:
            if not self.path.parent.is_dir():
                if len(self._pending) < self.BUFFER:
                    self._pending.append(record)
                return
            self._file = logging.FileHandler(self.path, mode="a", encoding="utf-8")
            self._file.setFormatter(self.formatter)
            pending, self._pending = self._pending, []
            for earlier in pending:
                self._file.emit(earlier)
        self._file.emit(record)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        super().close()


class _Stderr(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is at emit time (like logging's last-resort handler)."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        if record.name == "py.warnings":
            return record.getMessage().rstrip()
        return super().format(record)


def _shown_quietly(record: logging.LogRecord) -> bool:
    """Without -v: errors, raynas's own warnings and UserWarnings raised in raynas's code."""
    if record.levelno >= logging.ERROR:
        return True
    if record.name == "py.warnings":
        return getattr(record, "raynas_own", False)
    return record.levelno >= logging.WARNING and record.name.split(".")[0] in OWN_PACKAGES


def _package_dirs() -> tuple[str, ...]:
    dirs = []
    for name in OWN_PACKAGES:
        spec = importlib.util.find_spec(name)
        for location in (spec and spec.submodule_search_locations) or ():
            dirs.append(os.path.join(os.path.realpath(location), ""))
    return tuple(dirs)


def _make_showwarning(own_dirs: tuple[str, ...]):
    original = warnings.showwarning

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if file is not None:  # an explicit destination: leave it alone
            return original(message, category, filename, lineno, file, line)
        text = warnings.formatwarning(message, category, filename, lineno, line)
        own = issubclass(category, UserWarning) and os.path.realpath(filename).startswith(own_dirs)
        logging.getLogger("py.warnings").warning("%s", text.rstrip(), extra={"raynas_own": own})

    return showwarning, original


def _adopt(name: str) -> None:
    """Drop the console handlers a library put on its logger; its records reach ours."""
    logger = logging.getLogger(name)
    for handler in list(logger.handlers):
        if isinstance(handler, logging.StreamHandler) and not isinstance(
            handler, logging.FileHandler
        ):
            logger.removeHandler(handler)
    logger.propagate = True


def setup_logging(run_dir: str | Path | None, verbose: bool = False) -> Path | None:
    """Route library logging, warnings and Ray worker output as the module docstring says;
    returns the log file's path (None for a remote run directory: console only). Calling it
    again replaces the previous setup."""
    reset()
    env = {"MLFLOW_CONFIGURE_LOGGING": "false"}  # for an mlflow imported after this
    if not verbose:
        env["RAY_AIR_NEW_OUTPUT"] = "0"  # Tune's new output prints its box even with verbose=0
    _state.env_set = [name for name in env if name not in os.environ]
    os.environ.update({name: env[name] for name in _state.env_set})
    log_format = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    console = _Stderr()
    console.setFormatter(_Formatter("%(levelname)s %(name)s: %(message)s"))
    console.setLevel(logging.INFO)
    if not verbose:
        console.addFilter(_shown_quietly)
    handlers: list[logging.Handler] = [console]
    path = None
    if run_dir is not None and "://" not in str(run_dir):
        path = Path(run_dir).resolve() / LOG_FILE
        file_handler = RunLogHandler(path)
        file_handler.setFormatter(_Formatter(log_format))
        handlers.append(file_handler)
    root = logging.getLogger()
    for handler in handlers:
        root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    for name in _OWN_HANDLER_LOGGERS:
        _adopt(name)
    logging.getLogger("alembic").setLevel(logging.INFO)  # mlflow sets WARNING
    # SQLAlchemy echoes every statement when INFO is enabled for it at engine creation
    logging.getLogger("sqlalchemy").setLevel(logging.WARNING)
    try:
        import optuna.logging

        optuna.logging.disable_default_handler()
        optuna.logging.enable_propagation()
    except ImportError:  # pragma: no cover - optuna is a dependency
        pass
    workers = logging.getLogger(_WORKER_LOGGER)
    workers.propagate = False
    workers.setLevel(logging.INFO)
    for handler in handlers[1:]:
        workers.addHandler(handler)
    showwarning, original = _make_showwarning(_package_dirs())
    warnings.showwarning = showwarning
    _state.showwarning = original
    _state.handlers = handlers
    _state.verbose = verbose
    _state.active = True
    return path


def reset() -> None:
    """Undo `setup_logging` (tests; a second command in the same process)."""
    if not _state.active:
        return
    root = logging.getLogger()
    workers = logging.getLogger(_WORKER_LOGGER)
    for handler in _state.handlers:
        root.removeHandler(handler)
        workers.removeHandler(handler)
        handler.close()
    if _state.showwarning is not None:
        warnings.showwarning = _state.showwarning
    for name in _state.env_set:
        os.environ.pop(name, None)
    _state.handlers, _state.showwarning, _state.env_set, _state.active = [], None, [], False


def capture_ray() -> None:
    """Before `ray.init`: Ray's driver-side logging goes through our handlers."""
    if _state.active:
        _adopt("ray")


def capture_worker_output() -> None:
    """After `ray.init(log_to_driver=True)`: the lines Ray forwards from its worker processes.
    Quietly, raynas's progress lines are printed without Ray's prefix, raynas's warnings and
    raylet messages go to stderr and the rest to the log file only; with -v Ray prints them all
    as usual and the log file gets a copy."""
    if not _state.active:
        return
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:  # a Ray without it: its own printing stays
        return
    handler = _WorkerOutput(quiet=not _state.verbose)
    if handler.quiet:
        dispatcher.remove_handler(_RAY_HANDLER)
        dispatcher.add_handler(_RAY_HANDLER, handler)
    else:
        dispatcher.remove_handler("raynas_log_file")
        dispatcher.add_handler("raynas_log_file", handler)


class _WorkerOutput:
    """A handler of Ray's worker-output dispatcher (one batch of lines of one process)."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.logger = logging.getLogger(_WORKER_LOGGER)
        self.lock = threading.Lock()

    def __call__(self, data: dict[str, Any]) -> None:
        pid = data.get("pid")
        name = data.get("actor_name") or data.get("task_name") or ""
        prefix = (
            f"({pid})"
            if pid in ("raylet", "autoscaler")
            else f"({name} pid={pid})".replace("( ", "(")
        )
        if data.get("ip") and data.get("ip") != data.get("localhost"):
            prefix = prefix[:-1] + f", ip={data['ip']})"
        lines = data.get("lines", [])
        if pid == "autoscaler":  # its status dumps; like Ray, keep only the events in them
            lines = list(_autoscaler_events(lines))
        for i, line in enumerate(lines):
            self.logger.info("%s %s", prefix, line)
            if not self.quiet:
                continue
            if not data.get("is_err") and PROGRESS_LINE.match(line):
                self._print(line, sys.stdout)
            elif pid in ("raylet", "autoscaler") or OWN_WARNING_LINE.search(line):
                self._print(f"{prefix} {line}", sys.stderr)
            elif FAILURE_POLICY_LINE.match(line):
                self._print(_failure_summary(lines, i), sys.stderr)

    def _print(self, text: str, stream) -> None:
        with self.lock:
            print(text, file=stream, flush=True)


def _autoscaler_events(lines: list[str]):
    try:
        from ray._private.worker import filter_autoscaler_events
    except ImportError:  # a Ray without it: the event-summary marker of autoscaler v1
        return (line.split(":event_summary:")[1] for line in lines if ":event_summary:" in line)
    return filter_autoscaler_events(lines)


def _failure_summary(lines: list[str], start: int) -> str:
    """One console line for Ray Train's `[FailurePolicy] RETRY|RAISE` block: the decision, the
    error count and the worker's exception (the first line after a traceback's frames)."""
    decision = FAILURE_POLICY_LINE.match(lines[start]).group(1)
    count, error, in_traceback = "", "", False
    for line in lines[start + 1 :]:
        if FAILURE_POLICY_LINE.match(line):
            break
        if line.strip().startswith("Error count:"):
            count = line.strip().removeprefix("Error count:").strip()
        elif line.startswith("Traceback"):
            in_traceback = True
        elif in_traceback and line and not line[0].isspace():
            error = line.strip()
            break
    text = f"warning: a Ray Train worker failed ({error or 'see the log'}); {decision.lower()}"
    if count:
        text += f", error count {count}"
    log = next((h.path for h in _state.handlers if isinstance(h, RunLogHandler)), None)
    return text + (f"; details in {log}" if log else "")
