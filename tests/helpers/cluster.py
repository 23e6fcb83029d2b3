"""A Ray cluster of several nodes started with `ray start` on 127.0.0.1, token auth on, as on a
real cluster: one temp dir, port set and process group per node, so a test can kill ONE node.

No Ray runs in the test process. A cluster is stopped by ending exactly its own processes (found
by a marker in their environment), not with `ray stop`, which kills every Ray process on the
machine, other users' clusters included; a node is killed the same way, by its own marker.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from tests.helpers.servers import free_port

BIN = Path(sys.executable).parent
MARKER = "RAYNAS_TEST_CLUSTER"
NODE_MARKER = "RAYNAS_TEST_NODE"


class Cluster:
    """Nodes on 127.0.0.1 with token auth; `start_node(name, ...)` adds one."""

    def __init__(self, folder: Path) -> None:
        # one temp dir per node, as on separate machines (a worker node sharing the head's would
        # re-extract the job's working dir under the running driver); short, since Ray's socket
        # paths under them must stay below 108 characters
        self.temp_dirs: dict[str, str] = {}
        self.dead: list[str] = []  # temp dirs of killed nodes
        self.folder = folder
        self.marker = secrets.token_hex(8)
        self.token_file = folder / "auth_token"
        self.token_file.write_text(secrets.token_hex(32))
        self.token_file.chmod(0o600)
        self.port = free_port()
        self.dashboard_port = free_port()
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env.update(
            {
                # every node, worker and client reads the token from this file; Ray's default,
                # ~/.ray/auth_token, is shared with any other Ray this user runs
                "RAY_AUTH_MODE": "token",
                "RAY_AUTH_TOKEN_PATH": str(self.token_file),
                "RAY_USAGE_STATS_ENABLED": "0",
                "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",  # `raynas` for the job
                MARKER: self.marker,  # inherited by every process of this cluster
            }
        )
        self.env = env

    def ray(self, *args: str, env: dict | None = None, timeout: float = 180):
        return subprocess.run(
            [str(BIN / "ray"), *args],
            env=env or self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start_head(self, *args: str) -> None:
        self.start_node(
            "h",
            "--head",
            f"--port={self.port}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dashboard_port}",
            f"--ray-client-server-port={free_port()}",
            *args,
        )

    def start_node(self, node: str, *args: str) -> None:
        self.temp_dirs[node] = tempfile.mkdtemp(prefix=f"rjs{node[:3]}", dir="/tmp")
        env = {**self.env, NODE_MARKER: f"{self.marker}:{node}"}
        if node != "h":
            args = (f"--address={self.address}", *args)
        ports = {
            "--node-manager-port": free_port(),
            "--object-manager-port": free_port(),
            "--dashboard-agent-listen-port": free_port(),
            "--dashboard-agent-grpc-port": free_port(),
            "--runtime-env-agent-port": free_port(),
            "--metrics-export-port": free_port(),
        }
        result = self.ray(
            "start",
            "--node-ip-address=127.0.0.1",
            f"--temp-dir={self.temp_dirs[node]}",
            "--object-store-memory=200000000",
            *[f"{k}={v}" for k, v in ports.items()],
            *args,
            env=env,
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    def request(self, path: str, token: str | None = None):
        """JSON from the dashboard's HTTP API, sending `token` as a bearer token."""
        token = self.token_file.read_text() if token is None else token
        request = urllib.request.Request(self.dashboard + path)
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def processes(self, node: str | None = None) -> dict[int, str]:
        """pid -> command line of every live process carrying this cluster's (or, with
        `node`, that node's) marker."""
        found = {}
        needle = (
            f"{MARKER}={self.marker}" if node is None else f"{NODE_MARKER}={self.marker}:{node}"
        ).encode()
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if needle in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                    found[int(pid)] = cmdline.replace(b"\0", b" ").decode(errors="replace")
            except OSError:  # gone, or not ours to read
                pass
        return found

    def kill_node(self, node: str) -> int:
        """SIGKILL every process of `node` (raylet, agents, its workers), as a machine dying
        would; returns how many there were."""
        pids = self.processes(node)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.dead.append(self.temp_dirs.pop(node))  # a restarted node gets a new one
        return len(pids)

    def alive_nodes(self) -> list[dict]:
        result = self.ray(
            "list", "nodes", "--address", self.dashboard, "--filter", "state=ALIVE",
            "--format", "json", "--detail",
        )  # fmt: skip
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        return json.loads(result.stdout)

    def wait_nodes(self, count: int, timeout: float = 60) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(nodes := self.alive_nodes()) != count and time.monotonic() < deadline:
            time.sleep(1)
        assert len(nodes) == count, nodes
        return nodes

    def stop(self) -> dict[int, str]:
        """End this cluster's processes (TERM, then KILL); the ones still alive after that."""
        for sig, wait in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 10.0)):
            for pid in self.processes():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + wait
            while self.processes() and time.monotonic() < deadline:
                time.sleep(0.5)
        # keep the logs (raylets, agents, job driver) in the test's tmp_path for a post-mortem
        dead = {f"dead{i}": d for i, d in enumerate(self.dead)}
        for node, temp_dir in {**self.temp_dirs, **dead}.items():
            for logs in Path(temp_dir).glob("session_2*/logs"):
                shutil.copytree(logs, self.folder / f"ray-logs-{node}", dirs_exist_ok=True)
            shutil.rmtree(temp_dir, ignore_errors=True)
        return self.processes()
