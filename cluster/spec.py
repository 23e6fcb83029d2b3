"""The cluster spec: a heterogeneous Ray cluster described as data.

One YAML file names the head and the node groups (an A100 training group, L4/T4 evaluation
groups, a CPU group, ...). Everything else is derived from it, in one place each:

- the Ray labels and resources a node of a group advertises (``GroupSpec.ray_labels`` /
  ``ray_resources``), which the KubeRay and ``ray up`` manifests declare so the autoscaler can
  scale a group from zero, and which ``raynas cluster node-args`` prints for a hand-started node;
- which groups a run config's ``placement`` names (``ClusterSpec.groups_for``).

Every node of a group carries the label ``raynas.io/group=<name>`` (selectors use it) and the
marker resource ``raynas_group_<name>: 1`` (the fallback for a Ray without label scheduling).
Unknown keys are errors, like everywhere in raynas's configs.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

GROUP_LABEL = "raynas.io/group"
DEVICE_LABEL = "raynas.io/device"  # the accelerator type, or "cpu": CPU nodes carry no Ray one
ACCELERATOR_LABEL = "ray.io/accelerator-type"
MARKER_PREFIX = "raynas_group_"
#: placement words that are not group names
ANY, ANY_GPU = "any", "any-gpu"
RESERVED = (ANY, ANY_GPU, "head")  # "head": the launcher's node type of the head
#: KubeRay v1.5.1 brought group labels/resources (1.5.0) and authOptions (1.5.1); older
#: operators silently prune them, so the manifests would not say what the spec says
MIN_KUBERAY = (1, 5, 1)
#: Ray token auth needs >= 2.52; label selectors in Train's ScalingConfig about 2.53
MIN_RAY = (2, 52, 0)

DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_LABEL_NAME = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)")
_LABEL_PREFIX = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_QUANTITY = re.compile(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?")
_UNITS = {
    None: 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
}


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def memory_bytes(quantity: str) -> int:
    """A Kubernetes memory quantity ("16Gi", "300G", "512Mi", "1000000") in bytes."""
    match = _QUANTITY.fullmatch(str(quantity).strip())
    if not match:
        raise ValueError(
            f"memory {quantity!r} is not a Kubernetes quantity; e.g. 16Gi, 300G, 512Mi"
        )
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def check_dns_name(value: str, what: str, limit: int) -> None:
    """ValueError unless `value` is a DNS-1035 label of at most `limit` characters."""
    if not DNS1035_LABEL.fullmatch(value) or len(value) > limit:
        raise ValueError(
            f"{what} {value!r} must be a DNS-1035 label (lower-case letters, digits, '-', "
            f"starting with a letter) of at most {limit} characters"
        )


def check_label_key(key: str) -> str | None:
    """Why `key` is not a Kubernetes label key (prefix/name), or None."""
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not _LABEL_PREFIX.fullmatch(prefix)):
        return f"label key {key!r}: the prefix must be a DNS subdomain"
    if not name or len(name) > 63 or not _LABEL_NAME.fullmatch(name):
        return (
            f"label key {key!r}: the name must be 1-63 characters of letters, digits, '-', '_' "
            "or '.', starting and ending with a letter or digit"
        )
    return None


def check_label_value(key: str, value: Any) -> str | None:
    """Why `value` is not a Kubernetes label value (a string!), or None."""
    if not isinstance(value, str):
        return (
            f"label {key}: the value must be a string, got {type(value).__name__} {value!r} "
            "(quote it in YAML)"
        )
    if value and (len(value) > 63 or not _LABEL_NAME.fullmatch(value)):
        return (
            f"label {key}: value {value!r} must be at most 63 characters of letters, digits, "
            "'-', '_' or '.', starting and ending with a letter or digit"
        )
    return None


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Toleration(Strict):
    key: str
    operator: Literal["Exists", "Equal"] = "Exists"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None


class KubernetesPlacement(Strict):
    """How the pods of a group reach the right Kubernetes nodes (the keys are provider's:
    ``kubectl get nodes --show-labels`` on the target cluster is the ground truth)."""

    node_selector: dict[str, str] = Field(
        default_factory=dict,
        description="e.g. {cloud.google.com/gke-accelerator: nvidia-tesla-a100}",
    )
    tolerations: list[Toleration] = Field(
        default_factory=list,
        description="GPU pools are usually tainted: [{key: nvidia.com/gpu, operator: Exists, "
        "effect: NoSchedule}] (added for GPU groups when empty)",
    )
    service_account: str | None = None


class LauncherNode(Strict):
    """The `ray up` side of a group: the provider's node config (e.g. {InstanceType: g5.xlarge})."""

    node_config: dict[str, Any] = Field(default_factory=dict)


