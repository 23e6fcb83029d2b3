"""The registered stages, each declared as data (``orchestrator.stage.StageSpec``).

Adding a stage is a module here that defines ``SPEC`` plus its line below; the pipeline, resume,
re-run rules, MLflow runs and the CLI know stages only through these declarations.
"""

from __future__ import annotations

from orchestrator.stage import StageSpec


def registered() -> dict[str, StageSpec]:
    """Stage name -> its declaration."""
    from orchestrator.stages import (
        export,
        filter,
        mole,
        pretrain,
        report,
        retrain,
        search,
        select,
        supernet,
    )

    order = (pretrain, filter, supernet, mole, select, search, retrain, export, report)
    return {m.SPEC.name: m.SPEC for m in order}


def latest_output(run_dir, name: str) -> dict | None:
    """The completed result of the last registered stage in `run_dir` that provides the
    output `name` (e.g. the training output a search scores with), or None."""
    from orchestrator.stage import read_result

    for spec in reversed(list(registered().values())):
        if name in spec.provides:
            done = read_result(run_dir, spec.name)
            if done is not None:
                return done
    return None
