"""Supernet checkpoints: a folder of `supernet.pt` (weights), `train_state.pt` (optimizer,
scheduler position, RNG) and `meta.json`. Both `.pt` files load with `weights_only=True`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from trainables.errors import UserInputError
from trainables.storage import local_folder

WEIGHTS = "supernet.pt"
TRAIN_STATE = "train_state.pt"
META = "meta.json"


class CheckpointError(UserInputError):
    """A checkpoint is missing, unreadable or does not fit the configured supernet."""


def save(
    folder: str | Path,
    weights: dict[str, torch.Tensor],
    train_state: dict[str, Any],
    meta: dict[str, Any],
) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(weights, folder / WEIGHTS)
    torch.save(train_state, folder / TRAIN_STATE)
    (folder / META).write_text(json.dumps(meta, indent=2, sort_keys=True))


def _load(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} is missing")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (
        Exception
    ) as exc:  # torch raises RuntimeError, UnpicklingError, EOFError, ... for bad files
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"checkpoint file {path} is corrupt or not a torch file: {reason}"
        ) from None


def load_weights(folder: str | Path) -> dict[str, torch.Tensor]:
    """`folder` may be an object-store URI (``trainables.storage.local_folder``)."""
    return _load(local_folder(folder) / WEIGHTS)


def load_train_state(folder: str | Path) -> dict[str, Any]:
    return _load(local_folder(folder) / TRAIN_STATE)


def load_meta(folder: str | Path) -> dict[str, Any]:
    path = local_folder(folder) / META
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file {path} is missing") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint file {path} is corrupt: {exc}") from None


def load_into(model: torch.nn.Module, folder: str | Path) -> None:
    """Load supernet weights, naming the checkpoint when they do not fit the model."""
    weights = load_weights(folder)
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise CheckpointError(
            f"checkpoint {Path(folder) / WEIGHTS} does not fit the configured supernet: {' '.join(first[:2])[:300]}"
        ) from None
