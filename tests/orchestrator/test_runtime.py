"""Starting a local Ray the way `raynas` does (in a fresh process, as a user's driver would)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

SCRIPT = """
import json, os, ray
from orchestrator.config import parse
from orchestrator.config.schema import RayConfig, Resources
from orchestrator.runtime import ResourceError, check_placement, ensure_ray, place
from tests.helpers.configs import tiny_run

config = parse(tiny_run("/tmp/unused"), "test")
started = ensure_ray(RayConfig())
again = ensure_ray(RayConfig())
niceness = ray.get(ray.remote(lambda: os.nice(0)).remote())
resources = Resources(workers=2, cpus_per_worker=1)
check_placement(config, place(config, "supernet", resources), 2, started)
try:
    workers = int(ray.cluster_resources()["CPU"]) + 1
    resources = Resources(workers=workers, cpus_per_worker=1)
    check_placement(config, place(config, "supernet", resources), workers, started)
    message = None
except ResourceError as exc:
    message = str(exc)
print(json.dumps({"started": started, "again": again, "niceness": niceness, "message": message}))
"""


def test_local_ray_runs_workers_at_normal_priority_and_checks_resources():
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT + "\nray.shutdown()"],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    # a second call reuses the Ray and still knows it is the local one raynas started
    assert report["started"] is True and report["again"] is True
    assert report["niceness"] == 0  # Ray's default for workers is 15
    assert report["message"].startswith("supernet.resources: 3 workers of 1 CPU on any node")
    assert (
        "but this machine's Ray holds 2" in report["message"]
        and "lower supernet.resources.workers" in report["message"]
    )
