"""Is data ever the bottleneck? Load times and batch throughput vs. a tiny ViT's training step.

Measures, in one process with the same threads:
  * load: Fashion-MNIST from its IDX files and from a parquet copy (`raynas data convert`);
  * loader: images/s of a shuffled DataLoader epoch over the train split (batch 128);
  * step: images/s of forward+backward of a tiny timm ViT (~0.4M params) at batch 128.
Writes benchmarks/results/data_loading.json; `loader / step` is how many times faster the
data arrives than the smallest model we train can consume it.

    python benchmarks/data_loading.py [--threads 2] [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from trainables.data import DataConfig, load_splits
from trainables.data.convert import convert

RESULTS = Path(__file__).parent / "results" / "data_loading.json"


def timed(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    idx_cfg = DataConfig(name="fashion_mnist", download=False)
    load_idx = timed(lambda: load_splits(idx_cfg))
    with tempfile.TemporaryDirectory() as tmp:
        convert(idx_cfg, f"{tmp}/fmnist")
        pq_cfg = DataConfig(name="parquet", root=f"{tmp}/fmnist")
        load_parquet = timed(lambda: load_splits(pq_cfg))
    splits = load_splits(idx_cfg)

    loader = DataLoader(splits.train, batch_size=128, shuffle=True, drop_last=True)
    start = time.perf_counter()
    seen = sum(len(y) for _, y in loader)
    loader_rate = seen / (time.perf_counter() - start)

    import timm

    model = timm.create_model(
        "vit_tiny_patch16_224",
        img_size=28,
        patch_size=4,
        in_chans=1,
        num_classes=10,
        embed_dim=64,
        depth=8,
        num_heads=2,
    )
    params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters())
    x, y = next(iter(loader))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    step()
    step_time = statistics.median(timed(step, 1) for _ in range(args.steps))
    step_rate = 128 / step_time
    result = {
        "benchmark": "data_loading",
        "threads": args.threads,
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "load_idx_s": round(load_idx, 3),
        "load_parquet_s": round(load_parquet, 3),
        "loader_images_per_s": round(loader_rate),
        "vit_params": params,
        "vit_train_images_per_s": round(step_rate),
        "loader_over_step": round(loader_rate / step_rate, 1),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print("| measure | value |\n|---|---|")
    for key, value in result.items():
        print(f"| {key} | {value} |")


if __name__ == "__main__":
    main()
