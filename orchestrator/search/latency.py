"""The search stage's latency targets: probe actors pinned to each target group, and (with
``search.latency: predicted``) a per-layer latency model per target fitted before the search.

Placement of a probe: a label selector on the target group (``cluster.placement``) and a whole
device: one GPU on a GPU group, all CPUs of one node on a CPU group, so no evaluation trial can
share it. A probe that dies with its node is restarted by Ray on another node of the group
(``max_restarts``), and the call that was in flight is retried (``max_task_retries``).

Predicted latency. ``latency_calibration + latency_holdout`` distinct subnets (seeded samples of
the space) are measured on the target; the model is fitted on the first part and its error on
the held-out part is reported (MAPE, Kendall tau) in ``search/latency/<target>.json``, the
stage result and MLflow. Trials then score latency from the model without a round trip. A
rerun with the same stage fingerprint reuses the fitted models.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster.placement import Need, NodeView, PlacementError, live_nodes, resolve
from orchestrator.config.schema import RunConfig
from orchestrator.errors import UserInputError
from orchestrator.files import write_text_atomic
from orchestrator.runtime import ResourceError, check_placement

FOLDER = "latency"


@dataclass
class LatencyPlan:
    """What the trials need to report latency: probe handles, fitted models, the objective's
    target; and what the stage result records about each target."""

    probes: dict[str, Any] = field(default_factory=dict)
    predictors: dict[str, dict[str, Any]] = field(default_factory=dict)
    objective: str | None = None
    targets: dict[str, dict[str, Any]] = field(default_factory=dict)


def probe_need(config: RunConfig, target: str, nodes: list[NodeView]) -> Need:
    """A whole device of `target`: 1 GPU (and 1 CPU) on a GPU group, a node's CPUs on a CPU one."""
    spec = config.cluster
    if spec is not None:
        group = spec.group(target)
        return Need(cpus=1, gpus=1) if group.gpus else Need(cpus=group.cpus)
    mine = [n for n in nodes if n.group == target]
    if not mine:
        groups = sorted({n.group for n in nodes if n.group}) or ["none"]
        raise ResourceError(
            f"search.latency_targets: no live node carries raynas.io/group={target}; "
            f"groups here: {', '.join(groups)}"
        )
    if all(n.resources.get("GPU", 0) >= 1 for n in mine):
        return Need(cpus=1, gpus=1)
    return Need(cpus=min(n.resources.get("CPU", 1) for n in mine))


def start_latency(
    config: RunConfig,
    space: Any,
    space_spec: dict[str, Any],
    folder: Path,
    local: bool,
    fingerprint: str,
) -> LatencyPlan:
    """Start a probe per latency target and, when predicted, fit each target's model."""
    import ray

    from trainables.latency import LatencyProbe

    search = config.search
    targets = list(search.latency_targets)
    plan = LatencyPlan(objective=search.latency_objective or (targets[0] if targets else None))
    if not targets:
        return plan
    nodes = live_nodes(ray.nodes())
    probe_class = ray.remote(LatencyProbe)
    for target in targets:
        need = probe_need(config, target, nodes)
        try:
            placement = resolve(f"search.latency_targets[{target}]", need, target, config.cluster)
        except PlacementError as exc:
            raise ResourceError(str(exc)) from None
        check_placement(config, placement, 1, local)
        plan.probes[target] = probe_class.options(
            **placement.options(), max_restarts=3, max_task_retries=3
        ).remote(
            space_spec,
            target,
            batch=search.latency_batch_size,
            repeats=search.latency_repeats,
            threads=int(need.cpus) if not need.gpus else None,
        )
        plan.targets[target] = {"mode": search.latency, "where": placement.where()}
    for target, probe in plan.probes.items():
        plan.targets[target]["probe"] = ray.get(probe.location.remote())
    if search.latency == "predicted":
        for target in targets:
            model, report = fitted_model(
                config, space, target, plan.probes[target], folder, fingerprint
            )
            plan.predictors[target] = model
            plan.targets[target]["error"] = report
    return plan


def calibration_archs(space: Any, count: int, seed: int) -> list[Any]:
    """`count` distinct seeded samples of the space (fewer if the space is smaller)."""
    rng = random.Random(seed)
    seen: dict[str, Any] = {}
    for _ in range(count * 20):
        arch = space.sample(rng)
        seen.setdefault(space.arch_id(arch), arch)
        if len(seen) == count:
            break
    return list(seen.values())


def fitted_model(
    config: RunConfig, space: Any, target: str, probe: Any, folder: Path, fingerprint: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The target's latency model (fitted now, or read back from this fingerprint's file) and
    its held-out error report."""
    import ray

    from trainables.latency_model import LatencyPredictor, error_report

    path = folder / FOLDER / f"{target}.json"
    if path.exists():
        saved = json.loads(path.read_text())
        if saved.get("fingerprint") == fingerprint:
            return saved["model"], saved["error"]
    search = config.search
    archs = calibration_archs(
        space, search.latency_calibration + search.latency_holdout, config.seed + 7919
    )
    if len(archs) < 2 * 5:
        raise UserInputError(
            f"search.latency=predicted: the space has only {len(archs)} distinct subnets; "
            "measure them instead (search.latency: measured)"
        )
    fit_count = min(search.latency_calibration, len(archs) - search.latency_holdout // 2)
    print(
        f"[search] latency model for {target}: measuring {len(archs)} subnets "
        f"({fit_count} to fit, {len(archs) - fit_count} held out)",
        flush=True,
    )
    answers = ray.get(probe.measure_many.remote([space.to_json(a) for a in archs]))
    units = [space.latency_units(a) for a in archs]
    ms = [a["ms"] for a in answers]
    model = LatencyPredictor.fit(units[:fit_count], ms[:fit_count], target=target)
    predicted = [model.predict(u) for u in units[fit_count:]]
    report = error_report(predicted, ms[fit_count:])
    report["fitted_on"] = fit_count
    record = {
        "fingerprint": fingerprint,
        "target": target,
        "model": model.to_dict(),
        "error": report,
        "measured": [
            {
                "arch_id": space.arch_id(a),
                "ms": m,
                "node_id": w["node_id"],
                "held_out": i >= fit_count,
            }
            for i, (a, m, w) in enumerate(zip(archs, ms, answers, strict=True))
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(record, indent=1))
    print(
        f"[search] latency model for {target}: held-out MAPE {report['mape']:.1f}%, "
        f"Kendall tau {report['kendall_tau']:.3f} (n={report['n']})",
        flush=True,
    )
    return record["model"], report


def predicted_ms(
    config: RunConfig, space: Any, arch: Any, folder: Path, fingerprint: str
) -> float | None:
    """`arch`'s latency (ms) on the latency objective's target by the model this search
    fitted (``search.latency: predicted``, its file under `folder` from this `fingerprint`);
    None when the search predicts no latency or has no such model."""
    search = config.search
    if search.latency != "predicted" or not search.latency_targets:
        return None
    target = search.latency_objective or search.latency_targets[0]
    path = folder / FOLDER / f"{target}.json"
    if not path.exists():
        return None
    saved = json.loads(path.read_text())
    if saved.get("fingerprint") != fingerprint:
        return None
    from trainables.latency_model import LatencyPredictor

    return LatencyPredictor.from_dict(saved["model"]).predict(space.latency_units(arch))
