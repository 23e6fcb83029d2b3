"""Search strategies on the NAS-Bench-201 table, through the in-process runner.

Every strategy of ``search.strategy`` (random, evolution, tpe, nsga2, gp) searches the 15,625
NB201 cells over many seeds, each candidate scored by the table (``search.evaluator: table``,
PyPI ``analog-nasbench`` 0.1.3, CIFAR-10). Each run is what ``raynas search`` runs with
``search.runner: inprocess``: the searcher of :func:`orchestrator.search.searcher.build_searcher`
(sampler, constraints, dedup, archive written before the study is told), the loop of
:func:`orchestrator.search.inprocess.run_inprocess` and the stage's evaluation
(``eval_spec`` -> ``build_evaluator`` -> ``candidate_metrics``); only MLflow's per-candidate
logging is left out, and the study is in memory (``--storage sqlite``: a SQLite file) with
the archive in a temporary folder (tmpfs where there is one).

Protocol (a tabular benchmark's, stated in the JSON too). The table holds ONE number per
cell, ``baseline_accuracy``: CIFAR-10 test accuracy after 200 epochs, one seed; there is no
validation split. It plays ``val_top1`` for the search, and regret is measured on that same
number: regret = the table's optimum (94.0664) - the best value found so far. So these curves
compare search strategies on a fixed, known function; they say nothing about generalisation.
Queries = evaluated distinct candidates (a proposal already evaluated is answered from the
archive and not counted; ``seed_extremes`` is off so no strategy gets the two extreme cells for
free). Optuna's samplers are seeded from (seed, trials so far) alike, so random, TPE's and
GP's start-up trials and NSGA-II's first generation draw the same cells for one seed (common
random numbers: the strategies differ where they start to adapt). Every study optimises val top-1 alone (single objective), except ``nsga2-flops``, which
is the default config's study (val top-1 up, FLOPs down) judged on accuracy. ``random`` is
also given exactly (sampling without replacement: order statistics of the table), as a check
of the empirical curve.

Not run: CMA-ES (Optuna samples categorical parameters for it with its RandomSampler) and QMC
(a non-adaptive scrambled Sobol design; a one-off run gave random search's figures); ``gp``
runs a budget of 150, its proposals costing O(n^3) in the trials so far.

Also measured: candidates/s of the in-process runner (random and evolution, one seed,
budget 500, one process, after the curves; wall and CPU time) with the in-memory study and
with a SQLite file (where every Optuna call is a transaction).

Writes benchmarks/results/search_strategies.json and .png (regret curves, median and
interquartile band over seeds).

    PYTHONPATH=. python benchmarks/search_strategies.py [--seeds 20] [--budget 500] [--jobs 2]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "search_strategies.json"
# name -> (search section overrides, single objective?, budget cap or None)
STRATEGIES: dict[str, tuple[dict[str, Any], bool, int | None]] = {
    "random": ({"strategy": "random"}, True, None),
    "evolution": ({"strategy": "evolution"}, True, None),  # AutoFormer: 50 / top 10 / 25 + 25
    "evolution-p20": (
        {
            "strategy": "evolution",
            "evolution": {"population": 20, "parents": 5, "mutations": 10, "crossovers": 10},
        },
        True,
        None,
    ),
    "tpe": ({"strategy": "tpe"}, True, None),
    "nsga2": ({"strategy": "nsga2"}, True, None),  # population 50 (search.evolution.population)
    "nsga2-flops": ({"strategy": "nsga2"}, False, None),  # the default config's 2-objective study
    "gp": ({"strategy": "gp"}, True, 150),  # O(n^3) per proposal: a shorter budget
}
TOPS = {"top1%": 0.01, "top0.1%": 0.001}
CHECKPOINTS = (10, 30, 50, 100, 150, 300, 500)
PROTOCOL = (
    "tabular benchmark: the NB201 table (analog-nasbench 0.1.3, CIFAR-10 baseline_accuracy, one "
    "200-epoch test number per cell, no validation split) plays val_top1 for the search; regret "
    "is measured on the same number against the table's optimum. Queries = evaluated distinct "
    "candidates; seed_extremes off; single-objective studies (val_top1) except nsga2-flops."
)


def run_config(strategy: str, seed: int, budget: int) -> Any:
    """The raynas config of one run: stage search, NB201 cells, the table, runner inprocess."""
    from orchestrator.config import parse

    overrides, _, _ = STRATEGIES[strategy]
    search = {
        "evaluator": "table",
        "runner": "inprocess",
        "budget": budget,
        "seed_extremes": False,
        **overrides,
    }
    data = {
        "name": f"strategies-{strategy}-{seed}",
        "method": "it-nas",
        "run_dir": "unused",
        "seed": seed,
        "stages": ["search"],
        "data": {"name": "fashion_mnist", "download": False},  # never read: the table scores
        "space": {"preset": "nas-bench-201"},
        "search": search,
    }
    return parse(data, "benchmark")


def one_run(strategy: str, seed: int, budget: int, storage: str = "memory") -> dict[str, Any]:
    """One search; the evaluated values in query order and its timings."""
    import optuna

    from orchestrator.search.archive import Archive
    from orchestrator.search.inprocess import run_inprocess
    from orchestrator.search.latency import LatencyPlan
    from orchestrator.search.searcher import build_searcher
    from orchestrator.stages.search import eval_spec
    from search_spaces import build_space
    from trainables.evaluator import build_evaluator, candidate_metrics

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    config = run_config(strategy, seed, budget)
    search = config.search
    if STRATEGIES[strategy][1]:  # val top-1 alone (a config needs a cost objective: the front)
        search = search.model_copy(update={"objectives": []})
    space = build_space(**config.space_spec)
    spec = eval_spec(config, config.space_spec, None, None, LatencyPlan())
    evaluator = build_evaluator(spec)  # the table, read once per process
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(dir=shm if storage == "memory" else None) as tmp:
        if storage == "memory":
            study_storage: Any = optuna.storages.InMemoryStorage()
        else:
            study_storage = optuna.storages.RDBStorage(f"sqlite:///{tmp}/study.db")
        archive = Archive(Path(tmp) / "archive.parquet")
        searcher = build_searcher(
            search,
            space,
            config.seed,
            storage=study_storage,
            study_name=config.name,
            archive=archive,
        )
        wall, cpu = time.perf_counter(), time.process_time()
        evaluated = run_inprocess(
            searcher, lambda encoded: candidate_metrics(evaluator, encoded, spec), budget
        )
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        values = [float(r["val_top1"]) for r in archive.rows]  # trial order = query order
        asked = len(searcher.study.get_trials(deepcopy=False))
    return {
        "strategy": strategy,
        "seed": seed,
        "storage": storage,
        "evaluated": evaluated,
        "asked": asked,
        "duplicates": searcher.duplicates,
        "values": values,
        "wall_s": wall,
        "cpu_s": cpu,
    }


def _task(args: tuple[str, int, int]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)  # GPSampler's torch: one thread per worker process
    return one_run(*args)


# ---------------------------------------------------------------------------------- analysis
def table_facts() -> dict[str, Any]:
    from search_spaces.cell.table import load_nb201_table

    table = load_nb201_table()
    values = np.sort(np.array([v for _, v in table.items()]))[::-1]
    facts = {"cells": len(values), "optimum": float(values[0]), "metric": table.metric}
    for name, q in TOPS.items():
        k = math.ceil(q * len(values))  # the k-th best cell's value; ties count as reached
        threshold = float(values[k - 1])
        facts[name] = {"rank": k, "threshold": threshold, "cells": int((values >= threshold).sum())}
    facts["_values_desc"] = values
    return facts


def _log_comb(n: np.ndarray | int, k: np.ndarray | int) -> np.ndarray:
    """log C(n, k), -inf where k > n."""
    from scipy.special import gammaln

    n, k = np.asarray(n, dtype=float), np.asarray(k, dtype=float)
    with np.errstate(invalid="ignore"):
        out = gammaln(n + 1) - gammaln(k + 1) - gammaln(np.maximum(n - k, 0) + 1)
    return np.where(k <= n, out, -np.inf)


def random_exact(facts: dict[str, Any], budget: int) -> dict[str, Any]:
    """Uniform sampling without replacement (what random search with deduplication is): the
    median queries to each top set and the expected best value (and regret) after t queries,
    from order statistics of the table."""
    values = facts["_values_desc"]
    n = len(values)
    out: dict[str, Any] = {}
    t = np.arange(1, n + 1)
    for name in TOPS:
        k = facts[name]["cells"]
        miss = np.exp(_log_comb(n - k, t) - _log_comb(n, t))  # P(no hit in t draws)
        out[f"median_queries_{name}"] = int(t[np.argmax(miss <= 0.5)])
        out[f"p_reached_{name}_at_budget"] = float(1 - miss[budget - 1])
    ascending = values[::-1]
    i = np.arange(1, n + 1)
    best = []
    for q in range(1, budget + 1):
        cdf = np.exp(_log_comb(i, q) - _log_comb(n, q))  # P(best <= ascending[i - 1])
        pmf = np.diff(np.concatenate([[0.0], cdf]))
        best.append(float((pmf * ascending).sum()))
    out["expected_best"] = best
    out["expected_regret"] = [facts["optimum"] - v for v in best]
    return out


def first_reach(best: np.ndarray, threshold: float) -> int | None:
    hits = np.nonzero(best >= threshold)[0]
    return int(hits[0]) + 1 if len(hits) else None


def censored_median(hits: list[int | None], budget: int) -> dict[str, Any]:
    """Median over seeds of the first query reaching a set; seeds that never reach it count as
    beyond the budget, so the median is a number only when more than half reached it."""
    ranked = sorted(math.inf if h is None else h for h in hits)
    median = statistics.median(ranked)
    return {
        "median": None if math.isinf(median) else median,
        "median_text": f"> {budget}" if math.isinf(median) else f"{median:g}",
        "reached": sum(h is not None for h in hits),
        "seeds": len(hits),
    }


def summarise(runs: list[dict[str, Any]], facts: dict[str, Any]) -> dict[str, Any]:
    optimum = facts["optimum"]
    by: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        by.setdefault(run["strategy"], []).append(run)
    out: dict[str, Any] = {}
    for name in [n for n in STRATEGIES if n in by]:
        group = by[name]
        group.sort(key=lambda r: r["seed"])
        budget = min(len(r["values"]) for r in group)
        best = np.array([np.maximum.accumulate(r["values"][:budget]) for r in group])
        regret = optimum - best
        final = best[:, -1]
        entry: dict[str, Any] = {
            "budget": budget,
            "seeds": len(group),
            "final_mean": float(final.mean()),
            "final_std": float(final.std(ddof=1)) if len(final) > 1 else 0.0,
            "final_regret_median": float(np.median(regret[:, -1])),
            "found_optimum": int((final >= optimum).sum()),
            "best_at": {
                str(c): {
                    "mean": float(best[:, c - 1].mean()),
                    "std": float(best[:, c - 1].std(ddof=1)) if len(final) > 1 else 0.0,
                }
                for c in CHECKPOINTS
                if c <= budget
            },
            "regret_median": np.median(regret, axis=0).tolist(),
            "regret_q25": np.quantile(regret, 0.25, axis=0).tolist(),
            "regret_q75": np.quantile(regret, 0.75, axis=0).tolist(),
            "asked_per_evaluated": float(
                sum(r["asked"] for r in group) / sum(r["evaluated"] for r in group)
            ),
            "cpu_s_per_run_median": float(statistics.median(r["cpu_s"] for r in group)),
            "candidates_per_cpu_s_median": float(
                statistics.median(r["evaluated"] / r["cpu_s"] for r in group)
            ),
        }
        for top in TOPS:
            hits = [first_reach(row, facts[top]["threshold"]) for row in best]
            entry[f"queries_to_{top}"] = {**censored_median(hits, budget), "per_seed": hits}
        out[name] = entry
    return out


def goal(summary: dict[str, Any], exact: dict[str, Any]) -> dict[str, Any]:
    """Evolution reaches the top 0.1% with >= 3x fewer queries than random (median)."""
    evo = summary.get("evolution", {}).get("queries_to_top0.1%")
    rnd = summary.get("random", {}).get("queries_to_top0.1%")
    if not evo or not rnd:
        return {}
    result: dict[str, Any] = {"evolution": evo["median_text"], "random": rnd["median_text"]}
    exact_random = exact["median_queries_top0.1%"]
    result["random_exact"] = exact_random
    if evo["median"] is not None:
        result["ratio_vs_exact_random"] = exact_random / evo["median"]
        if rnd["median"] is not None:
            result["ratio"] = rnd["median"] / evo["median"]
        else:  # random's median is beyond the budget: the ratio is at least this
            result["ratio_at_least"] = summary["random"]["budget"] / evo["median"]
        ratio = result.get("ratio", result.get("ratio_at_least"))
        result["met"] = bool(ratio >= 3 and result["ratio_vs_exact_random"] >= 3)
    else:
        result["met"] = False
    return result


def plot(summary: dict[str, Any], exact: dict[str, Any], facts: dict[str, Any], path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.0, 5.0), dpi=120)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for color, (name, entry) in zip(colors, summary.items(), strict=False):
        x = np.arange(1, entry["budget"] + 1)
        floor = 1e-3  # regret 0 (the optimum found) drawn at the axis floor
        med = np.maximum(entry["regret_median"], floor)
        ax.plot(x, med, color=color, lw=1.6, label=f"{name} ({entry['seeds']} seeds)")
        ax.fill_between(
            x,
            np.maximum(entry["regret_q25"], floor),
            np.maximum(entry["regret_q75"], floor),
            color=color,
            alpha=0.15,
        )
    budget = max(e["budget"] for e in summary.values())
    ax.plot(
        np.arange(1, budget + 1),
        exact["expected_regret"][:budget],
        "k--",
        lw=1,
        label="random, exact expectation",
    )
    for top, style in (("top1%", ":"), ("top0.1%", "-.")):
        ax.axhline(facts["optimum"] - facts[top]["threshold"], color="0.4", ls=style, lw=0.9)
        ax.text(
            1.05,
            facts["optimum"] - facts[top]["threshold"],
            f" {top}",
            va="bottom",
            fontsize=8,
            color="0.3",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(8e-4, 30)
    ax.set_xlabel("queries (evaluated distinct cells)")
    ax.set_ylabel(f"regret (pp): {facts['optimum']:.4f} - best so far")
    ax.set_title("NAS-Bench-201 table (analog-nasbench, CIFAR-10): median and IQR over seeds")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def throughput(budget: int, sqlite_budget: int) -> list[dict[str, Any]]:
    """Candidates/s of the in-process runner, one process, memory vs SQLite study."""
    rows = []
    for strategy in ("random", "evolution"):
        for storage, n in (("memory", budget), ("sqlite", sqlite_budget)):
            run = one_run(strategy, 0, n, storage)
            rows.append(
                {
                    "strategy": strategy,
                    "storage": storage,
                    "budget": n,
                    "evaluated": run["evaluated"],
                    "wall_s": round(run["wall_s"], 2),
                    "cpu_s": round(run["cpu_s"], 2),
                    "per_wall_s": round(run["evaluated"] / run["wall_s"], 1),
                    "per_cpu_s": round(run["evaluated"] / run["cpu_s"], 1),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--budget", type=int, default=500)
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    parser.add_argument("--jobs", type=int, default=2, help="worker processes for the curves")
    parser.add_argument("--sqlite-budget", type=int, default=300)
    parser.add_argument("--no-throughput", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))

    started = time.time()
    facts = table_facts()
    tasks = [
        (name, seed, min(args.budget, STRATEGIES[name][2] or args.budget))
        for seed in range(args.seeds)
        for name in args.strategies
    ]
    tasks.sort(key=lambda t: -t[2] * (50 if t[0] == "gp" else 1))  # long ones first
    runs: list[dict[str, Any]] = []
    print(PROTOCOL, flush=True)
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for run in pool.map(_task, tasks):
            runs.append(run)
            best = max(run["values"])
            print(
                f"{run['strategy']:>13} seed {run['seed']:>2}: best {best:.4f} after "
                f"{run['evaluated']} ({run['asked']} asked), {run['cpu_s']:.1f} s CPU",
                flush=True,
            )
    curves_s = time.time() - started
    summary = summarise(runs, facts)
    exact = random_exact(facts, args.budget)
    rates = [] if args.no_throughput else throughput(args.budget, args.sqlite_budget)
    met = goal(summary, exact)
    facts_out = {k: v for k, v in facts.items() if not k.startswith("_")}
    result = {
        "protocol": PROTOCOL,
        "val_metric": f"table {facts['metric']} (CIFAR-10 test, one number per cell)",
        "regret_metric": f"the same table number: {facts['optimum']} - best so far",
        "table": facts_out,
        "seeds": args.seeds,
        "budget": args.budget,
        "jobs": args.jobs,
        "strategies": {
            n: {"search": STRATEGIES[n][0], "single_objective": STRATEGIES[n][1]}
            for n in args.strategies
        },
        "summary": summary,
        "random_exact": exact,
        "goal_evolution_3x_fewer_queries_to_top0.1%": met,
        "throughput": rates,
        "curves_wall_s": round(curves_s, 1),
        "total_wall_s": round(time.time() - started, 1),
        "load_average": os.getloadavg(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    plot(summary, exact, facts, args.out.with_suffix(".png"))

    print(f"\n{PROTOCOL}\n")
    header = "| strategy | budget | queries to top 1% (reached) | queries to top 0.1% (reached) "
    print(header + "| best at budget, mean +- std | optimum found |")
    print("|---|---|---|---|---|---|")
    for name, e in summary.items():
        t1, t01 = e["queries_to_top1%"], e["queries_to_top0.1%"]
        print(
            f"| {name} | {e['budget']} | {t1['median_text']} ({t1['reached']}/{t1['seeds']}) | "
            f"{t01['median_text']} ({t01['reached']}/{t01['seeds']}) | "
            f"{e['final_mean']:.3f} +- {e['final_std']:.3f} | {e['found_optimum']}/{e['seeds']} |"
        )
    print(
        f"| random, exact | - | {exact['median_queries_top1%']} | "
        f"{exact['median_queries_top0.1%']} | {exact['expected_best'][args.budget - 1]:.3f} | - |"
    )
    print(json.dumps({"goal": met, "throughput": rates}, indent=1))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
