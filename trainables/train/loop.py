"""The per-worker loop of the `supernet` stage, run by `ray.train.torch.TorchTrainer`.

Each step trains the subnet(s) drawn by `sampling.step_archs` from (seed, epoch, step), so all
ranks agree without communicating; DDP (through `ray.train.torch.prepare_model`) averages the
gradients. Two more ways to train share the loop:

* ``sampling: mixed`` (cell spaces): every step runs the MIXED supernet (``forward(x, None)``:
  every op on every edge, combined by the supernet's operation selector). The selector's
  parameters (``Supernet.selector_parameters``) have their own Adam optimizer. Single-level:
  weights and selector step on the same train batch. Bi-level (DARTS's first-order
  alternation): a seeded carve-out of TRAIN (``selector.split``) feeds the selector, which steps
  first on its batch, then the weights step on theirs. This mode loads the TRAIN split only:
  val and test are never read while the selector learns.
* a fixed arch (``WorkerSpec.arch``, the `retrain` stage): the arch's standalone network
  (``trainables.supernets.Standalone``, freshly initialised) is trained from scratch; its
  checkpoints hold that network's weights only. Every `checkpoint_every` epochs rank 0 reports a checkpoint (weights, optimizer,
schedule position, RNG state, metric history); a restarted worker group resumes from the latest
one, whether the restart follows a worker failure or a new driver.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import Subset

from search_spaces import Supernet, arch_id, build_space
from trainables.data import DataConfig, load_splits
from trainables.data.splits import carve, generator, record_access
from trainables.data.stream import StreamInfo, StreamSplits
from trainables.data.tensors import Normalizer
from trainables.errors import DataError
from trainables.supernets import base_of, build_supernet, dense_state, load_teacher
from trainables.train import checkpoint as ckpt
from trainables.train.batches import (
    Cycle,
    EpochBatches,
    EvalBatches,
    MemoryBatches,
    MemoryEval,
    StreamBatches,
    StreamEval,
)
from trainables.train.config import SupernetTrainConfig
from trainables.train.distill import training_loss
from trainables.train.sampling import eval_archs, step_archs
from trainables.train.schedule import warmup_cosine


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a training worker needs, as plain data (it is pickled to every worker)."""

    train: SupernetTrainConfig
    data: DataConfig
    space: dict[str, Any] = field(default_factory=dict)  # build_space(family, preset, overrides)
    seed: int = 0
    run_dir: str = "."  # local run directory, for the arch logs and the failure-injection marker
    stage: str = "supernet"  # the stage's folder in the run directory; names the progress lines
    init_from: str | None = None  # checkpoint folder whose weights start the (base) supernet
    adapter: dict[str, Any] | None = None  # family adapter spec (TAS-LoRA: MoLE); None: plain
    group_init_steps: int = 0  # Supernet.prepare_training(init_steps=); TAS-LoRA: router init
    freeze_base: bool = True  # Supernet.prepare_training(freeze_base=): train only the adapter
    arch: str | None = None  # JSON of the one arch every step trains (retrain); None: sampled
    # model folder of the dense model (FLORA's pretrain output): a fresh supernet inherits its
    # weights (Supernet.inherit) and, with distill.weight > 0, it is the frozen teacher
    dense: str | None = None
    # data.loader resolved to stream: the Ray Train dataset shards' sizes and normalisation;
    # None: every worker loads its splits into memory
    stream: StreamInfo | None = None

    def build_space(self):
        return build_space(
            self.space["family"], self.space.get("preset"), self.space.get("overrides") or {}
        )


def check_data_fits_space(splits, space) -> None:
    """The images and classes of the data must be what the supernet was built for."""
    if splits.image_shape != space.input_shape or splits.num_classes != space.num_classes:
        raise DataError(
            f"data {splits.name} gives images {splits.image_shape} with {splits.num_classes} classes but the "
            f"search space expects {space.input_shape} with {space.num_classes}; set space.overrides (img_size, "
            "in_chans, num_classes) or data.image_size / data.channels"
        )


