"""The two contracts every search-space family implements (DESIGN.md section 2).

A family is a pair:

* a :class:`SearchSpace`: plain Python that the orchestrator and the Optuna samplers use to
  sample, mutate, recombine, encode, validate and price architectures without touching torch
  modules, and
* a :class:`Supernet`: the weight-sharing ``nn.Module`` that runs any architecture of the space
  (``forward(x, arch)``) and hands back a standalone copy of one (``extract(arch)``).

Architectures ("archs") are frozen dataclasses whose fields are ints, floats, strings or
(nested) tuples of those. That makes them hashable (usable as cache keys), comparable, and
JSON-serialisable with the helpers below, which every family shares.

Randomness is always passed in as a :class:`random.Random`. Nothing here touches the global
``random`` state, so the orchestrator can derive one generator per (seed, epoch, step) and every
Ray worker samples the same subnet (DESIGN.md section 3).
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import importlib
import json
import random
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import torch
from torch import nn

Arch = Any
"""An architecture: an instance of the family's frozen dataclass (``SearchSpace.arch_type``)."""

Encoded = dict[str, int | float | str]
"""The flat, fixed-key form of an arch that Optuna samplers and the archive columns see."""


# --------------------------------------------------------------------------------------------
# Arch <-> JSON, shared by every family
# --------------------------------------------------------------------------------------------


def arch_to_dict(arch: Arch) -> dict[str, Any]:
    """Plain dict of an arch's fields (tuples become lists), ready for ``json.dumps``."""
    if not dataclasses.is_dataclass(arch) or isinstance(arch, type):
        raise ValueError(f"arch must be a dataclass instance, got {type(arch).__name__}")
    return {f.name: _to_plain(getattr(arch, f.name)) for f in dataclasses.fields(arch)}


def arch_to_json(arch: Arch) -> str:
    """Canonical JSON of an arch: sorted keys, no whitespace, so equal archs give equal text."""
    return json.dumps(arch_to_dict(arch), sort_keys=True, separators=(",", ":"))


def arch_id(arch: Arch) -> str:
    """Stable 12-hex-digit id of an arch: the SHA-1 of its canonical JSON.

    Stable across processes and Python versions (no ``hash()`` randomisation), so it can name
    export folders and join archive rows across runs. It identifies an arch within one search
    space; two spaces whose archs have identical fields give identical ids.
    """
    return hashlib.sha1(arch_to_json(arch).encode("utf-8")).hexdigest()[:12]


def arch_from_dict(arch_type: type, data: Mapping[str, Any]) -> Arch:
    """Build ``arch_type`` from a plain mapping (lists become tuples); names unknown keys."""
    names = [f.name for f in dataclasses.fields(arch_type)]
    unknown = sorted(set(data) - set(names))
    missing = sorted(set(names) - set(data))
    if unknown:
        raise ValueError(f"unknown arch field(s) {unknown}; allowed: {names}")
    if missing:
        raise ValueError(f"missing arch field(s) {missing}; required: {names}")
    return arch_type(**{k: _to_tuple(v) for k, v in data.items()})


def _to_plain(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_to_plain(v) for v in value]
    return value


