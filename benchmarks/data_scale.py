"""Memory vs stream loader as the dataset grows: peak RSS per Ray Train worker and of the
driver, and training images/s.

The script writes synthetic datasets in raynas's raw parquet layout (what `raynas data convert`
writes: uint8 1x28x28 images, 10 classes, row groups of 8192) at `--scales` times
Fashion-MNIST's size (60000 train + 10000 test rows per 1x; no download). For each scale one
child process (a fresh driver, so its peak RSS is its own) starts a local Ray and runs, side by
side, the same 2-worker Ray Train job twice: `data.loader: stream` then `memory`. The job is
raynas's real data path (the supernet stage's pre-flight `open_splits`, `trainer_data`, the
workers' `worker_data` batches) training a small model for `--warmup` + `--steps` steps of a
global batch of `--batch`:

* `--model vit` (default): the smallest subnet of the vit-28 space the tests train (extracted,
  a plain timm ViT), a realistic step; `--model mlp`: a 784-64-10 MLP, so the step is nearly free and the loader is timed.

Per run: the driver's peak RSS (`ru_maxrss`, the pre-flight included), each worker's peak RSS,
the time from the worker's start to its first batch, and images/s over the timed steps.
Goals: stream worker RSS flat in dataset size (16x within 1.2x of 1x) and stream throughput
>= 0.9x memory at Fashion-MNIST size (1x). Writes benchmarks/results/data_scale.json
(`--quick`: scales 1 and 2, few steps, to data_scale_quick.json).

    PYTHONPATH=. python benchmarks/data_scale.py [--scales 1,4,16] [--steps 200] [--model vit]
    PYTHONPATH=. python benchmarks/data_scale.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"
FMNIST_TRAIN, FMNIST_TEST = 60000, 10000
SHAPE = (1, 28, 28)
CLASSES = [str(i) for i in range(10)]
WORKERS, CPUS_PER_WORKER = 2, 0.5  # leaves CPUs for Ray Data's decode tasks


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


# ------------------------------------------------------------------------------------ data
def write_split(path: Path, rows: int, seed: int, split: str) -> None:
    """`rows` synthetic images in the raw layout, written one row group at a time."""
    import pyarrow.parquet as pq
    import torch

    from trainables.data.convert import ROW_GROUP_SIZE, images_table

    meta = {"version": 1, "layout": "uint8-chw", "shape": list(SHAPE), "classes": CLASSES,
            "source": "synthetic", "split": split, "split_seed": 0}  # fmt: skip
    rng = np.random.default_rng(seed)
    writer = None
    try:
        for start in range(0, rows, ROW_GROUP_SIZE):
            n = min(ROW_GROUP_SIZE, rows - start)
            labels = rng.integers(0, 10, n)
            # class-dependent brightness, so a model can learn something
            base = (labels * 20 + 30).astype(np.int16)[:, None]
            pixels = np.clip(base + rng.integers(-30, 31, (n, int(np.prod(SHAPE)))), 0, 255)
            table = images_table(
                torch.from_numpy(pixels.astype(np.uint8).reshape(n, *SHAPE)),
                torch.from_numpy(labels.astype(np.int64)),
                meta,
            )
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema)
            writer.write_table(table, row_group_size=ROW_GROUP_SIZE)
    finally:
        if writer is not None:
            writer.close()


def make_dataset(folder: Path, scale: float) -> Path:
    root = folder / f"synthetic-{scale:g}x"
    if not (root / "train.parquet").exists():
        root.mkdir(parents=True, exist_ok=True)
        write_split(root / "test.parquet", int(FMNIST_TEST * scale), 1, "test")
        write_split(root / "train.parquet", int(FMNIST_TRAIN * scale), 0, "train")
    return root


# ------------------------------------------------------------------------------ the job
def build_model(kind: str):
    import torch

    torch.manual_seed(0)
    if kind == "mlp":

        class MLP(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.net = torch.nn.Sequential(
                    torch.nn.Flatten(), torch.nn.Linear(784, 64), torch.nn.ReLU(),
                    torch.nn.Linear(64, 10),
                )  # fmt: skip

            def forward(self, x):
                return self.net(x)

        return MLP()
    from search_spaces import build_space
    from tests.helpers.configs import SMALL_SPACE

    space = build_space("vit", "vit-28", SMALL_SPACE)
    return space.build_supernet().extract(space.smallest())  # a plain timm ViT


def bench_worker(config: dict) -> None:
    import ray.train
    import ray.train.torch
    import torch
    import torch.nn.functional as F

    from trainables.train.loop import worker_data

    torch.set_num_threads(1)
    started = time.perf_counter()
    spec = config["spec"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    data = worker_data(spec, rank, world, spec.train.batch_size // world)
    model = build_model(config["model"])
    model = ray.train.torch.prepare_model(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    total, done, epoch = config["warmup"] + config["steps"], 0, 1
    first_batch_s = timed_from = None
    while done < total:
        for x, y in data.train.epoch(epoch):
            if first_batch_s is None:
                first_batch_s = time.perf_counter() - started
            if done == config["warmup"]:
                timed_from = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
            done += 1
            if done == total:
                break
        epoch += 1
    elapsed = time.perf_counter() - timed_from
    result = {
        "rank": rank,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "first_batch_s": round(first_batch_s, 2),
        "images_per_s": round(config["steps"] * spec.train.batch_size / elapsed, 1),
        "epochs_started": epoch - 1,
    }
    Path(config["out"], f"rank{rank}.json").write_text(json.dumps(result))
    ray.train.report({"images_per_s": result["images_per_s"]})


def run_job(root: Path, loader: str, args, out: Path) -> dict:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from trainables.data import DataConfig
    from trainables.data.splits import open_splits
    from trainables.train.config import SupernetTrainConfig
    from trainables.train.loop import WorkerSpec, trainer_data

    data = DataConfig(name="parquet", root=str(root), loader=loader)
    train = SupernetTrainConfig(batch_size=args.batch, eval_subnets=0)
    started = time.perf_counter()
    splits = open_splits(data, ("train", "val"), purpose="data-scale")  # the stage's pre-flight
    preflight_s = time.perf_counter() - started
    stream, ingest = trainer_data(splits, train, 0, WORKERS * CPUS_PER_WORKER)
    spec = WorkerSpec(train=train, data=data, space={}, stream=stream)
    out.mkdir(parents=True, exist_ok=True)
    del splits  # what the stage keeps after the pre-flight is the result record, not the data
    with tempfile.TemporaryDirectory() as storage:
        TorchTrainer(
            bench_worker,
            train_loop_config={
                "spec": spec,
                "model": args.model,
                "out": str(out),
                "steps": args.steps,
                "warmup": args.warmup,
            },  # fmt: skip
            scaling_config=ScalingConfig(
                num_workers=WORKERS, resources_per_worker={"CPU": CPUS_PER_WORKER}
            ),
            run_config=RunConfig(storage_path=storage, name=f"bench-{loader}"),
            **ingest,
        ).fit()
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(WORKERS)]
    return {
        "loader": loader,
        "preflight_s": round(preflight_s, 2),
        "driver_peak_rss_mb": round(peak_rss_mb(), 1),
        "worker_peak_rss_mb": max(r["peak_rss_mb"] for r in ranks),
        "images_per_s": ranks[0]["images_per_s"],
        "first_batch_s": max(r["first_batch_s"] for r in ranks),
        "ranks": ranks,
    }


def child(args) -> None:
    """One scale in a fresh process: stream first (its driver peak is then its own), memory."""
    import ray

    from orchestrator.config.schema import RayConfig
    from orchestrator.runtime import local_cluster_env

    os.environ.update(local_cluster_env(RayConfig()))
    ray.init(num_cpus=os.cpu_count(), log_to_driver=False, configure_logging=False)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for loader in ("stream", "memory"):
            runs.append(run_job(Path(args.child), loader, args, Path(tmp) / loader))
            print(json.dumps({k: v for k, v in runs[-1].items() if k != "ranks"}), flush=True)
    ray.shutdown()
    Path(args.result).write_text(json.dumps(runs))


# ------------------------------------------------------------------------------- driver
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", default="1,4,16", help="multiples of Fashion-MNIST's size")
    parser.add_argument("--steps", type=int, default=200, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--batch", type=int, default=128, help="global batch")
    parser.add_argument("--model", choices=("vit", "mlp"), default="vit")
    parser.add_argument("--data-dir", default=None, help="keep the datasets here (reused)")
    parser.add_argument("--quick", action="store_true", help="scales 1,2 and 30 steps")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    if args.quick:
        args.scales, args.steps, args.warmup = "1,2", 30, 5
    scales = [float(s) for s in args.scales.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.data_dir or tmp)
        by_scale = {}
        for scale in scales:
            started = time.perf_counter()
            root = make_dataset(folder, scale)
            print(f"scale {scale:g}x: data ready in {time.perf_counter() - started:.0f} s",
                  flush=True)  # fmt: skip
            result = Path(tmp) / f"result-{scale:g}.json"
            command = [sys.executable, __file__, "--child", str(root), "--result", str(result),
                       "--steps", str(args.steps), "--warmup", str(args.warmup),
                       "--batch", str(args.batch), "--model", args.model]  # fmt: skip
            subprocess.run(command, check=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
            by_scale[f"{scale:g}x"] = {r["loader"]: r for r in json.loads(result.read_text())}
    first, last = f"{scales[0]:g}x", f"{scales[-1]:g}x"
    report = {
        "benchmark": "data_scale",
        "quick": args.quick,
        "model": args.model,
        "workers": WORKERS,
        "cpus_per_worker": CPUS_PER_WORKER,
        "cpus": os.cpu_count(),
        "global_batch": args.batch,
        "steps": args.steps,
        "machine": platform.machine(),
        "load_average": os.getloadavg()[0],
        "rows_per_1x": {"train": FMNIST_TRAIN, "test": FMNIST_TEST},
        "results": by_scale,
        "stream_worker_rss_ratio": round(
            by_scale[last]["stream"]["worker_peak_rss_mb"]
            / by_scale[first]["stream"]["worker_peak_rss_mb"],
            3,
        ),  # fmt: skip
        "stream_over_memory_throughput": round(
            by_scale[first]["stream"]["images_per_s"] / by_scale[first]["memory"]["images_per_s"],
            3,
        ),
        "goals": {
            "stream_worker_rss_ratio": f"<= 1.2 ({last} over {first})",
            "stream_over_memory_throughput": f">= 0.9 (at {first})",
        },
    }
    name = "data_scale_quick.json" if args.quick else "data_scale.json"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / name).write_text(json.dumps(report, indent=2) + "\n")
    print("| scale | loader | driver peak RSS MB | worker peak RSS MB | images/s | first batch s |")
    print("|---|---|---|---|---|---|")
    for scale, runs in by_scale.items():
        for loader, r in runs.items():
            print(f"| {scale} | {loader} | {r['driver_peak_rss_mb']} | {r['worker_peak_rss_mb']} "
                  f"| {r['images_per_s']} | {r['first_batch_s']} |")  # fmt: skip
    print(f"stream worker RSS {last} / {first}: {report['stream_worker_rss_ratio']} (goal <= 1.2)")
    print(
        f"stream / memory images/s at {first}: {report['stream_over_memory_throughput']} "
        "(goal >= 0.9)"
    )


if __name__ == "__main__":
    main()
