"""Search-stage orchestration efficiency: the same N candidates in a plain loop vs Ray Tune + Optuna.

The quickstart's space (vit-28, patch 7) with a freshly initialised supernet (accuracy is
irrelevant here) scores N distinct candidates, drawn with a seeded RNG, on Fashion-MNIST's
5000-image val split (0.6 s each on one idle core, about a second on a busy machine):
  (a) in this process: one `Evaluator` built once (timed separately), `torch.set_num_threads(1)`,
      `measure(arch)` for each arch in turn;
  (b) through `run_search_stage` (Ray Tune `Tuner` + `ArchSearch` + Optuna SQLite study + archive
      + MLflow), with search.resources.workers = 1 and = 2 (1 CPU each). The N archs are enqueued
      in a pre-created study and search.budget = N, so the stage evaluates exactly those (checked
      against the archive). Every measurement gets a fresh run directory.
Ray is started once, before any timing (as `raynas` does for a local cluster, 2 CPUs).
Rounds are interleaved (a, b1, b2, a, b1, b2, ...); the medians over rounds give

    efficiency(w) = (a) seconds / ((b) seconds x w)         goal: >= 0.85 with 1 worker
    speed-up      = (b, 1 worker) seconds / (b, 2 workers) seconds

for (b) = the stage's own search time (`result["seconds"]`: Tuner.fit + Pareto front/plot),
(b) = the whole `run_search_stage` call (adds the MLflow store, study setup, artifact logging)
and (b) = first evaluation start to last evaluation end (the steady state: without the workers'
start-up). Also recorded: the workers' start-up, the gaps between one worker's consecutive
evaluations, the driver-side costs per candidate (Optuna ask/tell/user attrs, archive rewrite,
MLflow log_batch; timed by patching those methods) and, as a noise indicator, the CPU that
processes outside this benchmark used during each measurement (it waits for a quiet machine:
no other Ray cluster or pytest, under 0.25 cores of other load). An untimed 2-candidate stage
run first takes the driver's one-off imports (MLflow, matplotlib) out of round 1.
Writes benchmarks/results/search_throughput.json (or --out).

    python benchmarks/search_throughput.py [--n 40] [--rounds 3] [--quick] [--out PATH]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import random
import re
import shutil
import statistics
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).parent / "results" / "search_throughput.json"
SPACE = {"family": "vit", "preset": "vit-28", "overrides": {"patch_size": 7}}
DATA = {"name": "fashion_mnist", "download": False, "val_size": 5000, "split_seed": 0}
SEED = 0


BUSY = re.compile(r"raylet|gcs_server|RayTrainWorker|pytest")


def load() -> float:
    return round(os.getloadavg()[0], 2)


def processes() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, CPU ticks incl. reaped children, command line) of every process."""
    table = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        ticks = sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
        table[int(proc.name)] = (int(fields[1]), ticks, command)
    return table


def ours(pid: int, table: dict[int, tuple[int, int, str]]) -> bool:
    """Whether `pid` is this process or descends from it (its Ray daemons and workers)."""
    while pid > 1:
        if pid == os.getpid():
            return True
        pid = table[pid][0] if pid in table else 0
    return False


def foreign_jobs() -> list[str]:
    """Other Ray clusters / test runs on this machine (not this process's own Ray)."""
    table = processes()
    return [
        f"{pid} {cmd[:80]}"
        for pid, (_, _, cmd) in table.items()
        if BUSY.search(cmd) and "pgrep" not in cmd and not ours(pid, table)
    ]


