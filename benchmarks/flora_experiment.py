"""The FLORA experiment of docs/flora.md: FLORA's front against uniform rank ratios.

Runs (each a whole ``raynas run`` process in its own run directory under ``runs/flora-exp/``, so
a killed experiment resumes: finished stages are skipped by raynas):

* ``main``: ``configs/quickstart-flora.yaml`` with the ratio list {1/8, ..., 7/8, 1} (so
  uniform ratios reach cuts of about 30/45/60% of the dense MACs), the dense model trained by
  its pretrain stage, and an NSGA-II search (accuracy vs MACs, up to 75% of the dense MACs);
* ablations on the same dense model (``pretrain.export`` = main's ``pretrain/dense``):
  ``no-filter`` (stages without filter), ``uniform-sampling``, ``no-distill``;
* ``autoformer``: FLORA on the best-val export of the AutoFormer quickstart
  (``runs/quickstart``, run first when missing).

Then, in this process: uniform archs (the same ratio in every layer) scored (i) on each run's
trained low-rank supernet and (ii) as plain truncated SVD of the dense model (no training), on
val and on test; FLORA's pick at each uniform arch's cut is the exported front model with the
best VAL top-1 among those no more expensive (test is read only to report). Writes
``benchmarks/results/flora_experiment.json``.

    python benchmarks/flora_experiment.py            # all runs
    python benchmarks/flora_experiment.py --only main
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "configs" / "quickstart-flora.yaml"
EXP = ROOT / "runs" / "flora-exp"
RESULT = ROOT / "benchmarks" / "results" / "flora_experiment.json"
RATIOS = [0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0]
UNIFORM = [0.25, 0.375, 0.5, 0.625]


def config_for(name: str, dense: Path | None, **changes: Any) -> Path:
    data = yaml.safe_load(BASE.read_text())
    data["name"], data["run_dir"] = f"flora-exp-{name}", str(EXP / name)
    data["space"]["overrides"]["rank_ratios"] = RATIOS
    data["pretrain"]["epochs"] = 10
    data["filter"].update({"steps": 200, "max_images": 1000})
    data["supernet"]["epochs"] = 4
    data["search"] = {
        "strategy": "nsga2",
        "objectives": ["flops"],
        "budget": 300,
        "evolution": {"population": 50},
        "constraints": {"flops": {"max": 0.75 * 3_541_120}},  # 75% of the dense MACs
        "resources": {"workers": 2, "cpus_per_worker": 1},
    }
    data["export"] = {"max_models": 24}
    if dense is not None:
        data["pretrain"] = {"export": str(dense)}
    for dotted, value in changes.items():
        node = data
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    path = EXP / "configs" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def raynas_run(config: Path) -> float:
    log = config.with_suffix(".log")
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


def read(run_dir: Path, stage: str) -> dict[str, Any]:
    return json.loads((run_dir / stage / "result.json").read_text())


def score(model, dataset, device) -> float:
    from trainables.supernets import Standalone
    from trainables.train.loop import evaluate

    correct, _ = evaluate(
        Standalone(model).to(device).eval(),
        None,
        dataset,
        list(range(len(dataset))),
        500,
        device,
        None,
    )
    return 100.0 * correct / len(dataset)


def analyse(name: str, run_dir: Path, seconds: float | None) -> dict[str, Any]:
    """Uniform archs on the trained supernet and as plain truncated SVD; FLORA's front."""
    import torch

    from orchestrator.config import load_config
    from search_spaces import build_space
    from search_spaces.lowrank import LowRankArch
    from trainables.data import load_splits
    from trainables.supernets import dense_state, load_supernet

    config = load_config(run_dir / "config.yaml")
    pre, exported = read(run_dir, "pretrain"), read(run_dir, "export")
    trained = read(run_dir, "supernet")
    spec = pre["space"]  # the dense model's space, unrestricted
    space = build_space(**spec)
    splits = load_splits(config.data, ("val", "test"), purpose="flora-experiment")
    device = torch.device("cpu")
    supernet = load_supernet(space, run_dir / trained["checkpoint"]).eval()
    svd = space.build_supernet().eval()
    svd.inherit(dense_state(run_dir / pre["dense"]))
    reference = exported["reference"]
    uniform = []
    width = len(space.config.layers)
    for r in UNIFORM:
        if r not in space.config.rank_ratios:
            continue
        arch = LowRankArch(((r,) * width,) * space.config.depth)
        flops = space.cost(arch)["flops"]
        row = {"ratio": r, "flops": flops, "cut": 1 - flops / reference["flops"]}
        for kind, net in (("supernet", supernet), ("svd", svd)):
            model = net.extract(arch)
            row[f"{kind}_val"] = score(model, splits.val, device)
            row[f"{kind}_test"] = score(model, splits.test, device)
        cheaper = [m for m in exported["models"] if m["flops"] <= flops]
        if cheaper:
            pick = max(cheaper, key=lambda m: m["val_top1"])
            row["flora"] = {
                k: pick[k] for k in ("arch_id", "flops", "val_top1", "test_top1", "text")
            }
            row["flora"]["cut"] = 1 - pick["flops"] / reference["flops"]
        uniform.append(row)
    budget = 0.6 * reference["flops"]  # >= 40% cut, picked by val
    under = [m for m in exported["models"] if m["flops"] <= budget]
    pick40 = max(under, key=lambda m: m["val_top1"]) if under else None
    return {
        "name": name,
        "run_dir": str(run_dir.relative_to(ROOT)),
        "seconds": seconds,
        "dense": reference,
        "front": [
            {k: m[k] for k in ("arch_id", "flops", "params", "val_top1", "test_top1", "text")}
            | {"cut": 1 - m["flops"] / reference["flops"]}
            for m in sorted(exported["models"], key=lambda m: m["flops"])
        ],
        "pick_at_40pct_cut": pick40,
        "uniform": uniform,
        "filter": read(run_dir, "filter")["blocks"] if (run_dir / "filter").exists() else None,
        "supernet_history": trained["history"],
    }


def autoformer_export() -> Path:
    run = ROOT / "runs" / "quickstart"
    if not (run / "export" / "result.json").exists():
        raynas_run(ROOT / "configs" / "quickstart.yaml")
    best = read(run, "export")["best_val"]
    return run / "export" / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None)
    args = parser.parse_args()
    wanted = args.only or ["main", "no-filter", "uniform-sampling", "no-distill", "autoformer"]
    results = json.loads(RESULT.read_text()) if RESULT.exists() else {"runs": {}}
    dense = EXP / "main" / "pretrain" / "dense"
    plans = {
        "main": lambda: config_for("main", None),
        "no-filter": lambda: config_for(
            "no-filter", dense, stages=["pretrain", "supernet", "search", "export", "report"]
        ),
        "uniform-sampling": lambda: config_for(
            "uniform-sampling", dense, **{"space.overrides.sampling": "uniform"}
        ),
        "no-distill": lambda: config_for(
            "no-distill", dense, **{"supernet.distill": {"weight": 0.0}}
        ),
        "autoformer": lambda: config_for(
            "autoformer",
            autoformer_export(),
            **{"search.constraints": {}},  # another dense model: no absolute MACs cap
        ),
    }
    for name in wanted:
        config = plans[name]()
        seconds = raynas_run(config)
        results["runs"][name] = analyse(name, EXP / name, seconds)
        RESULT.parent.mkdir(parents=True, exist_ok=True)
        RESULT.write_text(json.dumps(results, indent=1))
        print(
            json.dumps(
                {k: v for k, v in results["runs"][name].items() if k != "supernet_history"},
                indent=1,
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