class InjectedFailure(RuntimeError):
    """Raised by the testing hook `supernet.inject_failure`."""


def build_optimizer(model: Supernet, cfg: SupernetTrainConfig) -> torch.optim.Optimizer:
    """AdamW (or SGD) over the supernet's own parameter groups (``Supernet.param_groups``: by
    default no weight decay on biases, norms and the names its ``no_weight_decay()`` lists, as
    in timm), without the selector's parameters, which :func:`build_selector_optimizer` owns."""
    selector = {id(p) for p in model.selector_parameters()}
    groups = [
        {**group, "params": [p for p in group["params"] if id(p) not in selector]}
        for group in model.param_groups(cfg.weight_decay)
    ]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.peak_lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    return torch.optim.AdamW(groups, lr=cfg.peak_lr)


def build_selector_optimizer(
    model: Supernet, cfg: SupernetTrainConfig
) -> torch.optim.Optimizer | None:
    """Adam over the operation selector's parameters in `mixed` sampling (None otherwise)."""
    if cfg.sampling != "mixed":
        return None
    params = [p for p in model.selector_parameters() if p.requires_grad]
    if not params:
        raise ValueError(
            f"supernet.sampling=mixed needs a supernet with an operation selector; "
            f"{type(model).__name__} has none (allowed for it: uniform, sandwich)"
        )
    sel = cfg.selector
    return torch.optim.Adam(
        params, lr=sel.lr, betas=tuple(sel.betas), weight_decay=sel.weight_decay
    )


def selector_carve_out(n: int, cfg: SupernetTrainConfig, seed: int) -> tuple[list[int], list[int]]:
    """Bi-level training: (weight indices, selector indices) of the TRAIN split, a seeded
    partition; single-level and every other sampling keep the whole split for the weights."""
    if not cfg.bilevel:
        return list(range(n)), []
    count = max(1, min(n - 1, round(cfg.selector.split * n)))
    weights, selector = carve(n, count, generator(seed, "selector"))
    return weights.tolist(), selector.tolist()


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or precision == "fp32":
        return None
    return torch.float16 if precision == "fp16" else torch.bfloat16


@dataclass
class WorkerData:
    """A worker's data, read through one interface whatever the loader."""

    splits: Any  # DatasetSplits or StreamInfo: name, image_shape, num_classes
    train: EpochBatches  # the weights' batches
    selector: EpochBatches | None  # bi-level: the selector's carve-out of TRAIN
    val: EvalBatches | None  # None in mixed sampling (val is never read)


def worker_data(spec: WorkerSpec, rank: int, world: int, per_worker: int) -> WorkerData:
    """Load (memory) or attach to (stream) this rank's data; mixed training reads TRAIN only."""
    cfg = spec.train
    wanted = ("train",) if cfg.sampling == "mixed" else ("train", "val")
    if spec.stream is None:
        splits = load_splits(spec.data, wanted, purpose=spec.stage)
        weight_part, selector_part = selector_carve_out(
            len(splits.train), cfg, spec.data.split_seed
        )
        weight_data = Subset(splits.train, weight_part) if selector_part else splits.train
        selector = None
        if selector_part:
            selector_data = Subset(splits.train, selector_part)
            selector = MemoryBatches(selector_data, rank, world, per_worker, spec.seed + 1)
        return WorkerData(
            splits,
            MemoryBatches(weight_data, rank, world, per_worker, spec.seed),
            selector,
            MemoryEval(splits.val, rank, world, cfg.eval_batch_size) if "val" in wanted else None,
        )
    import ray.train

    info = spec.stream
    record_access(wanted, spec.stage, "stream")
    normalize = Normalizer(info.mean, info.std)

    def batches(name: str, seed: int) -> StreamBatches:
        return StreamBatches(
            ray.train.get_dataset_shard(name),
            info.sizes[name],
            rank,
            world,
            per_worker,
            seed,
            normalize,
            info.shuffle_buffer,
            name,
        )

    return WorkerData(
        info,
        batches("train", spec.seed),
        batches("selector", spec.seed + 1) if "selector" in info.sizes else None,
        StreamEval(
            ray.train.get_dataset_shard("val"), info.sizes["val"], cfg.eval_batch_size, normalize
        )
        if "val" in info.sizes
        else None,
    )


