"""cluster/manifests.py and cluster/validate.py: rendering a cluster spec as KubeRay manifests
and a `ray up` config, and refusing what KubeRay, kubectl or `ray up` would refuse or silently
drop. No Ray, no Kubernetes: the schemas ship in cluster/schemas."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from cluster import manifests
from cluster.manifests import (
    ManifestError,
    dump_yaml,
    render_kuberay,
    render_launcher,
    render_raycluster_spec,
    write_manifests,
)
from cluster.spec import parse_spec
from cluster.validate import (
    schema_for,
    strict,
    validate_file,
    validate_manifest,
    validate_text,
)

ROOT = Path(__file__).parents[2]
HETERO = ROOT / "configs" / "cluster-hetero.yaml"
KUBECTL = shutil.which("kubectl") or (
    "/usr/bin/kubectl" if Path("/usr/bin/kubectl").exists() else None
)
GiB = 2**30


def hetero_data() -> dict:
    return yaml.safe_load(HETERO.read_text())


@pytest.fixture(scope="module")
def spec():
    return parse_spec(hetero_data())


@pytest.fixture(scope="module")
def kuberay_docs(spec):
    return render_kuberay(spec)


@pytest.fixture(scope="module")
def launcher(spec):
    return render_launcher(spec)


def groups_by_name(cluster_spec: dict) -> dict[str, dict]:
    return {g["groupName"]: g for g in cluster_spec["workerGroupSpecs"]}


# ---------------------------------------------------------------------------------- CLI runs
def raynas(*args: str, cwd: Path = ROOT) -> subprocess.Popen:
    script = Path(sys.executable).with_name("raynas")
    command = [str(script)] if script.exists() else [shutil.which("raynas") or "raynas"]
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.Popen(
        [*command, *args],
        cwd=cwd,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    """Every `raynas` run of this module, started at once (each pays the CLI's start-up time)."""
    work = tmp_path_factory.mktemp("cli")
    bad_spec = hetero_data()
    bad_spec["groups"][1]["gpus"] = "two"
    (work / "bad-spec.yaml").write_text(yaml.safe_dump(bad_spec))
    (work / "bad-manifest.yaml").write_text(
        "apiVersion: ray.io/v1\nkind: RayCluster\nmetadata: {name: hand-written}\n"
        "spec:\n  headGroupSpec:\n    template: {spec: {containers: [{name: ray-head, image: x}]}}\n"
        "  workerGroupSpec: []\n"
    )
    runs = {
        "render": raynas(
            "cluster", "render", str(HETERO), "--kuberay", "--launcher", "-o", str(work / "good")
        ),
        "render-bad": raynas(
            "cluster", "render", str(work / "bad-spec.yaml"), "--kuberay", "-o", str(work / "bad")
        ),
        "validate-bad": raynas("cluster", "validate", str(work / "bad-manifest.yaml")),
        "validate-spec": raynas("validate", "configs/cluster-hetero.yaml"),
    }
    results = {}
    for name, process in runs.items():
        stdout, stderr = process.communicate(timeout=300)
        results[name] = subprocess.CompletedProcess(
            process.args, process.returncode, stdout, stderr
        )
    results["work"] = work
    return results


# ---------------------------------------------------------------------------------- rendering
def test_hetero_renders_and_passes_the_strict_schemas(kuberay_docs, launcher):
    assert [d["kind"] for d in kuberay_docs] == ["RayCluster", "RayJob"]
    for doc in [*kuberay_docs, launcher]:
        assert validate_manifest(doc) == []
    # and the schemas are strict: an unknown field anywhere under spec is an error
    typo = copy.deepcopy(kuberay_docs[0])
    typo["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = (
        "Always"
    )
    assert validate_manifest(typo) == [
        "RayCluster raynas-hetero: spec.headGroupSpec.template.spec.containers[0]."
        "imagePullPolicyy: unknown field; did you mean imagePullPolicy?"
    ]


def test_raycluster_groups_carry_the_declared_labels_and_resources_as_strings(kuberay_docs):
    cluster = kuberay_docs[0]
    assert cluster["metadata"]["name"] == "raynas-hetero"
    body = cluster["spec"]
    groups = groups_by_name(body)
    assert list(groups) == ["a100", "l4", "t4", "cpu"]
    expected = {
        "a100": ("A100", 44, 300 * GiB, 4),
        "l4": ("L4", 8, 32 * GiB, 1),
        "t4": ("T4", 4, 16 * GiB, 1),
        "cpu": (None, 8, 32 * GiB, 0),
    }
    for name, (accelerator, cpus, memory, gpus) in expected.items():
        group = groups[name]
        labels = {"raynas.io/group": name, "raynas.io/device": accelerator or "cpu"}
        resources = {"CPU": str(cpus), "memory": str(memory), f"raynas_group_{name}": "1"}
        if accelerator:
            labels["ray.io/accelerator-type"] = accelerator
            resources |= {"GPU": str(gpus), f"accelerator_type:{accelerator}": "1"}
        assert group["labels"] == labels
        assert group["resources"] == resources
        assert all(
            isinstance(v, str) for v in [*group["labels"].values(), *group["resources"].values()]
        )
        assert "rayStartParams" not in group  # never both resources and num-cpus etc.
        assert (group["minReplicas"], group["replicas"]) == (0, 0)
        pod = group["template"]["spec"]
        limits = pod["containers"][0]["resources"]["limits"]
        assert limits["cpu"] == str(cpus)
        assert "restartPolicy" not in pod
        if accelerator:
            assert limits["nvidia.com/gpu"] == str(gpus)
            assert pod["tolerations"] == [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
            ]
        else:
            assert "nvidia.com/gpu" not in limits and "tolerations" not in pod
    assert groups["a100"]["maxReplicas"] == 2
    assert groups["a100"]["template"]["spec"]["nodeSelector"] == {
        "cloud.google.com/gke-accelerator": "nvidia-tesla-a100"
    }
    assert groups["l4"]["priority"] == 10 and "priority" not in groups["a100"]
    head = body["headGroupSpec"]
    assert head["resources"] == {"CPU": "0", "GPU": "0"}
    assert [p["name"] for p in head["template"]["spec"]["containers"][0]["ports"]] == [
        "gcs-server",
        "dashboard",
        "client",
    ]
    assert body["autoscalerOptions"] == {
        "version": "v2",
        "idleTimeoutSeconds": 300,
        "upscalingMode": "Default",
    }
    assert body["authOptions"] == {"mode": "token", "secretName": "raynas-hetero-ray-token"}
    assert body["rayVersion"] == "2.60.0"


def test_rayjob_runs_raynas_on_the_same_cluster_body(spec, kuberay_docs):
    cluster, job = kuberay_docs
    assert job["metadata"]["name"] == "raynas-hetero-job"
    assert job["spec"]["entrypoint"] == "raynas run configs/hetero-autoformer.yaml"
    assert yaml.safe_load(job["spec"]["runtimeEnvYAML"]) == {
        "env_vars": {"MLFLOW_TRACKING_URI": "http://mlflow.mlops.svc:5000"}
    }
    assert job["spec"]["shutdownAfterJobFinishes"] is True
    assert job["spec"]["ttlSecondsAfterFinished"] == 600
    assert job["spec"]["submissionMode"] == "K8sJobMode"
    assert "backoffLimit" not in job["spec"] and "activeDeadlineSeconds" not in job["spec"]
    assert job["spec"]["rayClusterSpec"] == cluster["spec"] == render_raycluster_spec(spec)


def test_rayjob_name_is_cut_to_47_characters_and_options_reach_the_job():
    data = hetero_data()
    data["name"] = "a" * 45 + "-b"  # 47 characters: "-job" must replace the end
    data["namespace"] = "nas"
    data["job"] |= {
        "args": ["-s", "search.budget=20"],
        "backoff_limit": 2,
        "active_deadline_seconds": 3600,
    }
    data["job"]["runtime_env"] = {"pip": ["timm"], "env_vars": {"A": "y"}}
    cluster, job = render_kuberay(parse_spec(data))
    name = job["metadata"]["name"]
    assert len(name) <= 47 and name == "a" * 43 + "-job"
    assert cluster["metadata"]["namespace"] == job["metadata"]["namespace"] == "nas"
    assert (
        job["spec"]["entrypoint"] == "raynas run configs/hetero-autoformer.yaml -s search.budget=20"
    )
    assert (job["spec"]["backoffLimit"], job["spec"]["activeDeadlineSeconds"]) == (2, 3600)
    assert yaml.safe_load(job["spec"]["runtimeEnvYAML"]) == {
        "env_vars": {"A": "y", "MLFLOW_TRACKING_URI": "http://mlflow.mlops.svc:5000"},
        "pip": ["timm"],
    }
    assert "A: 'y'" in job["spec"]["runtimeEnvYAML"]  # the operator's YAML 1.1 reads y as true


def test_old_kuberay_gets_no_secret_name_and_a_note():
    data = hetero_data() | {"kuberay_version": "1.5.1"}
    data["groups"][1].pop("priority")  # priority needs KubeRay 1.7 (the spec refuses it)
    spec = parse_spec(data)
    assert render_kuberay(spec)[0]["spec"]["authOptions"] == {"mode": "token"}
    assert any("secretName" in note for note in manifests.notes(spec))


def test_a_fixed_cluster_has_no_autoscaler_fields():
    data = hetero_data() | {"autoscaling": False}
    data["groups"][0] |= {"replicas": 1, "idle_timeout_s": 60}
    spec = parse_spec(data)
    body = render_kuberay(spec)[0]["spec"]
    assert body["enableInTreeAutoscaling"] is False and "autoscalerOptions" not in body
    a100 = groups_by_name(body)["a100"]
    assert a100["replicas"] == 1 and "idleTimeoutSeconds" not in a100
    assert "priority" not in groups_by_name(body)["l4"]
    node = render_launcher(spec)["available_node_types"]["a100"]
    assert (node["min_workers"], node["max_workers"]) == (1, 1)


def test_an_invalid_rendering_raises_manifest_error_naming_the_field():
    # what the spec lets through but Kubernetes refuses: caught before anything is returned
    data = hetero_data() | {"namespace": "Not_A_Namespace"}
    data["groups"][2]["kubernetes"] = {
        "node_selector": {"pool": "t4 nodes"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "value": "present"}],
    }
    with pytest.raises(ManifestError) as caught:
        render_kuberay(parse_spec(data))
    group = "spec.workerGroupSpecs[2].template.spec"
    assert caught.value.problems == [
        "RayCluster raynas-hetero: metadata.namespace: 'Not_A_Namespace' is not a DNS-1123 label",
        f"RayCluster raynas-hetero: {group}.nodeSelector.pool: label pool: value 't4 nodes' "
        "must be at most 63 characters of letters, digits, '-', '_' or '.', starting and "
        "ending with a letter or digit",
        f"RayCluster raynas-hetero: {group}.tolerations[0].value: must be empty with operator Exists",
        "RayJob raynas-hetero-job: metadata.namespace: 'Not_A_Namespace' is not a DNS-1123 label",
        f"RayJob raynas-hetero-job: spec.rayClusterSpec.{group.removeprefix('spec.')}"
        ".nodeSelector.pool: label pool: value 't4 nodes' must be at most 63 characters of "
        "letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
        f"RayJob raynas-hetero-job: spec.rayClusterSpec.{group.removeprefix('spec.')}"
        ".tolerations[0].value: must be empty with operator Exists",
    ]


