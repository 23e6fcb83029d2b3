"""How much slower is a training step of a subnet inside the supernet than on its timm model?

For the smallest, a middle and the largest subnet of a small-image preset and of
autoformer-tiny, time forward + cross-entropy + backward

* inside the supernet: ``loss(supernet(x, arch)).backward()``, and
* on the extracted standalone timm model: ``loss(model(x)).backward()``,

on the same batch with the same thread count, interleaving the two (alternating which goes
first) so drifting machine load hits both alike, and report the ratio of the medians (and,
as a cross-check on a shared machine, the ratio of the fastest repeats). The
standalone model is the limit; the goal is a ratio <= 1.05. The "middle" subnet is the seeded
sample whose parameter count is closest to the midpoint of the space, so its blocks mix head
counts and MLP ratios.

It also estimates the epoch time that sizes the small-image presets: a full training step
(with AdamW) of the largest subnet inside the supernet at batch 128, times 55,000 / 128 steps.

    python benchmarks/supernet_step.py            # full run, writes benchmarks/results/...
    python benchmarks/supernet_step.py --quick    # a few repeats, for a smoke test
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
from pathlib import Path

import timm
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import interleaved, middle_arch, timed  # noqa: E402
from search_spaces import SearchSpace, arch_id, build_space  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "supernet_step.json"
EPOCH_IMAGES = 55_000


def compare(space: SearchSpace, arch: object, batch: int, repeats: int, warmup: int) -> dict:
    """Median fwd+bwd seconds of ``arch`` in the supernet and in its extracted timm model."""
    torch.manual_seed(0)
    net = space.build_supernet().train()
    model = net.extract(arch).train()
    x = torch.randn(batch, *space.input_shape)
    y = torch.randint(0, space.num_classes, (batch,))
    with torch.no_grad():  # sanity: the two compute the same function
        diff = (net.eval()(x, arch) - model.eval()(x)).abs().max().item()
    net.train()
    model.train()
    assert diff <= 1e-4, f"supernet and extracted model disagree by {diff}"

    def supernet_step() -> None:
        net.zero_grad(set_to_none=True)
        F.cross_entropy(net(x, arch), y).backward()

    def timm_step() -> None:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()

    times = interleaved({"timm": timm_step, "supernet": supernet_step}, repeats, warmup)
    sup, ref = times["supernet"], times["timm"]
    sup_s, ref_s = statistics.median(sup), statistics.median(ref)
    cost = space.cost(arch)
    return {
        "arch_id": arch_id(arch),
        "arch": json.loads(space.to_json(arch)),
        "params": cost["params"],
        "macs": cost["flops"],
        "batch": batch,
        "repeats": repeats,
        "supernet_ms": round(sup_s * 1e3, 3),
        "timm_ms": round(ref_s * 1e3, 3),
        "ratio": round(sup_s / ref_s, 4),
        # best-of-repeats ratio: less sensitive to other processes on a shared machine
        "ratio_of_min": round(min(sup) / min(ref), 4),
    }


def epoch_estimate(space: SearchSpace, batch: int, repeats: int, warmup: int) -> dict:
    """Seconds per 55k-image epoch of the largest subnet: supernet step with AdamW."""
    torch.manual_seed(0)
    net = space.build_supernet().train()
    arch = space.largest()
    optimizer = torch.optim.AdamW(net.parameters(), lr=5e-4 * batch / 512, weight_decay=0.05)
    x = torch.randn(batch, *space.input_shape)
    y = torch.randint(0, space.num_classes, (batch,))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(net(x, arch), y).backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    step_s = statistics.median(timed(step) for _ in range(repeats))
    return {
        "batch": batch,
        "step_ms": round(step_s * 1e3, 3),
        "epoch_s": round(step_s * math.ceil(EPOCH_IMAGES / batch), 1),
    }


def markdown(rows: list[dict]) -> str:
    lines = [
        "| preset | subnet | params | MACs | batch | supernet ms | timm ms | ratio | min ratio |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['preset']} | {r['subnet']} | {r['params'] / 1e6:.2f}M | "
            f"{r['macs'] / 1e6:.1f}M | {r['batch']} | {r['supernet_ms']:.1f} | "
            f"{r['timm_ms']:.1f} | {r['ratio']:.3f} | {r['ratio_of_min']:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few repeats (smoke test)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--small-preset", default="vit-28")
    parser.add_argument("--small-batch", type=int, default=128)
    parser.add_argument("--tiny-batch", type=int, default=4)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    repeats, warmup = (5, 1) if args.quick else (15, 2)

    rows = []
    cases = ((args.small_preset, args.small_batch), ("autoformer-tiny", args.tiny_batch))
    for preset, batch in cases:
        space = build_space("vit", preset)
        named = {
            "smallest": space.smallest(),
            "middle": middle_arch(space),
            "largest": space.largest(),
        }
        for label, arch in named.items():
            row = {"preset": preset, "subnet": label}
            row.update(compare(space, arch, batch, repeats, warmup))
            rows.append(row)
            print(f"{preset:16s} {label:8s} ratio {row['ratio']:.3f}", file=sys.stderr, flush=True)

    epochs = {
        preset: epoch_estimate(build_space("vit", preset), 128, max(repeats // 3, 3), warmup)
        for preset in ("vit-28", "vit-32")
    }
    result = {
        "benchmark": "supernet_step",
        "what": "median fwd+bwd time of a subnet in the supernet / on its extracted timm model",
        "goal_ratio": 1.05,
        "quick": args.quick,
        "threads": args.threads,
        "device": "cpu",
        "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "loadavg_1min_start_end": [round(load_start[0], 2), round(os.getloadavg()[0], 2)],
        "torch": torch.__version__,
        "timm": timm.__version__,
        "rows": rows,
        "epoch_estimate_largest_subnet": epochs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(rows))
    print()
    for preset, e in epochs.items():
        print(
            f"{preset}: largest subnet, batch {e['batch']} train step (AdamW) "
            f"{e['step_ms']:.1f} ms -> ~{e['epoch_s']:.0f} s per {EPOCH_IMAGES}-image epoch"
        )
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
