"""Ray Tune's OptunaSearch over a search space's flat encoding, with NAS bookkeeping.

On top of :class:`ray.tune.search.optuna.OptunaSearch` (one Optuna study, any sampler, any RDB
storage) this searcher

* rejects candidates outside the hard params/FLOPs constraints before any Tune trial exists:
  the Optuna trial is recorded as PRUNED with the reason in its user attrs, and the sampler asks
  again, so no forward pass is spent on them;
* never evaluates an arch twice: a proposal already in the archive is told to the study with
  the archived values (user attr ``duplicate_of``), one being evaluated right now is pruned;
* writes each evaluated candidate to the archive *before* telling the study, so after a crash
  the archive is never behind the study, and a resumed run can reconcile the two;
* puts ``arch``, ``arch_id``, ``params``, ``flops`` (and the metrics) in user attrs, for
  optuna-dashboard.

The budget (Tune's ``num_samples``) therefore counts evaluated candidates only.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import optuna
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from orchestrator.search.archive import Archive, make_row
from orchestrator.search.pareto import COST_COLUMN

Constraint = Callable[[Any], "str | None"]


def metric_names(objectives: Sequence[str]) -> list[str]:
    """The study's metric names: val top-1 first, then each cost objective's column."""
    return ["val_top1", *(COST_COLUMN[o] for o in objectives)]


class ArchSearch(OptunaSearch):
    """OptunaSearch that proposes only new, admissible archs and records every evaluation."""

    def __init__(
        self,
        space: Any,
        *,
        objectives: Sequence[str],
        sampler: Any,
        storage: Any,
        study_name: str,
        archive: Archive,
        constraint: Constraint | None = None,
        max_rejections: int = 2000,
        on_evaluated: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        metrics = metric_names(objectives)
        super().__init__(
            space=space.distributions(),
            metric=metrics,
            mode=["max"] + ["min"] * len(objectives),
            sampler=sampler,
            storage=storage,
            study_name=study_name,
        )
        with warnings.catch_warnings():  # experimental since Optuna 3.2, still in 5.x
            warnings.simplefilter("ignore", category=optuna.exceptions.ExperimentalWarning)
            self._ot_study.set_metric_names(metrics)
        self.arch_space = space
        self.archive = archive
        self.constraint = constraint
        self.max_rejections = max_rejections
        self.on_evaluated = on_evaluated
        self.rejected = 0
        self.duplicates = 0
        self.exhausted = False
        self._running: dict[str, str] = {}  # Tune trial id -> arch id
        self.failed: list[dict[str, Any]] = []  # params of trials that ended in an error

    @property
    def study(self):
        return self._ot_study

    # ---- proposing -------------------------------------------------------------------------
    def suggest(self, trial_id: str) -> dict | str | None:
        from optuna.trial import TrialState

        if self.exhausted:
            return Searcher.FINISHED
        for _ in range(self.max_rejections):
            ot_trial = self._ot_study.ask(fixed_distributions=self._space)
            arch = self.arch_space.decode(ot_trial.params)
            aid = self.arch_space.arch_id(arch)
            cost = self.arch_space.cost(arch)
            ot_trial.set_user_attr("arch_id", aid)
            ot_trial.set_user_attr("arch", self.arch_space.to_json(arch))
            ot_trial.set_user_attr("params", int(cost["params"]))
            ot_trial.set_user_attr("flops", int(cost["flops"]))
            reason = self.constraint(arch) if self.constraint else None
            if reason is not None:
                ot_trial.set_user_attr("rejected", reason)
                self._ot_study.tell(ot_trial, state=TrialState.PRUNED)
                self.rejected += 1
                continue
            if aid in self.archive:
                row = self.archive.get(aid)
                ot_trial.set_user_attr("duplicate_of", int(row["trial"]))
                self._ot_study.tell(ot_trial, [row[m] for m in self.metric])
                self.duplicates += 1
                continue
            if aid in self._running.values():
                ot_trial.set_user_attr("duplicate_of_running", aid)
                self._ot_study.tell(ot_trial, state=TrialState.PRUNED)
                self.duplicates += 1
                continue
            self._ot_trials[trial_id] = ot_trial
            self._running[trial_id] = aid
            return dict(ot_trial.params)
        self.exhausted = True
        print(
            f"[search] stopping early: {self.max_rejections} proposals in a row were outside the "
            "constraints or already evaluated; the space under these constraints looks exhausted",
            flush=True,
        )
        return Searcher.FINISHED

    # ---- recording ---------------------------------------------------------------------------
    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        aid = self._running.pop(trial_id, None)
        ot_trial = self._ot_trials.get(trial_id)
        if error and ot_trial is not None:
            self.failed.append(dict(ot_trial.params))
        if ot_trial is not None and result and not error and aid is not None:
            if all(result.get(m) is not None for m in self.metric):
                row = make_row(
                    ot_trial.number,
                    aid,
                    ot_trial.user_attrs["arch"],
                    ot_trial.params,
                    result,
                )
                self.archive.add(row)  # before tell: the archive is never behind the study
                for key in ("val_top1", "val_loss", "latency_ms"):
                    if result.get(key) is not None:
                        ot_trial.set_user_attr(key, float(result[key]))
                if self.on_evaluated is not None:
                    self.on_evaluated(row)
        super().on_trial_complete(trial_id, result=result, error=error)

    def __getstate__(self) -> dict[str, Any]:
        """Ray Tune pickles the searcher into `tuner.pkl`: leave out the study storage and the
        progress callback, which hold the storage and tracking URLs (and their passwords).
        A raynas search resumes from the study and the archive, never from that pickle."""
        state = dict(self.__dict__)
        for key in ("_storage", "_ot_study", "on_evaluated", "_ot_trials", "failed"):
            if key in state:
                state[key] = None
        return state

    # Tune checkpoints searchers by pickling them; the study storage and the archive are this
    # searcher's durable state, so only a pointer is written.
    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "w") as file:
            json.dump(
                {
                    "study": self._study_name,
                    "archive": str(self.archive.path),
                    "evaluated": len(self.archive),
                    "time": time.time(),
                },
                file,
            )

    def restore(self, checkpoint_path: str) -> None:
        raise NotImplementedError("resume a raynas search with `raynas run --resume RUN_DIR`")
