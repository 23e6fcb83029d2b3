"""A real PostgreSQL server for tests: `initdb` + `pg_ctl` on a free loopback port.

The data directory lives in its own temporary folder (not under pytest's, which only its
owner may enter): PostgreSQL refuses to run as root, so as root the binaries run as the
`postgres` OS user, which owns that folder. Clients authenticate with a password
(scram-sha-256 over TCP); the socket directory is the temporary folder, so nothing is
shared with a system PostgreSQL. `stop()` and `start()` restart the server on the same data
and port; `pg_ctl -w` returns once the server accepts connections (or has shut down).

`make test` installs Debian's `postgresql` package where no `initdb` is found; elsewhere the
tests that need the server are skipped with that hint.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.helpers.servers import free_port

USER = "raynas"


def pg_bin() -> Path | None:
    """The newest installed PostgreSQL's bin folder (Debian layout), or None."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PostgresServer:
    """One PostgreSQL cluster: a password-authenticated user `raynas` owning `databases`."""

    def __init__(self, databases: Sequence[str] = ("raynas",)) -> None:
        bin_dir = pg_bin()
        if bin_dir is None:
            raise FileNotFoundError("no PostgreSQL (initdb) found; `make test` installs it")
        self.bin = bin_dir
        self.databases = tuple(databases)
        self.password = "pg-" + secrets.token_hex(8)
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="raynas-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._as_root = os.geteuid() == 0
        if self._as_root:
            shutil.chown(self.root, "postgres", "postgres")
        self.running = False

    # ---- the binaries, as the postgres user when we are root -------------------------------
    def _run(self, tool: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        command = [str(self.bin / tool), *args]
        if self._as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            log = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(
                f"{tool} {' '.join(args)} failed:\n{done.stderr}{done.stdout}\n{log}"
            )
        return done

    def init(self) -> None:
        self._run(
            "initdb", "-D", str(self.data), "-U", "postgres", "-E", "UTF8", "--no-sync",
            "--auth-local=trust", "--auth-host=scram-sha-256",
        )  # fmt: skip
        self.start()
        statements = [f"CREATE ROLE {USER} LOGIN PASSWORD '{self.password}'"]
        statements += [f"CREATE DATABASE {db} OWNER {USER}" for db in self.databases]
        for statement in statements:
            self._run("psql", "-h", str(self.root), "-p", str(self.port), "-U", "postgres",
                      "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-q", "-c", statement)  # fmt: skip

    def start(self) -> None:
        """Start (again) on the same data directory and port; returns once it accepts
        connections."""
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} "
            f"-c unix_socket_directories={self.root} -c fsync=off -c max_connections=100"
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options,
                  "-w", "-t", "120", "start")  # fmt: skip
        self.running = True

    def stop(self) -> None:
        """Stop it (fast mode: clients are disconnected); returns once it is down."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "120", "stop")
        self.running = False

    def url(self, database: str = "raynas", password: str | None = None) -> str:
        """A SQLAlchemy URL; `password` replaces the real one (e.g. ``${PGPASSWORD}``)."""
        secret = self.password if password is None else password
        return f"postgresql+psycopg2://{USER}:{secret}@127.0.0.1:{self.port}/{database}"

    def psql(self, database: str, sql: str) -> str:
        """One query's rows as psql prints them unaligned (as the superuser, via the socket)."""
        return self._run("psql", "-h", str(self.root), "-p", str(self.port), "-U", "postgres",
                         "-d", database, "-At", "-c", sql).stdout  # fmt: skip

    def close(self) -> None:
        try:
            if self.running:
                self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@contextmanager
def postgres_server(databases: Sequence[str] = ("raynas",)) -> Iterator[PostgresServer]:
    server = PostgresServer(databases)
    try:
        server.init()
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    """One server per test module, with the databases `raynas` (Optuna) and `mlflow` (an MLflow
    server's backend store: both use a table named alembic_version, so they cannot share)."""
    if pg_bin() is None:
        pytest.skip("PostgreSQL is not installed (make test installs Debian's postgresql)")
    with postgres_server(("raynas", "mlflow", "restart")) as server:
        yield server
