"""The one construction path of a run's supernet: the space's plain supernet, or that supernet
wrapped with the adapter a method adds (TAS-LoRA: LoRA experts and an architecture router).

``adapter`` is the plain-data adapter spec (for TAS-LoRA: experts, rank, alpha, targets, router
sizes) that result files and checkpoint metadata record as ``"adapter"``, or None. The wrapping
goes through the family (``SearchSpace.wrap_supernet``), so nothing here knows a family.
Training workers, evaluators, export and analysis all build their model here, so a checkpoint
written by one loads in the others.

A fixed arch (the `retrain` stage) is trained as the standalone network itself: the model the
space's ``export_spec`` describes, freshly initialised, behind the Supernet interface
(:class:`Standalone`), so the training loop, its checkpoints and DDP see only that network's
parameters, not the whole supernet's.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from search_spaces import Arch, SearchSpace, Supernet, build_from_spec
from trainables.storage import local_folder
from trainables.train import checkpoint as ckpt


class Standalone(Supernet):
    """One fixed arch's standalone network behind the Supernet interface: ``forward(x, arch)``
    runs the network (the arch is the one it was built for), ``extract`` copies it."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Any, arch: Arch = None) -> Any:
        return self.model(x)

    def extract(self, arch: Arch = None) -> torch.nn.Module:
        return copy.deepcopy(self.model)


def build_supernet(
    space: SearchSpace, adapter: Mapping[str, Any] | None = None, arch: Arch | None = None
) -> Supernet:
    """A freshly initialised supernet of `space`, wrapped with `adapter` when one is given;
    with `arch`, that arch's standalone network (:class:`Standalone`) instead."""
    if arch is not None:
        if adapter is not None:
            raise ValueError("a standalone network (arch given) takes no adapter")
        return Standalone(build_from_spec(space.export_spec(arch)))
    base = space.build_supernet()
    if adapter is None:
        return base
    return space.wrap_supernet(base, adapter)


def base_of(supernet: Supernet) -> Supernet:
    """The weight-sharing supernet inside an adapter (itself when it has none)."""
    return getattr(supernet, "base", supernet)


def load_supernet(
    space: SearchSpace,
    checkpoint: str | Path,
    adapter: Mapping[str, Any] | None = None,
    arch: Arch | None = None,
) -> Supernet:
    """`build_supernet` with the weights of `checkpoint` (a checkpoint folder)."""
    supernet = build_supernet(space, adapter, arch)
    ckpt.load_into(supernet, checkpoint)
    return supernet


# ------------------------------------------------------------------------------ dense models
DENSE_WEIGHTS = "model.safetensors"
DENSE_SPEC = "model.json"


def dense_state(folder: str | Path) -> dict[str, torch.Tensor]:
    """The weights of a model folder (``model.safetensors`` beside ``model.json``: an export,
    or the ``pretrain`` stage's dense model)."""
    from safetensors.torch import load_file

    return load_file(str(local_folder(folder) / DENSE_WEIGHTS))


def load_model(folder: str | Path) -> torch.nn.Module:
    """The standalone model of a model folder, rebuilt by its ``model.json`` and loaded
    strictly (eval mode)."""
    import json

    folder = local_folder(folder)
    spec = json.loads((folder / DENSE_SPEC).read_text())
    model = build_from_spec(spec)
    model.load_state_dict(dense_state(folder), strict=True)
    return model.eval()


def load_teacher(folder: str | Path, device: torch.device) -> torch.nn.Module:
    """The frozen dense model of ``folder`` on ``device``: a distillation teacher."""
    teacher = load_model(folder).to(device)
    for param in teacher.parameters():
        param.requires_grad_(False)
    return teacher
