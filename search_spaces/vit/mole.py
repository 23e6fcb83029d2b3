"""TAS-LoRA: a Mixture of LoRA Experts on the ViT supernet, routed by the architecture.

(DESIGN.md section 4.2.) Every block's ``qkv``, ``proj``, ``fc1`` and ``fc2`` (or a configured
subset) gets ``K`` LoRA experts, entangled like the base weights: expert ``k`` of a linear with
supernet shape ``(out_max, in_max)`` is ``A_k (r x in_max)`` and ``B_k (out_max x r)``, and a
subnet whose slice of the base weight is ``W[:o, :i]`` uses ``A_k[:, :i]`` and ``B_k[:o]``.
For qkv, B's rows follow the base weight's HEAD-MAJOR layout, so the same leading-row slice
``[:3a]`` selects the first ``heads`` heads of q, k and v, and extraction reorders them with
the base weight. B starts at zero, so an untrained MoLE supernet equals its base.

A router reads only the architecture (never the tokens): per block the features
``(embed/E_max, heads/H_max, mlp_ratio/R_max, depth/D_max, index/D_max, active)`` -> a learnt
block embedding -> a unidirectional LSTM across the blocks (an active block's mixture never
depends on blocks beyond the depth) -> a linear head -> softmax over the experts: one mixture
``g_b`` per block, or per block and target layer type (``router_per_layer_type``).

The subnet's effective weight is ``W[:o, :i] + (alpha / r) * sum_k g_bk B_k[:o] A_k[:, :i]``.

Cost. The merge happens on the weight side, once per forward, not per token: the experts of
one linear are stored concatenated along the rank dimension (``A``: ``(depth, K*r, in_max)``,
``B``: ``(depth, out_max, K*r)``), the mixture scales A's rows (one elementwise op per target
type for all blocks), and each block's linear then costs ONE ``addmm``:
``W_eff = W[:o, :i] + B[b, :o] @ A_g[b, :, :i]``, i.e. ``o * i * K * r`` multiply-adds, against
``tokens * o * i`` for the linear itself; no Python loop over experts and no copy of the base
weight beyond the ``(o, i)`` result. The base supernet applies ``W_eff`` through its
``weight_hook`` (``supernet.py``). For a fixed arch the mixture is constant, so ``extract``
merges the deltas into dense weights: a plain timm ViT, with zero inference overhead.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from search_spaces.base import Supernet
from search_spaces.vit.arch import ViTArch, validate_vit_arch
from search_spaces.vit.config import ViTSpaceConfig
from search_spaces.vit.supernet import ViTSupernet

TARGETS: tuple[str, ...] = ("qkv", "proj", "fc1", "fc2")
"""The linear layers of a block that can carry experts, in canonical order."""

NUM_ROUTER_FEATURES = 6
"""Per-block router input: embed, heads, mlp ratio, depth, block index, active flag."""


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MoleSpec:
    """The TAS-LoRA settings (the run config's ``mole`` section), plain data.

    Attributes:
        experts: number of LoRA experts ``K`` per target linear.
        rank: rank ``r`` of each expert.
        alpha: LoRA scaling numerator; the merged delta is scaled by ``alpha / rank``.
        targets: which linears of each block carry experts, a non-empty subset of
            ``("qkv", "proj", "fc1", "fc2")`` (stored in that canonical order).
        router_hidden: width of the router's block embedding and LSTM.
        router_per_layer_type: one mixture per block AND target type instead of per block.
    """

    experts: int = 4
    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = TARGETS
    router_hidden: int = 64
    router_per_layer_type: bool = False

    def __post_init__(self) -> None:
        for name in ("experts", "rank", "router_hidden"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"mole.{name}={value!r} is not allowed; allowed: an integer >= 1")
        alpha = self.alpha
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
            raise ValueError(f"mole.alpha={alpha!r} is not allowed; allowed: a number > 0")
        object.__setattr__(self, "alpha", float(alpha))
        targets = self.targets
        if isinstance(targets, str) or not isinstance(targets, (list, tuple)) or not targets:
            raise ValueError(
                f"mole.targets={targets!r} is not allowed; allowed: a non-empty list of {TARGETS}"
            )
        unknown = [t for t in targets if t not in TARGETS]
        if unknown or len(set(targets)) != len(targets):
            raise ValueError(
                f"mole.targets={list(targets)!r} is not allowed; allowed: distinct names "
                f"from {list(TARGETS)}"
            )
        object.__setattr__(self, "targets", tuple(t for t in TARGETS if t in targets))
        if not isinstance(self.router_per_layer_type, bool):
            raise ValueError(
                f"mole.router_per_layer_type={self.router_per_layer_type!r} is not allowed; "
                "allowed: true, false"
            )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MoleSpec:
        """Build from a plain mapping (e.g. YAML); unknown keys raise ``ValueError``."""
        allowed = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(allowed))
        if unknown:
            raise ValueError(f"unknown mole setting(s) {unknown}; allowed: {allowed}")
        kwargs = dict(data)
        if isinstance(kwargs.get("targets"), list):
            kwargs["targets"] = tuple(kwargs["targets"])
        return cls(**kwargs)

    @property
    def scale(self) -> float:
        """LoRA scaling ``alpha / rank``."""
        return self.alpha / self.rank

    @property
    def num_mixtures(self) -> int:
        """Mixtures per block: one per target type with ``router_per_layer_type``, else one."""
        return len(self.targets) if self.router_per_layer_type else 1


# --------------------------------------------------------------------------------------------
# Router
# --------------------------------------------------------------------------------------------


def router_features(config: ViTSpaceConfig, arch: ViTArch) -> list[list[float]]:
    """The router input of ``arch``: ``max_depth`` rows of :data:`NUM_ROUTER_FEATURES` values.

    Row ``b`` is ``(embed/E_max, heads_b/H_max, mlp_ratio_b/R_max, depth/D_max, b/D_max,
    active_b)``, the maxima being the largest choices of the space. Blocks at or beyond the
    depth have heads, MLP ratio and the active flag 0.
    """
    d_max = config.max_depth
    e = arch.embed_dim / max(config.embed_dims)
    depth = arch.depth / d_max
    h_max, r_max = config.max_heads, max(config.mlp_ratios)
    rows = []
    for b in range(d_max):
        if b < arch.depth:
            rows.append(
                [e, arch.num_heads[b] / h_max, arch.mlp_ratio[b] / r_max, depth, b / d_max, 1.0]
            )
        else:
            rows.append([e, 0.0, 0.0, depth, b / d_max, 0.0])
    return rows


class ArchRouter(nn.Module):
    """Architecture features -> per-block mixtures over the experts.

    ``forward(features)`` takes ``(N, max_depth, 6)`` (see :func:`router_features`) and returns
    softmax mixtures ``(N, max_depth, num_mixtures, experts)``. The LSTM is unidirectional, so
    row ``b`` depends only on the features of blocks ``0..b``.
    """

    def __init__(self, experts: int, hidden: int, num_mixtures: int = 1) -> None:
        super().__init__()
        self.experts = experts
        self.num_mixtures = num_mixtures
        self.embed = nn.Linear(NUM_ROUTER_FEATURES, hidden)
        self.lstm = nn.LSTM(hidden, hidden, batch_first=True)
        self.head = nn.Linear(hidden, num_mixtures * experts)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Pre-softmax scores ``(N, max_depth, num_mixtures, experts)``."""
        h, _ = self.lstm(F.gelu(self.embed(features)))
        return self.head(h).unflatten(-1, (self.num_mixtures, self.experts))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.logits(features).softmax(-1)


# --------------------------------------------------------------------------------------------
# Experts and the MoLE supernet
# --------------------------------------------------------------------------------------------


class LoraExperts(nn.Module):
    """The ``K`` rank-``r`` experts of one target linear in every block, entangled.

    ``A``: ``(max_depth, K*r, in_max)``, ``B``: ``(max_depth, out_max, K*r)``; expert ``k`` is
    rank rows ``[k*r, (k+1)*r)`` of A and the same columns of B. A is initialised like LoRA
    (Kaiming-uniform per block), B with zeros.
    """

    def __init__(self, depth: int, in_features: int, out_features: int, rank_total: int) -> None:
        super().__init__()
        self.A = nn.Parameter(torch.empty(depth, rank_total, in_features))
        self.B = nn.Parameter(torch.zeros(depth, out_features, rank_total))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for a in self.A.data:  # per block, so the fan-in is in_features (as LoRA on one layer)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        nn.init.zeros_(self.B)


def _lead(t: torch.Tensor, n: int, dim: int) -> torch.Tensor:
    """Leading ``n`` entries along ``dim``; ``t`` itself when nothing is cut away."""
    return t if t.shape[dim] == n else t.narrow(dim, 0, n)


class MoleViTSupernet(Supernet):
    """The ViT supernet (``self.base``) with TAS-LoRA experts and an architecture router.

    ``forward(x, arch)`` runs ``arch`` with the merged effective weights;
    ``extract(arch)`` returns the plain timm ViT with the deltas merged in (zero overhead).
    Parameter names: ``base.*`` (a plain :class:`ViTSupernet`'s state dict loads into
    ``.base``), ``experts.<target>.A|B``, ``router.*``.
    """

    def __init__(self, base: ViTSupernet, spec: MoleSpec) -> None:
        super().__init__()
        if not isinstance(base, ViTSupernet):
            raise ValueError(f"base must be a ViTSupernet, got {type(base).__name__}")
        if not isinstance(spec, MoleSpec):
            raise ValueError(f"spec must be a MoleSpec, got {type(spec).__name__}")
        self.base = base
        self.spec = spec
        c = base.config
        ref = base.head.weight
        kr = spec.experts * spec.rank
        e, a, h = c.max_embed_dim, c.max_heads * c.head_dim, c.max_hidden_dim
        shapes = {"qkv": (e, 3 * a), "proj": (a, e), "fc1": (e, h), "fc2": (h, e)}
        self.experts = nn.ModuleDict(
            {t: LoraExperts(c.max_depth, *shapes[t], kr) for t in spec.targets}
        ).to(device=ref.device, dtype=ref.dtype)
        self.router = ArchRouter(spec.experts, spec.router_hidden, spec.num_mixtures).to(
            device=ref.device, dtype=ref.dtype
        )
        # which mixture row each target reads
        self._mixture_index = {
            t: (i if spec.router_per_layer_type else 0) for i, t in enumerate(spec.targets)
        }

    @property
    def config(self) -> ViTSpaceConfig:
        return self.base.config

    # ---- parameters ---------------------------------------------------------------------------
    def freeze_base(self, frozen: bool = True) -> None:
        """Stop (or restart) gradients into the base supernet's parameters."""
        for p in self.base.parameters():
            p.requires_grad_(not frozen)

    def no_weight_decay(self) -> set[str]:
        """The base supernet's no-decay names (under ``base.``); experts and router follow the
        default rule (matrices decay, biases and vectors do not)."""
        return {f"base.{name}" for name in self.base.no_weight_decay()}

    def prepare_training(
        self, space: Any, *, seed: int, init_steps: int = 0, freeze_base: bool = True
    ) -> str | None:
        """TAS-LoRA's start: the group-wise router initialisation (:func:`group_init`) when
        ``init_steps`` > 0, then the base frozen (or not, ``freeze_base=False``)."""
        note = None
        if init_steps > 0:
            fit = group_init(self, space, steps=init_steps, seed=seed)
            note = f"group-wise router initialisation: {fit}"
        self.freeze_base(freeze_base)
        return note

    def mole_parameters(self) -> Iterator[nn.Parameter]:
        """The experts' and the router's parameters (what TAS-LoRA trains)."""
        yield from self.experts.parameters()
        yield from self.router.parameters()

    # ---- routing ------------------------------------------------------------------------------
    def router_input(self, archs: Sequence[ViTArch]) -> torch.Tensor:
        """``(len(archs), max_depth, 6)`` router features, on the router's device and dtype."""
        ref = self.router.head.weight
        rows = [router_features(self.config, a) for a in archs]
        return torch.tensor(rows, device=ref.device, dtype=ref.dtype)

    def mixtures(self, archs: Sequence[ViTArch]) -> torch.Tensor:
        """``(N, max_depth, num_mixtures, experts)`` mixtures of a batch of archs."""
        return self.router(self.router_input(archs))

    def mixture(self, arch: ViTArch) -> torch.Tensor:
        """The router's softmax output for ``arch``: ``(max_depth, experts)``, or
        ``(max_depth, len(targets), experts)`` with ``router_per_layer_type``. Rows at or
        beyond ``arch.depth`` belong to skipped blocks and are not used."""
        validate_vit_arch(arch, self.config)
        g = self.mixtures([arch])[0]
        return g if self.spec.router_per_layer_type else g[:, 0]

    # ---- the merge ----------------------------------------------------------------------------
    def _weight_hook(self, arch: ViTArch) -> Any:
        """The base supernet's ``weight_hook`` for ``arch``: ``W -> W + B[b,:o] @ A_g[b,:,:i]``.

        ``A_g`` is A with each expert's rank rows scaled by ``(alpha/r) * g_bk``: one
        elementwise op per target type covering all active blocks; then per block and target
        one ``addmm`` on views (unbind/narrow), so the only new tensor is the ``(o, i)``
        effective weight.
        """
        validate_vit_arch(arch, self.config)
        d, r = arch.depth, self.spec.rank
        g = self.mixtures([arch])[0, :d]  # (d, M, K)
        gs = g.repeat_interleave(r, dim=-1).mul_(self.spec.scale)  # (d, M, K*r)
        per_target: dict[str, tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]] = {}
        for t, experts in self.experts.items():
            m = self._mixture_index[t]
            a_g = _lead(experts.A, d, 0) * gs[:, m, :, None]  # (d, K*r, in_max)
            per_target[t] = (_lead(experts.B, d, 0).unbind(0), a_g.unbind(0))

        def hook(block: int, name: str, weight: torch.Tensor) -> torch.Tensor:
            factors = per_target.get(name)
            if factors is None:
                return weight
            o, i = weight.shape
            b, a = factors[0][block], factors[1][block]
            return torch.addmm(weight, _lead(b, o, 0), _lead(a, i, 1))

        return hook

    # ---- the Supernet contract ----------------------------------------------------------------
    def forward(self, x: torch.Tensor, arch: ViTArch) -> torch.Tensor:
        return self.base(x, arch, weight_hook=self._weight_hook(arch))

    def forward_features(self, x: torch.Tensor, arch: ViTArch) -> torch.Tensor:
        """Pre-logits features ``(B, embed_dim)`` with the merged experts."""
        return self.base.forward_features(x, arch, weight_hook=self._weight_hook(arch))

    @torch.no_grad()
    def extract(self, arch: ViTArch) -> nn.Module:
        """A plain timm ``VisionTransformer`` with ``arch``'s mixture merged into its dense
        weights (same builder and parameter names as the base supernet's extraction)."""
        return self.base.extract(arch, weight_hook=self._weight_hook(arch))