def test_launcher_config_resources_are_integers_and_token_auth_reaches_every_node(launcher):
    assert launcher["cluster_name"] == "raynas-hetero"
    assert launcher["head_node_type"] == "head"
    assert launcher["max_workers"] == 2 + 4 + 1 + 2
    types = launcher["available_node_types"]
    assert types["head"]["resources"] == {"CPU": 0, "GPU": 0}
    assert types["head"]["node_config"] == {"InstanceType": "m6i.xlarge"}
    a100 = types["a100"]
    assert a100["resources"] == {
        "CPU": 44,
        "memory": 300 * GiB,
        "GPU": 4,
        "accelerator_type:A100": 1,
        "raynas_group_a100": 1,
    }
    assert a100["labels"]["ray.io/accelerator-type"] == "A100"
    assert (a100["min_workers"], a100["max_workers"]) == (0, 2)
    assert a100["node_config"] == {"InstanceType": "p4d.24xlarge"}
    assert types["l4"]["priority"] == 10
    assert launcher["docker"]["image"] == "registry.example.com/raynas:0.1.0-ray2.60.0-gpu"
    # provider aws: the updater exports RAY_OVERRIDE_LABELS itself; no per-type commands needed
    assert all("worker_setup_commands" not in t for t in types.values())
    assert launcher["file_mounts"] == {"~/.ray/auth_token": "~/.ray/auth_token"}
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = [c for c in launcher[key] if "ray start" in c]
        assert len(start) == 1 and "export RAY_AUTH_MODE=token; ray start" in start[0]
    assert any("RAY_AUTH_MODE=token" in c and ".bashrc" in c for c in launcher["setup_commands"])


