"""Evaluating a search's candidates in the driver process, without Ray Tune.

A table lookup (``search.evaluator: table``) takes microseconds, while a Ray Tune trial costs
about 0.1 s of scheduling, actor reuse and result handling (README, "Search throughput"). This
loop drives the very same :class:`~orchestrator.search.searcher.ArchSearch` (built by
:func:`~orchestrator.search.searcher.build_searcher`, as the Tune path builds it) the way Ray
Tune drives it with one worker: ``suggest(trial_id)`` -> evaluate -> ``on_trial_complete
(trial_id, result)``, one trial at a time, until the budget is met. So the sampler, the study,
the constraints, the deduplication and the archive are the same code, and the order that
makes a crash safe is kept: ``on_trial_complete`` writes the archive row before it tells the
study. For the same seed and budget the study and the archive equal those of a Tune search with
one worker (``tests/orchestrator/test_inprocess_search.py``); with several Tune workers the
order of tells, and so what adaptive samplers propose, depends on timing.

The result handed to ``on_trial_complete`` has the shape Tune gives a searcher: the trial's
reported metrics plus Tune's bookkeeping keys (``trial_id``, ``config``,
``training_iteration``, ``done``, ``time_total_s``). ``node_id`` and ``node_group`` (the Ray
node of a Tune trial) are None: no Ray node evaluated it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from ray.tune.search import Searcher

from orchestrator.search.searcher import ArchSearch

Evaluate = Callable[[dict[str, Any]], dict[str, Any]]


class CandidateError(RuntimeError):
    """Evaluating a candidate raised, or reported none of a study metric; the trial is FAIL."""


def tune_result(trial_id: str, config: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    """`metrics` as Tune hands a trial's last result to its searcher."""
    started, ended = metrics.get("start_time"), metrics.get("end_time")
    seconds = ended - started if started is not None and ended is not None else 0.0
    return {
        "node_id": None,
        "node_group": None,
        **metrics,
        "trial_id": trial_id,
        "config": dict(config),
        "training_iteration": 1,
        "done": True,
        "time_total_s": seconds,
    }


def run_inprocess(searcher: ArchSearch, evaluate: Evaluate, budget: int) -> int:
    """Evaluate candidates of `searcher` with `evaluate` (encoded config -> metrics) until
    `budget` (as :meth:`ArchSearch.remaining` counts it) is met or the searcher is finished;
    returns how many were evaluated here. An evaluation that raises, or reports no value for
    a study metric, is told FAIL and raised as :class:`CandidateError`."""
    prefix = f"inprocess_{uuid.uuid4().hex[:5]}"  # trial ids never repeat on one searcher
    evaluated = 0
    while searcher.remaining(budget) > 0:
        trial_id = f"{prefix}_{evaluated:05d}"
        config = searcher.suggest(trial_id)
        if config is None or config == Searcher.FINISHED:
            break  # one loop, nothing running: a searcher that would wait never gets more
        number = searcher.trial_number(trial_id)
        started = time.time()
        try:
            metrics = evaluate(config)
        except Exception as exc:
            searcher.on_trial_complete(trial_id, error=True)
            raise CandidateError(
                f"evaluating trial {number} ({config}) raised {type(exc).__name__}: {exc}"
            ) from exc
        missing = [m for m in searcher.metric if metrics.get(m) is None]
        if missing:
            searcher.on_trial_complete(trial_id, error=True)
            raise CandidateError(
                f"evaluating trial {number} ({config}) reported no {', '.join(missing)}; the "
                f"study optimises {searcher.metric}"
            )
        metrics.setdefault("start_time", started)
        metrics.setdefault("end_time", time.time())
        searcher.on_trial_complete(trial_id, result=tune_result(trial_id, config, metrics))
        evaluated += 1
    return evaluated
