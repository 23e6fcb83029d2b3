"""The one rule that decides, prices and exports a low-rank layer.

A linear layer of ``in`` inputs and ``out`` outputs at rank ratio ``r`` has rank
``k = round(r x min(in, out))`` (at least 1). Run as two factors (in -> k, k -> out) it costs
``k x (in + out)`` MACs per token; as one dense matrix ``in x out``. It is **factored** exactly
where that is cheaper, and otherwise runs as the fused dense matrix ``B[:, :k] @ A[:k]`` (same
function, dense cost). ``cost()``, the supernet's forward and ``extract`` all call
:func:`is_factored`, so what is priced is what is deployed (FLORA's code charges the min but
deploys the factors whenever ``r != 1``; research/flora.md section 6).
"""

from __future__ import annotations


def rank_of(ratio: float, in_features: int, out_features: int) -> int:
    """Absolute rank of ``ratio`` for an ``in -> out`` layer: ``round(ratio x min(in, out))``."""
    return max(1, round(ratio * min(in_features, out_features)))


def is_factored(rank: int, in_features: int, out_features: int) -> bool:
    """True where two factors are strictly cheaper than the dense matrix."""
    return rank * (in_features + out_features) < in_features * out_features


def layer_macs(rank: int, in_features: int, out_features: int) -> int:
    """MACs per token: ``min(in x out, k x (in + out))``, by the same rule as export."""
    if is_factored(rank, in_features, out_features):
        return rank * (in_features + out_features)
    return in_features * out_features


def layer_params(rank: int, in_features: int, out_features: int) -> int:
    """Parameters of the exported layer (weights by the same rule, plus the bias)."""
    return layer_macs(rank, in_features, out_features) + out_features