def test_local_provider_passes_labels_to_ray_start_through_a_file(tmp_path):
    data = hetero_data()
    data["launcher"] = {
        "provider": {"type": "local", "head_ip": "10.0.0.1", "worker_ips": ["10.0.0.2"]}
    }
    config = render_launcher(parse_spec(data))
    assert validate_manifest(config) == []
    command = config["available_node_types"]["l4"]["worker_setup_commands"][-1]
    written = subprocess.run(  # run what the node would run, with HOME in a temporary folder
        ["bash", "-c", command.replace("~", "$HOME") + " && cat $HOME/.raynas/ray-node.env"],
        env={"HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    exported = dict(line.removeprefix("export ").split("=", 1) for line in written.splitlines())
    labels = json.loads(yaml.safe_load(exported["RAY_OVERRIDE_LABELS"]))
    assert labels == {
        "ray.io/accelerator-type": "L4",
        "raynas.io/device": "L4",
        "raynas.io/group": "l4",
    }
    assert json.loads(yaml.safe_load(exported["RAY_OVERRIDE_RESOURCES"]))["GPU"] == 1
    assert config["worker_start_ray_commands"][-1].startswith(
        "ulimit -n 65536; . ~/.raynas/ray-node.env; export RAY_AUTH_MODE=token; ray start"
    )


def test_dump_quotes_what_kubectl_would_not_read_as_strings():
    values = {"a": "y", "b": "true", "c": "0", "d": "1e3", "e": "plain", "f": "2.60.0"}
    text = dump_yaml({"labels": values})
    assert text == (
        "labels:\n  a: 'y'\n  b: 'true'\n  c: '0'\n  d: '1e3'\n  e: plain\n  f: 2.60.0\n"
    )
    assert yaml.safe_load(text) == {"labels": values}


# ---------------------------------------------------------------------------------- refusals
def test_typo_in_a_raycluster_field_is_refused_with_its_path(kuberay_docs):
    doc = copy.deepcopy(kuberay_docs[0])
    doc["spec"]["workerGroupSpec"] = doc["spec"].pop("workerGroupSpecs")
    assert validate_manifest(doc) == [
        "RayCluster raynas-hetero: spec.workerGroupSpec: unknown field; did you mean workerGroupSpecs?"
    ]


def test_unquoted_boolean_label_value_is_refused_with_its_path(kuberay_docs):
    text = (
        dump_yaml(kuberay_docs[0])
        .replace(
            "      raynas.io/group: l4\n",
            "      raynas.io/group: l4\n      cloud.google.com/gke-spot: true\n",
        )
        .replace(
            "          cloud.google.com/gke-accelerator: nvidia-tesla-t4\n",
            "          cloud.google.com/gke-accelerator: nvidia-tesla-t4\n          cloud.google.com/gke-spot: true\n",
        )
    )
    assert validate_text(text) == [
        "RayCluster raynas-hetero: spec.workerGroupSpecs[1].labels.cloud.google.com/gke-spot: "
        "True is not of type 'string'",
        "RayCluster raynas-hetero: spec.workerGroupSpecs[2].template.spec.nodeSelector."
        "cloud.google.com/gke-spot: True is not of type 'string'",
    ]
    # the quoted form passes; an unquoted `n` passes PyYAML but is a boolean to kubectl
    assert validate_text(text.replace("gke-spot: true", "gke-spot: 'true'")) == []
    assert validate_text(text.replace("gke-spot: true", "gke-spot: n")) == [
        "RayCluster raynas-hetero: spec.workerGroupSpecs[1].labels.cloud.google.com/gke-spot: "
        "unquoted n is a boolean to kubectl; quote it",
        "RayCluster raynas-hetero: spec.workerGroupSpecs[2].template.spec.nodeSelector."
        "cloud.google.com/gke-spot: unquoted n is a boolean to kubectl; quote it",
    ]


def test_rayjob_name_of_48_characters_is_refused(kuberay_docs):
    job = copy.deepcopy(kuberay_docs[1])
    job["metadata"]["name"] = "r" * 48
    assert validate_manifest(job) == [
        f"RayJob {'r' * 48}: metadata.name: '{'r' * 48}' has 48 characters; a RayJob name has at "
        "most 47 (KubeRay derives longer names from it)"
    ]
    job["metadata"]["name"] = "r" * 47
    assert validate_manifest(job) == []


def test_raystartparams_labels_and_resources_with_num_cpus_are_refused(kuberay_docs):
    doc = copy.deepcopy(kuberay_docs[0])
    a100 = doc["spec"]["workerGroupSpecs"][0]
    a100["rayStartParams"] = {"labels": "raynas.io/group=a100", "num-cpus": "44"}
    a100["resources"]["eval_gpu"] = "1"
    assert validate_manifest(doc) == [
        "RayCluster raynas-hetero: spec.workerGroupSpecs[0].resources: not together with "
        "rayStartParams num-cpus: use only the top-level resources (KubeRay rejects both)",
        "RayCluster raynas-hetero: spec.workerGroupSpecs[0].rayStartParams.labels: not supported "
        "since KubeRay 1.5; use the group's top-level labels",
        "RayCluster raynas-hetero: spec.workerGroupSpecs[0].resources.eval_gpu: KubeRay takes any "
        "resource whose name ends in 'gpu' as the GPU count (num-gpus), not as a custom "
        "resource: use GPU, or rename it",
    ]


def test_operator_rules_on_a_hand_written_rayjob():
    text = """
apiVersion: ray.io/v1
kind: RayJob
metadata: {name: hand-job}
spec:
  entrypoint: raynas run x.yaml
  ttlSecondsAfterFinished: 60
  runtimeEnvYAML: "env_vars: [unclosed"
  activeDeadlineSeconds: 0
  clusterSelector: {ray.io/cluster: existing}
  rayClusterSpec:
    rayVersion: "2.51.0"
    authOptions: {mode: token}
    enableInTreeAutoscaling: true
    autoscalerOptions: {version: v2}
    managedBy: someone-else
    headGroupSpec:
      template: {spec: {containers: [{name: ray-head, image: x}], restartPolicy: Always}}
    workerGroupSpecs:
    - groupName: g          # no minReplicas/maxReplicas: defaulted like the API server does
      replicas: 1
      template: {spec: {containers: [{name: w, image: x}]}}
"""
    problems = validate_text(text)
    title = "RayJob hand-job: "
    assert [p.removeprefix(title) for p in problems] == [
        "spec: exactly one of rayClusterSpec and clusterSelector must be set",
        "spec.ttlSecondsAfterFinished: 60 needs shutdownAfterJobFinishes: true",
        "spec.activeDeadlineSeconds: 0: must be > 0",
        "spec.runtimeEnvYAML: not valid YAML: expected ',' or ']', but got '<stream end>'",
        "spec.rayClusterSpec.headGroupSpec.template.spec.restartPolicy: 'Always': must be Never "
        "or unset with autoscaler v2",
        "spec.rayClusterSpec.rayVersion: '2.51.0': authOptions.mode token needs rayVersion "
        "2.52.0 or later",
        "spec.rayClusterSpec.managedBy: 'someone-else': must be one of ray.io/kuberay-operator, "
        "kueue.x-k8s.io/multikueue",
    ]


def test_launcher_typo_and_unknown_head_type_are_refused(launcher):
    config = copy.deepcopy(launcher)
    config["idle_timeout_minute"] = config.pop("idle_timeout_minutes")
    config["available_node_types"]["l4"]["min_worker"] = 1
    config["head_node_type"] = "ray.head.default"
    assert validate_manifest(config) == [
        "ray up config raynas-hetero: idle_timeout_minute: unknown field; did you mean idle_timeout_minutes?",
        "ray up config raynas-hetero: available_node_types.l4.min_worker: unknown field; did you "
        "mean min_workers?",
        "ray up config raynas-hetero: head_node_type: 'ray.head.default' is not one of "
        "available_node_types: head, a100, l4, t4, cpu",
    ]
    config = copy.deepcopy(launcher)
    config["available_node_types"]["a100"]["min_workers"] = 2
    config["max_workers"] = 1
    assert validate_manifest(config) == [
        "ray up config raynas-hetero: max_workers: 1 is smaller than the sum of min_workers of "
        "the node types (2)"
    ]


def test_files_with_unknown_kinds_or_broken_yaml_are_one_problem_each(tmp_path):
    mixed = tmp_path / "mixed.yaml"
    mixed.write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n---\ncluster_name: x\nprovider: {type: aws}\n"
    )
    assert validate_file(mixed) == [
        f"{mixed}: document 1: apiVersion 'v1' kind 'ConfigMap' is not a manifest raynas checks; "
        "allowed: apiVersion ray.io/v1 kind RayCluster; apiVersion ray.io/v1 kind RayJob; "
        "a `ray up` config (top-level cluster_name and provider)"
    ]
    broken = tmp_path / "broken.yaml"
    broken.write_text("kind: RayCluster\nspec: [\n")
    [problem] = validate_file(broken)
    assert problem.startswith(f"{broken}: line 3, column 1: invalid YAML")
    no_spec = tmp_path / "no-spec.yaml"
    no_spec.write_text(
        "apiVersion: ray.io/v1\nkind: RayCluster\nmetadata: {name: c, labels: {v: 1e3}}\n"
    )
    assert validate_file(no_spec) == [
        "RayCluster c: spec: required: a mapping",
        "RayCluster c: metadata.labels.v: unquoted 1e3 is a number to kubectl; quote it",
    ]
    assert validate_file(tmp_path / "missing.yaml") == [
        f"{tmp_path / 'missing.yaml'}: file not found"
    ]


def test_strict_closes_structural_objects_only():
    schema = {
        "type": "object",
        "properties": {
            "a": {"type": "object", "properties": {"b": {"type": "string"}}},
            "open": {
                "type": "object",
                "properties": {},
                "x-kubernetes-preserve-unknown-fields": True,
            },
            "items": {"type": "array", "items": {"type": "object", "properties": {"c": {}}}},
        },
        "allOf": [{"if": {"properties": {"a": {}}, "required": ["a"]}, "then": {}}],
    }
    closed = strict(schema)
    assert closed["additionalProperties"] is False
    assert closed["properties"]["a"]["additionalProperties"] is False
    assert closed["properties"]["items"]["items"]["additionalProperties"] is False
    assert "additionalProperties" not in closed["properties"]["open"]
    assert "additionalProperties" not in closed["allOf"][0]["if"]
    assert "additionalProperties" not in schema  # a copy
    assert schema_for("RayJob")["properties"]["spec"]["additionalProperties"] is False


def test_shipped_schemas_match_their_provenance():
    import gzip
    import hashlib
    import importlib.util

    folder = ROOT / "cluster" / "schemas"
    readme = (folder / "README.md").read_text()
    for name in ("raycluster-v1.7.0", "rayjob-v1.7.0", "ray-launcher-2.60.0"):
        digest = hashlib.sha256(gzip.decompress((folder / f"{name}.json.gz").read_bytes()))
        assert f"| `{name}.json.gz` |" in readme and digest.hexdigest() in readme
    crd = Path("/work/shared/kuberay/crds/ray.io_rayclusters.yaml")
    if crd.exists():  # the extraction is reproducible from the upstream CRD
        module = importlib.util.spec_from_file_location("extract", folder / "extract.py")
        extract = importlib.util.module_from_spec(module)
        module.loader.exec_module(extract)
        shipped = json.loads(gzip.decompress((folder / "raycluster-v1.7.0.json.gz").read_bytes()))
        assert extract.v1_schema(crd) == shipped


def test_a_group_named_head_is_refused_by_the_spec():
    data = hetero_data()
    data["groups"][3]["name"] = "head"  # it would clash with the launcher's head node type
    with pytest.raises(ValueError, match="group name 'head' is reserved"):
        parse_spec(data)


# ---------------------------------------------------------------------------------- writing
def test_write_manifests_is_atomic_and_validates_first(
    tmp_path, kuberay_docs, launcher, monkeypatch
):
    paths = write_manifests([*kuberay_docs, launcher], tmp_path / "out")
    assert [p.name for p in paths] == ["raycluster.yaml", "rayjob.yaml", "ray-up.yaml"]
    assert yaml.safe_load(paths[0].read_text()) == kuberay_docs[0]
    assert yaml.safe_load(paths[2].read_text()) == launcher
    before = {p.name: p.read_text() for p in paths}
    bad = copy.deepcopy(kuberay_docs[0])
    bad["spec"]["rayVersoin"] = "2.60.0"
    with pytest.raises(ManifestError, match=r"spec\.rayVersoin: unknown field"):
        write_manifests([bad], tmp_path / "out")
    real_dump = manifests.dump_yaml

    def dump_then_fail(doc):
        if doc.get("kind") == "RayJob":
            raise OSError(28, "No space left on device")
        return real_dump(doc)

    monkeypatch.setattr(manifests, "dump_yaml", dump_then_fail)
    changed = copy.deepcopy(kuberay_docs)
    changed[0]["spec"]["workerGroupSpecs"][0]["maxReplicas"] = 3
    with pytest.raises(OSError):
        write_manifests(changed, tmp_path / "out")
    # nothing replaced (files are swapped in only once all are written), no temporary left
    assert {p.name: p.read_text() for p in paths} == before
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(before)


# ---------------------------------------------------------------------------------- kubectl
class _StubApiServer(BaseHTTPRequestHandler):
    """Just enough of an API server on 127.0.0.1 for `kubectl apply --dry-run=client`: the
    discovery documents that map kind RayCluster/RayJob to a resource, and 404 NotFound for the
    live object, so kubectl takes its create path. Nothing is stored, nothing leaves the host."""

    resources = {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": "ray.io/v1",
        "resources": [
            {
                "name": plural,
                "singularName": plural[:-1],
                "namespaced": True,
                "kind": kind,
                "verbs": ["get", "create", "patch"],
            }
            for plural, kind in (("rayclusters", "RayCluster"), ("rayjobs", "RayJob"))
        ],
    }
    groups = {
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [
            {
                "name": "ray.io",
                "versions": [{"groupVersion": "ray.io/v1", "version": "v1"}],
                "preferredVersion": {"groupVersion": "ray.io/v1", "version": "v1"},
            }
        ],
    }
    requests: list[str] = []

    def do_GET(self):  # noqa: N802 - the http.server API
        path = self.path.split("?")[0]
        self.requests.append(path)
        body, code = {
            "/api": ({"kind": "APIVersions", "versions": ["v1"]}, 200),
            "/apis": (self.groups, 200),
            "/apis/ray.io/v1": (self.resources, 200),
        }.get(
            path,
            (
                {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "status": "Failure",
                    "reason": "NotFound",
                    "code": 404,
                },
                404,
            ),
        )
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):  # noqa: N802 - a client dry run never writes; fail loudly if it does
        self.requests.append(f"POST {self.path}")
        self.send_response(500)
        self.end_headers()

    do_PATCH = do_PUT = do_POST  # noqa: N815

    def log_message(self, *args):
        pass


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")
def test_kubectl_client_dry_run_accepts_what_render_writes(cli, tmp_path):
    result = cli["render"]
    assert result.returncode == 0, result.stderr
    folder = cli["work"] / "good"
    files = [str(folder / "raycluster.yaml"), str(folder / "rayjob.yaml")]
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)}

    # 1. no server at all: `--local` makes kubectl decode every document (its YAML 1.1 parser,
    #    apiVersion/kind/metadata into Go types) without discovery. `apply` cannot run like this:
    #    it needs discovery to map kind -> resource and a GET of the live object, even with
    #    --dry-run=client (kubectl has no --local for apply).
    local = subprocess.run(
        [
            KUBECTL,
            "annotate",
            "--local",
            "-o",
            "name",
            "-f",
            files[0],
            "-f",
            files[1],
            "raynas.io/checked=1",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert local.returncode == 0, local.stderr
    assert local.stdout.split() == [
        "raycluster.ray.io/raynas-hetero",
        "rayjob.ray.io/raynas-hetero-job",
    ]

    # 2. `kubectl apply --dry-run=client` against a stub API server on 127.0.0.1 (discovery plus
    #    404s). --dry-run=client: nothing is sent but GETs; --validate=false: kubectl's own schema
    #    check downloads /openapi/v3 from the server, which a stub does not have; the CRD schema
    #    check is cluster/validate.py's job. --cache-dir keeps kubectl's discovery cache out of ~.
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StubApiServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {
                            "name": "stub",
                            "cluster": {"server": f"http://127.0.0.1:{server.server_port}"},
                        }
                    ],
                    "contexts": [
                        {"name": "stub", "context": {"cluster": "stub", "namespace": "default"}}
                    ],
                    "current-context": "stub",
                    "users": [{"name": "nobody", "user": {}}],
                }
            )
        )
        applied = subprocess.run(
            [
                KUBECTL,
                "--kubeconfig",
                str(kubeconfig),
                "--cache-dir",
                str(tmp_path / "cache"),
                "apply",
                "--dry-run=client",
                "--validate=false",
                "-f",
                files[0],
                "-f",
                files[1],
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
    finally:
        server.shutdown()
        server.server_close()
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.splitlines() == [
        "raycluster.ray.io/raynas-hetero created (dry run)",
        "rayjob.ray.io/raynas-hetero-job created (dry run)",
    ]
    assert "/apis/ray.io/v1/namespaces/default/rayclusters/raynas-hetero" in _StubApiServer.requests
    assert not [r for r in _StubApiServer.requests if r.startswith("POST")]


# ---------------------------------------------------------------------------------- the CLI
def test_cli_render_writes_the_three_files_and_prints_the_next_commands(cli):
    result = cli["render"]
    assert result.returncode == 0, result.stderr
    folder = cli["work"] / "good"
    for name in ("raycluster.yaml", "rayjob.yaml", "ray-up.yaml"):
        assert f"wrote {folder / name}" in result.stdout
        assert validate_file(folder / name) == []
    assert "kubectl create secret generic raynas-hetero-ray-token" in result.stdout
    assert f"kubectl apply -f {folder / 'raycluster.yaml'}" in result.stdout
    assert f"ray up {folder / 'ray-up.yaml'}" in result.stdout
    assert "ray get-auth-token --generate" in result.stdout


def test_cli_render_of_a_bad_spec_names_the_field_and_writes_nothing(cli):
    result = cli["render-bad"]
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {cli['work'] / 'bad-spec.yaml'}: groups[1].gpus")
    assert "Traceback" not in result.stderr
    assert not (cli["work"] / "bad").exists()


def test_cli_validate_of_a_bad_manifest_names_the_path(cli):
    result = cli["validate-bad"]
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: {cli['work'] / 'bad-manifest.yaml'}: RayCluster hand-written: "
        "spec.workerGroupSpec: unknown field; did you mean workerGroupSpecs?"
    ]


def test_raynas_validate_recognises_a_cluster_spec(cli):
    result = cli["validate-spec"]
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(
        "ok configs/cluster-hetero.yaml: cluster raynas-hetero: 4 groups"
    )
    assert "accelerators A100, L4, T4" in result.stdout
    assert "at most 10 nodes (head + 9 workers)" in result.stdout
