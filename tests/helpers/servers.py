"""Real servers for tests: an `mlflow server` process on a free loopback port."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


@contextmanager
def mlflow_server(folder: Path, artifacts: str | None = None, backend: str | None = None):
    """`mlflow server` with its backend store (default: SQLite in `folder`) and its proxied
    artifact root (default: `folder/artifacts`; an `s3://` URI needs the S3 environment)."""
    port = free_port()
    mlflow = Path(sys.executable).with_name("mlflow")
    log = open(folder / "mlflow-server.log", "w")
    process = subprocess.Popen(
        [
            str(mlflow), "server",
            "--backend-store-uri", backend or f"sqlite:///{folder / 'server.db'}",
            "--artifacts-destination", artifacts or str(folder / "artifacts"),
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        ],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{port}/health", timeout=120, process=process)
        yield f"http://127.0.0.1:{port}"
    finally:
        # the server forks workers and job consumers: end its whole process group
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        log.close()


@contextmanager
def local_ray():
    """A local Ray started as `raynas` starts one (workers at normal priority), for one module."""
    import ray

    from orchestrator.config.schema import RayConfig
    from orchestrator.runtime import local_cluster_env

    os.environ.update(local_cluster_env(RayConfig()))
    ray.init(num_cpus=2, namespace="raynas-tests", log_to_driver=False, include_dashboard=False)
    try:
        yield
    finally:
        ray.shutdown()


S3_ENV = {
    "AWS_ACCESS_KEY_ID": "raynas-test",
    "AWS_SECRET_ACCESS_KEY": "raynas-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@contextmanager
def s3_server(folder: Path, buckets: tuple[str, ...] = ("raynas",)):
    """moto's standalone S3-compatible server on a free loopback port, with `buckets` created.

    Yields the environment a client needs (endpoint and credentials): pyarrow, Ray Train and
    mlflow read them from there. The caller applies it (e.g. with monkeypatch.setenv) so the
    processes it starts inherit it."""
    port = free_port()
    log = open(folder / "s3-server.log", "w")
    process = subprocess.Popen(
        [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{endpoint}/moto-api/", timeout=60, process=process)
        env = {**S3_ENV, "AWS_ENDPOINT_URL": endpoint}
        for bucket in buckets:
            request = urllib.request.Request(f"{endpoint}/{bucket}", method="PUT")
            with urllib.request.urlopen(request, timeout=10) as response:
                assert response.status == 200, f"creating bucket {bucket}: {response.status}"
        yield env
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()
