"""Scoring candidate subnets with the supernet's inherited weights (the `search` stage's trials).

An :class:`Evaluator` holds one loaded supernet and the VAL split on one device. Building one
costs a checkpoint load and a dataset decode, so each worker process keeps them in a cache keyed
by the :class:`EvalSpec`; Ray Tune reuses the trial actors (``reuse_actors=True``), so a worker
pays that cost once and then only runs forward passes. The test split is never loaded here.

BatchNorm. A supernet with BatchNorm layers (cell spaces) holds running statistics that mix
every subnet it trained, so before scoring an arch the evaluator lets the supernet re-estimate
them for that arch (``Supernet.recalibrate``) on a small FIXED slice of the TRAIN split: the
first ``recalibration_batches x batch_size`` train images, loaded once per worker, the same for
every arch (only those are kept; with a streamed dataset, only those rows are read). It
costs that many forward passes per arch. A supernet without BatchNorm (the ViT family)
skips it: no train images are loaded and its scores are unchanged.

Tables. With ``evaluator="table"`` a :class:`TableEvaluator` answers instead: the space's
tabular benchmark (``SearchSpace.tabular_benchmark``, NAS-Bench-201's CIFAR-10 table) gives
each arch's accuracy, reported as ``val_top1`` so every strategy, the study and the archive run
unchanged. No data split and no supernet are read.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from search_spaces import build_space
from trainables.data import DataConfig, load_splits
from trainables.latency_model import measure_ms
from trainables.supernets import load_supernet
from trainables.train.loop import autocast_dtype, check_data_fits_space, evaluate


@dataclass(frozen=True)
class EvalSpec:
    """Everything an evaluation worker needs, as plain data (shipped once per Tune run)."""

    checkpoint: str | None  # folder holding supernet.pt; None with the table evaluator
    data: DataConfig
    space: dict[str, Any] = field(default_factory=dict)  # build_space(family, preset, overrides)
    batch_size: int = 512
    precision: str = "auto"
    latency_batch_size: int | None = None  # None: no latency measurement
    latency_repeats: int = 10
    # latency targets (trainables.latency): fitted models by target, the objective's target
    latency_predictors: dict[str, dict[str, Any]] = field(default_factory=dict)
    latency_objective: str | None = None
    adapter: dict[str, Any] | None = None  # the family adapter spec (TAS-LoRA: MoLE experts)
    recalibration_batches: int = 4  # BatchNorm supernets only: train batches per arch
    evaluator: str = "supernet"  # "supernet": inherited weights on val; "table": the space's table
    purpose: str = "search"  # names the reader in the data access log

    def key(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, default=str)


class Evaluator:
    """One supernet and the val split on this worker's device."""

    def __init__(self, spec: EvalSpec, device: torch.device | None = None) -> None:
        self.spec = spec
        self.space = build_space(
            spec.space["family"], spec.space.get("preset"), spec.space.get("overrides") or {}
        )
        self.device = device or default_device()
        self.dtype = autocast_dtype(spec.precision, self.device)
        supernet = load_supernet(self.space, spec.checkpoint, spec.adapter)
        self.supernet = supernet.to(self.device).eval()
        recalibrate = self.supernet.has_batchnorm() and spec.recalibration_batches > 0
        wanted = ("train", "val") if recalibrate else ("val",)
        # of train only the recalibration slice is kept (and, streamed, read)
        slice_size = spec.recalibration_batches * spec.batch_size
        splits = load_splits(spec.data, wanted, purpose=spec.purpose, first={"train": slice_size})
        check_data_fits_space(splits, self.space)
        self.splits = splits  # what was read (val, and train when BatchNorm is recalibrated)
        self.val = splits.split("val")
        self.indices = list(range(len(self.val)))
        self.recalibration: list[torch.Tensor] = []
        if recalibrate:  # a fixed slice of train images, on the device, reused for every arch
            train = splits.split("train")
            count = min(len(train), spec.recalibration_batches * spec.batch_size)
            for start in range(0, count, spec.batch_size):
                x, _ = train.batch(list(range(start, min(start + spec.batch_size, count))))
                self.recalibration.append(x.to(self.device))

    def recalibrate(self, arch: Any) -> None:
        """Re-estimate the supernet's BatchNorm statistics for `arch` (no-op without BN)."""
        if not self.recalibration:
            return
        with (
            torch.autocast(self.device.type, dtype=self.dtype)
            if self.dtype
            else contextlib.nullcontext()
        ):
            self.supernet.recalibrate(arch, self.recalibration)

    @torch.no_grad()
    def score(self, arch: Any) -> dict[str, float]:
        """Val top-1 (%) and mean cross-entropy of `arch` with inherited weights (BatchNorm
        statistics recalibrated for `arch` first when the supernet has any)."""
        self.recalibrate(arch)
        correct, loss = evaluate(
            self.supernet,
            arch,
            self.val,
            self.indices,
            self.spec.batch_size,
            self.device,
            self.dtype,
        )
        return {"val_top1": 100.0 * correct / len(self.val), "val_loss": loss / len(self.val)}

    def latency_ms(self, arch: Any) -> float:
        """Median wall time (ms) of a forward pass of the extracted model at the latency batch."""
        return measure_ms(
            self.supernet.extract(arch),
            self.space.input_shape,
            batch=self.spec.latency_batch_size or 1,
            repeats=self.spec.latency_repeats,
            device=self.device,
        )

    def measure(self, arch: Any) -> dict[str, Any]:
        """Everything a trial reports: val metrics, analytic cost, optional latency, timing."""
        started = time.time()
        metrics: dict[str, Any] = dict(self.score(arch))
        metrics.update({k: int(v) for k, v in self.space.cost(arch).items()})
        if self.spec.latency_batch_size is not None:
            metrics["latency_ms"] = self.latency_ms(arch)
        metrics["start_time"] = started
        metrics["end_time"] = time.time()
        metrics["device"] = str(self.device)
        metrics["pid"] = os.getpid()
        return metrics