class HeadSpec(Strict):
    cpus: int = Field(4, ge=1, description="CPUs of the head pod/node (no trials run there)")
    memory: str = "16Gi"
    image: str | None = None
    kubernetes: KubernetesPlacement = Field(default_factory=KubernetesPlacement)
    launcher: LauncherNode = Field(default_factory=LauncherNode)

    @field_validator("memory")
    @classmethod
    def _memory(cls, value: str) -> str:
        memory_bytes(value)
        return value


class GroupSpec(Strict):
    """One node group: identical nodes, scaled between min_replicas and max_replicas."""

    name: str = Field(..., description="DNS label, e.g. a100, eval-l4, cpu")
    accelerator: str | None = Field(
        None, description="Ray accelerator type of its GPUs: A100, H100, L4, T4, ..."
    )
    gpus: int = Field(0, ge=0, description="GPUs per node (0: a CPU group)")
    cpus: int = Field(..., ge=1, description="CPUs per node")
    memory: str = Field(..., description="memory per node, a Kubernetes quantity (e.g. 64Gi)")
    min_replicas: int = Field(0, ge=0)
    max_replicas: int = Field(1, ge=0)
    replicas: int | None = Field(None, ge=0, description="starting size; null: min_replicas")
    labels: dict[str, str] = Field(default_factory=dict, description="extra Ray node labels")
    resources: dict[str, int] = Field(
        default_factory=dict, description="extra custom Ray resources per node (integers)"
    )
    image: str | None = Field(None, description="null: the cluster's image")
    priority: int | None = Field(
        None, description="autoscaler v2 preference among groups that fit (Ray >= 2.56)"
    )
    idle_timeout_s: int | None = Field(None, ge=0)
    kubernetes: KubernetesPlacement = Field(default_factory=KubernetesPlacement)
    launcher: LauncherNode = Field(default_factory=LauncherNode)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        check_dns_name(value, "group name", 40)
        if value in RESERVED:
            raise ValueError(
                f"group name {value!r} is reserved (placement words and the head): "
                f"{', '.join(RESERVED)}"
            )
        if value.endswith("gpu"):
            # its marker resource would end in "gpu", which KubeRay takes as the GPU count
            raise ValueError(
                f"group name {value!r} must not end in 'gpu' (KubeRay reads any resource "
                "named *gpu as a GPU count); e.g. a100, l4, eval-t4"
            )
        return value

    @field_validator("memory")
    @classmethod
    def _memory(cls, value: str) -> str:
        memory_bytes(value)
        return value

    @field_validator("labels", mode="before")
    @classmethod
    def _labels(cls, value: Any) -> Any:
        if isinstance(value, dict):
            for key, item in value.items():
                problem = check_label_key(str(key)) or check_label_value(key, item)
                if problem:
                    raise ValueError(problem)
                if key in (GROUP_LABEL, DEVICE_LABEL, ACCELERATOR_LABEL):
                    raise ValueError(f"label {key} is set by raynas from the group; remove it")
        return value

    @field_validator("resources")
    @classmethod
    def _resources(cls, value: dict[str, int]) -> dict[str, int]:
        for key, amount in value.items():
            if key in ("CPU", "GPU", "memory") or key.lower().endswith("gpu"):
                raise ValueError(
                    f"resources.{key}: CPU, GPU and memory come from cpus/gpus/memory, and a "
                    "custom resource must not end in 'gpu' (KubeRay takes it as the GPU count)"
                )
            if key.startswith(MARKER_PREFIX) or key.startswith("accelerator_type:"):
                raise ValueError(f"resources.{key}: set by raynas from the group; remove it")
            if amount < 0:
                raise ValueError(f"resources.{key}: must be >= 0, got {amount}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> GroupSpec:
        if self.gpus and not self.accelerator:
            raise ValueError(
                f"group {self.name}: gpus={self.gpus} needs `accelerator` (A100, L4, T4, ...): "
                "the autoscaler cannot learn it from a group with no nodes yet"
            )
        if self.accelerator and not self.gpus:
            raise ValueError(f"group {self.name}: accelerator={self.accelerator} needs gpus >= 1")
        if self.accelerator and check_label_value(ACCELERATOR_LABEL, self.accelerator):
            raise ValueError(
                f"group {self.name}: accelerator {self.accelerator!r} is not a label value"
            )
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"group {self.name}: min_replicas={self.min_replicas} > max_replicas={self.max_replicas}"
            )
        if self.replicas is not None and not (
            self.min_replicas <= self.replicas <= self.max_replicas
        ):
            raise ValueError(
                f"group {self.name}: replicas={self.replicas} outside "
                f"[{self.min_replicas}, {self.max_replicas}]"
            )
        return self

    # ---- what a node of this group advertises to Ray ---------------------------------------
    @property
    def device(self) -> str:
        return self.accelerator or "cpu"

    @property
    def marker(self) -> str:
        return MARKER_PREFIX + self.name

    def ray_labels(self) -> dict[str, str]:
        labels = {GROUP_LABEL: self.name, DEVICE_LABEL: self.device}
        if self.accelerator:
            labels[ACCELERATOR_LABEL] = self.accelerator
        labels.update(self.labels)
        return labels

    def ray_resources(self) -> dict[str, float]:
        """Per node: CPU, GPU, memory (bytes), the accelerator and marker resources, custom."""
        out: dict[str, float] = {"CPU": self.cpus, "memory": memory_bytes(self.memory)}
        if self.gpus:
            out["GPU"] = self.gpus
            out[f"accelerator_type:{self.accelerator}"] = 1
        out[self.marker] = 1
        out.update(self.resources)
        return out

    def custom_resources(self) -> dict[str, int]:
        """The resources that are neither CPU, GPU nor memory (for `--resources`)."""
        return {
            k: int(v) for k, v in self.ray_resources().items() if k not in ("CPU", "GPU", "memory")
        }


