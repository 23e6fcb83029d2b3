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
from orchestrator.config.schema import RayConfig, Resources
from orchestrator.runtime import ResourceError, check_fits, ensure_ray

started = ensure_ray(RayConfig())
again = ensure_ray(RayConfig())
niceness = ray.get(ray.remote(lambda: os.nice(0)).remote())
check_fits(Resources(workers=2, cpus_per_worker=1), "supernet", started)
try:
    check_fits(Resources(workers=int(ray.cluster_resources()["CPU"]) + 1, cpus_per_worker=1), "supernet", started)
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
    assert report["message"].startswith("supernet.resources: ")
    assert (
        "CPU but this machine's Ray has" in report["message"]
        and "lower supernet.resources.workers" in report["message"]
    )


def test_trial_resources_are_fractional_and_name_the_accelerator():
    from orchestrator.config.schema import Resources
    from orchestrator.runtime import trial_resources

    resources = Resources(
        cpus_per_worker=0.5, gpus_per_worker=0.25, accelerator_type="L4", custom={"eval": 1}
    )
    assert trial_resources(resources) == {
        "CPU": 0.5,
        "GPU": 0.25,
        "eval": 1,
        "accelerator_type:L4": 0.001,
    }
    assert trial_resources(Resources()) == {"CPU": 1.0}
