"""One local supernet of FLORA's candidate filtering, as run inside a Ray task.

A local supernet is the low-rank supernet of a LOCAL space, in which only one unit (a block)
varies and every other block is dense (``SearchSpace.local_overrides``). It starts from the
dense model (``Supernet.inherit``: the SVD), trains ``steps`` steps on TRAIN with the unit's
choices sampled by the local space's rule (uniform) and distillation from the dense teacher,
then scores every choice of the unit (``SearchSpace.local_archs``) on a seeded subset of VAL.
Test is never read. The result is plain data; the `filter` stage decides what to keep.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

import torch

from search_spaces import build_space
from trainables.data import DataConfig, load_splits
from trainables.data.splits import generator
from trainables.supernets import dense_state, load_teacher
from trainables.train.config import SupernetTrainConfig
from trainables.train.distill import training_loss
from trainables.train.loop import autocast_dtype, build_optimizer, evaluate
from trainables.train.schedule import warmup_cosine


@dataclass(frozen=True)
class LocalJob:
    """Everything one local supernet needs, as plain data (pickled to its Ray task)."""

    unit: int
    space: dict[str, Any]  # build_space arguments of the local space
    dense: str  # model folder of the dense model
    data: DataConfig
    train: SupernetTrainConfig  # batch size, optimizer, distillation, precision
    steps: int
    lr: float
    seed: int
    max_images: int | None
    eval_batch_size: int
    threads: int = 1


def val_subset(n: int, max_images: int | None, seed: int) -> list[int]:
    """A seeded subset of ``max_images`` val indices (all of val when None or larger)."""
    if max_images is None or max_images >= n:
        return list(range(n))
    order = torch.randperm(n, generator=generator(seed, "filter-val"))
    return sorted(order[:max_images].tolist())


def filter_unit(job: LocalJob) -> dict[str, Any]:
    """Train the local supernet of ``job.unit`` and score each of its choices."""
    torch.set_num_threads(max(1, job.threads))
    started = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = autocast_dtype(job.train.precision, device)
    space = build_space(job.space["family"], job.space.get("preset"), job.space["overrides"])
    torch.manual_seed(job.seed + job.unit)
    supernet = space.build_supernet()
    supernet.inherit(dense_state(job.dense))
    supernet.to(device)
    teacher = load_teacher(job.dense, device) if job.train.distill.weight > 0 else None
    splits = load_splits(job.data, ("train", "val"), purpose=f"filter-{job.unit}")
    cfg = job.train
    optimizer = build_optimizer(supernet, cfg.model_copy(update={"lr": job.lr}))
    gen = generator(job.seed + job.unit, "filter-train")
    n, batch = len(splits.train), min(cfg.batch_size, len(splits.train))
    order, cursor = torch.randperm(n, generator=gen), 0
    warmup = round(0.1 * job.steps)
    losses = []
    supernet.train()
    for step in range(job.steps):
        if cursor + batch > n:
            order, cursor = torch.randperm(n, generator=gen), 0
        x, y = splits.train.batch(order[cursor : cursor + batch])
        cursor += batch
        x, y = x.to(device), y.to(device)
        lr = warmup_cosine(step, job.steps, warmup, job.lr, cfg.min_lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        arch = space.sample(random.Random(f"raynas:filter:{job.seed}:{job.unit}:{step}"))
        teacher_logits = None
        if teacher is not None:
            with torch.no_grad():
                teacher_logits = teacher(x).float()
        optimizer.zero_grad(set_to_none=True)
        loss = training_loss(supernet(x, arch).float(), y, teacher_logits, cfg)
        loss.backward()
        if cfg.clip_grad is not None:
            torch.nn.utils.clip_grad_norm_(supernet.parameters(), cfg.clip_grad)
        optimizer.step()
        losses.append(loss.item())
    supernet.eval()
    indices = val_subset(len(splits.val), job.max_images, job.data.split_seed)
    rows = []
    for text, arch in space.local_archs(job.unit).items():
        correct, _ = evaluate(
            supernet, arch, splits.val, indices, job.eval_batch_size, device, dtype
        )
        cost = space.cost(arch)
        rows.append(
            {
                "choice": text,
                "val_top1": 100.0 * correct / len(indices),
                "flops": cost["flops"],
                "params": cost["params"],
            }
        )
    tail = losses[-max(1, len(losses) // 10) :]
    return {
        "unit": job.unit,
        "rows": rows,
        "full": next(t for t, a in space.local_archs(job.unit).items() if a == space.largest()),
        "train_loss": sum(tail) / len(tail),
        "val_images": len(indices),
        "seconds": time.perf_counter() - started,
    }