class TableEvaluator:
    """Scores archs by table lookup (``SearchSpace.tabular_benchmark``): the table's accuracy
    as ``val_top1``, the analytic cost as usual. Cheap: no data, no supernet, no device."""

    def __init__(self, spec: EvalSpec) -> None:
        self.spec = spec
        self.space = build_space(
            spec.space["family"], spec.space.get("preset"), spec.space.get("overrides") or {}
        )
        self.table = self.space.tabular_benchmark()
        if self.table is None:
            raise ValueError(
                f"search.evaluator=table: search space {spec.space['family']}/"
                f"{spec.space.get('preset')} has no tabular benchmark; allowed: supernet"
            )

    def measure(self, arch: Any) -> dict[str, Any]:
        started = time.time()
        metrics: dict[str, Any] = {"val_top1": float(self.table.accuracy(arch))}
        metrics.update({k: int(v) for k, v in self.space.cost(arch).items()})
        metrics["start_time"] = started
        metrics["end_time"] = time.time()
        metrics["device"] = f"table:{self.table.metric}"
        metrics["pid"] = os.getpid()
        return metrics


_CACHE: dict[str, Evaluator | TableEvaluator] = {}


def build_evaluator(spec: EvalSpec) -> Evaluator | TableEvaluator:
    """The evaluator `spec` asks for (``spec.evaluator``: supernet or table)."""
    if spec.evaluator == "table":
        return TableEvaluator(spec)
    if spec.evaluator != "supernet":
        raise ValueError(f"evaluator={spec.evaluator!r}; allowed: supernet, table")
    return Evaluator(spec)


def cached_evaluator(spec: EvalSpec) -> Evaluator | TableEvaluator:
    """This process's evaluator for `spec`, built on first use (one per process and spec)."""
    key = spec.key()
    if key not in _CACHE:
        _CACHE.clear()  # a new checkpoint replaces the old one; never hold two supernets
        _CACHE[key] = build_evaluator(spec)
    return _CACHE[key]


def candidate_metrics(
    evaluator: Evaluator | TableEvaluator,
    config: dict[str, Any],
    spec: EvalSpec,
    probes: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What one evaluation reports for the encoded arch in `config`: the evaluator's metrics,
    with the latency on each target from its probe actor or fitted model. Shared by the Tune
    trainable and the search's in-process loop."""
    space = evaluator.space
    arch = space.decode(config)
    metrics = evaluator.measure(arch)
    if probes or spec.latency_predictors:
        from trainables.latency import latency_metrics

        metrics.update(
            latency_metrics(
                arch,
                space.to_json(arch),
                space,
                probes or {},
                spec.latency_predictors,
                spec.latency_objective,
            )
        )
    return metrics


def evaluate_candidate(
    config: dict[str, Any], spec: EvalSpec, probes: dict[str, Any] | None = None
) -> None:
    """Ray Tune function trainable: score the encoded arch in `config` and report once
    (:func:`candidate_metrics`), with where it ran."""
    import ray
    from ray import tune

    _use_assigned_cpus()
    metrics = candidate_metrics(cached_evaluator(spec), config, spec, probes)
    runtime = ray.get_runtime_context()
    metrics["node_id"] = runtime.get_node_id()
    metrics["node_group"] = (runtime.get_node_labels() or {}).get("raynas.io/group")
    tune.report(metrics)


def _use_assigned_cpus() -> None:
    """Torch threads = the CPUs Ray assigned to this trial (Ray sets none for fractional CPUs)."""
    import ray

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    threads = max(1, int(cpus))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def default_device() -> torch.device:
    """The first GPU Ray (or the user) made visible to this process, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
