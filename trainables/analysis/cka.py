"""Similarity of two subnets' features on the same probe images (feature-collapse analysis).

**Linear CKA** (Kornblith et al., "Similarity of Neural Network Representations Revisited",
ICML 2019). For feature matrices ``X (n x d1)`` and ``Y (n x d2)`` over the same ``n`` probe
samples, with columns centred (``Xc = X - mean(X, 0)``)::

    CKA(X, Y) = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F * ||Yc^T Yc||_F)

which equals ``HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))`` for the linear kernels ``K = X X^T``,
``L = Y Y^T`` (the ``1/(n-1)^2`` factors of HSIC cancel). It compares the two representations'
sample-by-sample similarity structure, so ``d1`` and ``d2`` may differ. It lies in ``[0, 1]``,
is 1 for identical features, and is invariant to orthogonal transforms, isotropic scaling and
translation of either side -- but not to arbitrary invertible linear maps.

The sums run in float64 whatever the input dtype. When ``n`` is smaller than the widths the
``n x n`` Gram form is used, otherwise the ``d x d`` feature form; both give the same value.
Features with zero variance (every sample alike) give ``nan``: their CKA is undefined.

**Cosine** (only for equal widths): the mean over probe samples of the cosine between the two
subnets' feature vectors of that sample, ``mean_i cos(X[i], Y[i])``, on the raw (uncentred)
features. This is the "features of different subnets point the same way" reading of feature
collapse: a per-sample quantity, in ``[-1, 1]``, 1 for identical features, sensitive to a
shared offset (which CKA removes by centring).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def _check(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.dim() != 2:
        raise ValueError(
            f"{name} must be a 2-D (samples x features) matrix, got shape {tuple(x.shape)}"
        )
    if x.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 samples, got {x.shape[0]}")
    return x.detach().to(dtype=torch.float64)


def _centred(x: torch.Tensor) -> torch.Tensor:
    return x - x.mean(dim=0, keepdim=True)


def _hsic(xc: torch.Tensor, yc: torch.Tensor) -> float:
    """``||Yc^T Xc||_F^2`` = ``<Xc Xc^T, Yc Yc^T>_F`` for centred inputs (unnormalised HSIC)."""
    n = xc.shape[0]
    if n < max(xc.shape[1], yc.shape[1]):
        return float(((xc @ xc.T) * (yc @ yc.T)).sum())
    return float((yc.T @ xc).square().sum())


def _cka_centred(xc: torch.Tensor, yc: torch.Tensor, self_x: float, self_y: float) -> float:
    denominator = math.sqrt(self_x) * math.sqrt(self_y)
    if denominator == 0.0:
        return math.nan
    return min(1.0, max(0.0, _hsic(xc, yc) / denominator))


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of ``x (n x d1)`` and ``y (n x d2)``: rows are the same ``n`` samples."""
    x, y = _check(x, "x"), _check(y, "y")
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"x and y must have the same samples (rows): got {x.shape[0]} and {y.shape[0]}"
        )
    xc, yc = _centred(x), _centred(y)
    return _cka_centred(xc, yc, _hsic(xc, xc), _hsic(yc, yc))


def linear_cka_matrix(features: Sequence[torch.Tensor]) -> list[list[float]]:
    """Pairwise linear CKA of feature matrices over the same samples (any widths): a symmetric
    ``K x K`` matrix (lists of floats) with 1 on the diagonal (``nan`` for zero-variance
    features). Each matrix is centred and its self-similarity computed once."""
    centred = [_centred(_check(f, f"features[{i}]")) for i, f in enumerate(features)]
    rows = {f.shape[0] for f in centred}
    if len(rows) > 1:
        raise ValueError(
            f"all feature matrices must have the same samples (rows), got {sorted(rows)}"
        )
    selfs = [_hsic(f, f) for f in centred]
    k = len(centred)
    matrix = [[math.nan] * k for _ in range(k)]
    for i in range(k):
        matrix[i][i] = 1.0 if selfs[i] > 0.0 else math.nan
        for j in range(i + 1, k):
            value = _cka_centred(centred[i], centred[j], selfs[i], selfs[j])
            matrix[i][j] = matrix[j][i] = value
    return matrix


def cosine(x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean over samples of the cosine between ``x[i]`` and ``y[i]`` (equal widths only)."""
    x, y = _check(x, "x"), _check(y, "y")
    if x.shape != y.shape:
        raise ValueError(
            f"cosine needs features of the same shape (samples x width), got {tuple(x.shape)} "
            f"and {tuple(y.shape)}; use linear_cka across widths"
        )
    return float(torch.nn.functional.cosine_similarity(x, y, dim=1, eps=1e-12).mean())


def cosine_matrix(features: Sequence[torch.Tensor]) -> list[list[float | None]]:
    """Pairwise :func:`cosine`; ``None`` where the two feature widths differ."""
    k = len(features)
    matrix: list[list[float | None]] = [[None] * k for _ in range(k)]
    for i in range(k):
        for j in range(i, k):
            if features[i].shape == features[j].shape:
                matrix[i][j] = matrix[j][i] = cosine(features[i], features[j])
    return matrix


def mean_off_diagonal(matrix: Sequence[Sequence[float | None]]) -> float | None:
    """Mean of the finite off-diagonal entries (``None`` and ``nan`` skipped); ``None`` if none."""
    values = [
        value
        for i, row in enumerate(matrix)
        for j, value in enumerate(row)
        if i != j and value is not None and math.isfinite(value)
    ]
    return sum(values) / len(values) if values else None