def build_mole_supernet(space: Any, spec: MoleSpec | Mapping[str, Any]) -> MoleViTSupernet:
    """A fresh MoLE supernet over ``space.build_supernet()`` (a ViT space)."""
    if not isinstance(spec, MoleSpec):
        if not isinstance(spec, Mapping):
            raise ValueError(f"mole spec must be a MoleSpec or a mapping, got {spec!r}")
        spec = MoleSpec.from_dict(spec)
    base = space.build_supernet()
    if not isinstance(base, ViTSupernet):
        raise ValueError(
            f"TAS-LoRA needs a ViT search space; {type(space).__name__} builds "
            f"{type(base).__name__}"
        )
    return MoleViTSupernet(base, spec)


# --------------------------------------------------------------------------------------------
# Group-wise router initialisation
# --------------------------------------------------------------------------------------------


def group_labels(space: Any, archs: Sequence[ViTArch], experts: int) -> list[int]:
    """Balanced parameter-count quantile groups: ``labels[n]`` in ``0..experts-1``.

    Archs are ranked by ``space.cost(arch)["params"]`` (ties kept in input order) and split
    into ``experts`` groups of equal size (sizes differ by at most one): group 0 holds the
    smallest models, group ``experts - 1`` the largest.
    """
    if isinstance(experts, bool) or not isinstance(experts, int) or experts < 1:
        raise ValueError(f"experts={experts!r} is not allowed; allowed: an integer >= 1")
    params = [space.cost(a)["params"] for a in archs]
    order = sorted(range(len(archs)), key=lambda n: params[n])
    labels = [0] * len(archs)
    for rank, n in enumerate(order):
        labels[n] = rank * experts // len(archs)
    return labels


