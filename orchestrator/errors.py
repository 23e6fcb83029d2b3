"""Errors a user can cause in the orchestrator. The CLI prints them as `error: ...` lines."""

from trainables.errors import DataError, UserInputError


class ConfigError(UserInputError):
    """A config file is unreadable or invalid; `problems` holds one line per problem."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(f"{source}: {p}" for p in problems))


class Terminated(BaseException):  # noqa: N818 - like KeyboardInterrupt, not an error
    """The driver received SIGTERM (``ray job stop``, Kubernetes, ``kill``): stop like Ctrl-C."""


__all__ = ["ConfigError", "DataError", "Terminated", "UserInputError"]
