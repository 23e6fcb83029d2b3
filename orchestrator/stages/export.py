"""The `export` stage: test accuracy of the Pareto subnets, each saved as a standalone model.

This is the first and only place the test split is read. For each exported Pareto subnet
`<run>/export/<arch_id>/` holds `model.safetensors` (the extracted timm model's weights),
`arch.json` (the arch, its id and metrics) and `model.json` (the builder and timm kwargs that
rebuild the module: ``search_spaces.build_from_spec``); the model is also logged to MLflow with
``mlflow.pytorch.log_model``. Each folder is written under a temporary name and renamed when
complete; a model already exported (and logged) by an interrupted export is not measured or
logged again. `export/result.json` is written by the engine when all are done.

Nothing is chosen by test accuracy: the summary names the best-VAL model and reports its test
top-1 (``test_top1_of_best_val``).

The ``front`` input is a search's Pareto front (rows in the archive, models extracted from the
supernet it scored with) or a retrained arch (IT-NAS's `retrain`: its rows and the space it
was trained in travel in the result; the model is extracted from the retrained checkpoint).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from typing import Any

import torch

from orchestrator.errors import UserInputError
from orchestrator.files import write_json_atomic
from orchestrator.search.archive import ARCHIVE_FILE, Archive
from orchestrator.stage import StageContext, StageSpec, read_json
from orchestrator.tracking import Tracker
from search_spaces import build_space
from trainables.data import load_splits
from trainables.evaluator import default_device
from trainables.supernets import load_supernet
from trainables.train.loop import autocast_dtype, evaluate

STAGE = "export"
ENTRY = "arch.json"  # per model folder: the arch, its metrics and (once logged) its model URI


def select(front: list[dict[str, Any]], limit: int | None) -> list[dict[str, Any]]:
    """At most `limit` Pareto rows spread along the front (cheapest and most accurate kept)."""
    if limit is None or len(front) <= limit:
        return list(front)
    if limit == 1:
        return [max(front, key=lambda r: r["val_top1"])]
    step = (len(front) - 1) / (limit - 1)
    return [front[round(i * step)] for i in range(limit)]


def run(ctx: StageContext) -> dict[str, Any]:
    """Measure test top-1 of the Pareto subnets and export them; returns the summary."""
    import mlflow
    from safetensors.torch import save_file

    config, run_dir = ctx.config, ctx.run_dir
    searched = ctx.input("front")
    if searched.get("checkpoint") is None:
        raise UserInputError(
            f"export needs trained weights, but the front was scored by "
            f"{searched.get('evaluator', 'a table')} (no checkpoint); allowed: a front scored "
            "with a supernet (search.evaluator=supernet) or a retrained arch (stage retrain)"
        )
    if searched.get("rows") is not None:
        front = list(searched["rows"])
    else:
        archive = Archive.load(run_dir / ARCHIVE_FILE)
        front = [archive.get(aid) for aid in searched["front"]]  # cheapest first, as searched
    chosen = select(front, config.export.max_models)

    space = build_space(**(searched.get("space") or config.space_spec))
    checkpoint = ctx.path(searched["checkpoint"])
    if searched.get("standalone"):  # a retrained arch: the checkpoint holds its network

        def extract(arch):
            return load_supernet(space, checkpoint, arch=arch).extract(arch)

    else:
        supernet = load_supernet(space, checkpoint, searched.get("adapter"))
        extract = supernet.extract
    device = default_device()
    dtype = autocast_dtype(config.supernet.precision, device)
    splits = load_splits(config.data, ("val", "test"), purpose="export")
    val, test = splits.split("val"), splits.split("test")
    tracker: Tracker = ctx.tracker
    run_id = ctx.run_id
    tracker.log_dataset(run_id, splits, config.data, context="test")
    root = ctx.folder
    root.mkdir(parents=True, exist_ok=True)
    print(
        f"[export] measuring test top-1 of {len(chosen)} of {len(front)} Pareto subnets",
        flush=True,
    )
    models = []
    for row in chosen:
        aid = row["arch_id"]
        folder = root / aid
        entry = read_json(folder / ENTRY, f"export entry of {aid}") if folder.is_dir() else None
        if entry is not None and (entry.get("model_uri") or not config.export.log_models):
            models.append(entry)  # exported and logged before an interruption: not again
            print(f"[export] {aid}  already exported", flush=True)
            continue
        arch = space.from_json(row["arch"])
        model = extract(arch).to(device).eval()
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
            "path": ctx.rel(folder),
            "text": space.describe(arch),
        }
        if row.get("latency_ms") is not None:
            entry["latency_ms"] = float(row["latency_ms"])
        tmp = root / f".{aid}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        model = model.cpu()
        save_file(
            {k: v.contiguous() for k, v in model.state_dict().items()}, tmp / "model.safetensors"
        )
        write_json_atomic(tmp / ENTRY, entry)
        write_json_atomic(tmp / "model.json", space.export_spec(arch))
        shutil.rmtree(folder, ignore_errors=True)
        tmp.replace(folder)
        if config.export.log_models:
            # MLflow warns on every pickled model; pickle is chosen (see _pickle_format)
            logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)
            with mlflow.start_run(run_id=run_id, nested=True):
                info = mlflow.pytorch.log_model(
                    model,
                    name=f"model-{aid}",
                    input_example=val.batch([0])[0].numpy(),
                    pip_requirements=space.export_requirements(),
                    **_pickle_format(),
                )
            entry["model_uri"] = info.model_uri
            write_json_atomic(folder / ENTRY, entry)  # logged: a resumed export skips it
        tracker.client.log_artifacts(run_id, str(folder), artifact_path=f"export/{aid}")
        models.append(entry)
        print(
            f"[export] {aid}  {entry['params'] / 1e6:.2f}M params  {entry['flops'] / 1e6:.2f} MFLOPs  "
            f"val {entry['val_top1']:.2f}%  test {entry['test_top1']:.2f}%  ({time.time() - started:.1f} s)",
            flush=True,
        )
    reference = None
    if "dense" in ctx.inputs:  # the model a compression search started from, measured alike
        reference = _reference(ctx, space, val, test, device, dtype)
        for m in models:
            m["flops_cut"] = 1.0 - m["flops"] / reference["flops"]
        print(
            f"[export] dense model  {reference['params'] / 1e6:.2f}M params  "
            f"{reference['flops'] / 1e6:.2f} MFLOPs  test {reference['test_top1']:.2f}%; "
            + ", ".join(
                f"{m['arch_id']} {100 * m['flops_cut']:.0f}% fewer MACs, test "
                f"{m['test_top1'] - reference['test_top1']:+.2f}"
                for m in models
            ),
            flush=True,
        )
    best_val = max(models, key=lambda m: m["val_top1"])
    summary = {
        "reference": reference,
        "models": models,
        "front_size": len(front),
        "test_images": len(test),
        "best_val": best_val["arch_id"],
        "test_top1_of_best_val": best_val["test_top1"],
    }
    tracker.log_metrics(
        run_id,
        {"test_top1_of_best_val": best_val["test_top1"], "exported": len(models)},
    )
    return summary


def _reference(ctx: StageContext, space, val, test, device, dtype) -> dict[str, Any]:
    """Val and test top-1 and cost of the dense model (the ``dense`` input)."""
    from trainables.supernets import load_model

    dense = ctx.input("dense")
    model = load_model(ctx.path(dense["dense"])).to(device)
    batch = ctx.config.search.eval_batch_size
    v_correct, _ = _correct_and_loss(model, val, batch, device, dtype)
    t_correct, _ = _correct_and_loss(model, test, batch, device, dtype)
    cost = space.cost(space.largest())
    return {
        "path": dense["dense"],
        "params": cost["params"],
        "flops": cost["flops"],
        "val_top1": 100.0 * v_correct / len(val),
        "test_top1": 100.0 * t_correct / len(test),
    }


SPEC = StageSpec(
    name=STAGE,
    run=run,
    reads=("seed", "data", "space", "export", "supernet.precision"),
    needs=("front",),
    optional=("dense",),  # FLORA: the dense model, measured beside the compressed ones
    provides={"exported": ("models", "best_val")},
    describe="test top-1 of the Pareto subnets (the only reader of the test split), exports",
)


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
