"""`raynas run` submitted with `ray job submit` to a 2-node Ray cluster started with `ray start`
and token authentication, as on a real cluster (both nodes on loopback here).

The cluster gets its own temp dirs, ports and token file; no Ray runs in the test process. It is
stopped by ending exactly its own processes (found by a marker in their environment), not with
`ray stop`, which kills every Ray process on the machine, other users' clusters included.
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
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from tests.helpers.configs import tiny_run
from tests.helpers.servers import free_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
MARKER = "RAYNAS_TEST_CLUSTER"


class Cluster:
    """A head node (2 CPUs) and a worker node (1 CPU) on 127.0.0.1, token auth on."""

    def __init__(self, folder: Path) -> None:
        # one temp dir per node, as on separate machines (a worker node sharing the head's would
        # re-extract the job's working dir under the running driver); short, since Ray's socket
        # paths under them must stay below 108 characters
        self.temp_dirs = {
            node: tempfile.mkdtemp(prefix=f"rjs{node}", dir="/tmp") for node in ("h", "w")
        }
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

    def start_node(self, node: str, *args: str) -> None:
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

    def processes(self) -> dict[int, str]:
        """pid -> command line of every live process carrying this cluster's marker."""
        found = {}
        needle = f"{MARKER}={self.marker}".encode()
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if needle in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                    found[int(pid)] = cmdline.replace(b"\0", b" ").decode(errors="replace")
            except OSError:  # gone, or not ours to read
                pass
        return found

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
        for node, temp_dir in self.temp_dirs.items():
            for logs in Path(temp_dir).glob("session_2*/logs"):
                shutil.copytree(logs, self.folder / f"ray-logs-{node}", dirs_exist_ok=True)
            shutil.rmtree(temp_dir, ignore_errors=True)
        return self.processes()


@pytest.fixture
def cluster(tmp_path):
    cluster = Cluster(tmp_path)
    try:
        cluster.start_node(
            "h",
            "--head",
            f"--port={cluster.port}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={cluster.dashboard_port}",
            f"--ray-client-server-port={free_port()}",
            "--num-cpus=2",
        )
        cluster.start_node("w", f"--address=127.0.0.1:{cluster.port}", "--num-cpus=1")
        yield cluster
    finally:
        left = cluster.stop()
    assert not left, f"processes of the test cluster still running: {left}"