class CpuMeter:
    """CPU seconds that processes outside this benchmark's process tree use during a
    measurement (sampled every second; a process's own CPU time includes its reaped children).
    A noise indicator: near 0 on a quiet machine."""

    HZ = os.sysconf("SC_CLK_TCK")

    def __init__(self, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self.first: dict[int, int] = {}
        self.last: dict[int, int] = {}
        self.foreign: set[int] = set()
        self._stop = threading.Event()

    def sample(self, initial: bool = False) -> None:
        table = processes()
        for pid, (_, ticks, _) in table.items():
            if pid not in self.first:
                self.first[pid] = ticks if initial else 0
                if not ours(pid, table):
                    self.foreign.add(pid)
            self.last[pid] = ticks

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> CpuMeter:
        self.started = time.time()
        self.sample(initial=True)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()
        ticks = sum(self.last[pid] - self.first[pid] for pid in self.foreign)
        self.other_cpu_s = ticks / self.HZ
        self.other_cores = self.other_cpu_s / max(time.time() - self.started, 1e-9)


def wait_for_quiet(max_wait_s: float = 1200.0) -> list[str]:
    """Wait (up to `max_wait_s`, polling every 30 s) until no other Ray job or test run is
    running and other processes use under a quarter of a core; returns what was still busy when
    the wait gave up (empty: a quiet machine)."""
    deadline = time.time() + max_wait_s
    while True:
        busy = foreign_jobs()
        if not busy:
            with CpuMeter() as cpu:
                time.sleep(3)
            if cpu.other_cores > 0.25:
                busy = [f"other processes used {cpu.other_cores:.2f} cores"]
        if not busy or time.time() > deadline:
            return busy
        print(f"waiting: machine busy ({busy[0]})", flush=True)
        time.sleep(30)


def noise(busy: list[str], cpu: CpuMeter) -> dict[str, Any]:
    """What else ran during a measurement."""
    return {
        "load_after": load(),
        "other_cpu_s": round(cpu.other_cpu_s, 2),
        "other_cores": round(cpu.other_cores, 3),
        "other_jobs": busy + foreign_jobs(),
    }


def bench_config(run_dir: Path, n: int, workers: int) -> dict[str, Any]:
    """The quickstart's data/space/search settings, with the budget and workers of this run."""
    return {
        "name": "bench",
        "method": "autoformer",
        "seed": SEED,
        "run_dir": str(run_dir),
        "data": DATA,
        "space": {"preset": SPACE["preset"], "overrides": SPACE["overrides"]},
        "search": {
            "strategy": "nsga2",
            "objectives": ["flops"],
            "budget": n,
            "seed_extremes": False,
            "evolution": {"population": 20},
            "resources": {"workers": workers, "cpus_per_worker": 1},
        },
        "tracking": {"experiment": "bench"},
    }


def draw_archs(space: Any, n: int) -> list[Any]:
    """N distinct archs from the space's sampling rule with a seeded RNG."""
    rng = random.Random(SEED)
    archs, seen = [], set()
    while len(archs) < n:
        arch = space.sample(rng)
        aid = space.arch_id(arch)
        if aid not in seen:
            seen.add(aid)
            archs.append(arch)
    return archs


class DriverTimers:
    """Wall time of the driver-side steps of a search, by patching their methods (this process)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.first: dict[str, float] = {}  # Unix time of the first call's start
        self.last: dict[str, float] = {}  # Unix time of the last call's end
        self._undo: list[tuple[Any, str, Any]] = []

    def wrap(self, owner: Any, attr: str, label: str) -> None:
        original = getattr(owner, attr)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            self.first.setdefault(label, time.time())
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[label] += time.perf_counter() - start
                self.calls[label] += 1
                self.last[label] = time.time()

        setattr(owner, attr, timed)
        self._undo.append((owner, attr, original))

    def __enter__(self) -> DriverTimers:
        from optuna.study import Study
        from optuna.trial import Trial
        from ray import tune
        from ray.tune.search.optuna import OptunaSearch

        from orchestrator.search.archive import Archive
        from orchestrator.stages import search as stage

        self.wrap(stage.ArchSearch, "suggest", "searcher.suggest (optuna ask + attrs)")
        self.wrap(stage.ArchSearch, "on_trial_complete", "searcher.on_trial_complete (all)")
        self.wrap(OptunaSearch, "on_trial_complete", "  optuna tell")
        self.wrap(Archive, "write", "  archive rewrite")
        self.wrap(stage.Progress, "__call__", "  progress line + mlflow log_batch")
        self.wrap(Study, "ask", "  optuna ask")
        self.wrap(Study, "_pop_waiting_trial_id", "    of which: pop an enqueued trial")
        self.wrap(Trial, "set_user_attr", "  optuna set_user_attr")
        self.wrap(stage, "_finish", "pareto front + plot")
        self.wrap(stage, "_tune", "_tune")
        self.wrap(tune.Tuner, "fit", "Tuner.fit")
        return self

    def __exit__(self, *exc: Any) -> None:
        for owner, attr, original in reversed(self._undo):
            setattr(owner, attr, original)

    def report(self) -> dict[str, dict[str, float]]:
        return {
            k: {"seconds": round(v, 3), "calls": self.calls[k]} for k, v in self.seconds.items()
        }


def run_plain(evaluator: Any, archs: list[Any]) -> dict[str, Any]:
    """(a): measure every arch in turn in this process."""
    torch.set_num_threads(1)
    busy = wait_for_quiet()
    before = load()
    evals = []
    with CpuMeter() as cpu:
        start = time.perf_counter()
        for arch in archs:
            t0 = time.perf_counter()
            evaluator.measure(arch)
            evals.append(time.perf_counter() - t0)
        seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "eval_median_s": statistics.median(evals),
        "load_before": before,
        **noise(busy, cpu),
    }


def worker_gaps(rows: list[dict[str, Any]]) -> list[float]:
    """Seconds between one evaluation's end and the next one's start in the same worker process."""
    by_pid: dict[Any, list[tuple[float, float]]] = defaultdict(list)
    for row in rows:
        by_pid[row["pid"]].append((row["start_time"], row["end_time"]))
    gaps = []
    for spans in by_pid.values():
        spans.sort()
        gaps += [b[0] - a[1] for a, b in zip(spans, spans[1:], strict=False)]
    return gaps


def timeline(timers: DriverTimers, first_start: float, last_end: float) -> dict[str, float]:
    """Where the search time goes, in order (Unix times from the driver and the archive rows)."""
    suggest = "searcher.suggest (optuna ask + attrs)"
    first, last = timers.first, timers.last
    spans = {
        "_tune start -> Tuner.fit start": first["Tuner.fit"] - first["_tune"],
        "Tuner.fit start -> first suggest": first[suggest] - first["Tuner.fit"],
        "first suggest -> first evaluation starts": first_start - first[suggest],
        "first evaluation start -> last evaluation end": last_end - first_start,
        "last evaluation end -> Tuner.fit returns": last["Tuner.fit"] - last_end,
        "Tuner.fit returns -> _tune returns": last["_tune"] - last["Tuner.fit"],
        "pareto front + plot": timers.seconds["pareto front + plot"],
    }
    return {k: round(v, 3) for k, v in spans.items()}


def run_stage(root: Path, supernet: Path, archs: list[Any], space: Any, workers: int) -> dict:
    """(b): the search stage over exactly `archs`, in a fresh run directory."""
    import optuna
    import pyarrow.parquet as pq

    from orchestrator.config import parse
    from orchestrator.pipeline import run_stages
    from orchestrator.search.searcher import metric_names
    from orchestrator.stages.search import external_checkpoint, storage_url, study_name

    run_dir = Path(tempfile.mkdtemp(prefix=f"b{workers}-", dir=root))
    config = parse(bench_config(run_dir, len(archs), workers), "bench")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=study_name(config),
        storage=storage_url(config),
        directions=["maximize", "minimize"],
    )
    study.set_metric_names(metric_names(config.search.objectives))
    for arch in archs:
        study.enqueue_trial(space.encode(arch))

    busy = wait_for_quiet()
    before = load()
    with CpuMeter() as cpu, DriverTimers() as timers:
        start = time.perf_counter()
        given = {"supernet": external_checkpoint(supernet)}
        result = run_stages(config, only=["search"], inputs=given)["search"]
        stage_seconds = time.perf_counter() - start

    rows = pq.read_table(run_dir / "archive.parquet").to_pylist()
    wanted = {space.arch_id(a) for a in archs}
    got = {r["arch_id"] for r in rows}
    if got != wanted or len(rows) != len(archs):
        raise RuntimeError(
            f"the stage evaluated other archs than the enqueued ones: {got ^ wanted}"
        )
    evals = [r["eval_seconds"] for r in rows]
    gaps = worker_gaps(rows)
    first_start = min(r["start_time"] for r in rows)
    last_end = max(r["end_time"] for r in rows)
    out = {
        "workers": workers,
        "search_seconds": result["seconds"],
        "stage_seconds": stage_seconds,
        "first_eval_to_last_eval_s": last_end - first_start,
        "timeline_s": timeline(timers, first_start, last_end),
        "eval_median_s": statistics.median(evals),
        "eval_sum_s": sum(evals),
        "gap_median_s": statistics.median(gaps) if gaps else None,
        "gap_sum_s": sum(gaps),
        "worker_processes": len({r["pid"] for r in rows}),
        "driver": timers.report(),
        "load_before": before,
        **noise(busy, cpu),
    }
    shutil.rmtree(run_dir, ignore_errors=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=40, help="candidates per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="development: 6 candidates, 1 round")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.n, args.rounds = 6, 1

    import optuna
    import ray

    from orchestrator.config.schema import RayConfig
    from orchestrator.runtime import local_cluster_env
    from search_spaces import build_space
    from trainables.data import DataConfig
    from trainables.evaluator import EvalSpec, Evaluator
    from trainables.train import checkpoint as ckpt

    root = Path(tempfile.mkdtemp(prefix="raynas-search-bench-"))
    space = build_space(SPACE["family"], SPACE["preset"], SPACE["overrides"])
    torch.manual_seed(SEED)
    supernet = root / "supernet"
    ckpt.save(supernet, space.build_supernet().state_dict(), {}, {})
    archs = draw_archs(space, args.n)

    # what `raynas` does when it starts a local Ray; started here so start-up is not timed
    wait_for_quiet()  # never two Ray clusters at once
    os.environ.update(local_cluster_env(RayConfig()))
    ray.init(num_cpus=2, namespace="raynas", log_to_driver=False, configure_logging=False)

    torch.set_num_threads(1)
    start = time.perf_counter()
    evaluator = Evaluator(EvalSpec(checkpoint=str(supernet), data=DataConfig(**DATA), space=SPACE))
    build_seconds = time.perf_counter() - start

    # untimed: the driver's one-off imports (MLflow, matplotlib, ...) happen here, not in round 1
    run_stage(root, supernet, archs[:2], space, 1)

    plain, stage = [], {1: [], 2: []}
    for index in range(args.rounds):
        plain.append(run_plain(evaluator, archs))
        for workers in (1, 2):
            stage[workers].append(run_stage(root, supernet, archs, space, workers))
        a, b1, b2 = plain[-1], stage[1][-1], stage[2][-1]
        print(
            f"round {index + 1}: (a) {a['seconds']:.1f} s | (b) 1 worker {b1['search_seconds']:.1f} s "
            f"(stage {b1['stage_seconds']:.1f} s) | (b) 2 workers {b2['search_seconds']:.1f} s "
            f"(stage {b2['stage_seconds']:.1f} s) | other processes "
            f"{max(m['other_cores'] for m in (a, b1, b2)):.2f} cores",
            flush=True,
        )
    ray.shutdown()
    shutil.rmtree(root, ignore_errors=True)

    def med(rows: list[dict], key: str) -> float:
        return statistics.median(r[key] for r in rows)

    a_s = med(plain, "seconds")
    summary: dict[str, Any] = {"plain_seconds": round(a_s, 2)}
    # search: result["seconds"]; stage: the whole call; evaluations: first evaluation start to
    # last evaluation end (the steady state, without the workers' start-up and the Pareto plot)
    for kind in ("search", "stage", "evaluations"):
        key = "first_eval_to_last_eval_s" if kind == "evaluations" else f"{kind}_seconds"
        b1, b2 = med(stage[1], key), med(stage[2], key)
        summary[kind] = {
            "workers_1_seconds": round(b1, 2),
            "workers_2_seconds": round(b2, 2),
            "efficiency_1_worker": round(a_s / b1, 3),
            "efficiency_2_workers": round(a_s / (2 * b2), 3),
            "speedup_1_to_2": round(b1 / b2, 3),
        }
    first_eval = "first suggest -> first evaluation starts"
    summary["per_trial"] = {
        "plain_eval_s": round(med(plain, "eval_median_s"), 3),
        **{
            f"workers_{w}_{name}": round(statistics.median(value(r) for r in stage[w]), 3)
            for w in (1, 2)
            for name, value in (
                ("eval_s", lambda r: r["eval_median_s"]),
                ("gap_s", lambda r: r["gap_median_s"]),
                ("startup_s", lambda r: r["timeline_s"][first_eval]),
            )
        },
    }
    summary["driver_ms_per_candidate_1_worker"] = {
        label: round(
            statistics.median(r["driver"][label]["seconds"] for r in stage[1]) * 1000 / args.n, 1
        )
        for label in stage[1][0]["driver"]
        if stage[1][0]["driver"][label]["calls"] >= args.n
    }
    result = {
        "benchmark": "search_throughput",
        "space": SPACE,
        "data": DATA,
        "candidates": args.n,
        "rounds": args.rounds,
        "strategy": "nsga2 (all candidates enqueued)",
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "ray": ray.__version__,
        "optuna": optuna.__version__,
        "goal": "efficiency_1_worker >= 0.85",
        "evaluator_build_seconds": round(build_seconds, 3),
        "plain_eval_median_s": round(med(plain, "eval_median_s"), 4),
        "summary": summary,
        "rounds_plain": plain,
        "rounds_workers_1": stage[1],
        "rounds_workers_2": stage[2],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=float) + "\n")

    print(f"\n{args.n} candidates, median of {args.rounds} interleaved rounds")
    print(f"(a) plain loop: {a_s:.2f} s ({result['plain_eval_median_s']:.3f} s / eval)")
    print("| (b) measured | 1 worker s | 2 workers s | efficiency 1 | efficiency 2 | speed-up |")
    print("|---|---|---|---|---|---|")
    for kind, label in (
        ("search", "search time"),
        ("stage", "whole stage call"),
        ("evaluations", "first to last evaluation"),
    ):
        s = summary[kind]
        print(
            f"| {label} | {s['workers_1_seconds']} | {s['workers_2_seconds']} | "
            f"{s['efficiency_1_worker']} | {s['efficiency_2_workers']} | {s['speedup_1_to_2']} |"
        )

    t = summary["per_trial"]
    print(
        f"per candidate: eval {t['plain_eval_s']} s plain, {t['workers_1_eval_s']} / "
        f"{t['workers_2_eval_s']} s in 1 / 2 workers; gap between a worker's evaluations "
        f"{t['workers_1_gap_s']} / {t['workers_2_gap_s']} s; worker start-up "
        f"{t['workers_1_startup_s']} / {t['workers_2_startup_s']} s"
    )
    print("driver ms per candidate (1 worker):", summary["driver_ms_per_candidate_1_worker"])


if __name__ == "__main__":
    main()
