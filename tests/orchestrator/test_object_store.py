"""Object-store run directories against a real S3-compatible server (moto's, on loopback): the
mirror's copy semantics, the lease that stands in for a lock, and the config rules."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from orchestrator import mirror
from orchestrator.config.loader import parse
from orchestrator.errors import ConfigError
from orchestrator.files import remove, write_json_atomic
from orchestrator.mirror import LEASE_FILE, Mirror, RunDirBusy
from tests.helpers.configs import tiny_run
from tests.helpers.postgres import postgres  # noqa: F401  (a fixture)
from tests.helpers.servers import s3_server
from tests.orchestrator.test_train_command import raynas  # noqa: F401  (a fixture)


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with s3_server(tmp_path_factory.mktemp("s3")) as env:
        yield env


@pytest.fixture
def store_env(s3, monkeypatch, tmp_path):
    for key, value in s3.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv(mirror.CACHE_ENV, str(tmp_path / "cache-a"))
    return s3


def store_files(uri: str) -> dict[str, bytes]:
    filesystem, root = pafs.FileSystem.from_uri(uri)
    infos = filesystem.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    out = {}
    for info in infos:
        if info.type == pafs.FileType.File:
            with filesystem.open_input_stream(info.path) as source:
                out[info.path[len(root) + 1 :]] = source.read()
    return out


def test_writes_reach_the_store_and_a_fresh_machine_gets_an_exact_copy(
    store_env, tmp_path, monkeypatch
):
    uri = "s3://raynas/runs/copy"
    first = Mirror(uri)
    assert first.local == (tmp_path / "cache-a" / "s3" / "raynas" / "runs" / "copy")
    with mirror.active(first):
        write_json_atomic(first.local / "search" / "result.json", {"done": 1})
        # an atomic write is in the store when it returns; hidden (temporary) files are not
        assert json.loads(store_files(uri)["search/result.json"]) == {"done": 1}
        (first.local / "export").mkdir()
        (first.local / "export" / "model.bin").write_bytes(b"\0" * 1000)
        (first.local / ".partial").write_text("never uploaded")
        assert first.sync() == 1
        assert first.sync() == 0  # nothing changed since
        remove(first.local / "search" / "result.json")
    assert sorted(store_files(uri)) == ["export/model.bin"]

    # another machine (another cache) pulls: the store is the truth, extras there are removed
    monkeypatch.setenv(mirror.CACHE_ENV, str(tmp_path / "cache-b"))
    second = Mirror(uri)
    (second.local / "stale").mkdir(parents=True)
    (second.local / "stale" / "old.json").write_text("{}")
    assert second.pull() == 1
    assert (second.local / "export" / "model.bin").read_bytes() == b"\0" * 1000
    assert not (second.local / "stale" / "old.json").exists()
    assert second.pull() == 0  # in step: nothing downloaded again

    # the first machine changes a file (same size, new content): the second sees the change
    (first.local / "export" / "model.bin").write_bytes(b"\1" * 1000)
    assert first.sync() == 1
    assert second.pull() == 1
    assert (second.local / "export" / "model.bin").read_bytes() == b"\1" * 1000


def test_sync_uploads_the_files_named_last_after_all_others(store_env):
    uri = "s3://raynas/runs/order"
    store = Mirror(uri)
    for name in ("a/result.json", "a/weights.bin", "b.txt"):
        (store.local / name).parent.mkdir(parents=True, exist_ok=True)
        (store.local / name).write_text(name)
    uploaded = []
    original = store._upload
    store._upload = lambda relative: (uploaded.append(relative), original(relative))
    store.sync(last=("a/result.json",))
    assert uploaded[-1] == "a/result.json" and sorted(uploaded) == sorted(store_files(uri))


def test_the_lease_refuses_a_second_driver_until_it_lapses(store_env):
    uri = "s3://raynas/runs/leased"
    holder = Mirror(uri)
    filesystem, root = pafs.FileSystem.from_uri(uri)
    lease = f"{root}/{LEASE_FILE}"
    other = {"host": "elsewhere", "pid": 4242}
    with filesystem.open_output_stream(lease) as out:
        out.write(json.dumps({**other, "renewed": time.time() - 5}).encode())
    with pytest.raises(RunDirBusy, match=r"host elsewhere, pid 4242, lease renewed \d+ s ago"):
        with holder.lease():
            pass
    # a lease not renewed for longer than LEASE_S belongs to a driver that is gone
    with filesystem.open_output_stream(lease) as out:
        out.write(json.dumps({**other, "renewed": time.time() - mirror.LEASE_S - 1}).encode())
    with holder.lease():
        with filesystem.open_input_stream(lease) as source:
            held = json.loads(source.read())
        assert (held["host"], held["pid"]) == (socket.gethostname(), os.getpid())
    assert filesystem.get_file_info(lease).type == pafs.FileType.NotFound  # released
    # a fresh lease of a process of this host that has ended (a killed driver) is taken over
    with filesystem.open_output_stream(lease) as out:
        gone = {"host": socket.gethostname(), "pid": dead_pid(), "renewed": time.time()}
        out.write(json.dumps(gone).encode())
    with holder.lease():
        pass


def dead_pid() -> int:
    """The pid of a process of this host that has exited."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_workers_of_any_node_read_a_checkpoint_in_the_store_and_see_it_change(
    store_env, tmp_path, monkeypatch
):
    import torch

    from trainables.storage import FETCH_CACHE_ENV, StorageError, fetch_cache
    from trainables.train import checkpoint as ckpt

    uri = "s3://raynas/runs/fetch"
    store = Mirror(uri)
    folder = store.local / "supernet" / "epoch_0001"
    ckpt.save(folder, {"w": torch.zeros(4)}, {"step": 1}, {"epoch": 1})
    with mirror.active(store):
        store.sync()
        handed = mirror.for_workers(folder)
    assert handed == f"{uri}/supernet/epoch_0001"
    monkeypatch.setenv(FETCH_CACHE_ENV, str(tmp_path / "node-2"))  # a node without the mirror
    assert ckpt.load_meta(handed) == {"epoch": 1}
    assert torch.equal(ckpt.load_weights(handed)["w"], torch.zeros(4))
    assert fetch_cache(handed).is_relative_to(tmp_path / "node-2")
    # the same folder rewritten in the store with same-sized content: the node's copy follows
    ckpt.save(folder, {"w": torch.ones(4)}, {"step": 2}, {"epoch": 2})
    store.sync()
    assert torch.equal(ckpt.load_weights(handed)["w"], torch.ones(4))
    assert ckpt.load_meta(handed) == {"epoch": 2}
    with pytest.raises(StorageError, match="no such folder in the store"):
        ckpt.load_meta(f"{uri}/supernet/epoch_0009")