def stream_ingest(
    splits: StreamSplits, cfg: SupernetTrainConfig, seed: int, train_cpus: float
) -> tuple[StreamInfo, dict[str, Any]]:
    """The driver's side of `worker_data` for streamed splits: the StreamInfo for the workers
    and TorchTrainer's `datasets` / `dataset_config` (train: shuffled per epoch; the bi-level
    selector's carve-out of it; val unless mixed sampling, which never reads it)."""
    from trainables.data.ingest import IngestConfig, check_cpus, dataset, mix_seed

    check_cpus(splits, train_cpus)
    train = splits.split("train")
    weight_part, selector_part = selector_carve_out(len(train), cfg, splits.config.split_seed)
    parts = {"train": (train.take(weight_part) if selector_part else train, seed)}
    if selector_part:
        parts["selector"] = (train.take(selector_part), seed + 1)
    datasets = {
        name: dataset(splits, rows, shuffle_seed=mix_seed("stream", name, part_seed))
        for name, (rows, part_seed) in parts.items()
    }
    sizes = {name: len(rows) for name, (rows, _) in parts.items()}
    if cfg.sampling != "mixed":
        datasets["val"] = dataset(splits, splits.split("val"))
        sizes["val"] = len(splits.split("val"))
    return splits.info(sizes), {"datasets": datasets, "dataset_config": IngestConfig()}


def trainer_data(
    splits, cfg: SupernetTrainConfig, seed: int, train_cpus: float
) -> tuple[StreamInfo | None, dict[str, Any]]:
    """(WorkerSpec.stream, extra TorchTrainer kwargs) for the splits a pre-flight opened:
    (None, {}) when they are in memory (each worker loads its own)."""
    if not isinstance(splits, StreamSplits):
        return None, {}
    return stream_ingest(splits, cfg, seed, train_cpus)