def _to_tuple(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return tuple(_to_tuple(v) for v in value)
    return value


# --------------------------------------------------------------------------------------------
# Rebuilding an exported model from its spec
# --------------------------------------------------------------------------------------------


def build_from_spec(spec: Mapping[str, Any]) -> nn.Module:
    """Rebuild an (untrained) standalone model from ``SearchSpace.export_spec(arch)``.

    The spec is ``{"builder": "package.module:function", "kwargs": {...}}``, plain JSON, so an
    export folder (``model.safetensors`` + ``arch.json`` + the spec) can be loaded again without
    knowing which family produced it: ``build_from_spec(spec).load_state_dict(weights)``.
    """
    try:
        module_name, func_name = spec["builder"].split(":")
        kwargs = dict(spec["kwargs"])
    except (KeyError, ValueError, AttributeError, TypeError) as exc:
        raise ValueError(
            "export spec must be {'builder': 'module:function', 'kwargs': {...}}"
        ) from exc
    if not module_name.startswith("search_spaces."):
        raise ValueError(f"builder {spec['builder']!r} is not inside the search_spaces package")
    builder = getattr(importlib.import_module(module_name), func_name)
    return builder(**kwargs)


# --------------------------------------------------------------------------------------------
# The contracts
# --------------------------------------------------------------------------------------------


class Supernet(nn.Module, metaclass=abc.ABCMeta):
    """A weight-sharing network that runs any arch of its search space.

    The architecture is an argument of ``forward`` rather than module state, so one supernet can
    serve concurrent evaluations, and a training step's arch is visible in the code that chose it.
    """

    @abc.abstractmethod
    def forward(self, x: Any, arch: Arch) -> Any:
        """Run ``arch`` on ``x`` with the shared weights."""

    @abc.abstractmethod
    def extract(self, arch: Arch) -> nn.Module:
        """A standalone model with copies of ``arch``'s weights, equal in output to
        ``self(x, arch)`` (eval mode). It shares no storage with the supernet."""

    # ---- hooks the engine calls (trainables/); each has a default that fits most families ---
    def inherit(self, state: Mapping[str, torch.Tensor]) -> None:
        """Start from the weights of the model this supernet is derived from (a stage's
        ``dense`` output: FLORA decomposes a dense ViT by SVD). Default: the state dict of
        this supernet itself, loaded strictly."""
        self.load_state_dict(dict(state), strict=True)

    def forward_features(self, x: Any, arch: Arch) -> Any:
        """Pre-logits features ``(B, width)`` of ``arch`` on ``x``: what the classifier head
        reads (the feature-collapse analysis compares them across subnets). Families that
        support the analysis override this; the default refuses, naming the supernet."""
        raise NotImplementedError(
            f"{type(self).__name__} does not provide pre-logits features (forward_features)"
        )

    def no_weight_decay(self) -> set[str]:
        """Full parameter names (as in ``named_parameters()``) that get no weight decay beyond
        the default rule of :meth:`param_groups` (timm's ``no_weight_decay``). Default: none."""
        return set()

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups of the trainable parameters (``requires_grad``).

        Default (timm's rule): ``[{decay params, weight_decay}, {no-decay params, 0.0}]``,
        where a parameter gets no decay when it has at most one dimension (biases, norm
        weights) or its name is in :meth:`no_weight_decay`. Always these two groups, in this
        order, so an optimizer state saved by one run loads in the next. Every trainable
        parameter is in exactly one group.
        """
        skip = set(self.no_weight_decay())
        decay, no_decay = [], []
        for name, param in self.named_parameters():
            if param.requires_grad:
                (no_decay if param.ndim <= 1 or name in skip else decay).append(param)
        return [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]

    def prepare_training(
        self, space: SearchSpace, *, seed: int, init_steps: int = 0, freeze_base: bool = True
    ) -> str | None:
        """Called once by a training worker after the weights are loaded, before the optimizer
        is built: model-specific initialisation and freezing.

        ``init_steps`` > 0 asks for the supernet's own initialisation (e.g. TAS-LoRA's
        group-wise router fit), only on a fresh start (never on resume); ``freeze_base`` asks a
        supernet that wraps a base (an adapter) to train only what it adds. ``seed`` makes the
        result identical on every rank. Returns one line for the log, or None. Default: nothing
        to do (a plain supernet has neither).
        """
        return None

    def has_batchnorm(self) -> bool:
        """True when any submodule is a BatchNorm layer (its running statistics then need
        :meth:`recalibrate` before scoring a subnet with inherited weights)."""
        return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.modules())

    @torch.no_grad()
    def recalibrate(self, arch: Arch, batches: Iterable[Any]) -> None:
        """Re-estimate BatchNorm running statistics for ``arch`` on a few train ``batches``.

        A weight-sharing supernet's BN statistics mix every subnet it trained, so a discrete
        subnet scored with inherited weights needs its own (cell spaces). Default: reset every
        BN layer's running stats, run ``arch`` in train mode over ``batches`` (inputs only,
        cumulative average: ``momentum=None``), restore momentum and the train/eval mode. A
        no-op for a supernet without BatchNorm. Families with another rule override this.
        """
        norms = [m for m in self.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not norms:
            return
        was_training = self.training
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
        self.train()
        try:
            for x in batches:
                self(x, arch)
        finally:
            for m, momentum in zip(norms, momenta, strict=True):
                m.momentum = momentum
            self.train(was_training)

    # ---- operation selection (differentiable cell search: IT-NAS, DARTS) ---------------------
    def selector_parameters(self) -> list[nn.Parameter]:
        """Parameters of the supernet's operation selector (IT-NAS's indicator tokens and
        transformer, DARTS's alphas), which bi-level training updates on their own carve-out
        of TRAIN with their own optimizer. ``forward(x, None)`` then runs the mixed supernet
        (every op on every edge, mixed by the selector). Default: no selector."""
        return []

    def selection_scores(self, x: Any) -> dict[str, torch.Tensor]:
        """One mixed forward over ``x``: per cell type (e.g. ``"cell"``; ``"normal"`` and
        ``"reduce"``) the importance of every op on every edge, a float tensor
        ``(edges, ops)`` averaged over the batch and the cell instances; each row sums to 1.
        Families without a selector refuse, naming the supernet."""
        raise NotImplementedError(
            f"{type(self).__name__} has no operation selector (selection_scores)"
        )


class SearchSpace(abc.ABC):
    """One family's space of architectures; plain Python, no Ray/MLflow/Optuna at import.

    Subclasses set ``family`` and ``arch_type`` and keep their whole configuration in one frozen
    dataclass at ``self.config`` (a preset, possibly with overrides; see ``registry``).
    """

    family: ClassVar[str]
    arch_type: ClassVar[type]

    def __init__(self, config: Any) -> None:
        self.config = config

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"

    # ---- shape of the data the supernet eats --------------------------------------------------
    @property
    @abc.abstractmethod
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input sample without the batch dimension, e.g. ``(1, 28, 28)``."""

    @property
    @abc.abstractmethod
    def num_classes(self) -> int:
        """Number of output logits."""

    # ---- sampling and evolution ---------------------------------------------------------------
    @abc.abstractmethod
    def sample(self, rng: random.Random) -> Arch:
        """Draw an arch with the family's sampling rule, using only ``rng``."""

    @abc.abstractmethod
    def mutate(self, arch: Arch, rng: random.Random) -> Arch:
        """A valid arch derived from ``arch`` by the family's mutation operator."""

    @abc.abstractmethod
    def crossover(self, a: Arch, b: Arch, rng: random.Random) -> Arch:
        """A valid arch recombined from parents ``a`` and ``b``."""

    @abc.abstractmethod
    def smallest(self) -> Arch:
        """The arch with every choice at its minimum."""

    @abc.abstractmethod
    def largest(self) -> Arch:
        """The arch with every choice at its maximum."""

    # ---- flat encoding for Optuna and the archive ---------------------------------------------
    @abc.abstractmethod
    def encode(self, arch: Arch) -> Encoded:
        """Flat dict with the SAME keys for every arch (per-layer choices padded to the maximum
        depth), so Optuna samplers see a static space. ``decode(encode(a)) == a``."""

    @abc.abstractmethod
    def decode(self, flat: Mapping[str, Any]) -> Arch:
        """Inverse of ``encode``; raises ``ValueError`` on missing/unknown keys or bad values."""

    @abc.abstractmethod
    def distributions(self) -> dict[str, Any]:
        """``optuna.distributions.BaseDistribution`` for each key of ``encode``.

        The only place a family may import optuna, and only inside this method.
        """

    # ---- checking and pricing -----------------------------------------------------------------
    @abc.abstractmethod
    def validate(self, arch: Arch) -> None:
        """Raise ``ValueError`` naming the offending field and the allowed values."""

    @abc.abstractmethod
    def cost(self, arch: Arch) -> dict[str, int]:
        """Analytic ``{"params": int, "flops": int}`` of the extracted model for one sample.

        ``params`` equals the extracted model's parameter count; ``flops`` counts
        multiply-accumulates (MACs) of matmuls and convolutions, i.e. half of what
        ``torch.utils.flop_counter.FlopCounterMode`` reports. Fast: called thousands of times.
        """

    def latency_units(self, arch: Arch) -> list[tuple[str, float]]:
        """The extracted model as its kernels, ``(kind, size)`` pairs, for a per-target latency
        model (``trainables.latency_model``: each call of kind ``k`` costs ``a_k + b_k x size``).

        Kinds are what a latency table is keyed by (kernels that run alike); the size (MACs at
        batch 1; elements for a kernel without MACs) lets the model interpolate to kernel
        configurations it never measured. Analytic and fast, like :meth:`cost`. Default: the
        whole network as one kernel, ``[("network", flops)]``.
        """
        return [("network", float(self.cost(arch)["flops"]))]

    # ---- modules ------------------------------------------------------------------------------
    @abc.abstractmethod
    def build_supernet(self) -> Supernet:
        """A freshly initialised supernet covering every arch of this space."""

    @abc.abstractmethod
    def export_spec(self, arch: Arch) -> dict[str, Any]:
        """JSON-serialisable ``{"builder": "module:function", "kwargs": {...}}`` that rebuilds the
        architecture of ``supernet.extract(arch)`` (same parameter names and shapes), used by
        :func:`build_from_spec` when loading an export."""

    def export_requirements(self) -> list[str]:
        """pip requirements of an exported model (logged with it to MLflow)."""
        return ["torch"]

    def standalone_recipe(self) -> dict[str, Any]:
        """Training-recipe defaults for ONE arch's standalone network (``export_spec``, freshly
        initialised) trained from scratch: what the ranking-fidelity analysis (``raynas analyze
        ranking``) trains each sampled subnet with. A plain dict whose keys are the engine's
        training-recipe fields (``trainables.train.config.SupernetTrainConfig``: ``optimizer``,
        ``lr``, ``weight_decay``, ``label_smoothing``, ``batch_size``, ...); the engine fills
        the rest with its defaults, applies the run's ``analysis.ranking.recipe`` on top and
        sets the epochs. Default: ``{}``, the engine's defaults (AutoFormer's AdamW recipe)."""
        return {}

    def wrap_supernet(self, base: Supernet, adapter: Mapping[str, Any]) -> Supernet:
        """``base`` wrapped with the adapter that the plain-data spec ``adapter`` describes
        (TAS-LoRA's experts and router for the ViT family). The spec is what run results and
        checkpoint metadata record as ``"adapter"``. Default: this family has no adapters."""
        raise ValueError(
            f"search-space family {self.family!r} has no adapters; got adapter settings "
            f"{sorted(adapter)}"
        )

    # ---- operation selection and tabular benchmarks (cell spaces) -----------------------------
    def describe(self, arch: Arch) -> str:
        """The arch in the family's own text form (NB201 string, DARTS genotype); default:
        its canonical JSON."""
        return self.to_json(arch)

    def parse(self, text: str) -> Arch:
        """An arch from its text form (:meth:`describe`) or its JSON; default: JSON only."""
        return self.from_json(text)

    def selection_labels(self) -> dict[str, tuple[list[str], list[str]]]:
        """Per cell type of :meth:`Supernet.selection_scores`: (edge labels, op labels), the
        rows and columns of its importance matrix. Default: the family has no selector."""
        raise ValueError(f"search-space family {self.family!r} has no operation selector")

    def select(self, scores: Mapping[str, Any]) -> Arch:
        """The discrete arch that importance matrices ``scores`` (as returned by
        :meth:`Supernet.selection_scores`, averaged over a val pass; tensors or nested lists)
        select, by the family's rule. Default: the family has no selector."""
        raise ValueError(f"search-space family {self.family!r} has no operation selector")

    # ---- a dense model to start from, and per-unit candidate filtering (FLORA) ----------------
    def dense_overrides(self, model: Mapping[str, Any]) -> dict[str, Any]:
        """Overrides of this space's config that make it describe the dense model ``model``
        (an export's ``{"builder", "kwargs"}``, or ``{"timm": kwargs}``), for families that
        start from a trained dense model. Default: the family does not."""
        raise ValueError(f"search-space family {self.family!r} does not start from a dense model")

    def dense_spec(self) -> dict[str, Any]:
        """``export_spec`` of the dense model this space is derived from (the teacher and the
        reference of a compression search). Default: the family has none."""
        raise ValueError(f"search-space family {self.family!r} has no dense model")

    def filter_units(self) -> int:
        """Number of independent units (FLORA: blocks) whose choices a filter stage judges one
        at a time in a local supernet; 0 (the default): the family cannot be filtered."""
        return 0

    def local_overrides(self, unit: int) -> dict[str, Any]:
        """Overrides of the local space in which only ``unit`` varies."""
        raise ValueError(f"search-space family {self.family!r} has no filter units")

    def local_archs(self, unit: int) -> dict[str, Arch]:
        """Every arch varying ``unit`` only, by the unit's choice as text; the largest arch
        is one of them."""
        raise ValueError(f"search-space family {self.family!r} has no filter units")

    def restrict_overrides(self, kept: Mapping[int, Any]) -> dict[str, Any]:
        """Overrides restricting each unit to its ``kept`` choices (text form, as in
        :meth:`local_archs`)."""
        raise ValueError(f"search-space family {self.family!r} has no filter units")

    def tabular_benchmark(self) -> Any | None:
        """A table of known accuracies for the archs of this space (NAS-Bench-201), or None.

        The object has ``name`` (str), ``metric`` (str), ``accuracy(arch) -> float`` and
        ``percentile(arch) -> float`` (percent of the table's archs scoring strictly below it).
        Default: no table."""
        return None

    # ---- identity and serialisation (shared) --------------------------------------------------
    def arch_id(self, arch: Arch) -> str:
        """Stable 12-hex-digit id of ``arch`` (see :func:`arch_id`)."""
        self.validate(arch)
        return arch_id(arch)

    def to_json(self, arch: Arch) -> str:
        """Canonical JSON of a valid ``arch``."""
        self.validate(arch)
        return arch_to_json(arch)

    def from_json(self, text: str) -> Arch:
        """Parse and validate an arch written by :meth:`to_json`."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"arch JSON does not parse: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError(f"arch JSON must be an object, got {type(data).__name__}")
        arch = arch_from_dict(self.arch_type, data)
        self.validate(arch)
        return arch