class JobSpec(Strict):
    """What the RayJob runs: `raynas run CONFIG` in the image (bake raynas and configs into it)."""

    config: str = Field(..., description="the run config's path inside the image")
    args: list[str] = Field(default_factory=list, description="extra `raynas run` arguments")
    env: dict[str, str] = Field(
        default_factory=dict,
        description="runtime env variables (e.g. MLFLOW_TRACKING_URI); never secrets: "
        "use ${VAR} references in the run config and a Kubernetes Secret",
    )
    runtime_env: dict[str, Any] = Field(
        default_factory=dict, description="more runtime_env keys (pip, py_modules, ...)"
    )
    ttl_seconds_after_finished: int = Field(
        600, ge=0, description="seconds the finished job's cluster is kept (0: deleted at once)"
    )
    active_deadline_seconds: int | None = Field(None, ge=1)
    backoff_limit: int = Field(0, ge=0)
    auth_secret: str | None = Field(
        None,
        description="Secret holding `auth_token` for Ray token auth; null: <name>-ray-token "
        "(create it first: kubectl create secret generic NAME --from-literal=auth_token=...)",
    )

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if re.search(r"PASSWORD|SECRET|TOKEN|KEY", key, re.I):
                raise ValueError(
                    f"env.{key}: looks like a secret; manifests are not the place for secrets "
                    "(put it in a Kubernetes Secret)"
                )
        return value


