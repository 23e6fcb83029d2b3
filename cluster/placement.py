"""Placement: the one place that turns "run this stage's workers on group X" into Ray terms.

A stage asks for `workers` of a per-worker :class:`Need` (CPUs, GPUs, custom resources)
on the node groups its ``placement`` names (``cluster.spec.ClusterSpec.groups_for``). The
result, a :class:`Placement`, speaks every vocabulary raynas uses:

- Ray Train V2 (``train_kwargs``): ``ScalingConfig(resources_per_worker, label_selector)``;
- Ray Tune trials (``trial_resources``): a ``PlacementGroupFactory`` whose one bundle carries a
  ``bundle_label_selector``;
- tasks and actors (``options``): ``.options(num_cpus, num_gpus, resources, label_selector)``.

Two scheduling modes, chosen by the cluster spec:

- ``labels`` (Ray >= 2.53): a label selector on ``raynas.io/group`` (``in(a,b)`` for several
  groups). Every node of a group carries that label (declared in the manifests, so the
  autoscaler can scale a group from zero; ``raynas cluster node-args`` for hand-started nodes).
- ``resources`` (any Ray 2.x): the group's marker resource ``raynas_group_<name>`` at 0.001 per
  worker. A resource request cannot say "either of two groups", so a placement naming several
  groups is refused in this mode, with the reason.

Pre-flight (``preflight``) checks a placement against what could hold it: the spec's groups at
their maximum size (an autoscaling cluster), or the nodes that are alive now (a fixed cluster, or
no spec). A stage nothing can hold ends in one line naming the stage, what one worker asks and
the groups there are, instead of a trial pending forever.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cluster.spec import ANY, ANY_GPU, GROUP_LABEL, ClusterSpec, GroupSpec

#: the request of a marker resource: enough to pin, small enough never to run out
MARKER_AMOUNT = 0.001


class PlacementError(ValueError):
    """A placement that cannot be expressed or held; the message is one line for the user."""


@dataclass(frozen=True)
class Need:
    """What one worker (a training rank, a trial, a task, an actor) asks for."""

    cpus: float = 1.0
    gpus: float = 0.0
    custom: Mapping[str, float] = field(default_factory=dict)
    accelerator_type: str | None = None  # raw Ray accelerator type (no cluster spec)

    def text(self) -> str:
        parts = [f"{self.cpus:g} CPU"]
        if self.gpus:
            parts.append(f"{self.gpus:g} GPU")
        parts += [f"{v:g} {k}" for k, v in self.custom.items()]
        if self.accelerator_type:
            parts.append(f"accelerator {self.accelerator_type}")
        return ", ".join(parts)


@dataclass(frozen=True)
class NodeView:
    """A node (or a group's node template, counted `count` times) that could hold workers."""

    group: str | None
    resources: Mapping[str, float]
    labels: Mapping[str, str]
    count: int = 1

    def holds(self, request: Mapping[str, float]) -> int:
        """How many workers of `request` one such node holds."""
        fits = []
        for key, amount in request.items():
            if amount <= 0:
                continue
            fits.append(int(self.resources.get(key, 0.0) / amount + 1e-9))
        return min(fits) if fits else 1 << 30


@dataclass(frozen=True)
class Placement:
    """Where one stage's workers run, in Ray's terms."""

    stage: str
    need: Need
    groups: tuple[str, ...] = ()  # the group names allowed; () = anywhere
    mode: str = "labels"  # "labels" | "resources"
    label_selector: Mapping[str, str] = field(default_factory=dict)
    resources: Mapping[str, float] = field(default_factory=dict)  # one worker's Ray request

    # ---- the Ray vocabularies ---------------------------------------------------------------
    def custom(self) -> dict[str, float]:
        """The request minus CPU and GPU (Ray's `resources=` argument)."""
        return {k: v for k, v in self.resources.items() if k not in ("CPU", "GPU")}

    def train_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``ray.train.ScalingConfig`` (besides num_workers)."""
        kwargs: dict[str, Any] = {
            "use_gpu": self.need.gpus > 0,
            "resources_per_worker": dict(self.resources),
        }
        if self.label_selector:
            kwargs["label_selector"] = dict(self.label_selector)
        return kwargs

    def trial_resources(self) -> Any:
        """What ``tune.with_resources`` takes for one trial: a placement group of one bundle,
        with its label selector when there is one."""
        from ray import tune

        bundle = dict(self.resources)
        if self.label_selector:
            return tune.PlacementGroupFactory(
                [bundle], bundle_label_selector=[dict(self.label_selector)]
            )
        return tune.PlacementGroupFactory([bundle])

    def options(self) -> dict[str, Any]:
        """``.options(...)`` of a Ray task or actor."""
        out: dict[str, Any] = {"num_cpus": self.need.cpus, "num_gpus": self.need.gpus}
        if self.custom():
            out["resources"] = self.custom()
        if self.label_selector:
            out["label_selector"] = dict(self.label_selector)
        return out

    def where(self) -> str:
        return f"group {'/'.join(self.groups)}" if self.groups else "any node"


def request_of(need: Need) -> dict[str, float]:
    """One worker's Ray resource request from its need (no placement yet)."""
    out: dict[str, float] = {"CPU": need.cpus}
    if need.gpus:
        out["GPU"] = need.gpus
    out.update(need.custom)
    if need.accelerator_type:
        out[f"accelerator_type:{need.accelerator_type}"] = MARKER_AMOUNT
    return out


def selector_for(groups: Sequence[str]) -> dict[str, str]:
    if not groups:
        return {}
    if len(groups) == 1:
        return {GROUP_LABEL: groups[0]}
    return {GROUP_LABEL: f"in({','.join(groups)})"}


def resolve(
    stage: str,
    need: Need,
    placement: str | Sequence[str] | None,
    spec: ClusterSpec | None,
    *,
    training: bool = False,
) -> Placement:
    """The placement of `stage`'s workers. `training`: data-parallel ranks (whole GPUs only).

    With a spec, placement words are its groups (`any`, `any-gpu`, names); without one, a name
    is matched against the live nodes' ``raynas.io/group`` label at pre-flight."""
    if training and need.gpus and need.gpus != int(need.gpus):
        raise PlacementError(
            f"{stage}.resources.gpus_per_worker={need.gpus:g}: a training rank needs whole GPUs "
            "(DDP ranks sharing a GPU contend for its memory and NCCL refuses them); use 1 or "
            "more, and pack fractional GPUs in search trials instead"
        )
    request = request_of(need)
    words = _words(placement)
    if spec is None:
        named = tuple(w for w in words if w not in (ANY, ANY_GPU))
        if ANY_GPU in words and not need.gpus:
            raise PlacementError(
                f"{stage}.resources.placement=any-gpu asks for GPU nodes but gpus_per_worker=0"
            )
        return Placement(
            stage, need, named, "labels", selector_for(named) if ANY not in words else {}, request
        )
    try:
        groups = spec.groups_for(list(words) or None)
    except ValueError as exc:
        raise PlacementError(f"{stage}.resources.placement: {exc}") from None
    if need.gpus:
        gpu_groups = [g for g in groups if g.gpus]
        if not gpu_groups:
            raise PlacementError(
                f"{stage}: {need.text()} per worker, but placement {_show(words)} names no GPU "
                f"group; GPU groups of {spec.name}: "
                f"{', '.join(g.name for g in spec.groups if g.gpus) or 'none'}"
            )
        groups = gpu_groups
    names = tuple(g.name for g in groups)
    everywhere = len(groups) == len(spec.groups) and not need.gpus
    if spec.scheduling == "labels":
        selector = {} if everywhere else selector_for(names)
        return Placement(stage, need, () if everywhere else names, "labels", selector, request)
    if everywhere:
        return Placement(stage, need, (), "resources", {}, request)
    if len(groups) > 1:
        raise PlacementError(
            f"{stage}.resources.placement {_show(words)} means {len(groups)} groups "
            f"({', '.join(names)}), which scheduling=resources cannot express (a resource "
            "request names one group); name one group, or use scheduling: labels (Ray >= 2.53)"
        )
    return Placement(
        stage,
        need,
        names,
        "resources",
        {},
        {**request, groups[0].marker: MARKER_AMOUNT},
    )


def _words(placement: str | Sequence[str] | None) -> tuple[str, ...]:
    if placement is None:
        return ()
    if isinstance(placement, str):
        return (placement,)
    return tuple(placement)


def _show(words: Sequence[str]) -> str:
    return "/".join(words) if words else ANY


# ---- what could hold a placement ---------------------------------------------------------------
def spec_nodes(spec: ClusterSpec) -> list[NodeView]:
    """The spec's groups at their maximum size."""
    return [
        NodeView(g.name, g.ray_resources(), g.ray_labels(), g.max_replicas) for g in spec.groups
    ]


def live_nodes(nodes: Iterable[Mapping[str, Any]]) -> list[NodeView]:
    """Alive nodes from ``ray.nodes()``."""
    out = []
    for node in nodes:
        if not node.get("Alive", True):
            continue
        labels = dict(node.get("Labels") or {})
        out.append(NodeView(labels.get(GROUP_LABEL), dict(node.get("Resources") or {}), labels, 1))
    return out


def matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """Ray's label-selector semantics for the forms raynas writes: `v`, `!v`, `in(..)`, `!in(..)`."""
    for key, want in selector.items():
        have = labels.get(key)
        negate = want.startswith("!")
        want = want[1:] if negate else want
        if want.startswith("in(") and want.endswith(")"):
            hit = have in [v.strip() for v in want[3:-1].split(",")]
        else:
            hit = have == want
        if hit == negate:
            return False
    return True


def preflight(
    placement: Placement, workers: int, nodes: Sequence[NodeView], *, source: str
) -> None:
    """Refuse, in one line, a placement that `nodes` cannot hold: no matching node can hold
    one worker, or (all workers needed at once, e.g. training ranks) not all of them."""
    request = {k: v for k, v in placement.resources.items() if v > 0}
    eligible = [n for n in nodes if matches(placement.label_selector, n.labels)]
    capacity = sum(n.holds(request) * n.count for n in eligible)
    if capacity >= workers:
        return
    have = "; ".join(_node_text(n) for n in nodes) or "no nodes"
    what = f"{workers} workers of {placement.need.text()}" if workers > 1 else placement.need.text()
    held = f"holds {capacity}" if eligible else "has no node that matches"
    raise PlacementError(
        f"{placement.stage}.resources: {what} on {placement.where()}, but {source} {held}; "
        f"nodes: {have}; lower {placement.stage}.resources.workers / cpus_per_worker / "
        "gpus_per_worker, or place the stage on groups that hold it"
    )


def _node_text(node: NodeView) -> str:
    res = node.resources
    parts = [f"{res.get('CPU', 0):g} CPU"]
    if res.get("GPU"):
        accel = node.labels.get("ray.io/accelerator-type")
        parts.append(f"{res['GPU']:g} GPU{' ' + accel if accel else ''}")
    name = node.group or "(no raynas.io/group label)"
    count = f" x{node.count}" if node.count != 1 else ""
    return f"{name}{count}: {', '.join(parts)}"


def group_node_args(group: GroupSpec) -> list[str]:
    """`ray start` arguments that make a hand-started node one of `group`'s nodes (no spaces
    inside an argument, so `ray start $(raynas cluster node-args SPEC GROUP)` works)."""
    import json

    labels = ",".join(f"{k}={v}" for k, v in sorted(group.ray_labels().items()))
    return [
        f"--num-cpus={group.cpus}",
        f"--num-gpus={group.gpus}",
        f"--labels={labels}",
        "--resources="
        + json.dumps(group.custom_resources(), sort_keys=True, separators=(",", ":")),
    ]
