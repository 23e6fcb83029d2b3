"""What does a cell supernet's training step cost? Two ratios, each measured side by side.

1. **IT mixed step / DARTS mixed step**: the mixed supernet (every op on every edge) with the
   IT-NAS selector (pooled op tokens, an Indicator Token, a small transformer) against the same
   network with DARTS's softmax over alphas, same cell space, batch and threads. Goal <= 1.3.
2. **supernet(x, arch) step / extracted network step**: one discrete cell trained inside the
   supernet (what the `retrain` stage does) against the standalone network ``extract`` returns.
   Goal <= 1.05. Done for the smallest, a middle and the largest cell.

A step is forward + cross-entropy + backward + an SGD step. The variants of each comparison
run interleaved in a rotating order (``benchmarks/timing.py``), so drifting load falls on all
alike; the ratio of medians is reported, with the ratio of the fastest repeats as a cross-check.

    python benchmarks/cell_supernet_step.py            # writes benchmarks/results/cell_supernet_step.json
    python benchmarks/cell_supernet_step.py --quick    # a few repeats, a smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import interleaved, middle_arch  # noqa: E402
from search_spaces import build_space  # noqa: E402


def step_fn(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, call):
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    model.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(call(x), y).backward()
        optimizer.step()

    return step


def ratio(times: dict[str, list[float]], a: str, b: str) -> dict[str, float]:
    return {
        f"{a}_median_s": statistics.median(times[a]),
        f"{b}_median_s": statistics.median(times[b]),
        "ratio_median": statistics.median(times[a]) / statistics.median(times[b]),
        "ratio_fastest": min(times[a]) / min(times[b]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="nb201-28")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "results" / "cell_supernet_step.json",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats, warmup = (4, 1) if args.quick else (20, 3)
    torch.manual_seed(0)

    it_space = build_space("cell", args.preset, {"selector": "it"})
    darts_space = build_space("cell", args.preset, {"selector": "darts"})
    x = torch.randn(args.batch, *it_space.input_shape)
    y = torch.randint(0, it_space.num_classes, (args.batch,))

    it_net, darts_net = it_space.build_supernet(), darts_space.build_supernet()
    mixed = interleaved(
        {
            "it": step_fn(it_net, x, y, lambda b: it_net(b, None)),
            "darts": step_fn(darts_net, x, y, lambda b: darts_net(b, None)),
        },
        repeats,
        warmup,
    )
    result = {
        "preset": args.preset,
        "batch": args.batch,
        "threads": args.threads,
        "repeats": repeats,
        "torch": torch.__version__,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus",
        "mixed_it_vs_darts": ratio(mixed, "it", "darts"),
        "discrete_vs_extracted": {},
    }
    print(
        f"mixed step: IT {result['mixed_it_vs_darts']['it_median_s'] * 1e3:.0f} ms / DARTS "
        f"{result['mixed_it_vs_darts']['darts_median_s'] * 1e3:.0f} ms = "
        f"{result['mixed_it_vs_darts']['ratio_median']:.3f} (goal <= 1.3)",
        flush=True,
    )
    cells = {
        "smallest": it_space.smallest(),
        "middle": middle_arch(it_space),
        "largest": it_space.largest(),
    }
    for name, arch in cells.items():
        supernet = it_space.build_supernet()
        model = supernet.extract(arch)
        times = interleaved(
            {
                "supernet": step_fn(supernet, x, y, lambda b, a=arch, n=supernet: n(b, a)),
                "extracted": step_fn(model, x, y, model),
            },
            repeats,
            warmup,
        )
        entry = {"cell": it_space.describe(arch), **ratio(times, "supernet", "extracted")}
        result["discrete_vs_extracted"][name] = entry
        print(
            f"{name:8s} supernet(x, arch) {entry['supernet_median_s'] * 1e3:.0f} ms / extracted "
            f"{entry['extracted_median_s'] * 1e3:.0f} ms = {entry['ratio_median']:.3f} "
            "(goal <= 1.05)",
            flush=True,
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
