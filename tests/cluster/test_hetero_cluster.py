"""A heterogeneous cluster on loopback: a CPU-only head and three worker nodes started with
`ray start` as the groups of a cluster spec (`raynas cluster node-args`): a100 and t4 (one
logical GPU each, labelled and resourced like their accelerators) and cpu. Token auth on.

- placement: every supernet rank on the a100 node, every evaluation on the group allowed, each
  latency target measured by its probe on that target's node only (node ids recorded per rank,
  per trial and per measurement); predicted latency fitted on the target, error reported;
- node loss: a node killed mid-training (Ray Train restarts from the last checkpoint on the
  nodes left) and mid-search (the trials there are retried elsewhere: the budget is met with
  unique candidates, none evaluated twice).

Ray accepts logical GPUs on a CPU host; nothing here needs a real one (no rank asks for a GPU,
the t4 probe holds the t4 node's logical GPU).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.helpers.cluster import Cluster
from tests.helpers.configs import tiny_run

pytestmark = pytest.mark.slow

RAYNAS = str(Path(sys.executable).with_name("raynas"))
SPEC = {
    "name": "raynas-test",
    "image": "unused",
    "autoscaling": False,  # a fixed, hand-started cluster: pre-flight checks the live nodes
    "groups": [
        {"name": "a100", "accelerator": "A100", "gpus": 1, "cpus": 2, "memory": "2Gi"},
        {"name": "t4", "accelerator": "T4", "gpus": 1, "cpus": 2, "memory": "2Gi"},
        {"name": "cpu", "cpus": 2, "memory": "2Gi"},
    ],
}
GROUPS = [g["name"] for g in SPEC["groups"]]


def node_args(spec_file: Path, group: str) -> list[str]:
    result = subprocess.run(
        [RAYNAS, "cluster", "node-args", str(spec_file), group], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1].split()  # as `$(...)` splits it


class Hetero:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.spec_file = folder / "cluster.yaml"
        self.spec_file.write_text(yaml.safe_dump(SPEC))
        self.cluster = Cluster(folder)
        self.env = {**self.cluster.env, "RAY_ADDRESS": self.cluster.address}

    def start(self) -> None:
        self.cluster.start_head("--num-cpus=0", "--num-gpus=0")
        for group in GROUPS:
            self.start_group(group)
        self.cluster.wait_nodes(1 + len(GROUPS))

    def start_group(self, group: str) -> None:
        self.cluster.start_node(group, *node_args(self.spec_file, group))

    def node_ids(self) -> dict[str, str]:
        """group -> node id of the live nodes."""
        out = {}
        for node in self.cluster.alive_nodes():
            group = (node.get("labels") or {}).get("raynas.io/group")
            if group:
                out[group] = node["node_id"]
        return out

    def config(self, run_dir: Path, **sections) -> Path:
        data = tiny_run(run_dir, name=run_dir.name, **sections)
        data["cluster"] = "cluster.yaml"
        data["stages"] = ["supernet", "search"]
        path = self.folder / f"{run_dir.name}.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    def raynas(self, *args: str, wait: bool = True):
        process = subprocess.Popen(
            [RAYNAS, *args],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=self.folder,
        )
        if not wait:
            return process
        out, _ = process.communicate(timeout=600)
        return process.returncode, out


@pytest.fixture(scope="module")
def hetero(tmp_path_factory):
    hetero = Hetero(tmp_path_factory.mktemp("hetero"))
    try:
        hetero.start()
        yield hetero
    finally:
        left = hetero.cluster.stop()
    assert not left, f"processes of the test cluster still running: {left}"


def test_stages_land_on_their_groups_and_latency_on_its_targets(hetero, tmp_path):
    nodes = hetero.node_ids()
    assert sorted(nodes) == sorted(GROUPS)
    run_dir = tmp_path / "placed"
    config = hetero.config(
        run_dir,
        supernet={"resources": {"workers": 2, "cpus_per_worker": 1, "placement": "a100"}},
        search={
            "budget": 6,
            "objectives": ["flops", "latency"],
            "latency_targets": ["t4", "cpu"],
            "latency_repeats": 3,
            "resources": {"workers": 2, "cpus_per_worker": 1, "placement": "a100"},
        },
    )
    code, out = hetero.raynas("run", str(config))
    assert code == 0, out[-5000:]

    supernet = json.loads((run_dir / "supernet" / "result.json").read_text())
    ranks = supernet["placement"]["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1]
    assert {(r["group"], r["node_id"]) for r in ranks} == {("a100", nodes["a100"])}, ranks
    assert supernet["placement"]["where"] == "group a100"

    archive = pd.read_parquet(run_dir / "archive.parquet")
    assert len(archive) == 6 and archive["arch_id"].is_unique
    assert set(archive["node_group"]) == {"a100"} and set(archive["node"]) == {nodes["a100"]}
    assert set(archive["latency_node.t4"]) == {nodes["t4"]}
    assert set(archive["latency_node.cpu"]) == {nodes["cpu"]}
    assert (archive["latency_ms"] == archive["latency_ms.t4"]).all()  # the first target's
    assert (archive[["latency_ms.t4", "latency_ms.cpu"]] > 0).all().all()

    search = json.loads((run_dir / "search" / "result.json").read_text())
    probes = {t: info["probe"] for t, info in search["latency"].items()}
    assert probes["t4"]["node_id"] == nodes["t4"] and probes["t4"]["group"] == "t4"
    assert probes["cpu"]["node_id"] == nodes["cpu"] and probes["cpu"]["threads"] == 2

    # the same search with predicted latency: a model per target fitted on subnets measured
    # there, its held-out error reported; the trials then use the models
    code, out = hetero.raynas(
        "run", "--resume", str(run_dir), "--set", "search.latency=predicted",
        "--set", "search.latency_calibration=20", "--set", "search.latency_holdout=10",
    )  # fmt: skip
    assert code == 0, out[-5000:]
    assert "latency model for t4: held-out MAPE" in out, out[-3000:]
    for target in ("t4", "cpu"):
        record = json.loads((run_dir / "search" / "latency" / f"{target}.json").read_text())
        assert record["error"]["n"] == 10 and record["error"]["fitted_on"] == 20
        assert {m["node_id"] for m in record["measured"]} == {nodes[target]}
        assert 0 <= record["error"]["mape"] < 1000
    archive = pd.read_parquet(run_dir / "archive.parquet")
    assert set(archive["latency_node.t4"]) == {"predicted"}


def wait_for(condition, timeout: float, what: str, process):
    """Poll `condition` until it returns something other than None (while the run goes on)."""
    deadline = time.monotonic() + timeout
    while (found := condition()) is None:
        if process.poll() is not None:
            raise AssertionError(f"the run ended before {what}: {process.stdout.read()[-4000:]}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)
    return found


def read_json(path: Path):
    """The JSON at `path`, or None while it is missing or still being written."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def archived(path: Path) -> pd.DataFrame | None:
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError):
        return None


