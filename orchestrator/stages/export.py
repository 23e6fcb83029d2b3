"""The `export` stage: test accuracy of the Pareto subnets, each saved as a standalone model.

This is the first and only place the test split is read. For each exported Pareto subnet
`<run>/export/<arch_id>/` holds `model.safetensors` (the extracted timm model's weights),
`arch.json` (the arch, its id and metrics) and `model.json` (the builder and timm kwargs that
rebuild the module: ``search_spaces.build_from_spec``); the model is also logged to MLflow with
``mlflow.pytorch.log_model``. Each folder is written under a temporary name and renamed when
complete, and `export/summary.json` is written last.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from orchestrator.config.schema import RunConfig as RaynasConfig
from orchestrator.errors import UserInputError
from orchestrator.files import write_json_atomic
from orchestrator.search.archive import ARCHIVE_FILE, Archive
from orchestrator.stages import mole as mole_stage
from orchestrator.stages import search as search_stage
from orchestrator.tracking import Tracker, tracking_uri
from search_spaces import build_space
from trainables.data import load_splits
from trainables.evaluator import default_device
from trainables.supernets import load_supernet
from trainables.train.loop import autocast_dtype, evaluate

STAGE = "export"
SUMMARY = "summary.json"


def export_dir(run_dir: str) -> Path:
    return Path(run_dir).resolve() / STAGE


def read_summary(run_dir: str) -> dict[str, Any] | None:
    path = export_dir(run_dir) / SUMMARY
    return json.loads(path.read_text()) if path.exists() else None


def select(front: list[dict[str, Any]], limit: int | None) -> list[dict[str, Any]]:
    """At most `limit` Pareto rows spread along the front (cheapest and most accurate kept)."""
    if limit is None or len(front) <= limit:
        return list(front)
    if limit == 1:
        return [max(front, key=lambda r: r["val_top1"])]
    step = (len(front) - 1) / (limit - 1)
    return [front[round(i * step)] for i in range(limit)]


def run_export_stage(config: RaynasConfig, tracker: Tracker | None = None) -> dict[str, Any]:
    """Measure test top-1 of the Pareto subnets and export them; returns the summary."""
    import mlflow
    from safetensors.torch import save_file

    run_dir = config.run_path
    done = read_summary(run_dir)
    if done is not None:
        print(f"[export] {len(done['models'])} models already exported; skipping", flush=True)
        return done
    searched = search_stage.read_result(run_dir)
    if searched is None:
        raise UserInputError(
            f"no completed search in {search_stage.stage_dir(run_dir)}; run the search stage first "
            "(`raynas run CONFIG` or `raynas search CONFIG`)"
        )
    archive = Archive.load(Path(run_dir).resolve() / ARCHIVE_FILE)
    front = [archive.get(aid) for aid in searched["front"]]  # cheapest first, as searched
    chosen = select(front, config.export.max_models)

    space = build_space(**config.space_spec)
    supernet = load_supernet(space, searched["checkpoint"], mole_stage.mole_spec(config))
    device = default_device()
    dtype = autocast_dtype(config.supernet.precision, device)
    splits = load_splits(config.data, ("val", "test"), purpose="export")
    val, test = splits.split("val"), splits.split("test")

    owns_tracker = tracker is None
    tracker = tracker or Tracker(
        tracking_uri(config.tracking.uri, run_dir), config.tracking.experiment, run_dir, config.name
    )
    run_id = tracker.stage_run(STAGE)
    root = export_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    print(
        f"[export] measuring test top-1 of {len(chosen)} of {len(front)} Pareto subnets",
        flush=True,
    )
    models = []
    for row in chosen:
        arch = space.from_json(row["arch"])
        aid = row["arch_id"]
        model = supernet.extract(arch).to(device).eval()
        started = time.time()
        batch = config.search.eval_batch_size
        v_correct, _ = _correct_and_loss(model, val, batch, device, dtype)
        t_correct, t_loss = _correct_and_loss(model, test, batch, device, dtype)
        entry = {
            "arch_id": aid,
            "arch": json.loads(row["arch"]),
            "params": int(row["params"]),
            "flops": int(row["flops"]),
            "val_top1": float(row["val_top1"]),
            "val_top1_extracted": 100.0 * v_correct / len(val),
            "test_top1": 100.0 * t_correct / len(test),
            "test_loss": t_loss / len(test),
            "trial": int(row["trial"]),
        }
        if row.get("latency_ms") is not None:
            entry["latency_ms"] = float(row["latency_ms"])
        folder = root / aid
        tmp = root / f".{aid}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        model = model.cpu()
        save_file(
            {k: v.contiguous() for k, v in model.state_dict().items()}, tmp / "model.safetensors"
        )
        (tmp / "arch.json").write_text(json.dumps(entry, indent=2))
        (tmp / "model.json").write_text(json.dumps(space.export_spec(arch), indent=2))
        shutil.rmtree(folder, ignore_errors=True)
        tmp.replace(folder)
        entry["path"] = str(folder)
        if config.export.log_models:
            # MLflow warns on every pickled model; pickle is chosen (see _pickle_format)
            logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)
            with mlflow.start_run(run_id=run_id, nested=True):
                info = mlflow.pytorch.log_model(
                    model,
                    name=f"model-{aid}",
                    input_example=val.batch([0])[0].numpy(),
                    pip_requirements=["torch", "timm"],
                    **_pickle_format(),
                )
            entry["model_uri"] = info.model_uri
        tracker.client.log_artifacts(run_id, str(folder), artifact_path=f"export/{aid}")
        models.append(entry)
        print(
            f"[export] {aid}  {entry['params'] / 1e6:.2f}M params  {entry['flops'] / 1e6:.2f} MFLOPs  "
            f"val {entry['val_top1']:.2f}%  test {entry['test_top1']:.2f}%  ({time.time() - started:.1f} s)",
            flush=True,
        )
    summary = {"models": models, "front_size": len(front), "test_images": len(test)}
    write_json_atomic(root / SUMMARY, summary)
    best = max(models, key=lambda m: m["test_top1"])
    tracker.log_metrics(run_id, {"best_test_top1": best["test_top1"], "exported": len(models)})
    tracker.client.log_artifact(run_id, str(root / SUMMARY))
    tracker.finish(run_id, ok=True)
    if owns_tracker:
        tracker.finish(tracker.parent_run_id, ok=True)
    return summary


def _pickle_format() -> dict[str, str]:
    """MLflow >= 3 defaults to a traced 'pt2' model; the pickled module loads as a plain
    ``nn.Module`` with ``mlflow.pytorch.load_model`` and takes any batch size."""
    import inspect

    import mlflow.pytorch

    params = inspect.signature(mlflow.pytorch.log_model).parameters
    return {"serialization_format": "pickle"} if "serialization_format" in params else {}


def _correct_and_loss(model, dataset, batch, device, dtype) -> tuple[float, float]:
    """(correct, summed loss) of a standalone model over a whole split."""
    indices = list(range(len(dataset)))
    return evaluate(_Plain(model), None, dataset, indices, batch, device, dtype)


class _Plain(torch.nn.Module):
    """Adapts a standalone model to `evaluate`'s ``model(x, arch)`` call."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, arch: Any) -> torch.Tensor:
        return self.model(x)
