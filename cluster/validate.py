"""Offline validation of KubeRay manifests and Ray cluster-launcher (`ray up`) configs.

Three layers, none of which needs a Kubernetes API server or the network:

1. the schema: the ``v1`` ``openAPIV3Schema`` of KubeRay's CRDs (``RayCluster``, ``RayJob``,
   shipped in ``cluster/schemas``), made :func:`strict` like the API server's pruning and
   ``kubectl --validate=strict``, after the schema's ``default``s are applied as the API server
   does (so a hand-written group without ``minReplicas`` is not "missing" it); Ray's launcher
   schema (draft-07) for a ``ray up`` config;
2. the rules a schema cannot say: ``metadata.name`` (DNS-1035, at most 53 characters for a
   RayCluster and 47 for a RayJob), the ``managedBy`` CEL rule;
3. a port of the operator's checks (``ray-operator/controllers/ray/utils/validation.go``) and
   of the ones ``ray up`` adds (``ray/autoscaler/_private/util.py::validate_config``).

Every problem is one line ``"<kind> <name>: <dotted.path[0].field>: <message>"``.
This module imports nothing from ``orchestrator`` (the import direction is cluster <- orchestrator).
"""

from __future__ import annotations

import copy
import difflib
import functools
import gzip
import json
import re
from collections.abc import Iterable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from cluster.spec import DNS1035_LABEL, check_label_key, check_label_value, version_tuple

KUBERAY_SCHEMA_VERSION = "1.7.0"
LAUNCHER_SCHEMA_VERSION = "2.60.0"
SCHEMA_FILES = {
    "RayCluster": f"raycluster-v{KUBERAY_SCHEMA_VERSION}.json.gz",
    "RayJob": f"rayjob-v{KUBERAY_SCHEMA_VERSION}.json.gz",
    "launcher": f"ray-launcher-{LAUNCHER_SCHEMA_VERSION}.json.gz",
}
API_VERSION = "ray.io/v1"
LAUNCHER_KIND = "ray up config"
ALLOWED_KINDS = (
    f"apiVersion {API_VERSION} kind RayCluster",
    f"apiVersion {API_VERSION} kind RayJob",
    "a `ray up` config (top-level cluster_name and provider)",
)
#: ray-operator/controllers/ray/utils/constant.go: MaxRayClusterNameLength, MaxRayJobNameLength
MAX_NAME = {"RayCluster": 53, "RayJob": 47}
MANAGED_BY = ("ray.io/kuberay-operator", "kueue.x-k8s.io/multikueue")
#: `ray up` fills max_workers from the provider's defaults.yaml before its checks
LAUNCHER_DEFAULT_MAX_WORKERS = {"aws": 2, "azure": 2, "gcp": 2, "spark": 8, "vsphere": 5}
RESOURCE_PARAMS = ("num-cpus", "num-gpus", "memory", "resources")
#: YAML 1.1 booleans that PyYAML reads as strings but kubectl's YAML parser (go-yaml) as booleans
KUBECTL_BOOLEANS = frozenset({"y", "Y", "n", "N"})
#: numbers go-yaml parses that PyYAML's resolver does not (1e3, 1.5e3): strings to PyYAML only
_GO_YAML_NUMBER = re.compile(r"[-+]?(\.[0-9]+|[0-9][0-9_]*(\.[0-9_]*)?)([eE][-+]?[0-9]+)?")

_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
#: k8s.io/apimachinery resource.Quantity (what KubeRay's ParseQuantity accepts)
_QUANTITY = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+|[KMGTPE]i|[numkMGTPE])?")
_MAX_MESSAGE = 240
_ABSENT = object()


# ---------------------------------------------------------------------------------- schemas
def strict(schema: Any) -> Any:
    """A copy of `schema` in which every object schema that has `properties`, no
    `additionalProperties` and no `x-kubernetes-preserve-unknown-fields` gets
    `additionalProperties: false`, so an unknown field (a typo) is an error.

    The walk follows the structural keywords (properties, patternProperties,
    additionalProperties, items, definitions) only: the branches of allOf/anyOf/oneOf and the
    conditions of if/not are left as they are, where a closed object would change what they
    mean (Ray's launcher schema has such an `if`)."""
    schema = copy.deepcopy(schema)
    _close(schema)
    return schema