def test_a_node_lost_mid_training_and_mid_search_costs_nothing(hetero, tmp_path):
    """Runs last: it leaves two worker nodes dead."""
    nodes = hetero.node_ids()
    run_dir = tmp_path / "lossy"
    # each rank needs a whole 2-CPU node: the two ranks sit on two of the three worker nodes,
    # and the third is where Ray Train restarts the group when one of them dies
    config = hetero.config(
        run_dir,
        supernet={
            "epochs": 4,
            "resources": {"workers": 2, "cpus_per_worker": 2},
            "max_failures": 2,
        },
        search={"budget": 12, "resources": {"workers": 3, "cpus_per_worker": 1}},
    )
    process = hetero.raynas("run", str(config), wait=False)
    try:
        # a checkpoint's files land before Ray Train registers it: once epoch 2's are there,
        # epoch 1's checkpoint is registered and a restart resumes from it (or from epoch 2)
        later = run_dir / "supernet" / "epoch_0002" / "meta.json"
        wait_for(lambda: read_json(later), 300, "the second checkpoint", process)
        first = read_json(run_dir / "supernet" / "epoch_0001" / "meta.json")
        victim = first["placement"][1]["group"]
        assert hetero.cluster.kill_node(victim) > 0

        # mid-search: kill the node that ran the latest evaluation (its trial actor is reused
        # for the next candidates, so a trial dies with it)
        archive = run_dir / "archive.parquet"
        rows = wait_for(
            lambda: a if (a := archived(archive)) is not None and len(a) >= 3 else None,
            400,
            "3 evaluations",
            process,
        )
        by_id = {v: k for k, v in nodes.items()}
        second = by_id[rows.sort_values("end_time")["node"].iloc[-1]]
        assert second != victim
        assert hetero.cluster.kill_node(second) > 0
        out, _ = process.communicate(timeout=600)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, out[-6000:]

    supernet = json.loads((run_dir / "supernet" / "result.json").read_text())
    assert supernet["epochs"] == 4
    # epoch 1 was not trained again: the final history holds the first attempt's record
    assert supernet["history"][0] == first["history"][0]
    ranks = {r["node_id"] for r in supernet["placement"]["ranks"]}
    assert nodes[victim] not in ranks and len(ranks) == 2

    rows = pd.read_parquet(archive)
    assert len(rows) == 12 and rows["arch_id"].is_unique, rows[["trial", "arch_id"]]
    assert nodes[second] in set(rows["node"])  # it did run evaluations before it died
    after = rows[rows["start_time"] > rows[rows["node"] == nodes[second]]["end_time"].max()]
    assert nodes[second] not in set(after["node"]) and len(after) > 0
    search = json.loads((run_dir / "search" / "result.json").read_text())
    assert search["evaluated"] == 12
    # every candidate has exactly one complete Optuna trial: none lost, none evaluated twice
    import optuna
    from optuna.trial import TrialState

    study = optuna.load_study(study_name=search["study"], storage=f"sqlite:///{run_dir}/study.db")
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    ids = [t.user_attrs["arch_id"] for t in complete if "duplicate_of" not in t.user_attrs]
    assert sorted(ids) == sorted(rows["arch_id"]), (ids, rows["arch_id"].tolist())
    # a candidate whose trial died with the node was evaluated after all
    lost = {t.user_attrs["arch_id"] for t in study.trials if t.state == TrialState.FAIL}
    assert lost <= set(rows["arch_id"]), lost
    print(f"training survived losing {victim}, the search losing {second}; out:\n{out[-3000:]}")
