"""One arch's standalone network trained from scratch in one process: a trial of the
ranking-fidelity analysis (``raynas analyze ranking``, ``orchestrator/analysis/ranking.py``).

The network is the one the `retrain` stage trains: ``build_supernet(space, arch=arch)``, i.e.
``build_from_spec(space.export_spec(arch))`` freshly initialised behind the Supernet interface
(``trainables.supernets.Standalone``). The step is the training loop's (``loop.py``): the same
optimizer (``build_optimizer``), warm-up + cosine schedule, loss (label smoothing), gradient
clipping and mixed precision, on one device, reading the TRAIN split; after every epoch the
network is scored on the VAL split (never test).

Resume. After every ``checkpoint_every`` epochs (and the last) the whole training state
(weights, optimizer, grad scaler, RNG, the metric history) is written to ``<folder>/state.pt``
(a temporary file renamed over it; loads with ``weights_only=True``), stamped with the job's
fingerprint. A trial that starts where such a file exists, with the same fingerprint, continues
after its epoch: a killed analysis, or Tune's retry of a crashed trial, loses at most the epoch
that was running. A file of another fingerprint (other epochs, recipe, data or seed) is ignored.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from search_spaces import arch_id, build_space
from trainables.data import DataConfig, load_splits
from trainables.supernets import build_supernet
from trainables.train.batches import MemoryBatches, MemoryEval
from trainables.train.config import SupernetTrainConfig
from trainables.train.distill import training_loss
from trainables.train.loop import (
    InjectedFailure,
    autocast_dtype,
    build_optimizer,
    check_data_fits_space,
    evaluate_batches,
)
from trainables.train.schedule import warmup_cosine

STATE_FILE = "state.pt"
FAILURE_MARKER = ".failure_injected"
PROBE = "subnet"  # the name of the one arch in `evaluate_batches`


@dataclass(frozen=True)
class SubnetJob:
    """One subnet's stand-alone training, as plain data (pickled to the trial)."""

    train: SupernetTrainConfig  # the recipe, epochs included
    data: DataConfig
    space: dict[str, Any]  # build_space(family, preset, overrides)
    arch: str  # canonical JSON of the arch
    seed: int
    folder: str  # the subnet's folder: its epoch checkpoint
    fingerprint: str  # what the training depends on; stamps the checkpoint
    purpose: str = "analyze-ranking"  # names the reader in the data access log


def subnet_seed(seed: int, aid: str) -> int:
    """The seed of one subnet's weights and data order, from the analysis seed and its id."""
    return int(hashlib.sha256(f"{seed}:{aid}".encode()).hexdigest()[:8], 16)


_SPLITS: dict[str, Any] = {}


def _splits(job: SubnetJob):
    """Train and val of the job's data, loaded once per process (Tune reuses trial actors)."""
    key = json.dumps(job.data.model_dump(mode="json"), sort_keys=True)
    if key not in _SPLITS:
        _SPLITS.clear()
        _SPLITS[key] = load_splits(job.data, ("train", "val"), purpose=job.purpose)
    return _SPLITS[key]


def load_state(folder: str | Path, fingerprint: str) -> dict[str, Any] | None:
    """The epoch checkpoint in `folder` when it belongs to `fingerprint`, else None."""
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a damaged file (torch raises several types): train from scratch
        return None
    if not isinstance(state, dict) or state.get("fingerprint") != fingerprint:
        return None
    return state