def _close(node: Any) -> None:
    if not isinstance(node, dict):
        return
    if (
        isinstance(node.get("properties"), dict)
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        node["additionalProperties"] = False
    for key in ("properties", "patternProperties", "definitions", "$defs"):
        for child in (node.get(key) or {}).values():
            _close(child)
    _close(node.get("additionalProperties"))
    items = node.get("items")
    for child in items if isinstance(items, list) else [items]:
        _close(child)


def _read_schema(filename: str) -> dict[str, Any]:
    data = resources.files("cluster").joinpath("schemas", filename).read_bytes()
    return json.loads(gzip.decompress(data))


@functools.cache
def schema_for(kind: str) -> dict[str, Any]:
    """The strict schema of `kind` (RayCluster, RayJob or `launcher`), loaded once."""
    return strict(_read_schema(SCHEMA_FILES[kind]))


@functools.cache
def _validator(kind: str):
    import jsonschema

    cls = jsonschema.Draft7Validator if kind == "launcher" else jsonschema.Draft4Validator
    return cls(schema_for(kind))


def apply_defaults(schema: dict[str, Any], instance: Any) -> Any:
    """Fill the schema's `default`s into `instance` (in place) where a field is missing, as the
    API server does before it validates: only inside objects the instance has."""
    if isinstance(instance, dict):
        properties = schema.get("properties") or {}
        for key, sub in properties.items():
            if key not in instance and isinstance(sub, dict) and "default" in sub:
                instance[key] = copy.deepcopy(sub["default"])
            elif key in instance and isinstance(sub, dict):
                apply_defaults(sub, instance[key])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key, value in instance.items():
                if key not in properties:
                    apply_defaults(extra, value)
    elif isinstance(instance, list) and isinstance(schema.get("items"), dict):
        for item in instance:
            apply_defaults(schema["items"], item)
    return instance


# ---------------------------------------------------------------------------------- paths
def dotted(path: Iterable[Any]) -> str:
    """`["spec", "workerGroupSpecs", 1, "labels"]` -> `spec.workerGroupSpecs[1].labels`."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _short(text: str) -> str:
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


def _schema_problems(kind: str, doc: Any) -> Iterator[tuple[str, str]]:
    """(path, message) for every schema error, unknown fields named one by one."""
    for error in _validator(kind).iter_errors(doc):
        path = list(error.absolute_path)
        if error.validator == "additionalProperties" and error.validator_value is False:
            known = list(error.schema.get("properties") or {})
            patterns = list(error.schema.get("patternProperties") or {})
            for key in error.instance:
                if key in known or any(re.search(p, key) for p in patterns):
                    continue
                hint = difflib.get_close_matches(key, known, n=1)
                message = f"unknown field; did you mean {hint[0]}?" if hint else "unknown field"
                if not hint and known:
                    message += f" (allowed: {', '.join(known)})"
                yield dotted([*path, key]), _short(message)
        elif error.validator == "required":
            missing = re.match(r"'([^']+)' is a required property", error.message)
            where = [*path, missing.group(1)] if missing else path
            yield dotted(where), "required field missing"
        elif error.validator == "pattern" and "[KMGTPE]i" in str(error.validator_value):
            yield (
                dotted(path),
                f"{error.instance!r} is not a Kubernetes quantity (e.g. 500m, 4, 16Gi)",
            )
        else:
            yield dotted(path), _short(error.message)


# ---------------------------------------------------------------------------------- checks
def _name_problems(kind: str, metadata: Any) -> Iterator[tuple[str, str]]:
    if not isinstance(metadata, dict):
        yield "metadata", "required: a mapping with name"
        return
    name = metadata.get("name")
    if not isinstance(name, str) or not name:
        yield "metadata.name", "required: a DNS-1035 label"
    else:
        limit = MAX_NAME[kind]
        if len(name) > limit:
            yield (
                "metadata.name",
                f"{name!r} has {len(name)} characters; a {kind} name has at most {limit}"
                + (" (KubeRay derives longer names from it)" if kind == "RayJob" else ""),
            )
        if not DNS1035_LABEL.fullmatch(name):
            yield (
                "metadata.name",
                f"{name!r} is not a DNS-1035 label (lower-case letters, digits and '-', "
                "starting with a letter and ending with a letter or digit)",
            )
    namespace = metadata.get("namespace")
    if namespace is not None and (
        not isinstance(namespace, str)
        or len(namespace) > 63
        or not _DNS1123_LABEL.fullmatch(namespace)
    ):
        yield "metadata.namespace", f"{namespace!r} is not a DNS-1123 label"
    labels = metadata.get("labels")
    if isinstance(labels, dict):
        yield from _label_problems(["metadata", "labels"], labels)


def _label_problems(path: list[Any], labels: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for key, value in labels.items():
        problem = check_label_key(str(key))
        if not problem and isinstance(value, str):  # a non-string is the schema's error
            problem = check_label_value(key, value)
        if problem:
            yield dotted([*path, key]), problem


def _ray_container_env(pod_spec: dict[str, Any]) -> dict[str, Any]:
    """name -> value of the env of the first container (KubeRay's Ray container)."""
    containers = pod_spec.get("containers") or []
    first = containers[0] if containers and isinstance(containers[0], dict) else {}
    return {e.get("name"): e.get("value") for e in first.get("env") or [] if isinstance(e, dict)}


def _group_problems(path: list[Any], group: dict[str, Any], v2: bool) -> Iterator[tuple[str, str]]:
    pod_spec = ((group.get("template") or {}).get("spec")) or {}
    if not isinstance(pod_spec, dict):
        return
    if not pod_spec.get("containers"):
        yield (
            dotted([*path, "template", "spec", "containers"]),
            "at least one container is required",
        )
    params = group.get("rayStartParams") or {}
    if not isinstance(params, dict):
        params = {}
    both = [p for p in RESOURCE_PARAMS if params.get(p)]
    if both and group.get("resources"):
        yield (
            dotted([*path, "resources"]),
            f"not together with rayStartParams {', '.join(both)}: use only the top-level "
            "resources (KubeRay rejects both)",
        )
    if "labels" in params:
        yield (
            dotted([*path, "rayStartParams", "labels"]),
            "not supported since KubeRay 1.5; use the group's top-level labels",
        )
    if isinstance(group.get("labels"), dict):
        yield from _label_problems([*path, "labels"], group["labels"])
    if isinstance(group.get("resources"), dict):
        for key, value in group["resources"].items():
            if str(key).lower().endswith("gpu") and key != "GPU":
                yield (
                    dotted([*path, "resources", key]),
                    "KubeRay takes any resource whose name ends in 'gpu' as the GPU count "
                    "(num-gpus), not as a custom resource: use GPU, or rename it",
                )
            if isinstance(value, str) and not _QUANTITY.fullmatch(value.strip()):
                yield (
                    dotted([*path, "resources", key]),
                    f"{value!r} is not a Kubernetes quantity; KubeRay would skip it silently",
                )
    if isinstance(pod_spec.get("nodeSelector"), dict):
        yield from _label_problems(
            [*path, "template", "spec", "nodeSelector"], pod_spec["nodeSelector"]
        )
    for index, toleration in enumerate(pod_spec.get("tolerations") or []):
        if not isinstance(toleration, dict):
            continue
        where = dotted([*path, "template", "spec", "tolerations", index])
        operator = toleration.get("operator")
        if operator not in (None, "", "Exists", "Equal"):
            yield f"{where}.operator", f"{operator!r}: must be Exists or Equal"
        if operator == "Exists" and toleration.get("value"):
            yield f"{where}.value", "must be empty with operator Exists"
    restart = pod_spec.get("restartPolicy")
    if v2 and restart not in (None, "", "Never"):
        yield (
            dotted([*path, "template", "spec", "restartPolicy"]),
            f"{restart!r}: must be Never or unset with autoscaler v2",
        )


def _cluster_spec_problems(
    path: list[Any], spec: Any, *, in_rayjob: bool = False
) -> Iterator[tuple[str, str]]:
    if not isinstance(spec, dict):
        return
    autoscaling = bool(spec.get("enableInTreeAutoscaling"))
    options = (
        spec.get("autoscalerOptions") if isinstance(spec.get("autoscalerOptions"), dict) else {}
    )
    v2 = autoscaling and options.get("version") == "v2"
    head = spec.get("headGroupSpec")
    head_env: dict[str, Any] = {}
    if isinstance(head, dict):
        yield from _group_problems([*path, "headGroupSpec"], head, v2)
        head_env = _ray_container_env(((head.get("template") or {}).get("spec")) or {})
    head_pod = [*path, "headGroupSpec", "template", "spec", "containers", 0, "env"]
    flag = head_env.get("RAY_enable_autoscaler_v2", _ABSENT)
    if (not autoscaling and flag in ("1", "true")) or (
        autoscaling and options.get("version") and flag is not _ABSENT
    ):
        yield (
            dotted(head_pod),
            "RAY_enable_autoscaler_v2: do not set it; use enableInTreeAutoscaling with "
            "autoscalerOptions.version",
        )
    groups = spec.get("workerGroupSpecs") or []
    names: list[str] = []
    for index, group in enumerate(groups if isinstance(groups, list) else []):
        if not isinstance(group, dict):
            continue
        where = [*path, "workerGroupSpecs", index]
        names.append(str(group.get("groupName")))
        yield from _group_problems(where, group, v2)
        low, high, start = (group.get(k) for k in ("minReplicas", "maxReplicas", "replicas"))
        for key, value in (("minReplicas", low), ("maxReplicas", high), ("replicas", start)):
            if isinstance(value, int) and value < 0:
                yield dotted([*where, key]), f"{value}: must be >= 0"
        if isinstance(low, int) and isinstance(high, int) and low > high:
            yield dotted([*where, "minReplicas"]), f"{low} > maxReplicas {high}"
        if group.get("idleTimeoutSeconds") is not None and not v2:
            yield (
                dotted([*where, "idleTimeoutSeconds"]),
                "needs enableInTreeAutoscaling with autoscalerOptions.version v2",
            )
    doubled = sorted({n for n in names if names.count(n) > 1})
    if doubled:
        yield dotted([*path, "workerGroupSpecs"]), f"groupName repeated: {', '.join(doubled)}"
    idle = options.get("idleTimeoutSeconds")
    if isinstance(idle, int) and idle < 0:
        yield dotted([*path, "autoscalerOptions", "idleTimeoutSeconds"]), f"{idle}: must be >= 0"
    auth = spec.get("authOptions")
    if isinstance(auth, dict):
        version = spec.get("rayVersion")
        parsed = version_tuple(version) if isinstance(version, str) else ()
        if auth.get("mode") == "token" and (len(parsed) < 2 or parsed < (2, 52, 0)):
            yield (
                dotted([*path, "rayVersion"]),
                f"{version!r}: authOptions.mode token needs rayVersion 2.52.0 or later",
            )
        if auth.get("enableK8sTokenAuth"):
            if in_rayjob:
                yield (
                    dotted([*path, "authOptions", "enableK8sTokenAuth"]),
                    "not allowed in a RayJob",
                )
            if auth.get("mode") != "token" or auth.get("secretName"):
                yield (
                    dotted([*path, "authOptions", "enableK8sTokenAuth"]),
                    "needs mode token and no secretName",
                )
            if len(parsed) >= 2 and parsed < (2, 55, 0):
                yield (
                    dotted([*path, "rayVersion"]),
                    f"{version!r}: enableK8sTokenAuth needs Ray >= 2.55",
                )
    managed = spec.get("managedBy")
    if managed is not None and managed not in MANAGED_BY:
        yield dotted([*path, "managedBy"]), f"{managed!r}: must be one of {', '.join(MANAGED_BY)}"


def _rayjob_problems(spec: Any) -> Iterator[tuple[str, str]]:
    if not isinstance(spec, dict):
        return
    cluster, selector = spec.get("rayClusterSpec"), spec.get("clusterSelector")
    mode = spec.get("submissionMode") or "K8sJobMode"
    shutdown = bool(spec.get("shutdownAfterJobFinishes"))
    if (cluster is None) == (not selector):
        yield "spec", "exactly one of rayClusterSpec and clusterSelector must be set"
    if selector and isinstance(selector, dict):
        if not selector.get("ray.io/cluster"):
            yield "spec.clusterSelector.ray.io/cluster", "required: the RayCluster's name"
        if mode == "SidecarMode":
            yield "spec.clusterSelector", "not supported in SidecarMode"
        if spec.get("suspend"):
            yield "spec.suspend", "not supported with clusterSelector"
    if spec.get("suspend") and not shutdown:
        yield "spec.suspend", "needs shutdownAfterJobFinishes: true"
    ttl = spec.get("ttlSecondsAfterFinished")
    if isinstance(ttl, int) and ttl < 0:
        yield "spec.ttlSecondsAfterFinished", f"{ttl}: must be >= 0"
    if isinstance(ttl, int) and ttl > 0 and not shutdown:
        yield "spec.ttlSecondsAfterFinished", f"{ttl} needs shutdownAfterJobFinishes: true"
    backoff = spec.get("backoffLimit")
    if isinstance(backoff, int):
        if backoff < 0:
            yield "spec.backoffLimit", f"{backoff}: must be >= 0"
        if backoff > 0 and mode == "InteractiveMode":
            yield "spec.backoffLimit", "must be 0 in InteractiveMode"
    for key in ("activeDeadlineSeconds", "preRunningDeadlineSeconds"):
        value = spec.get(key)
        if isinstance(value, int) and value <= 0:
            yield f"spec.{key}", f"{value}: must be > 0"
    if mode == "SidecarMode":
        for key in ("submitterPodTemplate", "submitterConfig"):
            if spec.get(key) is not None:
                yield f"spec.{key}", "not supported in SidecarMode"
        head = ((cluster or {}).get("headGroupSpec") or {}) if isinstance(cluster, dict) else {}
        restart = ((head.get("template") or {}).get("spec") or {}).get("restartPolicy")
        if restart not in (None, "", "Never"):
            yield (
                "spec.rayClusterSpec.headGroupSpec.template.spec.restartPolicy",
                f"{restart!r}: must be Never or unset in SidecarMode",
            )
    runtime_env = spec.get("runtimeEnvYAML")
    if isinstance(runtime_env, str) and runtime_env.strip():
        try:
            parsed = yaml.safe_load(runtime_env)
        except yaml.YAMLError as exc:
            yield "spec.runtimeEnvYAML", f"not valid YAML: {getattr(exc, 'problem', None) or exc}"
        else:
            if not isinstance(parsed, dict):
                yield "spec.runtimeEnvYAML", f"must be a YAML mapping, got {type(parsed).__name__}"
    if cluster is not None:
        yield from _cluster_spec_problems(["spec", "rayClusterSpec"], cluster, in_rayjob=True)


def _launcher_problems(doc: dict[str, Any]) -> Iterator[tuple[str, str]]:
    types = doc.get("available_node_types")
    if not isinstance(types, dict):
        return
    head = doc.get("head_node_type")
    if head is None:
        yield "head_node_type", "required when available_node_types is set"
    elif head not in types:
        yield (
            "head_node_type",
            f"{head!r} is not one of available_node_types: {', '.join(map(str, types))}",
        )
    total = 0
    for name, node in types.items():
        if not isinstance(node, dict):
            continue
        low, high = node.get("min_workers", 0), node.get("max_workers")
        if isinstance(low, int):
            total += low
        if isinstance(low, int) and isinstance(high, int) and low > high:
            yield f"available_node_types.{name}.min_workers", f"{low} > max_workers {high}"
        if isinstance(node.get("labels"), dict):
            yield from _label_problems(["available_node_types", name, "labels"], node["labels"])
    provider = (
        (doc.get("provider") or {}).get("type") if isinstance(doc.get("provider"), dict) else None
    )
    limit = doc.get("max_workers", LAUNCHER_DEFAULT_MAX_WORKERS.get(str(provider)))
    if isinstance(limit, int) and total > limit:
        yield (
            "max_workers",
            f"{limit} is smaller than the sum of min_workers of the node types ({total})",
        )


# ---------------------------------------------------------------------------------- entry points
def kind_of(doc: Any) -> str | None:
    """RayCluster, RayJob, `launcher`, or None for anything else."""
    if not isinstance(doc, dict):
        return None
    if doc.get("apiVersion") == API_VERSION and doc.get("kind") in ("RayCluster", "RayJob"):
        return doc["kind"]
    if "cluster_name" in doc and "provider" in doc and "kind" not in doc:
        return "launcher"
    return None


def _title(kind: str, doc: dict[str, Any]) -> str:
    if kind == "launcher":
        return f"{LAUNCHER_KIND} {doc.get('cluster_name') or '<unnamed>'}"
    metadata = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
    return f"{kind} {metadata.get('name') or '<unnamed>'}"


def unknown_kind(doc: Any) -> str:
    if not isinstance(doc, dict):
        return f"a document must be a mapping, got {type(doc).__name__}"
    found = f"apiVersion {doc.get('apiVersion')!r} kind {doc.get('kind')!r}"
    return f"{found} is not a manifest raynas checks; allowed: {'; '.join(ALLOWED_KINDS)}"


def validate_manifest(doc: Any) -> list[str]:
    """Every problem of one manifest (RayCluster, RayJob or `ray up` config), one line each."""
    kind = kind_of(doc)
    if kind is None:
        return [unknown_kind(doc)]
    if kind == "launcher":
        found = list(_schema_problems("launcher", doc))
        found += _launcher_problems(doc)
    else:
        defaulted = apply_defaults(schema_for(kind), copy.deepcopy(doc))
        found = list(_schema_problems(kind, defaulted))
        found += _name_problems(kind, defaulted.get("metadata"))
        spec = defaulted.get("spec")
        if not isinstance(spec, dict):
            found.append(("spec", "required: a mapping"))
        elif kind == "RayCluster":
            found += _cluster_spec_problems(["spec"], spec)
        else:
            found += _rayjob_problems(spec)
    title = _title(kind, doc)
    lines: list[str] = []
    for path, message in found:
        line = f"{title}: {path}: {message}"
        if line not in lines:
            lines.append(line)
    return lines


def kubectl_non_string(value: str) -> str | None:
    """What kubectl's YAML parser reads the plain scalar `value` as, when PyYAML reads a string
    (`y` and `n` are YAML 1.1 booleans, `1e3` a float), else None."""
    if value in KUBECTL_BOOLEANS:
        return "a boolean"
    if _GO_YAML_NUMBER.fullmatch(value):
        return "a number"
    return None


def _kubectl_types(node: yaml.Node, path: list[Any]) -> Iterator[tuple[str, str]]:
    """Unquoted scalars that PyYAML reads as strings and kubectl as something else."""
    if isinstance(node, yaml.ScalarNode):
        if not node.style and node.tag.endswith(":str"):
            other = kubectl_non_string(node.value)
            if other:
                yield dotted(path), f"unquoted {node.value} is {other} to kubectl; quote it"
    elif isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            yield from _kubectl_types(key, path)
            yield from _kubectl_types(value, [*path, getattr(key, "value", "?")])
    elif isinstance(node, yaml.SequenceNode):
        for index, value in enumerate(node.value):
            yield from _kubectl_types(value, [*path, index])


class Report(NamedTuple):
    """What a manifest file holds (`titles`: "RayCluster raynas-hetero", ...) and its problems."""

    titles: list[str]
    problems: list[str]


def check_text(text: str, source: str = "<text>") -> Report:
    """The documents of the (multi-document) YAML in `text` and every problem, one line each:
    `<kind> <name>: <path>: <message>` for a manifest's, `<source>: ...` for the file's."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        # composed once: the nodes still say which scalars were quoted (_kubectl_types)
        nodes = list(yaml.compose_all(text, Loader=loader))
        constructor = loader("")
        pairs = [(constructor.construct_document(n), n) for n in nodes if n is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        return Report([], [f"{source}: {where}invalid YAML: {problem}"])
    pairs = [(doc, node) for doc, node in pairs if doc is not None]
    if not pairs:
        return Report([], [f"{source}: no YAML documents"])
    titles: list[str] = []
    problems: list[str] = []
    for index, (doc, node) in enumerate(pairs):
        kind = kind_of(doc)
        if kind is None:
            label = f"document {index + 1}" if len(pairs) > 1 else "document"
            problems.append(f"{source}: {label}: {unknown_kind(doc)}")
            continue
        title = _title(kind, doc)
        titles.append(title)
        problems += validate_manifest(doc)
        problems += [f"{title}: {p}: {m}" for p, m in _kubectl_types(node, [])]
    return Report(titles, problems)


def check_file(path: str | Path) -> Report:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return Report([], [f"{path}: file not found"])
    except (OSError, UnicodeDecodeError) as exc:
        return Report([], [f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}"])
    return check_text(text, str(path))


def validate_text(text: str, source: str = "<text>") -> list[str]:
    """Every problem of the (multi-document) YAML in `text`, one line each."""
    return check_text(text, source).problems


def validate_file(path: str | Path) -> list[str]:
    """Every problem of a manifest file (several YAML documents allowed), one line each; an
    unreadable file or invalid YAML is one problem, and so is each document of an unknown kind."""
    return check_file(path).problems
