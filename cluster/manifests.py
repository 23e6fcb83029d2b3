"""Render a :class:`cluster.spec.ClusterSpec` as KubeRay manifests and a `ray up` config.

Everything is built as plain Python dicts, with ``str`` values wherever the schema wants
strings (``labels``, group ``resources``, ``nodeSelector``, quantities), and dumped by
:func:`dump_yaml`. Each render function validates its output with :mod:`cluster.validate`
and raises :class:`ManifestError` listing every problem, so nothing invalid is returned.

Two schedulers read what is rendered here, from the same group record:

- Ray: each worker group's top-level ``labels`` (``GroupSpec.ray_labels``) and ``resources``
  (``GroupSpec.ray_resources``: CPU, GPU, memory, ``accelerator_type:X``, the
  ``raynas_group_<name>`` marker, custom ones), declared so the autoscaler can scale a group
  from zero. Never together with ``rayStartParams`` num-cpus/num-gpus/memory/resources (the
  operator rejects both). The head advertises ``CPU: 0, GPU: 0``: no trial lands there.
- Kubernetes: ``nodeSelector``, tolerations and the container's ``nvidia.com/gpu`` limit.
"""

from __future__ import annotations

import copy
import json
import os
import shlex
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from cluster.spec import ClusterSpec, GroupSpec, KubernetesPlacement, version_tuple
from cluster.validate import API_VERSION, kind_of, kubectl_non_string, validate_manifest

GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
#: as in KubeRay's samples (ray-cluster.complete.yaml)
HEAD_PORTS = [
    {"containerPort": 6379, "name": "gcs-server"},
    {"containerPort": 8265, "name": "dashboard"},
    {"containerPort": 10001, "name": "client"},
]
HEAD_TYPE = "head"
MAX_RAYJOB_NAME = 47
FILENAMES = {"RayCluster": "raycluster.yaml", "RayJob": "rayjob.yaml", "launcher": "ray-up.yaml"}
#: where `ray get-auth-token --generate` writes the token; the launcher copies it to each node
TOKEN_FILE = "~/.ray/auth_token"
AUTH_ENV = "RAY_AUTH_MODE=token"
#: provider `local` only: the updater does not export RAY_OVERRIDE_LABELS/RESOURCES there
NODE_ENV_FILE = "~/.raynas/ray-node.env"
#: Ray's defaults (ray/autoscaler/aws/defaults.yaml), with token auth switched on
HEAD_START = (
    "ray start --head --port=6379 --object-manager-port=8076 "
    "--autoscaling-config=~/ray_bootstrap_config.yaml --dashboard-host=0.0.0.0"
)
WORKER_START = "ray start --address=$RAY_HEAD_IP:6379 --object-manager-port=8076"


class ManifestError(ValueError):
    """A rendered manifest is invalid; `problems` holds one line per problem."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


# ---------------------------------------------------------------------------------- YAML
class _Dumper(yaml.SafeDumper):
    """yaml.safe_dump's dumper, plus: quote the strings kubectl's YAML 1.1 parser would read as
    booleans or numbers where PyYAML leaves them plain (y, n, 1e3), and write multi-line
    strings as blocks."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "'" if kubectl_non_string(value) else ("|" if "\n" in value else None)
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def dump_yaml(doc: dict[str, Any]) -> str:
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=4096)


# ---------------------------------------------------------------------------------- helpers
def _quantity(value: float) -> str:
    """A Ray resource amount as a Kubernetes quantity string ("4", "322122547200", "0.5")."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _check(docs: list[dict[str, Any]]) -> None:
    problems = [line for doc in docs for line in validate_manifest(doc)]
    if problems:
        raise ManifestError(problems)


def secret_name(spec: ClusterSpec) -> str:
    """The Secret with key `auth_token` that the cluster's Ray token auth reads."""
    return (spec.job.auth_secret if spec.job else None) or f"{spec.name}-ray-token"


def has_secret_ref(spec: ClusterSpec) -> bool:
    """Whether the operator knows authOptions.secretName (KubeRay 1.6.0+)."""
    return version_tuple(spec.kuberay_version) >= (1, 6, 0)


def rayjob_name(spec: ClusterSpec) -> str:
    base = spec.name[: MAX_RAYJOB_NAME - len("-job")].rstrip("-")
    return f"{base}-job"