class LauncherSpec(Strict):
    """The `ray up` side: provider and auth blocks as Ray's launcher schema defines them."""

    provider: dict[str, Any] = Field(default_factory=lambda: {"type": "aws", "region": "us-west-2"})
    auth: dict[str, Any] = Field(default_factory=lambda: {"ssh_user": "ubuntu"})
    setup_commands: list[str] = Field(default_factory=list)
    idle_timeout_minutes: int = Field(5, ge=0)


class ClusterSpec(Strict):
    name: str = Field(..., description="DNS-1035 label of at most 47 characters (RayJob's limit)")
    image: str = Field(..., description="container image with raynas and Ray installed")
    ray_version: str = "2.60.0"
    kuberay_version: str = Field("1.7.0", description="the operator the manifests are for")
    namespace: str | None = Field(None, description="Kubernetes namespace; null: the current")
    scheduling: Literal["labels", "resources"] = Field(
        "labels",
        description="labels: Ray label selectors (Ray >= 2.53); resources: the marker and "
        "accelerator_type resources (any Ray 2.x; one group per placement)",
    )
    autoscaling: bool = Field(
        True,
        description="false: a fixed, hand-started cluster (pre-flight checks its live nodes)",
    )
    idle_timeout_s: int = Field(300, ge=0)
    head: HeadSpec = Field(default_factory=HeadSpec)
    groups: list[GroupSpec] = Field(..., min_length=1)
    job: JobSpec | None = None
    launcher: LauncherSpec = Field(default_factory=LauncherSpec)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        check_dns_name(value, "name", 47)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ClusterSpec:
        names = [g.name for g in self.groups]
        doubled = sorted({n for n in names if names.count(n) > 1})
        if doubled:
            raise ValueError(f"groups: names must be unique; repeated: {', '.join(doubled)}")
        if version_tuple(self.kuberay_version) < MIN_KUBERAY:
            raise ValueError(
                f"kuberay_version={self.kuberay_version}: raynas needs KubeRay >= 1.5.1 (group "
                "labels/resources and authOptions; older operators drop them silently)"
            )
        if version_tuple(self.ray_version) < MIN_RAY:
            raise ValueError(
                f"ray_version={self.ray_version}: raynas's cluster manifests need Ray >= 2.52 "
                "(token authentication)"
            )
        if version_tuple(self.kuberay_version) < (1, 7, 0) and any(
            g.priority is not None for g in self.groups
        ):
            raise ValueError("groups[].priority needs kuberay_version >= 1.7.0")
        return self

    # ---- placement words -> groups ----------------------------------------------------------
    def group(self, name: str) -> GroupSpec:
        for group in self.groups:
            if group.name == name:
                return group
        raise KeyError(name)

    def groups_for(self, placement: str | list[str] | None) -> list[GroupSpec]:
        """The groups a placement allows: a group name, a list of them, `any-gpu` (every GPU
        group), or `any`/None (every group). ValueError names the unknown word."""
        words = [placement] if isinstance(placement, str) or placement is None else placement
        chosen: list[GroupSpec] = []
        for word in words:
            if word in (None, ANY):
                found = list(self.groups)
            elif word == ANY_GPU:
                found = [g for g in self.groups if g.gpus]
            else:
                try:
                    found = [self.group(word)]
                except KeyError:
                    raise ValueError(
                        f"placement {word!r} is not a group of cluster {self.name}; allowed: "
                        f"{', '.join([ANY, ANY_GPU, *(g.name for g in self.groups)])}"
                    ) from None
            chosen.extend(g for g in found if g not in chosen)
        return chosen


def parse_spec(data: dict[str, Any]) -> ClusterSpec:
    """The spec in `data`; pydantic's ValidationError on bad input (formatted by the caller)."""
    return ClusterSpec.model_validate(data)
