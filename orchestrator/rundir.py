"""The run directory: where every stage reads its inputs and writes its outputs."""

from __future__ import annotations

from pathlib import Path

import yaml

from orchestrator.config.schema import RunConfig
from orchestrator.errors import UserInputError
from orchestrator.files import write_text_atomic


def prepare(config: RunConfig) -> Path:
    """Create the (local) run directory and write the resolved `config.yaml` into it."""
    if "://" in config.run_path:
        raise UserInputError(
            f"run_dir={config.run_path!r}: remote run directories are not supported by this version yet"
        )
    path = Path(config.run_path).resolve()
    path.mkdir(parents=True, exist_ok=True)
    write_text_atomic(
        path / "config.yaml", yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
    )
    return path
