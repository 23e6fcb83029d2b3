"""Ray Train's overhead per supernet training step, against plain torch.distributed.

The same step function (DDP over gloo, 2 CPU processes, one thread each, same supernet, data,
batch and subnet sequence) runs under two launchers:
  (a) `ray.train.torch.TorchTrainer` with 2 workers;
  (b) `torch.multiprocessing.spawn` of 2 processes with `init_process_group("gloo")`, as torchrun does.
Each launcher runs `--rounds` times, interleaved (a, b, a, b, ...); a round times `--steps` steps
after `--warmup` untimed ones and reports the median step time of rank 0. The ratio of the
medians over rounds is the overhead; goal <= 1.05. Writes benchmarks/results/ray_train_overhead.json.

    python benchmarks/ray_train_overhead.py [--steps 30] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

RESULTS = Path(__file__).parent / "results" / "ray_train_overhead.json"
SPACE = ("vit", "vit-28", {})
DATA = {"name": "fashion_mnist", "download": False, "subset": {"train": 8192, "val": 256}}
BATCH = 128


def timed_steps(model, space, rank: int, world: int, steps: int, warmup: int) -> list[float]:
    """Run warmup + steps DDP training steps; return the timed step durations."""
    from trainables.data import DataConfig, load_splits
    from trainables.train.sampling import step_archs

    splits = load_splits(DataConfig(**DATA))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    per_worker = BATCH // world
    times = []
    for step in range(warmup + steps):
        index = torch.arange(per_worker) + (step * BATCH + rank * per_worker) % (
            len(splits.train) - per_worker
        )
        x, y = splits.train.batch(index)
        start = time.perf_counter()
        (arch,) = step_archs(space, "uniform", 0, 1, step)
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x, arch), y).backward()
        optimizer.step()
        if step >= warmup:
            times.append(time.perf_counter() - start)
    return times


def build(seed: int = 0):
    from search_spaces import build_space

    torch.manual_seed(seed)
    space = build_space(SPACE[0], SPACE[1], SPACE[2])
    return space, space.build_supernet()


def ray_worker(config: dict) -> None:
    import ray.train
    import ray.train.torch

    torch.set_num_threads(1)
    space, supernet = build()
    model = ray.train.torch.prepare_model(
        supernet, parallel_strategy_kwargs={"find_unused_parameters": True}
    )
    context = ray.train.get_context()
    times = timed_steps(
        model,
        space,
        context.get_world_rank(),
        context.get_world_size(),
        config["steps"],
        config["warmup"],
    )
    if context.get_world_rank() == 0:
        Path(config["out"]).write_text(json.dumps(statistics.median(times)))
    ray.train.report({"median_step_s": statistics.median(times)})


def run_ray(steps: int, warmup: int) -> float:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    with tempfile.TemporaryDirectory() as storage:
        out = Path(storage) / "median.json"
        trainer = TorchTrainer(
            ray_worker,
            train_loop_config={"steps": steps, "warmup": warmup, "out": str(out)},
            scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
            run_config=RunConfig(storage_path=storage, name="bench"),
        )
        trainer.fit()
        return json.loads(out.read_text())


def plain_worker(rank: int, world: int, port: int, steps: int, warmup: int, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    space, supernet = build()
    model = torch.nn.parallel.DistributedDataParallel(supernet, find_unused_parameters=True)
    times = timed_steps(model, space, rank, world, steps, warmup)
    if rank == 0:
        Path(out).write_text(json.dumps(statistics.median(times)))
    dist.destroy_process_group()


def run_plain(steps: int, warmup: int) -> float:
    import torch.multiprocessing as mp

    from tests.helpers.servers import free_port

    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        mp.spawn(plain_worker, args=(2, free_port(), steps, warmup, out.name), nprocs=2, join=True)
        return json.loads(Path(out.name).read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import ray

    from orchestrator.config.schema import RayConfig
    from orchestrator.runtime import local_cluster_env

    os.environ.update(
        local_cluster_env(RayConfig())
    )  # what `raynas` does when it starts a local Ray
    ray.init(num_cpus=2, log_to_driver=False, configure_logging=False)
    ray_times, plain_times = [], []
    for _ in range(args.rounds):
        ray_times.append(run_ray(args.steps, args.warmup))
        plain_times.append(run_plain(args.steps, args.warmup))
        print(
            f"round: ray {ray_times[-1] * 1e3:.1f} ms/step, plain {plain_times[-1] * 1e3:.1f} ms/step",
            flush=True,
        )
    ray.shutdown()
    ray_median, plain_median = statistics.median(ray_times), statistics.median(plain_times)
    result = {
        "benchmark": "ray_train_overhead",
        "space": f"{SPACE[0]}/{SPACE[1]}",
        "global_batch": BATCH,
        "workers": 2,
        "steps_per_round": args.steps,
        "rounds": args.rounds,
        "machine": platform.machine(),
        "torch": torch.__version__,
        "ray_ms_per_step": round(ray_median * 1e3, 2),
        "plain_ms_per_step": round(plain_median * 1e3, 2),
        "ratio": round(ray_median / plain_median, 3),
        "goal": "<= 1.05",
        "ray_rounds_ms": [round(t * 1e3, 2) for t in ray_times],
        "plain_rounds_ms": [round(t * 1e3, 2) for t in plain_times],
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print("| launcher | ms / step (median of rounds) |\n|---|---|")
    print(f"| Ray Train, 2 workers | {result['ray_ms_per_step']} |")
    print(f"| torch.distributed spawn, 2 processes | {result['plain_ms_per_step']} |")
    print(f"| ratio | {result['ratio']} (goal <= 1.05) |")


if __name__ == "__main__":
    main()