def _metadata(spec: ClusterSpec, name: str) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if spec.namespace:
        metadata["namespace"] = spec.namespace
    metadata["labels"] = {"app.kubernetes.io/managed-by": "raynas", "raynas.io/cluster": spec.name}
    return metadata


def _pod_spec(
    container: dict[str, Any], placement: KubernetesPlacement, gpu: bool
) -> dict[str, Any]:
    pod: dict[str, Any] = {}
    if placement.service_account:
        pod["serviceAccountName"] = placement.service_account
    if placement.node_selector:
        pod["nodeSelector"] = {str(k): str(v) for k, v in placement.node_selector.items()}
    tolerations = [t.model_dump(exclude_none=True) for t in placement.tolerations]
    if not tolerations and gpu:
        tolerations = [dict(GPU_TOLERATION)]
    if tolerations:
        pod["tolerations"] = tolerations
    pod["containers"] = [container]
    return pod


def _container(name: str, image: str, cpus: int, memory: str, gpus: int = 0) -> dict[str, Any]:
    amounts = {"cpu": str(cpus), "memory": memory}
    if gpus:
        amounts["nvidia.com/gpu"] = str(gpus)  # whole GPUs; Kubernetes requires request == limit
    return {
        "name": name,
        "image": image,
        "resources": {"limits": dict(amounts), "requests": dict(amounts)},
    }


def _start_size(group: GroupSpec) -> int:
    return group.replicas if group.replicas is not None else group.min_replicas


# ---------------------------------------------------------------------------------- KubeRay
def _worker_group(spec: ClusterSpec, group: GroupSpec) -> dict[str, Any]:
    body: dict[str, Any] = {
        "groupName": group.name,
        "replicas": _start_size(group),
        "minReplicas": group.min_replicas,  # always: the schema lists them as required
        "maxReplicas": group.max_replicas,
        "labels": {str(k): str(v) for k, v in group.ray_labels().items()},
        "resources": {k: _quantity(v) for k, v in group.ray_resources().items()},
    }
    if spec.autoscaling and group.idle_timeout_s is not None:
        body["idleTimeoutSeconds"] = group.idle_timeout_s
    if spec.autoscaling and group.priority is not None:
        body["priority"] = group.priority
    container = _container(
        "ray-worker", group.image or spec.image, group.cpus, group.memory, group.gpus
    )
    # restartPolicy stays unset: autoscaler v2 wants it unset or Never
    body["template"] = {"spec": _pod_spec(container, group.kubernetes, gpu=bool(group.gpus))}
    return body


def _head_group(spec: ClusterSpec) -> dict[str, Any]:
    container = _container(
        "ray-head", spec.head.image or spec.image, spec.head.cpus, spec.head.memory
    )
    container["ports"] = [dict(p) for p in HEAD_PORTS]
    return {
        # the head advertises no CPU and no GPU, so no trial is scheduled there (a head pod on a
        # GPU node can see the node's GPUs without requesting them: kuberay#2098)
        "resources": {"CPU": "0", "GPU": "0"},
        "template": {"spec": _pod_spec(container, spec.head.kubernetes, gpu=False)},
    }


def _raycluster_body(spec: ClusterSpec) -> dict[str, Any]:
    body: dict[str, Any] = {
        "rayVersion": spec.ray_version,
        "enableInTreeAutoscaling": spec.autoscaling,
    }
    if spec.autoscaling:
        body["autoscalerOptions"] = {
            "version": "v2",  # label-aware scale-up needs v2; written out so KubeRay checks it
            "idleTimeoutSeconds": spec.idle_timeout_s,
            "upscalingMode": "Default",
        }
    auth: dict[str, Any] = {"mode": "token"}
    if has_secret_ref(spec):
        auth["secretName"] = secret_name(spec)
    body["authOptions"] = auth
    body["headGroupSpec"] = _head_group(spec)
    body["workerGroupSpecs"] = [_worker_group(spec, g) for g in spec.groups]
    return body


def render_raycluster_spec(spec: ClusterSpec) -> dict[str, Any]:
    """The RayClusterSpec body (`spec` of a RayCluster, `rayClusterSpec` of a RayJob)."""
    body = _raycluster_body(spec)
    _check([_raycluster(spec, body)])
    return body


def _raycluster(spec: ClusterSpec, body: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "RayCluster",
        "metadata": _metadata(spec, spec.name),
        "spec": body,
    }