def save_state(folder: str | Path, state: dict[str, Any]) -> None:
    """`state` to ``<folder>/state.pt`` through a temporary file and a rename."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{STATE_FILE}.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        torch.save(state, name)
        os.replace(name, folder / STATE_FILE)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise


def _maybe_fail(job: SubnetJob, epoch: int, step: int) -> None:
    """The testing hook ``inject_failure`` (rank 0): raise once at (epoch, step)."""
    hook = job.train.inject_failure
    if hook is None or (hook.epoch, hook.step, hook.rank) != (epoch, step, 0):
        return
    marker = Path(job.folder) / FAILURE_MARKER
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"epoch {epoch} step {step}\n")
    raise InjectedFailure(f"injected failure at epoch {epoch}, step {step} (inject_failure)")


def train_subnet(
    job: SubnetJob,
    report: Callable[[dict[str, Any]], None] | None = None,
    device: torch.device | None = None,
) -> dict[str, Any]:
    """Train (or finish training) the job's subnet; `report` gets each epoch's metrics and
    then the final ones (``final: True``), which are also returned."""
    from trainables.evaluator import default_device

    cfg = job.train
    started = time.time()
    space = build_space(
        job.space["family"], job.space.get("preset"), job.space.get("overrides") or {}
    )
    arch = space.from_json(job.arch)
    aid = arch_id(arch)
    device = device or default_device()
    dtype = autocast_dtype(cfg.precision, device)
    splits = _splits(job)
    check_data_fits_space(splits, space)
    seed = subnet_seed(job.seed, aid)
    torch.manual_seed(seed)
    model = build_supernet(space, arch=arch).to(device)  # the standalone network, fresh
    batches = MemoryBatches(splits.train, 0, 1, cfg.batch_size, seed)
    val = MemoryEval(splits.val, 0, 1, cfg.eval_batch_size)
    steps_per_epoch = batches.steps
    if steps_per_epoch == 0:
        raise ValueError(
            f"the train split ({batches.size} images) holds less than one batch of "
            f"{cfg.batch_size}; lower analysis.ranking.recipe.batch_size"
        )
    optimizer = build_optimizer(model, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    total_steps = cfg.epochs * steps_per_epoch
    warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)

    start_epoch, history, resumed_from = 1, [], 0
    state = load_state(job.folder, job.fingerprint)
    if state is not None:
        model.load_state_dict(state["weights"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        history = list(state["history"])
        resumed_from = int(state["epoch"])
        start_epoch = resumed_from + 1

    def autocast():
        return torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()

    for epoch in range(start_epoch, cfg.epochs + 1):
        model.train()
        loss_sum = correct_sum = seen = 0.0
        epoch_started = time.perf_counter()
        lr = cfg.peak_lr
        for step, (x, y) in enumerate(batches.epoch(epoch)):
            _maybe_fail(job, epoch, step)
            lr = warmup_cosine(
                (epoch - 1) * steps_per_epoch + step,
                total_steps,
                warmup_steps,
                cfg.peak_lr,
                cfg.min_lr,
            )
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            with autocast():
                logits = model(x, arch).float()
                loss = training_loss(logits, y, None, cfg)
            scaler.scale(loss).backward()
            if cfg.clip_grad is not None:
                scaler.unscale_(optimizer)
                weights = [p for g in optimizer.param_groups for p in g["params"]]
                torch.nn.utils.clip_grad_norm_(weights, cfg.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            loss_sum += loss.item() * len(y)
            correct_sum += (logits.argmax(1) == y).sum().item()
            seen += len(y)
        train_seconds = time.perf_counter() - epoch_started
        model.eval()
        scores, scored = evaluate_batches(model, {PROBE: arch}, val.batches(), device, dtype)
        correct, val_loss = scores[PROBE]
        metrics = {
            "epoch": epoch,
            "lr": lr,
            "train_loss": loss_sum / max(seen, 1),
            "train_top1": 100.0 * correct_sum / max(seen, 1),
            "val_top1": 100.0 * correct / scored,
            "val_loss": val_loss / scored,
            "images_per_s": seen / max(train_seconds, 1e-9),
            "epoch_seconds": time.perf_counter() - epoch_started,
        }
        history = [h for h in history if h["epoch"] < epoch] + [metrics]
        if epoch % cfg.checkpoint_every == 0 or epoch == cfg.epochs:
            save_state(
                job.folder,
                {
                    "fingerprint": job.fingerprint,
                    "epoch": epoch,
                    "weights": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict(),
                    "torch_rng": torch.get_rng_state(),
                    "history": history,
                },
            )
        if report is not None and epoch < cfg.epochs:
            report({**metrics, "arch_id": aid, "epochs": cfg.epochs, "final": False})
    if not history:
        raise RuntimeError(f"subnet {aid}: no epoch trained or recorded")
    last = history[-1]
    final = {
        **last,
        "arch_id": aid,
        "fingerprint": job.fingerprint,
        "final": True,
        "epochs": cfg.epochs,
        "resumed_from": resumed_from,
        "history": json.dumps(history),
        "train_images": batches.size,
        "val_images": val.size,
        "params": sum(p.numel() for p in model.parameters()),
        "device": str(device),
        "pid": os.getpid(),
        "start_time": started,
        "end_time": time.time(),
    }
    if report is not None:
        report(final)
    return final


def subnet_trial(config: dict[str, Any], job: SubnetJob) -> None:
    """Ray Tune function trainable: train the subnet ``config["subnet"]`` names (its arch,
    folder and fingerprint over the shared `job`) and report every epoch, then the result."""
    from dataclasses import replace

    import ray
    from ray import tune

    from trainables.evaluator import _use_assigned_cpus

    _use_assigned_cpus()
    subnet = config["subnet"]
    job = replace(
        job, arch=subnet["arch"], folder=subnet["folder"], fingerprint=subnet["fingerprint"]
    )
    runtime = ray.get_runtime_context()
    where = {
        "node_id": runtime.get_node_id(),
        "node_group": (runtime.get_node_labels() or {}).get("raynas.io/group"),
    }
    train_subnet(job, report=lambda metrics: tune.report({**metrics, **where}))