def alive_nodes(cluster: Cluster) -> list[dict]:
    result = cluster.ray(
        "list", "nodes", "--address", cluster.dashboard, "--filter", "state=ALIVE",
        "--format", "json", "--detail",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return json.loads(result.stdout)


def job_logs(cluster: Cluster, submission_id: str) -> str:
    result = cluster.ray("job", "logs", submission_id, "--address", cluster.dashboard)
    return result.stdout + result.stderr


def test_ray_job_submit_runs_the_pipeline_on_a_token_auth_cluster(tmp_path, cluster):
    started = time.monotonic()
    deadline = time.monotonic() + 60
    while len(nodes := alive_nodes(cluster)) < 2 and time.monotonic() < deadline:
        time.sleep(2)
    assert len(nodes) == 2, nodes
    assert sorted(n["is_head_node"] for n in nodes) == [False, True]
    assert sum(n["resources_total"].get("CPU", 0) for n in nodes) == 3
    node_ids = {n["node_id"] for n in nodes}

    # the job API refuses requests without the token, or with a wrong one
    for token, status in (("", 401), (secrets.token_hex(32), 403)):
        with pytest.raises(urllib.error.HTTPError) as refused:
            cluster.request("/api/jobs/", token=token)
        assert refused.value.code == status
    wrong = {**cluster.env, "RAY_AUTH_TOKEN": secrets.token_hex(32)}  # beats the token file
    denied = cluster.ray("job", "list", "--address", cluster.dashboard, env=wrong)
    assert denied.returncode != 0 and "Authentication failed" in denied.stdout + denied.stderr
    # a client without RAY_AUTH_MODE=token sends no token at all
    plain = {k: v for k, v in cluster.env.items() if k != "RAY_AUTH_MODE"}
    denied = cluster.ray("job", "list", "--address", cluster.dashboard, env=plain)
    assert denied.returncode != 0 and "Authentication required" in denied.stdout + denied.stderr

    run_dir = tmp_path / "run"  # absolute: the job's cwd is a copy of the working dir
    config = tmp_path / "job.yaml"
    # 3 workers of 1 CPU each: more than the head has, so both stages must use both nodes
    three = {"resources": {"workers": 3, "cpus_per_worker": 1}}
    config.write_text(
        json.dumps(tiny_run(run_dir, name="job-submit", supernet=three, search=three))
    )
    submission_id = f"raynas-test-{secrets.token_hex(4)}"
    submitted = cluster.ray(
        "job", "submit", "--address", cluster.dashboard, "--working-dir", str(REPO),
        "--submission-id", submission_id, "--no-wait", "--", "raynas", "run", str(config),
    )  # fmt: skip
    output = submitted.stdout + submitted.stderr
    assert submitted.returncode == 0, output[-3000:]

    deadline = time.monotonic() + 360
    status = None
    while time.monotonic() < deadline:
        info = cluster.request(f"/api/jobs/{submission_id}")
        status = info["status"]
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            break
        time.sleep(5)
    logs = job_logs(cluster, submission_id)
    assert status == "SUCCEEDED", f"job {status}: {info.get('message')}\n{logs[-6000:]}"
    print(f"job finished in {time.monotonic() - started:.0f} s after the cluster started")

    # the working dir upload honours .gitignore (Ray leaves out .git itself): no .venv, runs,
    # mlruns, caches; what the nodes unpacked is the code and configs, well under 2 MiB; and
    # the job wrote nothing there (MLflow's default ./mlruns artifact store included)
    [package] = [
        p
        for p in Path(cluster.temp_dirs["h"]).glob(
            "session_latest/runtime_resources/working_dir_files/*"
        )
        if p.is_dir()
    ]
    files = [p for p in package.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    top = {p.relative_to(package).parts[0] for p in files}
    assert {"orchestrator", "trainables", "search_spaces", "configs"} <= top, top
    excluded = {".git", ".venv", "runs", "mlruns", "raynas.egg-info", ".pytest_cache"}
    assert not top & excluded, top & excluded
    size = sum(p.stat().st_size for p in files)
    assert size < 2 * 2**20, f"{size / 2**20:.1f} MiB uploaded: {sorted(top)}"
    print(f"working dir upload: {len(files)} files, {size / 2**20:.2f} MiB")

    # the whole pipeline's outputs, in the absolute run directory
    supernet = json.loads((run_dir / "supernet" / "result.json").read_text())
    assert supernet["epochs"] == 1
    search = json.loads((run_dir / "search" / "result.json").read_text())
    assert search["evaluated"] == search["budget"] == 8, search
    for name in ("archive.parquet", "pareto.parquet", "export/result.json", "report.md"):
        assert (run_dir / name).is_file(), name
    assert "[search] 8/8" in logs, logs[-6000:]
    # MLflow artifacts (checkpoint, archive, exported models, report) beside mlflow.db
    assert list((run_dir / "mlartifacts").rglob("report.md")), sorted(run_dir.iterdir())

    # the job's driver joined this cluster instead of starting its own Ray: its Ray job and
    # the train/tune actors it created are registered with this cluster's GCS, on both nodes
    # (whose workers got the token from their raylet's environment)
    job_id = info["job_id"]
    assert job_id, info
    listed = cluster.ray(
        "list", "actors", "--address", cluster.dashboard, "--filter", f"job_id={job_id}",
        "--detail", "--format", "json", "--limit", "1000",
    )  # fmt: skip
    assert listed.returncode == 0, listed.stdout[-2000:] + listed.stderr[-2000:]
    actors = json.loads(listed.stdout)
    trainers = [a for a in actors if a["class_name"] == "RayTrainWorker"]
    assert len(trainers) == 3 and {a["node_id"] for a in trainers} == node_ids, actors
    # every evaluated candidate ran in one of this job's actors (which of the two nodes the
    # evaluations land on is up to Ray's scheduler and how many trials the sampler releases)
    archive = pd.read_parquet(run_dir / "archive.parquet")
    actor_node = {a["pid"]: a["node_id"] for a in actors}
    assert set(archive["pid"]) <= set(actor_node), (archive["pid"].tolist(), actor_node)
    evaluated_on = {actor_node[pid] for pid in archive["pid"]}
    print(f"evaluations ran in {archive['pid'].nunique()} actors on {len(evaluated_on)} node(s)")
    print(f"{len(actors)} actors of the job: "
          f"{sorted((a['class_name'], a['node_id'][:8], a['pid']) for a in actors)}")  # fmt: skip
