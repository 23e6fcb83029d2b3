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
  optuna-dashboard, and the driver that asked for the trial (``raynas.driver``: host, pid,
  run directory).

The budget (Tune's ``num_samples``) therefore counts evaluated candidates only.

**Several drivers, one study.** Drivers on other machines (each with its own run directory
and archive) may share one study in one database. A trial *claims* its arch when it is
RUNNING or COMPLETE with ``arch_id`` set and no reason attr (``rejected``, ``duplicate_of``,
``duplicate_of_running``, ``claimed_by``, ``over_budget``); ``arch_id`` is always the last attr
a trial gets, so a RUNNING trial without it is still being decided. Before handing a trial
out, the driver waits until every lower-numbered RUNNING trial is decided (Optuna numbers
trials under a lock on the study row, so none can appear below it later), then:

* an arch already COMPLETE in the study, claimed by a lower-numbered RUNNING trial, or
  enqueued (WAITING) at a lower number is not evaluated again: told the holder's values
  (``duplicate_of``) or pruned (``claimed_by``), and the sampler asks again;
* with ``budget`` set, a trial below which ``budget`` distinct archs are claimed (or
  enqueued) is pruned (``over_budget``) and the driver reports FINISHED.

Every driver decides from the same lower-numbered trials, so two drivers that sample the same
arch at the same moment agree that the lower trial number evaluates it, and together they
evaluate exactly ``budget`` candidates. A lower trial that stays undecided for
``claim_wait`` seconds (its driver died between asking and deciding; the wait restarts after
a database outage) is ignored from then on.
"""

from __future__ import annotations

import json
import os
import socket
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from orchestrator.search.archive import Archive, make_row
from orchestrator.search.pareto import COST_COLUMN
from trainables.storage import is_remote

Constraint = Callable[[Any], "str | None"]


def metric_names(objectives: Sequence[str]) -> list[str]:
    """The study's metric names: val top-1 first, then each cost objective's column."""
    return ["val_top1", *(COST_COLUMN[o] for o in objectives)]


DRIVER_ATTR = "raynas.driver"
# a trial with one of these is not evaluated (and so never claims its arch)
REASON_ATTRS = ("rejected", "duplicate_of", "duplicate_of_running", "claimed_by", "over_budget")


def driver_identity(run_dir: Any) -> dict[str, Any]:
    """Who asks for trials: this host, this process and its run directory."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "run_dir": str(run_dir)}


def driver_label(driver: dict[str, Any] | None) -> str:
    """``host:run_dir`` (a run directory keeps its label across resumes), or ``unknown``."""
    if not driver:
        return "unknown"
    return f"{driver.get('host')}:{driver.get('run_dir')}"


def driver_status(driver: dict[str, Any] | None, me: dict[str, Any]) -> str:
    """``own`` (an earlier driver of this run directory on this host: the run-dir lock says it
    is gone; or of this object-store run directory on any host: its lease says so), ``dead`` (this host, its process is gone), ``unknown`` (no driver recorded) or
    ``live`` (anything else: another host's driver cannot be proven dead from here)."""
    if not driver:
        return "unknown"
    if is_remote(str(me["run_dir"])) and driver.get("run_dir") == me["run_dir"]:
        return "own"  # an object-store run directory: its lease says the earlier driver is gone
    if driver.get("host") != me["host"]:
        return "live"
    if driver.get("run_dir") == me["run_dir"]:
        return "own"
    pid = driver.get("pid")
    if not isinstance(pid, int) or pid == me["pid"]:
        return "live"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "dead"
    except PermissionError:  # alive, another user's
        return "live"
    return "live"


def is_claim(trial: Any) -> bool:
    """Whether `trial` evaluated its arch or is evaluating it."""
    attrs = trial.user_attrs
    return (
        trial.state in (TrialState.RUNNING, TrialState.COMPLETE)
        and "arch_id" in attrs
        and not any(key in attrs for key in REASON_ATTRS)
    )


def undecided(trial: Any) -> bool:
    return trial.state == TrialState.RUNNING and "arch_id" not in trial.user_attrs


def claimed_archs(trials: Sequence[Any]) -> set[str]:
    """The distinct archs the study has evaluated or is evaluating."""
    return {t.user_attrs["arch_id"] for t in trials if is_claim(t)}


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
        budget: int | None = None,
        driver: dict[str, Any] | None = None,
        claim_wait: float = 30.0,
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
        self.budget = budget  # study-wide: candidates evaluated by every driver together
        self.driver = driver or driver_identity(archive.path.parent)
        self.claim_wait = claim_wait
        self._undecided_since: dict[int, tuple[float, int]] = {}  # trial id -> (seen, outages)
        self._arch_ids: dict[int, str | None] = {}  # WAITING trial id -> arch id of its params
        self._settled: dict[int, str | None] = {}  # finished trial id -> the arch it claims

    @property
    def study(self):
        return self._ot_study

    def trial_number(self, trial_id: str) -> int:
        """The Optuna trial number behind the Tune trial `trial_id`."""
        return self._ot_trials[trial_id].number

    # ---- proposing -------------------------------------------------------------------------
    def budget_met(self) -> bool:
        """Whether the study's drivers together have claimed `budget` archs."""
        if self.budget is None:
            return False
        return len(self._claimed()) >= self.budget

    def remaining(self, budget: int) -> int:
        """How many more candidates `budget` needs: with a study-wide `self.budget`, beyond
        those every driver has evaluated or is evaluating; else beyond this archive."""
        if self.budget is None:
            return budget - len(self.archive)
        return self.budget - len(self._claimed())

    def suggest(self, trial_id: str) -> dict | str | None:
        if self.exhausted or (self.budget is not None and self.budget_met()):
            return Searcher.FINISHED
        for _ in range(self.max_rejections):
            ot_trial = self._ot_study.ask(fixed_distributions=self._space)
            ot_trial.set_user_attr(DRIVER_ATTR, self.driver)
            arch = self.arch_space.decode(ot_trial.params)
            aid = self.arch_space.arch_id(arch)
            cost = self.arch_space.cost(arch)
            ot_trial.set_user_attr("arch", self.arch_space.to_json(arch))
            ot_trial.set_user_attr("params", int(cost["params"]))
            ot_trial.set_user_attr("flops", int(cost["flops"]))

            reason = self.constraint(arch) if self.constraint else None
            if reason is not None:
                self._close(ot_trial, aid, "rejected", reason)
                self.rejected += 1
                continue
            if aid in self.archive:
                row = self.archive.get(aid)
                self._close(
                    ot_trial, aid, "duplicate_of", int(row["trial"]), [row[m] for m in self.metric]
                )
                self.duplicates += 1
                continue
            if aid in self._running.values():
                self._close(ot_trial, aid, "duplicate_of_running", aid)
                self.duplicates += 1
                continue
            holder, over = self._decide(ot_trial.number, aid)
            if holder is not None:
                if holder.state == TrialState.COMPLETE and holder.values is not None:
                    self._close(ot_trial, aid, "duplicate_of", holder.number, list(holder.values))
                else:
                    self._close(ot_trial, aid, "claimed_by", holder.number)
                self.duplicates += 1
                continue
            if over:
                self._close(ot_trial, aid, "over_budget", True)
                return Searcher.FINISHED
            ot_trial.set_user_attr("arch_id", aid)  # the claim
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

    def _close(
        self, ot_trial: Any, aid: str, key: str, value: Any, values: list | None = None
    ) -> None:
        """Record why `ot_trial` is not evaluated, then `arch_id` (last: it is decided), and
        tell the study: the holder's values for a duplicate of an evaluated arch, else PRUNED."""
        ot_trial.set_user_attr(key, value)
        ot_trial.set_user_attr("arch_id", aid)
        if values is None:
            self._ot_study.tell(ot_trial, state=TrialState.PRUNED)
        else:
            self._ot_study.tell(ot_trial, values)

    def _decide(self, number: int, aid: str) -> tuple[Any | None, bool]:
        """(the trial that holds `aid` before trial `number`, or None; whether `budget` archs
        are claimed below it), once every trial below it is decided."""
        pause = 0.02
        while True:
            trials = self._ot_study.get_trials(deepcopy=False)
            pending = [
                t
                for t in trials
                if t.state == TrialState.RUNNING
                and t.number < number
                and undecided(t)
                and not self._ignored(t)
            ]
            if not pending:
                break
            time.sleep(pause)
            pause = min(pause * 2, 0.5)
        holder = None
        below: set[str] = set()
        for t in trials:
            n = t.number
            if n == number:
                continue
            other = self._claim(t)
            if other is not None:
                if n < number:
                    below.add(other)
                if other == aid and (t.state == TrialState.COMPLETE or n < number):
                    if holder is None or holder.state != TrialState.COMPLETE:
                        holder = t
            elif t.state == TrialState.WAITING and n < number:
                # enqueued below: the next ask of any driver takes it, so count it as claimed
                waiting = self._waiting_arch_id(t)
                if waiting is not None:
                    below.add(waiting)
                if waiting == aid and holder is None:
                    holder = t
        over = self.budget is not None and len(below) >= self.budget
        return holder, over

    def _claim(self, trial: Any) -> str | None:
        """The arch `trial` claims (:func:`is_claim`), or None; remembered once the trial is
        finished, when neither its state nor its attrs can change any more (a search asks
        about every trial of the study before each proposal)."""
        key = trial._trial_id
        if key in self._settled:
            return self._settled[key]
        claim = trial.user_attrs["arch_id"] if is_claim(trial) else None
        if trial.state.is_finished():
            self._settled[key] = claim
        return claim

    def _claimed(self) -> set[str]:
        """:func:`claimed_archs` of the study."""
        claims = (self._claim(t) for t in self._ot_study.get_trials(deepcopy=False))
        return {c for c in claims if c is not None}

    def _ignored(self, trial: Any) -> bool:
        """Whether the undecided `trial` is no longer waited for: its driver is provably dead,
        or it has been undecided for `claim_wait` s of a reachable database."""
        driver = trial.user_attrs.get(DRIVER_ATTR)
        if driver_status(driver, self.driver) in ("dead", "own") and driver != self.driver:
            return True
        outages = getattr(self._ot_study._storage, "outages", None)
        if outages is None:  # Optuna's trial cache around the RDB storage
            outages = getattr(getattr(self._ot_study._storage, "_backend", None), "outages", 0)
        now = time.monotonic()
        seen, seen_outages = self._undecided_since.setdefault(trial._trial_id, (now, outages))
        if seen_outages != outages:  # the database was away: its driver was waiting too
            self._undecided_since[trial._trial_id] = (now, outages)
            return False
        return now - seen > self.claim_wait

    def _waiting_arch_id(self, trial: Any) -> str | None:
        """The arch id of an enqueued trial's fixed params (None when they do not decode)."""
        if trial._trial_id not in self._arch_ids:
            fixed = trial.system_attrs.get("fixed_params") or trial.params
            try:
                aid = self.arch_space.arch_id(self.arch_space.decode(fixed))
            except (KeyError, ValueError, TypeError):
                aid = None
            self._arch_ids[trial._trial_id] = aid
        return self._arch_ids[trial._trial_id]

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


def build_searcher(
    search: Any,
    space: Any,
    seed: int,
    *,
    storage: Any,
    study_name: str,
    archive: Archive,
    trials_so_far: int = 0,
    shared: bool = False,
    driver: dict[str, Any] | None = None,
    on_evaluated: Callable[[dict[str, Any]], None] | None = None,
) -> ArchSearch:
    """The searcher of `search` (a ``SearchConfig``): its constraint, its strategy's sampler
    (seeded for a study that holds `trials_so_far`) and the :class:`ArchSearch` over the
    study `study_name` in `storage`. The one construction path of the search stage, whichever
    runner evaluates (Ray Tune or :mod:`orchestrator.search.inprocess`), and of the benchmarks.

    `shared`: the study may be shared by other drivers (``search.storage`` set): the budget
    is counted over the whole study and the sampler's seed stream mixes in `driver`'s label.
    """
    from orchestrator.search.samplers import constraint_of, make_sampler

    driver = driver or driver_identity(archive.path.parent)
    constraint = constraint_of(search, space)
    salt = driver_label(driver) if shared else ""
    sampler = make_sampler(search, space, seed, trials_so_far, constraint, salt=salt)
    return ArchSearch(
        space,
        objectives=search.objectives,
        sampler=sampler,
        storage=storage,
        study_name=study_name,
        archive=archive,
        constraint=constraint,
        on_evaluated=on_evaluated,
        budget=search.budget if shared else None,
        driver=driver,
    )