def _runtime_env(spec: ClusterSpec) -> str | None:
    assert spec.job is not None
    runtime_env = dict(spec.job.runtime_env)
    env_vars = {**(runtime_env.pop("env_vars", None) or {}), **spec.job.env}
    merged = ({"env_vars": env_vars} if env_vars else {}) | runtime_env
    # the operator parses it with YAML 1.1: quoted like the manifests (env value "y" stays a str)
    return dump_yaml(merged) if merged else None


def _rayjob(spec: ClusterSpec, body: dict[str, Any]) -> dict[str, Any]:
    job = spec.job
    assert job is not None
    job_spec: dict[str, Any] = {
        "entrypoint": shlex.join(["raynas", "run", job.config, *job.args]),
    }
    runtime_env = _runtime_env(spec)
    if runtime_env:
        job_spec["runtimeEnvYAML"] = runtime_env
    job_spec |= {
        "shutdownAfterJobFinishes": True,
        "ttlSecondsAfterFinished": job.ttl_seconds_after_finished,
        "submissionMode": "K8sJobMode",
    }
    if job.active_deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = job.active_deadline_seconds
    if job.backoff_limit:
        job_spec["backoffLimit"] = job.backoff_limit  # each retry creates a new RayCluster
    job_spec["rayClusterSpec"] = body
    return {
        "apiVersion": API_VERSION,
        "kind": "RayJob",
        "metadata": _metadata(spec, rayjob_name(spec)),
        "spec": job_spec,
    }


def render_kuberay(spec: ClusterSpec) -> list[dict[str, Any]]:
    """A RayCluster named `spec.name` and, when `spec.job` is set, a RayJob `<name>-job` that
    brings up its own cluster from the same body, runs `raynas run`, and deletes it."""
    body = _raycluster_body(spec)
    docs = [_raycluster(spec, body)]
    if spec.job is not None:
        docs.append(_rayjob(spec, copy.deepcopy(body)))
    _check(docs)
    return docs


# ---------------------------------------------------------------------------------- ray up
def _node_env_command(labels: dict[str, str], resources: dict[str, int]) -> str:
    """A setup command writing the labels/resources `ray start` reads from the environment."""
    compact = {"separators": (",", ":"), "sort_keys": True}
    lines = [f"export RAY_OVERRIDE_RESOURCES={shlex.quote(json.dumps(resources, **compact))}"]
    if labels:
        lines.append(f"export RAY_OVERRIDE_LABELS={shlex.quote(json.dumps(labels, **compact))}")
    quoted = " ".join(shlex.quote(line) for line in lines)
    return f"mkdir -p ~/.raynas && printf '%s\\n' {quoted} > {NODE_ENV_FILE}"


