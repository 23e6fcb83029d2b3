"""Where should the SVD put the singular values? Measured on the quickstart's dense model.

The rank-k prefix is the truncated SVD whatever the placement, so the placements differ only
once training starts: weight decay and AdamW's per-parameter steps see differently scaled
factors. For each placement (``split``: sqrt(sigma) into each factor, ``first``: sigma into the
in -> k factor, ``second``: into the k -> out factor) this trains the low-rank supernet of
``configs/quickstart-flora.yaml``'s space from the same dense model with the same seed, steps,
batches and sampled subnets (low-rank-aware, distilled from the dense model, AdamW), then
scores uniform archs and the dense arch on the same val images.

    python benchmarks/lowrank_sigma.py --dense runs/flora-exp/main/pretrain/dense
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from search_spaces import build_space  # noqa: E402
from search_spaces.lowrank import LowRankArch  # noqa: E402
from trainables.data import DataConfig, load_splits  # noqa: E402
from trainables.supernets import dense_state, load_teacher  # noqa: E402
from trainables.train.config import DistillConfig, SupernetTrainConfig  # noqa: E402
from trainables.train.distill import training_loss  # noqa: E402
from trainables.train.loop import build_optimizer, evaluate  # noqa: E402
from trainables.train.schedule import warmup_cosine  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dense", type=Path, required=True, help="a pretrain/dense folder")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--val-images", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "lowrank_sigma.json"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base = yaml.safe_load((ROOT / "configs" / "quickstart-flora.yaml").read_text())
    spec = json.loads((args.dense / "model.json").read_text())
    data = DataConfig(name="fashion_mnist", val_size=5000, download=False)
    splits = load_splits(data, ("train", "val"), purpose="lowrank-sigma")
    cfg = SupernetTrainConfig(
        lr=1e-3, label_smoothing=0.0, distill=DistillConfig(weight=1.0), batch_size=128
    )
    teacher = load_teacher(args.dense, torch.device("cpu"))
    val = list(range(min(args.val_images, len(splits.val))))
    results = {"steps": args.steps, "val_images": len(val), "placements": {}}
    for placement in ("split", "first", "second"):
        overrides = {**base["space"]["overrides"], "singular_values": placement}
        kwargs = {k: v for k, v in spec["kwargs"].items() if k != "factored"}
        space = build_space("lowrank", base["space"]["preset"], {**overrides, **kwargs})
        torch.manual_seed(0)
        net = space.build_supernet()
        net.inherit(dense_state(args.dense))
        optimizer = build_optimizer(net, cfg)
        gen = torch.Generator().manual_seed(0)
        order = torch.randperm(len(splits.train), generator=gen)
        net.train()
        losses = []
        for step in range(args.steps):
            idx = order[(step * 128) % (len(order) - 128) :][:128]
            x, y = splits.train.batch(idx)
            for group in optimizer.param_groups:
                group["lr"] = warmup_cosine(step, args.steps, args.steps // 10, 1e-3, 1e-5)
            arch = space.sample(random.Random(f"sigma:{step}"))
            with torch.no_grad():
                t = teacher(x)
            optimizer.zero_grad(set_to_none=True)
            loss = training_loss(net(x, arch), y, t, cfg)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
            optimizer.step()
            losses.append(loss.item())
        net.eval()
        width, depth = len(space.config.layers), space.config.depth
        scores = {}
        for name, arch in {
            "uniform_0.25": LowRankArch(((0.25,) * width,) * depth),
            "uniform_0.5": LowRankArch(((0.5,) * width,) * depth),
            "dense": space.largest(),
        }.items():
            correct, _ = evaluate(net, arch, splits.val, val, 500, torch.device("cpu"), None)
            scores[name] = 100.0 * correct / len(val)
        tail = losses[-len(losses) // 10 :]
        results["placements"][placement] = {"final_loss": sum(tail) / len(tail), **scores}
        print(placement, results["placements"][placement], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