@torch.no_grad()
def evaluate_batches(
    model: torch.nn.Module,
    archs: dict[str, Any],
    batches,
    device: torch.device,
    dtype: torch.dtype | None,
) -> tuple[dict[str, tuple[float, float]], int]:
    """({name: (correct, summed loss)} of every arch in `archs`, images seen) over `batches`
    (this rank's share): one pass over the data for all archs."""
    sums = {name: [0.0, 0.0] for name in archs}
    seen = 0
    for x, y in batches:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        seen += len(y)
        for name, arch in archs.items():
            with torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext():
                logits = model(x, arch)
            sums[name][0] += (logits.argmax(1) == y).sum().item()
            sums[name][1] += F.cross_entropy(logits.float(), y, reduction="sum").item()
    return {name: (c, loss) for name, (c, loss) in sums.items()}, seen


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    arch: Any,
    dataset,
    indices: list[int],
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype | None,
) -> tuple[float, float]:
    """(correct, summed loss) of `arch` over `dataset[indices]` (this rank's share)."""
    correct = loss = 0.0
    for start in range(0, len(indices), batch_size):
        x, y = dataset.batch(indices[start : start + batch_size])
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext():
            logits = model(x, arch)
        loss += F.cross_entropy(logits.float(), y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
    return correct, loss


def all_sum(values: list[float], device: torch.device) -> list[float]:
    if not (dist.is_available() and dist.is_initialized()):
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def train_worker(config: dict[str, Any]) -> None:
    """`train_loop_per_worker` of the supernet stage; `config["spec"]` is a `WorkerSpec`."""
    import ray.train
    import ray.train.torch

    spec: WorkerSpec = config["spec"]
    cfg = spec.train
    # Ray Train logs every report and checkpoint at INFO; the epoch line below says it once
    # (the context module's logger is named by its file path, not its module name)
    context_module = sys.modules.get("ray.train.v2._internal.execution.context")
    for name in (
        "ray.train.v2._internal.execution.context",
        "ray.train.v2._internal.execution.storage",
        getattr(context_module, "__file__", None),
    ):
        if name:
            logging.getLogger(name).setLevel(logging.WARNING)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    placement = rank_placement(rank, world, device)
    dtype = autocast_dtype(cfg.precision, device)

    torch.manual_seed(spec.seed)  # identical initial weights on every rank
    space = spec.build_space()
    fixed = space.from_json(spec.arch) if spec.arch is not None else None
    supernet = build_supernet(space, spec.adapter, fixed)  # fixed arch: its standalone network
    mixed = cfg.sampling == "mixed"
    if cfg.batch_size < world:
        raise ValueError(
            f"supernet.batch_size={cfg.batch_size} is smaller than the {world} workers"
        )
    per_worker = cfg.batch_size // world
    # the selector learns from TRAIN alone: a mixed run never materialises val (or test)
    data = worker_data(spec, rank, world, per_worker)
    check_data_fits_space(data.splits, space)
    batches = data.train
    steps_per_epoch = batches.steps
    if steps_per_epoch == 0:
        raise ValueError(
            f"the train split ({batches.size} images for the weights) holds less than one "
            f"batch of {cfg.batch_size}"
        )
    selector_batches = None
    if data.selector is not None:
        if data.selector.steps == 0:
            raise ValueError(
                f"the selector's carve-out ({data.selector.size} train images) holds less than "
                f"one batch of {cfg.batch_size}"
            )
        selector_batches = Cycle(data.selector)
    total_steps = cfg.epochs * steps_per_epoch
    warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)

    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    start_epoch, history = 1, []
    restored = ray.train.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as folder:
            ckpt.load_into(supernet, folder)
            state = ckpt.load_train_state(folder)
            history = ckpt.load_meta(folder)["history"]
        start_epoch = int(state["epoch"]) + 1
        torch.set_rng_state(state["torch_rng"])
    elif spec.init_from is not None:
        ckpt.load_into(base_of(supernet), spec.init_from)
    elif spec.dense is not None:
        base_of(supernet).inherit(dense_state(spec.dense))
    teacher = None
    if cfg.distill.weight > 0:
        if spec.dense is None:
            raise ValueError(
                f"{spec.stage}.distill.weight={cfg.distill.weight} needs a dense teacher, which "
                "no stage of this run provides; allowed: 0 without one"
            )
        teacher = load_teacher(spec.dense, device)
    # the supernet's own initialisation (only on a fresh start from `init_from`) and freezing;
    # same seed on every rank: identical weights without communication
    fresh = restored is None and spec.init_from is not None
    note = supernet.prepare_training(
        space,
        seed=spec.seed,
        init_steps=spec.group_init_steps if fresh else 0,
        freeze_base=spec.freeze_base,
    )
    if note and rank == 0:
        print(f"[{spec.stage}] {note}", flush=True)
    model = ray.train.torch.prepare_model(
        supernet, parallel_strategy_kwargs={"find_unused_parameters": True}
    )
    optimizer = build_optimizer(supernet, cfg)  # after prepare_model: on the model's device
    selector_optimizer = build_selector_optimizer(supernet, cfg)
    if restored is not None:
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        if selector_optimizer is not None:
            selector_optimizer.load_state_dict(state["selector_optimizer"])
        if selector_batches is not None:
            selector_batches.epoch = int(state.get("selector_epoch", 0))

    if mixed:
        probes = {}  # no val read: the select stage judges the selector
    elif fixed is not None:
        probes = {"selected": fixed}
    else:
        probes = eval_archs(space, spec.seed, cfg.eval_subnets)
    arch_log = _arch_log(spec, rank)

    for epoch in range(start_epoch, cfg.epochs + 1):
        model.train()
        loss_sum = seen = correct_sum = selector_loss_sum = 0.0
        started = time.perf_counter()
        for step, (x, y) in enumerate(batches.epoch(epoch)):
            _maybe_fail(spec, epoch, step, rank)
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
            teacher_logits = None
            if teacher is not None:  # one teacher pass per batch, shared by its archs
                with (
                    torch.no_grad(),
                    torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext(),
                ):
                    teacher_logits = teacher(x).float()
            if mixed:
                archs = [None]
            elif fixed is not None:
                archs = [fixed]
            else:
                archs = step_archs(space, cfg.sampling, spec.seed, epoch, step, purpose=spec.stage)
            if arch_log is not None:
                ids = ["mixed" if a is None else arch_id(a) for a in archs]
                arch_log.write(json.dumps({"epoch": epoch, "step": step, "archs": ids}) + "\n")
            if selector_batches is not None:  # bi-level: the selector steps first, on its batch
                xs, ys = (t.to(device, non_blocking=True) for t in selector_batches.next())
                model.zero_grad(set_to_none=True)
                with (
                    torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
                ):
                    selector_loss = F.cross_entropy(model(xs, None).float(), ys)
                scaler.scale(selector_loss).backward()
                scaler.step(selector_optimizer)
                selector_loss_sum += selector_loss.item() * len(ys)
            optimizer.zero_grad(set_to_none=True)
            if selector_optimizer is not None:
                selector_optimizer.zero_grad(set_to_none=True)
            for i, arch in enumerate(archs):
                last = i == len(archs) - 1
                sync = (
                    contextlib.nullcontext()
                    if last or not hasattr(model, "no_sync")
                    else model.no_sync()
                )
                with sync:
                    with (
                        torch.autocast(device.type, dtype=dtype)
                        if dtype
                        else contextlib.nullcontext()
                    ):
                        logits = model(x, arch).float()
                        loss = training_loss(logits, y, teacher_logits, cfg)
                    scaler.scale(loss / len(archs)).backward()
                loss_sum += loss.item() * len(y) / len(archs)
                if last:
                    correct_sum += (logits.argmax(1) == y).sum().item()
            if cfg.clip_grad is not None:
                scaler.unscale_(optimizer)
                weights = [p for g in optimizer.param_groups for p in g["params"]]
                torch.nn.utils.clip_grad_norm_(weights, cfg.clip_grad)
            scaler.step(optimizer)
            if selector_optimizer is not None and selector_batches is None:  # single-level
                scaler.step(selector_optimizer)
            scaler.update()
            seen += len(y)
        train_seconds = time.perf_counter() - started
        if arch_log is not None:
            arch_log.flush()

        model.eval()
        metrics: dict[str, Any] = {"epoch": epoch, "lr": lr}
        loss_sum, seen, correct_sum, selector_loss_sum = all_sum(
            [loss_sum, seen, correct_sum, selector_loss_sum], device
        )
        metrics["train_loss"] = loss_sum / max(seen, 1)
        metrics["train_top1"] = 100.0 * correct_sum / max(seen, 1)
        if selector_batches is not None:
            metrics["selector_loss"] = selector_loss_sum / max(seen, 1)
        metrics["images_per_s"] = seen / max(train_seconds, 1e-9)
        unwrapped = model.module if hasattr(model, "module") else model
        if probes:
            assert data.val is not None
            scores, scored = evaluate_batches(unwrapped, probes, data.val.batches(), device, dtype)
            names = list(scores)
            totals = all_sum([float(scored)] + [v for n in names for v in scores[n]], device)
            if round(totals[0]) != data.val.size:
                raise RuntimeError(
                    f"the ranks scored {round(totals[0])} val images, the split has {data.val.size}"
                )
            for i, name in enumerate(names):
                correct, vloss = totals[1 + 2 * i], totals[2 + 2 * i]
                metrics[f"val_top1_{name}"] = 100.0 * correct / data.val.size
                metrics[f"val_loss_{name}"] = vloss / data.val.size
        randoms = [metrics[f"val_top1_{n}"] for n in probes if n.startswith("random")]
        if randoms:
            metrics["val_top1_random_mean"] = sum(randoms) / len(randoms)
        metrics["epoch_seconds"] = time.perf_counter() - started
        history = [h for h in history if h["epoch"] < epoch] + [metrics]

        if rank == 0:
            print(_progress_line(metrics, cfg.epochs, spec.stage), flush=True)
        keep = epoch % cfg.checkpoint_every == 0 or epoch == cfg.epochs
        if keep and rank == 0:
            with tempfile.TemporaryDirectory() as folder:
                ckpt.save(
                    folder,
                    unwrapped.state_dict(),
                    {
                        "epoch": epoch,
                        "optimizer": optimizer.state_dict(),
                        "scaler": scaler.state_dict(),
                        "torch_rng": torch.get_rng_state(),
                        **(
                            {"selector_optimizer": selector_optimizer.state_dict()}
                            if selector_optimizer is not None
                            else {}
                        ),
                        "selector_epoch": selector_batches.epoch if selector_batches else 0,
                    },
                    {
                        "epoch": epoch,
                        "history": history,
                        "space": spec.space,
                        "adapter": spec.adapter,
                        "probes": {n: arch_id(a) for n, a in probes.items()},
                        "arch": spec.arch,
                        "world_size": world,
                        "placement": placement,
                    },
                )
                ray.train.report(
                    metrics,
                    checkpoint=ray.train.Checkpoint.from_directory(folder),
                    checkpoint_dir_name=f"epoch_{epoch:04d}",
                )
        else:
            ray.train.report(metrics)
    if arch_log is not None:
        arch_log.close()