def test_an_unreachable_store_is_one_line_naming_the_run_dir(tmp_path, monkeypatch):
    from tests.helpers.servers import S3_ENV, free_port

    for key, value in S3_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv(mirror.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    from trainables.storage import StorageError

    with pytest.raises(StorageError, match=r"run_dir='s3://raynas/nowhere': cannot write"):
        with Mirror("s3://raynas/nowhere").lease():
            pass


def test_an_object_store_run_dir_needs_a_tracking_server_and_a_study_server():
    from orchestrator.stages.search import StudyStorageError, open_study

    data = tiny_run("s3://raynas/runs/cfg")
    with pytest.raises(ConfigError, match="artifacts-destination s3://"):
        parse(data, "cfg.yaml")
    data["tracking"] = {"uri": "http://127.0.0.1:5000"}
    config = parse(data, "cfg.yaml")
    assert config.remote and config.workspace.parts[-3:] == ("raynas", "runs", "cfg")
    with pytest.raises(StudyStorageError, match="search.storage to a database server"):
        open_study(config)  # when the search starts; `raynas train` needs no study


# ---------------------------------------------------------------------- whole runs in the store
@pytest.fixture(scope="module")
def services(s3, tmp_path_factory):
    """The S3 environment applied to this process (so the `raynas` processes inherit it), the
    Fashion-MNIST parquet copy in the store, and an MLflow server whose artifacts go there."""
    from tests.helpers.servers import mlflow_server
    from trainables.data import DataConfig
    from trainables.data.convert import convert

    env = {**s3, "MLFLOW_S3_ENDPOINT_URL": s3["AWS_ENDPOINT_URL"]}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        convert(DataConfig(name="fashion_mnist", download=False), DATA)
        with mlflow_server(
            tmp_path_factory.mktemp("mlflow"), artifacts="s3://raynas/mlflow"
        ) as uri:
            yield uri
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


DATA = "s3://raynas/data/fashion-mnist"


def registered_in_store(uri: str, stage: str) -> str | None:
    """The checkpoint folder Ray Train's snapshot in the store registers (None before one)."""
    snapshot = store_files(uri).get(f"{stage}/checkpoint_manager_snapshot.json")
    if snapshot is None:
        return None
    latest = json.loads(snapshot).get("latest_checkpoint_result") or {}
    return latest.get("checkpoint_dir_name")


@pytest.mark.slow
def test_a_run_in_the_store_is_killed_resumed_on_another_machine_and_exported(
    services,
    postgres,  # noqa: F811
    tmp_path,
    monkeypatch,
    raynas,  # noqa: F811
):
    """The whole pipeline with its data, run directory and MLflow artifacts in the store and its
    study in PostgreSQL: killed during training on machine a, resumed from the store alone on
    machine b (an empty mirror), and reported on machine c."""
    import optuna

    uri = "s3://raynas/runs/e2e"
    data = tiny_run(
        uri,
        name="e2e",
        data={
            "name": "parquet",
            "root": DATA,
            "loader": "stream",  # the Train workers read their shards from the store
            "subset": {"train": 1024, "val": 512, "test": 512},
        },
        # two workers of half a CPU leave this 2-CPU machine's Ray one for Ray Data's reads
        supernet={"epochs": 2, "resources": {"workers": 2, "cpus_per_worker": 0.5}},
        search={"budget": 6, "storage": postgres.url(password="${PGPASSWORD}")},
        tracking={"uri": services, "experiment": "store"},
    )
    monkeypatch.setenv("PGPASSWORD", postgres.password)
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(data))
    monkeypatch.setenv(mirror.CACHE_ENV, str(tmp_path / "machine-a"))
    log = open(tmp_path / "first.log", "w")
    first = raynas("run", str(path), stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 600
    while registered_in_store(uri, "supernet") is None and first.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint registered in the store in 600 s"
        time.sleep(0.5)
    assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    log.close()
    assert "supernet/result.json" not in store_files(uri)  # not complete in the store

    monkeypatch.setenv(mirror.CACHE_ENV, str(tmp_path / "machine-b"))
    second = raynas("run", "--resume", uri, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output, _ = second.communicate(timeout=900)
    assert second.returncode == 0, output[-3000:]
    assert "[supernet] epoch 1/2" not in output and "[supernet] epoch 2/2" in output
    files = store_files(uri)
    trained = json.loads(files["supernet/result.json"])
    assert [h["epoch"] for h in trained["history"]] == [1, 2]
    assert trained["data"]["loader"] == "stream", trained["data"]
    assert f"{trained['checkpoint']}/supernet.pt" in files  # the weights are in the store
    import io

    import pyarrow.parquet as pq

    archive = pq.read_table(io.BytesIO(files["archive.parquet"])).to_pylist()
    study = optuna.load_study(study_name="e2e", storage=postgres.url())
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(archive) == len(complete) == 6
    assert len({row["arch_id"] for row in archive}) == 6
    exported = json.loads(files["export/result.json"])
    assert exported["models"] and all(
        f"{model['path']}/model.safetensors" in files for model in exported["models"]
    )
    assert "report.md" in files and "report/result.json" in files
    artifacts = store_files("s3://raynas/mlflow")
    assert any(name.endswith("checkpoint/supernet.pt") for name in artifacts), sorted(artifacts)
    assert postgres.password not in "".join(
        content.decode(errors="replace") for content in files.values()
    )

    # a third machine reports from the store alone
    monkeypatch.setenv(mirror.CACHE_ENV, str(tmp_path / "machine-c"))
    third = subprocess.run(
        [str(Path(sys.executable).with_name("raynas")), "report", uri],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert third.returncode == 0, third.stdout[-2000:] + third.stderr[-2000:]
    local = tmp_path / "machine-c" / "s3" / "raynas" / "runs" / "e2e"
    assert (local / "archive.parquet").read_bytes() == files["archive.parquet"]
    assert "report.md" in third.stdout
