"""Latency on the deployment accelerator: one probe actor per target node group.

A :class:`LatencyProbe` is a Ray actor that the search stage pins to a target group (a label
selector on ``raynas.io/group``) holding a WHOLE device there: one GPU on a GPU group, every CPU
of a node on a CPU group. Evaluation trials never time candidates themselves when targets are
named; they ask the probe, so a timing never shares its device with a co-located trial.

The probe builds each candidate's standalone network from the search space alone (random
weights: timing does not depend on the values), so it needs neither the supernet checkpoint nor
the data, and caches its answer per arch: one target times an arch once, however many trials
ask. Each answer says where it was measured (node id, group, device), which the archive keeps.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from search_spaces import build_space
from trainables.latency_model import LatencyPredictor, measure_ms


class LatencyProbe:
    """Times candidate networks on this actor's node (`ray.remote` it with a placement)."""

    def __init__(
        self,
        space: dict[str, Any],
        target: str,
        batch: int = 1,
        repeats: int = 10,
        threads: int | None = None,
    ) -> None:
        import ray

        self.space = build_space(space["family"], space.get("preset"), space.get("overrides") or {})
        self.target = target
        self.batch = batch
        self.repeats = repeats
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if threads is None:
            cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
            threads = max(1, int(cpus))
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        self.supernet = self.space.build_supernet().eval()
        self.cache: dict[str, float] = {}
        runtime = ray.get_runtime_context()
        labels = runtime.get_node_labels() or {}
        self.where = {
            "target": target,
            "node_id": runtime.get_node_id(),
            "group": labels.get("raynas.io/group"),
            "accelerator": labels.get("ray.io/accelerator-type"),
            "device": str(self.device),
            "threads": threads,
            "pid": os.getpid(),
        }

    def location(self) -> dict[str, Any]:
        return dict(self.where)

    def measure(self, arch_json: str) -> dict[str, Any]:
        """Median forward time (ms) of the arch at the probe's batch, cached per arch."""
        cached = arch_json in self.cache
        if not cached:
            arch = self.space.from_json(arch_json)
            model = self.supernet.extract(arch).to(self.device).eval()
            self.cache[arch_json] = measure_ms(
                model,
                self.space.input_shape,
                batch=self.batch,
                repeats=self.repeats,
                device=self.device,
            )
        return {"ms": self.cache[arch_json], "cached": cached, **self.where}

    def measure_many(self, arch_jsons: list[str]) -> list[dict[str, Any]]:
        return [self.measure(a) for a in arch_jsons]


def latency_metrics(
    arch: Any,
    arch_json: str,
    space: Any,
    probes: dict[str, Any],
    predictors: dict[str, dict[str, Any]],
    objective: str | None,
) -> dict[str, Any]:
    """A trial's latency report: ``latency_ms.<target>`` per target (measured by its probe, or
    predicted by its fitted model), where each was measured, and ``latency_ms`` for the target
    the search optimises."""
    import ray

    out: dict[str, Any] = {}
    pending = {t: p.measure.remote(arch_json) for t, p in probes.items() if t not in predictors}
    units = space.latency_units(arch) if predictors else None
    for target, model in predictors.items():
        out[f"latency_ms.{target}"] = LatencyPredictor.from_dict(model).predict(units)
        out[f"latency_node.{target}"] = "predicted"
    for target, ref in pending.items():
        answer = ray.get(ref)
        out[f"latency_ms.{target}"] = answer["ms"]
        out[f"latency_node.{target}"] = answer["node_id"]
    if objective is not None:
        out["latency_ms"] = out[f"latency_ms.{objective}"]
    return out