def render_launcher(spec: ClusterSpec) -> dict[str, Any]:
    """A `ray up` config: one node type per group plus the `head` type.

    Resources are integers (the launcher schema's type; memory in bytes), labels strings.
    The launcher hands a node type's labels and resources to `ray start` through
    RAY_OVERRIDE_LABELS / RAY_OVERRIDE_RESOURCES (ray/autoscaler/_private/updater.py), except for
    provider `local`: there each node type's setup commands write them into a file the start
    commands source. Token auth: the start commands set RAY_AUTH_MODE=token (and ~/.bashrc, for
    `ray exec`/`ray submit`), and `file_mounts` copies the local token, which
    `ray get-auth-token --generate` creates, to every node."""
    # (no group is named like HEAD_TYPE: the spec reserves it)
    local = spec.launcher.provider.get("type") == "local"
    common = [
        *spec.launcher.setup_commands,
        f"grep -qxF 'export {AUTH_ENV}' ~/.bashrc || echo 'export {AUTH_ENV}' >> ~/.bashrc",
    ]
    head_resources = {"CPU": 0, "GPU": 0}
    types: dict[str, Any] = {
        HEAD_TYPE: {
            "node_config": copy.deepcopy(spec.head.launcher.node_config),
            "resources": head_resources,
        }
    }
    for group in spec.groups:
        low, high = group.min_replicas, group.max_replicas
        if not spec.autoscaling:  # a fixed cluster: exactly the starting size
            low = high = _start_size(group)
        resources = {k: int(v) for k, v in group.ray_resources().items()}
        labels = {str(k): str(v) for k, v in group.ray_labels().items()}
        node: dict[str, Any] = {
            "node_config": copy.deepcopy(group.launcher.node_config),
            "min_workers": low,
            "max_workers": high,
            "resources": resources,
            "labels": labels,
        }
        if group.idle_timeout_s is not None:
            node["idle_timeout_s"] = group.idle_timeout_s
        if group.priority is not None:
            node["priority"] = group.priority
        if group.image:
            node["docker"] = {"worker_image": group.image}
        if local:  # replaces setup_commands for this type, hence `common` first
            node["worker_setup_commands"] = [*common, _node_env_command(labels, resources)]
        types[group.name] = node
    source = f". {NODE_ENV_FILE}; " if local else ""
    docker: dict[str, Any] = {
        "image": spec.image,
        "container_name": "ray_container",
        "pull_before_run": True,
        "run_options": ["--ulimit nofile=65536:65536"],
    }
    if spec.head.image:
        docker["head_image"] = spec.head.image
    config: dict[str, Any] = {
        "cluster_name": spec.name,
        "max_workers": sum(t.get("max_workers", 0) for t in types.values()),
        "idle_timeout_minutes": spec.launcher.idle_timeout_minutes,
        "provider": copy.deepcopy(spec.launcher.provider),
        "auth": copy.deepcopy(spec.launcher.auth),
        "docker": docker,
        "head_node_type": HEAD_TYPE,
        "available_node_types": types,
        "file_mounts": {TOKEN_FILE: TOKEN_FILE},
        "setup_commands": common,
    }
    if local:
        config["head_setup_commands"] = [_node_env_command({}, head_resources)]
    config["head_start_ray_commands"] = [
        "ray stop",
        f"ulimit -n 65536; {source}export {AUTH_ENV}; {HEAD_START}",
    ]
    config["worker_start_ray_commands"] = [
        "ray stop",
        f"ulimit -n 65536; {source}export {AUTH_ENV}; {WORKER_START}",
    ]
    _check([config])
    return config


# ---------------------------------------------------------------------------------- notes
def notes(spec: ClusterSpec) -> list[str]:
    """What a user should know about the rendered manifests (the CLI prints these)."""
    out = []
    if not has_secret_ref(spec):
        out.append(
            f"KubeRay {spec.kuberay_version} has no authOptions.secretName (1.6.0+): the operator "
            "creates a token Secret named after the RayCluster; a RayJob's cluster has a "
            "generated name, so read it from the RayJob's status.rayClusterName"
            + (" (job.auth_secret is not used)" if spec.job and spec.job.auth_secret else "")
        )
    if not spec.autoscaling and any(g.priority is not None for g in spec.groups):
        out.append(
            "groups[].priority is left out: it only steers the autoscaler (autoscaling: false)"
        )
    if spec.launcher.provider.get("type") == "local" and len(spec.groups) > 1:
        out.append(
            "provider local assigns worker_ips to node types in no particular order; for a "
            "hand-placed heterogeneous cluster start each node with its group's labels yourself"
        )
    return out


# ---------------------------------------------------------------------------------- writing
def filename(doc: dict[str, Any]) -> str:
    kind = kind_of(doc)
    if kind not in FILENAMES:
        raise ManifestError([f"not a RayCluster, RayJob or ray up config: {str(doc)[:80]}"])
    return FILENAMES[kind]


def write_manifests(docs: Sequence[dict[str, Any]], folder: str | Path) -> list[Path]:
    """Write each manifest to `folder` (raycluster.yaml, rayjob.yaml, ray-up.yaml) and return
    the paths. Everything is validated first and each file replaced atomically (a temporary
    file in the same folder, then os.replace), so no reader ever sees a half-written file and
    an invalid set writes nothing."""
    names = [filename(doc) for doc in docs]
    doubled = sorted({n for n in names if names.count(n) > 1})
    if doubled:
        raise ManifestError([f"more than one manifest for {', '.join(doubled)}"])
    _check(list(docs))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    staged: list[tuple[str, Path]] = []
    try:
        for name, doc in zip(names, docs, strict=True):
            handle, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
            staged.append((tmp, folder / name))
            with os.fdopen(handle, "w") as out:
                out.write(dump_yaml(doc))
                out.flush()
                os.fsync(out.fileno())
        for tmp, target in staged:
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
    finally:
        for tmp, _ in staged:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return [target for _, target in staged]
