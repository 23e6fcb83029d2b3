"""The IT-NAS experiment of docs/itnas.md: selectors compared on the small NB201 preset.

For each seed and each variant (IT bi-level, IT single-level, DARTS bi-level) this runs
``raynas run`` on ``configs/quickstart-itnas.yaml`` (supernet -> select -> retrain -> export),
then retrains, with the same recipe, ``--random`` uniformly drawn cells and the NB201 table's
best cell (``retrain.arch``, stages retrain -> export). Every run is a whole ``raynas`` process
in its own run directory, so a killed experiment resumes: finished runs are skipped by raynas.

Reads per run: ``select/result.json`` (cell, importances, table accuracy and percentile),
``export/result.json`` (retrained Fashion-MNIST test top-1, measured once) and the wall time.
Writes ``benchmarks/results/itnas_experiment.json``.

    python benchmarks/itnas_experiment.py --seeds 0 1 2 --random 5
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "configs" / "quickstart-itnas.yaml"
VARIANTS = {
    "it-bilevel": {"selector": "it", "mode": "bilevel"},
    "it-single": {"selector": "it", "mode": "single"},
    "darts-bilevel": {"selector": "darts", "mode": "bilevel"},
}
PARAM_FREE = {"none", "skip_connect", "avg_pool_3x3"}


def write_config(path: Path, name: str, run_dir: Path, **changes: Any) -> Path:
    data = yaml.safe_load(BASE.read_text())
    data["name"], data["run_dir"] = name, str(run_dir)
    for dotted, value in changes.items():
        node = data
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def raynas_run(config: Path, log: Path) -> float:
    started = time.time()
    with open(log, "a") as handle:
        done = subprocess.run(
            [sys.executable, "-m", "orchestrator.cli", "run", str(config)],
            cwd=ROOT,
            stdout=handle,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if done.returncode != 0:
        raise SystemExit(f"raynas run {config} failed (exit {done.returncode}); see {log}")
    return time.time() - started


def read(run_dir: Path, stage: str) -> dict[str, Any] | None:
    path = run_dir / stage / "result.json"
    return json.loads(path.read_text()) if path.exists() else None


def param_free(text: str) -> bool:
    ops = [part.split("~")[0] for part in text.replace("+", "").split("|") if part]
    return all(op in PARAM_FREE for op in ops)


def record(kind: str, run_dir: Path, seconds: float, seed: int | None) -> dict[str, Any]:
    from search_spaces import build_space
    from search_spaces.cell.table import load_nb201_table

    selection, exported = read(run_dir, "select"), read(run_dir, "export")
    retrained = read(run_dir, "retrain")
    space = build_space("cell", "nb201-28")
    table = load_nb201_table()
    arch = space.from_json(json.dumps(retrained["arch"]))
    model = exported["models"][0]
    row = {
        "kind": kind,
        "seed": seed,
        "cell": space.describe(arch),
        "param_free": param_free(space.describe(arch)),
        "table_accuracy": table.accuracy(arch),
        "table_percentile": table.percentile(arch),
        "table_rank": table.rank(arch),
        "retrained_val_top1": model["val_top1"],
        "retrained_test_top1": model["test_top1"],
        "params": model["params"],
        "flops": model["flops"],
        "wall_seconds": seconds,
        "run_dir": str(run_dir),
    }
    if selection is not None:
        row["importances"] = selection["scores"]
        row["heatmap"] = str(run_dir / selection["heatmap"])
        row["supernet_seconds"] = read(run_dir, "supernet")["seconds"]
    return row


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def stats(values: list[float]) -> dict[str, float]:
        return {
            "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        }

    out: dict[str, Any] = {}
    for kind in dict.fromkeys(r["kind"] for r in rows):
        group = [r for r in rows if r["kind"] == kind]
        out[kind] = {
            "n": len(group),
            "table_accuracy": stats([r["table_accuracy"] for r in group]),
            "table_percentile": stats([r["table_percentile"] for r in group]),
            "retrained_test_top1": stats([r["retrained_test_top1"] for r in group]),
            "in_table_top5pct": sum(r["table_percentile"] >= 95.0 for r in group),
            "param_free": sum(r["param_free"] for r in group),
            "wall_seconds": stats([r["wall_seconds"] for r in group]),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--random", type=int, default=5, help="random cells retrained")
    parser.add_argument("--root", type=Path, default=ROOT / "runs" / "itnas-exp")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "itnas_experiment.json"
    )
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from search_spaces import build_space
    from search_spaces.cell.table import load_nb201_table

    root = args.root.resolve()
    log = root / "experiment.log"
    root.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for seed in args.seeds:
        for variant in args.variants:
            v = VARIANTS[variant]
            name = f"itnas-{variant}-s{seed}"
            config = write_config(
                root / "configs" / f"{name}.yaml",
                name,
                root / name,
                seed=seed,
                **{"space.overrides.selector": v["selector"], "supernet.selector.mode": v["mode"]},
            )
            seconds = raynas_run(config, log)
            rows.append(record(variant, root / name, seconds, seed))
            print(json.dumps({k: rows[-1][k] for k in ("kind", "seed", "cell", "table_accuracy",
                  "table_percentile", "retrained_test_top1", "wall_seconds")}), flush=True)  # fmt: skip
    space = build_space("cell", "nb201-28")
    rng = random.Random("itnas-experiment-random-cells")
    baselines = [(f"random{i}", space.sample(rng)) for i in range(args.random)]
    baselines.append(("table-best", space.parse(_best_cell(load_nb201_table()))))
    for label, arch in baselines:
        name = f"itnas-{label}"
        config = write_config(
            root / "configs" / f"{name}.yaml",
            name,
            root / name,
            stages=["retrain", "export", "report"],
            **{"retrain.arch": space.describe(arch)},
        )
        seconds = raynas_run(config, log)
        rows.append(record("random" if label.startswith("random") else label, root / name,
                           seconds, None))  # fmt: skip
        print(json.dumps({k: rows[-1][k] for k in ("kind", "cell", "table_accuracy",
              "retrained_test_top1", "wall_seconds")}), flush=True)  # fmt: skip
    result = {"base_config": str(BASE.relative_to(ROOT)), "rows": rows, "summary": summary(rows)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["summary"], indent=2))


def _best_cell(table: Any) -> str:
    from search_spaces.cell.arch import NB201Arch, to_nb201_string

    ((ops, _),) = table.best(1)
    return to_nb201_string(NB201Arch(ops=tuple(ops)))


if __name__ == "__main__":
    main()