def group_init(
    supernet: MoleViTSupernet,
    space: Any,
    *,
    steps: int,
    lr: float = 1e-2,
    seed: int = 0,
    batch: int = 64,
    pool: int = 1024,
) -> dict[str, float]:
    """Fit the router briefly so that archs of parameter-quantile group ``j`` prefer expert ``j``.

    Draws ``pool`` archs with ``space.sample`` (seeded), labels them with :func:`group_labels`,
    and takes ``steps`` Adam steps on the router alone, each on ``batch`` archs of the pool,
    minimising the cross-entropy between every active block's (and layer type's) mixture and
    the arch's group. Only the router changes. Returns the final pool-wide ``loss`` and
    ``accuracy``: the fraction of archs whose mean active-block mixture has its maximum at
    their group's expert.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps={steps!r} is not allowed; allowed: an integer >= 0")
    for name, value in (("batch", batch), ("pool", pool)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} is not allowed; allowed: an integer >= 1")
    rng = random.Random(seed)
    archs = [space.sample(rng) for _ in range(pool)]
    labels = torch.tensor(group_labels(space, archs, supernet.spec.experts))
    features = supernet.router_input(archs)
    active = features[..., -1]  # (pool, D): 1 for active blocks
    router = supernet.router
    was_training = router.training
    router.train()
    optimizer = torch.optim.Adam(router.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(len(archs), (min(batch, len(archs)),), generator=gen)
        loss = _group_loss(router, features[idx], active[idx], labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    router.train(was_training)
    with torch.no_grad():
        loss = _group_loss(router, features, active, labels).item()
        mean = _mean_active_mixture(router(features), active)
        accuracy = (mean.argmax(-1) == labels.to(mean.device)).float().mean().item()
    return {"loss": loss, "accuracy": accuracy, "steps": steps, "pool": pool}


def _group_loss(
    router: ArchRouter, features: torch.Tensor, active: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    logp = router.logits(features).log_softmax(-1)  # (N, D, M, K)
    target = labels.to(logp.device)[:, None, None, None].expand(*logp.shape[:-1], 1)
    nll = -logp.gather(-1, target)[..., 0].mean(-1)  # (N, D), mean over layer types
    return (nll * active).sum() / active.sum()


def _mean_active_mixture(g: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """``(N, K)``: the mixtures averaged over active blocks and layer types."""
    w = active[..., None, None]
    return (g * w).sum((1, 2)) / (w.sum((1, 2)) * g.shape[2])
