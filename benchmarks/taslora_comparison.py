"""Plain supernet vs TAS-LoRA on the same random subnets (issue 6, item 8; docs/taslora.md).

For each finished run directory given as NAME=RUN_DIR this scores the SAME `--subnets` random
subnets of the space (seeded) on the run's val split with the weights its search used (plain
supernet, or MoLE experts mixed by the router), then reads what the run recorded: its Pareto
front and hypervolume (normalised to [0, 1] over val top-1 and FLOPs; reference point 0 % and
1.1 x the FLOPs of the space's largest subnet, the same for every run of the space:
`orchestrator.search.pareto`), the best exported test top-1, and the mean CKA / cosine of
`raynas analyze collapse` (run here when missing).

    python benchmarks/taslora_comparison.py plain=runs/exp-plain taslora=runs/exp-taslora \\
        [taslora-nogroup=runs/exp-taslora-nogroup] [plain-10ep=runs/exp-plain-10ep]

Writes benchmarks/results/taslora_comparison.json and prints a table. The first run is the
reference of the paired differences.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.analysis.collapse import analyze_collapse  # noqa: E402
from orchestrator.pipeline import config_for_resume  # noqa: E402
from orchestrator.search.archive import ARCHIVE_FILE, Archive  # noqa: E402
from orchestrator.search.pareto import hypervolume, pareto_front, space_reference  # noqa: E402
from orchestrator.stage import read_result  # noqa: E402
from orchestrator.stages.search import external_checkpoint  # noqa: E402
from search_spaces import build_space  # noqa: E402
from trainables.evaluator import EvalSpec, Evaluator  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "taslora_comparison.json"


def score_subnets(run_dir: str, archs: list) -> list[float]:
    config = config_for_resume(run_dir)
    trained = external_checkpoint(run_dir)  # the run's last training output (mole for TAS-LoRA)
    spec = EvalSpec(
        checkpoint=trained["checkpoint"],
        data=config.data,
        space=config.space_spec,
        batch_size=1000,
        adapter=trained.get("adapter"),
    )  # fmt: skip
    evaluator = Evaluator(spec)
    return [evaluator.score(arch)["val_top1"] for arch in archs]


def collapse(run_dir: str, subnets: int) -> dict:
    path = Path(run_dir) / "analysis" / "collapse" / "cka.json"
    if not path.exists():
        analyze_collapse(run_dir, subnets=subnets)
    data = json.loads(path.read_text())
    return {"mean_cka": data["mean_cka"], "mean_cosine": data["mean_cosine"]}


def plot_fronts(fronts: dict[str, list[dict]], path: Path) -> None:
    """Every run's Pareto front (val top-1 vs MFLOPs) in one figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    for name, front in fronts.items():
        front = sorted(front, key=lambda r: r["flops"])
        ax.plot([r["flops"] / 1e6 for r in front], [r["val_top1"] for r in front], "o-", ms=4,
                label=name)  # fmt: skip
    ax.set_xlabel("MFLOPs (multiply-accumulates)")
    ax.set_ylabel("val top-1 (%)")
    ax.set_title("Pareto fronts found by each run's search")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="NAME=RUN_DIR of finished runs")
    parser.add_argument("--subnets", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--collapse-subnets", type=int, default=8)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "taslora_fronts.png")
    args = parser.parse_args()
    torch.set_num_threads(2)
    runs = dict(item.split("=", 1) for item in args.runs)

    first = config_for_resume(next(iter(runs.values())))
    space = build_space(first.family, first.space.preset, dict(first.space.overrides))
    rng = random.Random(f"taslora-comparison:{args.seed}")
    archs = []
    while len(archs) < args.subnets:  # distinct subnets
        arch = space.sample(rng)
        if arch not in archs:
            archs.append(arch)

    reference, rules = space_reference(space, ["flops"])  # fixed by the space: every run alike
    report: dict = {
        "subnets": args.subnets,
        "seed": args.seed,
        "hypervolume_reference": reference,
        "hypervolume_rule": rules,
        "runs": {},
    }
    scores: dict[str, list[float]] = {}
    fronts = {}
    for name, run_dir in runs.items():
        started = time.perf_counter()
        scores[name] = score_subnets(run_dir, archs)
        config = config_for_resume(run_dir)
        adapter = external_checkpoint(run_dir).get("adapter")  # None: a plain supernet
        rows = Archive.load(Path(run_dir) / ARCHIVE_FILE).rows
        fronts[name] = pareto_front(rows, ["flops"])
        summary = read_result(run_dir, "export") or {"models": []}
        report["runs"][name] = {
            "run_dir": str(Path(run_dir).resolve()),
            "method": config.method,
            "mole": adapter,
            "group_init": config.mole.group_init if adapter else None,
            "supernet_epochs": config.supernet.epochs,
            "mole_epochs": config.mole.epochs if adapter else 0,
            "val_top1_mean": statistics.mean(scores[name]),
            "val_top1_std": statistics.stdev(scores[name]),
            "val_top1_min": min(scores[name]),
            "val_top1_max": max(scores[name]),
            "front": [
                {"arch_id": r["arch_id"], "flops": r["flops"], "val_top1": r["val_top1"]}
                for r in fronts[name]
            ],
            "best_test_top1": max((m["test_top1"] for m in summary["models"]), default=None),
            **collapse(run_dir, args.collapse_subnets),
            "seconds": time.perf_counter() - started,
        }
    names = list(runs)
    for name in names:
        entry = report["runs"][name]
        entry["hypervolume"] = hypervolume(fronts[name], ["flops"], reference)
        diffs = [b - a for a, b in zip(scores[names[0]], scores[name], strict=True)]
        entry["paired_diff_vs_" + names[0]] = {
            "mean": statistics.mean(diffs),
            "std": statistics.stdev(diffs),
            "wins": sum(d > 0 for d in diffs),
            "losses": sum(d < 0 for d in diffs),
        }
    plot_fronts(fronts, args.plot)
    report["scores"] = scores
    report["archs"] = [space.to_json(a) for a in archs]
    report["environment"] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "machine": platform.machine(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))

    print(f"{args.subnets} random subnets, same for every run; reference: {names[0]}")
    header = f"{'run':<18}{'val mean':>9}{'std':>6}{'min':>7}{'max':>7}{'diff':>7}{'W/L':>7}"
    header += f"{'HV':>8}{'front':>6}{'best test':>10}{'CKA':>7}{'cos':>7}"
    print(header)
    for name in names:
        e = report["runs"][name]
        d = e["paired_diff_vs_" + names[0]]
        best = f"{e['best_test_top1']:.2f}" if e["best_test_top1"] is not None else "-"
        print(
            f"{name:<18}{e['val_top1_mean']:9.2f}{e['val_top1_std']:6.2f}{e['val_top1_min']:7.2f}"
            f"{e['val_top1_max']:7.2f}{d['mean']:+7.2f}{d['wins']:>3}/{d['losses']:<3}"
            f"{e['hypervolume']:8.4f}{len(e['front']):6}{best:>10}"
            f"{e['mean_cka']:7.3f}{e['mean_cosine'] if e['mean_cosine'] is None else round(e['mean_cosine'], 3)!s:>7}"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
