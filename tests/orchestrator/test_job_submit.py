"""`raynas run` submitted with `ray job submit` to a 2-node Ray cluster started with `ray start`
and token authentication, as on a real cluster (both nodes on loopback here).

The cluster (tests/helpers/cluster.py) gets its own temp dirs, ports and token file; no Ray runs
in the test process.
"""

from __future__ import annotations

import json
import secrets
import time
import urllib.error
from pathlib import Path

import pandas as pd
import pytest

from tests.helpers.cluster import Cluster
from tests.helpers.configs import tiny_run

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def cluster(tmp_path):
    cluster = Cluster(tmp_path)
    try:
        cluster.start_head("--num-cpus=2")
        cluster.start_node("w", "--num-cpus=1")
        yield cluster
    finally:
        left = cluster.stop()
    assert not left, f"processes of the test cluster still running: {left}"


def job_logs(cluster: Cluster, submission_id: str) -> str:
    result = cluster.ray("job", "logs", submission_id, "--address", cluster.dashboard)
    return result.stdout + result.stderr


def test_ray_job_submit_runs_the_pipeline_on_a_token_auth_cluster(tmp_path, cluster):
    started = time.monotonic()
    deadline = time.monotonic() + 60
    while len(nodes := cluster.alive_nodes()) < 2 and time.monotonic() < deadline:
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
        time.sleep(1)  # the job API answers in milliseconds: poll often, finish on time
    logs = job_logs(cluster, submission_id)
    assert status == "SUCCEEDED", f"job {status}: {info.get('message')}\n{logs[-6000:]}"
    print(f"job finished in {time.monotonic() - started:.0f} s after the cluster started")

    # the working dir upload honours .gitignore and .rayignore (Ray leaves out .git itself): no
    # .venv, runs, mlruns, caches, tests, docs or benchmark results; what the nodes unpacked is
    # the code and configs, well under 2 MiB; and
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
    excluded = {
        ".git",
        ".venv",
        "runs",
        "mlruns",
        "raynas.egg-info",
        ".pytest_cache",
        "tests",
        "docs",
    }
    assert not top & excluded, top & excluded
    assert not (package / "benchmarks" / "results").exists()
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
          f"{sorted((a['class_name'], (a['node_id'] or '-')[:8], a['pid']) for a in actors)}")  # fmt: skip