def rank_placement(rank: int, world: int, device: torch.device) -> list[dict[str, Any]]:
    """Where every rank of this worker group runs (node id, its raynas group and accelerator
    labels, the device), gathered from all ranks: recorded in each checkpoint's meta."""
    import ray

    runtime = ray.get_runtime_context()
    labels = runtime.get_node_labels() or {}
    mine = {
        "rank": rank,
        "node_id": runtime.get_node_id(),
        "group": labels.get("raynas.io/group"),
        "accelerator": labels.get("ray.io/accelerator-type"),
        "device": str(device),
    }
    if world == 1 or not torch.distributed.is_initialized():
        return [mine]
    gathered: list[Any] = [None] * world
    torch.distributed.all_gather_object(gathered, mine)
    return sorted(gathered, key=lambda r: r["rank"])


def _progress_line(metrics: dict[str, Any], epochs: int, stage: str = "supernet") -> str:
    vals = "  ".join(
        f"{k.removeprefix('val_top1_')} {v:.1f}"
        for k, v in metrics.items()
        if k.startswith("val_top1_") and not k.endswith("mean")
    )
    line = (
        f"[{stage}] epoch {metrics['epoch']}/{epochs}  loss {metrics['train_loss']:.4f}  "
        f"{metrics['images_per_s']:.0f} img/s  "
    )
    if vals:
        return line + f"val top-1: {vals}"
    line += f"train top-1 {metrics['train_top1']:.1f}"
    if "selector_loss" in metrics:
        line += f"  selector loss {metrics['selector_loss']:.4f}"
    return line


def _arch_log(spec: WorkerSpec, rank: int):
    if not spec.train.record_archs:
        return None
    folder = Path(spec.run_dir) / spec.stage / "archs"
    folder.mkdir(parents=True, exist_ok=True)
    return open(folder / f"rank{rank}.jsonl", "a")


def _maybe_fail(spec: WorkerSpec, epoch: int, step: int, rank: int) -> None:
    hook = spec.train.inject_failure
    if hook is None or (hook.epoch, hook.step, hook.rank) != (epoch, step, rank):
        return
    marker = Path(spec.run_dir) / spec.stage / ".failure_injected"
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"epoch {epoch} step {step} rank {rank}\n")
    raise InjectedFailure(
        f"injected failure at epoch {epoch}, step {step}, rank {rank} (supernet.inject_failure)"
    )
