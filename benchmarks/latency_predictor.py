"""How well the per-target latency model predicts measured latency on held-out subnets.

For each (space, batch): ``--subnets`` distinct seeded subnets (the search's own calibration
sampler) are extracted and timed on this machine at ``--threads`` threads (the target here: one
CPU), the model is fitted on the first ``--fit`` and scored on the rest. Two references are
timed in the same run:

* ``noise``: the held-out subnets timed a second time, scored against the first timing. No
  model can agree with a measurement better than the measurement agrees with itself.
* ``flops_only``: the same fit with the whole network as one kernel sized by its MACs (the
  family-neutral default of ``SearchSpace.latency_units``): what the per-kernel split buys.

Goal (issue 13): MAPE <= 10%, Kendall tau >= 0.9 on 50 held-out subnets.

    .venv/bin/python benchmarks/latency_predictor.py            # writes results/latency_predictor.json
    .venv/bin/python benchmarks/latency_predictor.py --spaces vit:vit-28 --subnets 60 --fit 40
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from orchestrator.search.latency import calibration_archs
from search_spaces import build_space
from trainables.latency_model import LatencyPredictor, error_report, measure_ms

DEFAULT_SPACES = ("vit:vit-28", "vit:vit-32", "lowrank:vit-28", "cell:nb201-28")


def measure(space, supernet, archs, batch: int, repeats: int) -> list[float]:
    return [
        measure_ms(supernet.extract(a).eval(), space.input_shape, batch=batch, repeats=repeats)
        for a in archs
    ]


def scored(units: list, ms: list[float], fit: int) -> dict:
    model = LatencyPredictor.fit(units[:fit], ms[:fit])
    report = error_report(model.predict_many(units[fit:]), ms[fit:])
    report["fit_mape"] = model.fit_mape
    report["kinds"] = list(model.kinds)
    return report


def one(family: str, preset: str, batch: int, args: argparse.Namespace) -> dict:
    space = build_space(family, preset, {})
    torch.manual_seed(0)
    supernet = space.build_supernet().eval()
    archs = calibration_archs(space, args.subnets, args.seed)
    started = time.perf_counter()
    ms = measure(space, supernet, archs, batch, args.repeats)
    again = measure(space, supernet, archs[args.fit :], batch, args.repeats)
    seconds = time.perf_counter() - started
    units = [space.latency_units(a) for a in archs]
    flops = [[("network", float(space.cost(a)["flops"]))] for a in archs]
    row = {
        "space": f"{family}:{preset}",
        "batch": batch,
        "subnets": len(archs),
        "fit_on": args.fit,
        "ms_min": min(ms),
        "ms_max": max(ms),
        "per_kernel": scored(units, ms, args.fit),
        "flops_only": scored(flops, ms, args.fit),
        "noise": error_report(again, ms[args.fit :]),
        "measure_seconds": round(seconds, 1),
    }
    pk, fo, nz = row["per_kernel"], row["flops_only"], row["noise"]
    print(
        f"{row['space']:16s} batch {batch:3d}  {min(ms):7.2f}-{max(ms):7.2f} ms  "
        f"per-kernel MAPE {pk['mape']:5.1f}% tau {pk['kendall_tau']:.3f}  |  "
        f"FLOPs-only {fo['mape']:5.1f}% {fo['kendall_tau']:.3f}  |  "
        f"re-measure {nz['mape']:5.1f}% {nz['kendall_tau']:.3f}",
        flush=True,
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spaces", nargs="+", default=list(DEFAULT_SPACES), help="family:preset")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--subnets", type=int, default=150)
    parser.add_argument("--fit", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "latency_predictor.json"
    )
    args = parser.parse_args()
    if not 2 <= args.fit < args.subnets:
        parser.error(f"--fit {args.fit} with --subnets {args.subnets}; allowed: 2 <= fit < subnets")
    torch.set_num_threads(args.threads)
    rows = []
    for item in args.spaces:
        family, _, preset = item.partition(":")
        for batch in args.batches:
            rows.append(one(family, preset, batch, args))
    result = {
        "benchmark": "latency_predictor",
        "goal": {"mape_pct_max": 10.0, "kendall_tau_min": 0.9},
        "threads": args.threads,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
