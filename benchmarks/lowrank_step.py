"""What do FLORA's low-rank supernet and its filter stage cost? Two measurements.

1. **supernet(x, arch) step / extracted model step** for the smallest, a middle and the largest
   (dense) arch of the quickstart's low-rank space: one step (forward + cross-entropy +
   backward + AdamW) of the arch inside the supernet, against the exported timm model
   ``extract(arch)`` returns (two Linear layers where factored, one fused where not). Goal
   <= 1.10. The variants run interleaved in a rotating order (``benchmarks/timing.py``); the
   ratio of medians is reported, with the ratio of the fastest repeats as a cross-check.
2. **filter stage wall time with 1 and 2 workers**: ``raynas run`` of stages pretrain (from a
   checkpoint file the script writes) -> filter, with ``filter.resources.workers`` 1 and 2, on
   the quickstart's dense shape; the stage's own wall time is read from the run's log.

    python benchmarks/lowrank_step.py            # writes benchmarks/results/lowrank_step.json
    python benchmarks/lowrank_step.py --quick    # a few repeats, a smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.timing import interleaved, middle_arch  # noqa: E402
from search_spaces import build_space  # noqa: E402

QUICKSTART = ROOT / "configs" / "quickstart-flora.yaml"


def step_fn(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, call):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
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


def filter_wall(workers: int, steps: int, folder: Path) -> float:
    """Wall seconds of the filter stage with ``workers`` local supernets at a time."""
    from safetensors.torch import save_file

    from search_spaces import build_from_spec

    base = yaml.safe_load(QUICKSTART.read_text())
    space = build_space("lowrank", base["space"]["preset"], base["space"]["overrides"])
    dense = folder / "dense.safetensors"
    if not dense.exists():
        torch.manual_seed(0)
        save_file(build_from_spec(space.dense_spec()).state_dict(), dense)
    c = space.config
    data = {
        **base,
        "name": f"lowrank-filter-{workers}",
        "run_dir": str(folder / f"workers{workers}"),
        "stages": ["pretrain", "filter"],
        "pretrain": {
            "checkpoint": str(dense),
            "timm_kwargs": {
                "img_size": c.img_size,
                "patch_size": c.patch_size,
                "in_chans": c.in_chans,
                "num_classes": c.num_classes,
                "embed_dim": c.embed_dim,
                "depth": c.depth,
                "num_heads": c.num_heads[0],
                "mlp_ratio": c.mlp_ratio[0],
            },
        },  # fmt: skip
        "filter": {
            **base["filter"],
            "steps": steps,
            "resources": {"workers": workers, "cpus_per_worker": 1},
        },
    }
    config = folder / f"workers{workers}.yaml"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "run", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"raynas run {config} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    found = re.search(r"== filter done in (\d+(?:\.\d+)?) s ==", done.stdout + done.stderr)
    if not found:
        raise SystemExit(f"no filter timing in the output of {config}")
    return float(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "lowrank_step.json"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats, warmup = (4, 1) if args.quick else (30, 5)
    base = yaml.safe_load(QUICKSTART.read_text())
    space = build_space("lowrank", base["space"]["preset"], base["space"]["overrides"])
    torch.manual_seed(0)
    x = torch.randn(args.batch, *space.input_shape)
    y = torch.randint(0, space.num_classes, (args.batch,))
    result = {
        "space": base["space"],
        "batch": args.batch,
        "threads": args.threads,
        "repeats": repeats,
        "torch": torch.__version__,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus",
        "supernet_vs_extracted": {},
    }
    archs = {
        "smallest": space.smallest(),
        "middle": middle_arch(space),
        "largest": space.largest(),
    }
    for name, arch in archs.items():
        supernet = space.build_supernet()
        model = supernet.extract(arch)
        times = interleaved(
            {
                "supernet": step_fn(supernet, x, y, lambda b, a=arch, n=supernet: n(b, a)),
                "extracted": step_fn(model, x, y, model),
            },
            repeats,
            warmup,
        )
        entry = {
            "arch": space.describe(arch),
            "flops": space.cost(arch)["flops"],
            **ratio(times, "supernet", "extracted"),
        }
        result["supernet_vs_extracted"][name] = entry
        print(
            f"{name:8s} supernet(x, arch) {entry['supernet_median_s'] * 1e3:.1f} ms / extracted "
            f"{entry['extracted_median_s'] * 1e3:.1f} ms = {entry['ratio_median']:.3f} "
            "(goal <= 1.10)",
            flush=True,
        )
    steps = 20 if args.quick else base["filter"]["steps"]
    with tempfile.TemporaryDirectory(prefix="lowrank-filter-") as tmp:
        walls = {w: filter_wall(w, steps, Path(tmp)) for w in (1, 2)}
    result["filter_stage"] = {
        "steps": steps,
        "blocks": space.config.depth,
        "seconds_1_worker": walls[1],
        "seconds_2_workers": walls[2],
        "speedup": walls[1] / walls[2],
    }
    print(
        f"filter stage ({space.config.depth} blocks, {steps} steps each): 1 worker {walls[1]:.0f} s, "
        f"2 workers {walls[2]:.0f} s, speed-up {walls[1] / walls[2]:.2f}",
        flush=True,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
