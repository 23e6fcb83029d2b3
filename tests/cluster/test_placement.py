"""Placement without Ray: a cluster spec's groups -> label selectors / marker resources, the
refusals (unknown group, GPU ask on CPU groups, fractional training GPUs, several groups in
resources mode) and the pre-flight against the spec's groups and against live nodes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cluster.placement import (
    Need,
    PlacementError,
    live_nodes,
    matches,
    preflight,
    resolve,
    spec_nodes,
)
from cluster.spec import parse_spec
from orchestrator.config import parse
from orchestrator.config.loader import load_cluster_spec, load_config
from orchestrator.errors import ConfigError
from tests.helpers.configs import tiny_run

REPO = Path(__file__).resolve().parents[2]
HETERO = REPO / "configs" / "cluster-hetero.yaml"
RAYNAS = str(Path(sys.executable).with_name("raynas"))


@pytest.fixture(scope="module")
def spec():
    return load_cluster_spec(HETERO)


def test_a_group_is_a_label_selector_and_any_gpu_every_gpu_group(spec):
    train = resolve("supernet", Need(cpus=8, gpus=1), "a100", spec, training=True)
    assert train.label_selector == {"raynas.io/group": "a100"}
    kwargs = train.train_kwargs()
    assert kwargs["use_gpu"] is True and kwargs["label_selector"] == {"raynas.io/group": "a100"}
    assert kwargs["resources_per_worker"] == {"CPU": 8, "GPU": 1}

    trials = resolve("search", Need(cpus=1, gpus=0.25), "any-gpu", spec)
    assert trials.label_selector == {"raynas.io/group": "in(a100,l4,t4)"}
    factory = trials.trial_resources()
    assert factory.bundles == [{"CPU": 1, "GPU": 0.25}]
    assert factory._bound.kwargs["bundle_label_selector"] == [{"raynas.io/group": "in(a100,l4,t4)"}]

    # a CPU need on every group: no selector at all; a list of groups: in(...)
    assert resolve("search", Need(), "any", spec).label_selector == {}
    assert resolve("filter", Need(), ["l4", "cpu"], spec).options() == {
        "num_cpus": 1.0,
        "num_gpus": 0.0,
        "label_selector": {"raynas.io/group": "in(l4,cpu)"},
    }


def test_resources_mode_pins_one_group_by_its_marker_and_refuses_several(spec):
    fallback = spec.model_copy(update={"scheduling": "resources"})
    one = resolve("supernet", Need(cpus=4, gpus=1), "a100", fallback, training=True)
    assert one.label_selector == {} and one.mode == "resources"
    assert one.resources == {"CPU": 4, "GPU": 1, "raynas_group_a100": 0.001}
    assert "label_selector" not in one.train_kwargs()
    with pytest.raises(
        PlacementError, match=r"means 3 groups \(a100, l4, t4\).*scheduling: labels"
    ):
        resolve("search", Need(gpus=0.5), "any-gpu", fallback)


def test_refusals_name_the_stage_what_it_asks_and_what_there_is(spec):
    with pytest.raises(PlacementError, match=r"gpus_per_worker=0.5: a training rank needs whole"):
        resolve("supernet", Need(gpus=0.5), "a100", spec, training=True)
    with pytest.raises(PlacementError, match=r"'h100' is not a group.*allowed: any, any-gpu, a100"):
        resolve("search", Need(), "h100", spec)
    with pytest.raises(PlacementError, match=r"names no GPU group; GPU groups of .*: a100, l4, t4"):
        resolve("search", Need(gpus=1), "cpu", spec)


def test_preflight_counts_nodes_of_the_allowed_groups_at_their_maximum_size(spec):
    nodes = spec_nodes(spec)
    eight = resolve("supernet", Need(cpus=8, gpus=1), "a100", spec, training=True)
    preflight(eight, 8, nodes, source="the spec")  # 2 nodes x 4 GPUs
    with pytest.raises(PlacementError) as refused:
        preflight(eight, 9, nodes, source="cluster raynas-hetero at its maximum size")
    message = str(refused.value)
    assert message.startswith("supernet.resources: 9 workers of 8 CPU, 1 GPU on group a100")
    assert "at its maximum size holds 8" in message
    assert "a100 x2: 44 CPU, 4 GPU A100" in message and "cpu x2: 8 CPU" in message
    # a node too small for one worker holds none, however many there are
    big = resolve("search", Need(cpus=16), "t4", spec)
    with pytest.raises(PlacementError, match="holds 0"):
        preflight(big, 1, nodes, source="the spec")


def test_preflight_on_live_nodes_and_label_selector_semantics():
    nodes = live_nodes(
        [
            {"Alive": True, "Resources": {"CPU": 2.0}, "Labels": {"raynas.io/group": "cpu"}},
            {"Alive": False, "Resources": {"CPU": 8.0}, "Labels": {"raynas.io/group": "a100"}},
            {"Alive": True, "Resources": {"CPU": 4.0}, "Labels": {}},
        ]
    )
    on_a100 = resolve("supernet", Need(cpus=1), "a100", None, training=True)
    with pytest.raises(PlacementError, match="has no node that matches"):
        preflight(on_a100, 1, nodes, source="the live nodes")
    preflight(resolve("search", Need(cpus=2), None, None), 3, nodes, source="x")
    assert matches({"g": "in(a,b)"}, {"g": "b"}) and not matches({"g": "in(a,b)"}, {})
    assert matches({"g": "!a"}, {"g": "b"}) and matches({"g": "!in(a,b)"}, {})
    assert not matches({"g": "a", "h": "x"}, {"g": "a"})


def test_a_run_config_names_groups_and_validate_checks_them(tmp_path):
    data = tiny_run(tmp_path / "run")
    data["cluster"] = yaml.safe_load(HETERO.read_text())
    data["supernet"] = {"resources": {"workers": 2, "gpus_per_worker": 1, "placement": "a100"}}
    data["search"] = {
        "resources": {"placement": "any-gpu", "gpus_per_worker": 0.25},
        "latency_targets": ["t4", "cpu"],
    }
    config = parse(data, "test")
    assert config.cluster.name == "raynas-hetero"
    assert config.supernet.resources.placement == "a100"

    bad = {**data, "search": {"latency_targets": ["t5"]}}
    bad["supernet"] = {"resources": {"gpus_per_worker": 0.5, "placement": "cpu"}}
    with pytest.raises(ConfigError) as refused:
        parse(bad, "test")
    text = str(refused.value)
    assert "supernet.resources.gpus_per_worker=0.5: a training rank needs whole GPUs" in text
    assert "search.latency_targets: 't5' is not a group of cluster raynas-hetero" in text

    # a path is read relative to the config file and inlined in the resolved config
    (tmp_path / "clusters").mkdir()
    (tmp_path / "clusters" / "c.yaml").write_text(HETERO.read_text())
    data["cluster"] = "clusters/c.yaml"
    (tmp_path / "run.yaml").write_text(json.dumps(data))
    loaded = load_config(tmp_path / "run.yaml")
    assert loaded.cluster.group("a100").gpus == 4
    data["cluster"] = "nowhere.yaml"
    (tmp_path / "run.yaml").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="nowhere.yaml.*relative to the config file"):
        load_config(tmp_path / "run.yaml")


def test_spec_errors_name_the_field(tmp_path):
    base = yaml.safe_load(HETERO.read_text())
    cases = {
        "groups[0].gpux": ("groups", 0, "gpux", 2),
        "gpus=4 needs `accelerator`": ("groups", 0, "accelerator", None),
        "must not end in 'gpu'": ("groups", 1, "name", "evalgpu"),
        "the value must be a string, got bool": ("groups", 3, "labels", {"spot": True}),
        "names must be unique; repeated: l4": ("groups", 2, "name", "l4"),
    }
    for expected, (section, index, key, value) in cases.items():
        data = json.loads(json.dumps(base))
        group = data[section][index]
        if value is None:
            group.pop(key)
        else:
            group[key] = value
        path = tmp_path / "spec.yaml"
        path.write_text(yaml.safe_dump(data))
        with pytest.raises(ConfigError) as refused:
            load_cluster_spec(path)
        assert expected in str(refused.value), (expected, str(refused.value))
    assert parse_spec(base).name == "raynas-hetero"


def test_node_args_make_a_hand_started_node_one_of_a_group(tmp_path):
    result = subprocess.run(
        [RAYNAS, "cluster", "node-args", str(HETERO), "t4"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    args = result.stdout.strip().splitlines()[-1].split()  # as `$(...)` splits it
    assert "--num-gpus=1" in args and "--num-cpus=4" in args
    labels = next(a for a in args if a.startswith("--labels="))
    assert "raynas.io/group=t4" in labels and "ray.io/accelerator-type=T4" in labels
    resources = json.loads(next(a for a in args if a.startswith("--resources="))[12:])
    assert resources == {"accelerator_type:T4": 1, "raynas_group_t4": 1}
    missing = subprocess.run(
        [RAYNAS, "cluster", "node-args", str(HETERO), "v100"], capture_output=True, text=True
    )
    assert missing.returncode != 0 and "v100" in missing.stderr and "a100" in missing.stderr
