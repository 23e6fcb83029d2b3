"""Linear CKA and cosine of feature matrices (trainables.analysis.cka)."""

from __future__ import annotations

import math

import pytest
import torch

from trainables.analysis.cka import (
    cosine,
    cosine_matrix,
    linear_cka,
    linear_cka_matrix,
    mean_off_diagonal,
)


def features(n: int, d: int, seed: int) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def orthogonal(d: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(features(d, d, seed).double())
    return q.float()


def reference_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Kornblith et al.'s definition, literally: HSIC with the centring matrix H."""
    x, y = x.double(), y.double()
    n = x.shape[0]
    h = torch.eye(n, dtype=torch.float64) - 1.0 / n
    gram_x, gram_y = h @ x @ x.T @ h, h @ y @ y.T @ h

    def hsic(a, b):
        return float((a * b).sum()) / (n - 1) ** 2

    return hsic(gram_x, gram_y) / math.sqrt(hsic(gram_x, gram_x) * hsic(gram_y, gram_y))


def test_cka_of_features_with_themselves_is_one():
    x = features(64, 16, 0)
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("n,d1,d2", [(64, 8, 24), (16, 40, 12)], ids=["feature-form", "gram-form"])
def test_cka_matches_the_hsic_definition_across_widths(n, d1, d2):
    x, y = features(n, d1, 1), features(n, d2, 2) + 0.5 * features(n, d1, 1).repeat(1, 3)[:, :d2]
    assert linear_cka(x, y) == pytest.approx(reference_cka(x, y), rel=1e-9)


def test_cka_is_invariant_to_orthogonal_maps_scaling_and_translation():
    x, y = features(128, 16, 3), features(128, 8, 4)
    y = torch.cat([x[:, :8] + 0.3 * y, y], dim=1)  # related to x, another width
    base = linear_cka(x, y)
    assert 0.1 < base < 0.99
    assert linear_cka(x @ orthogonal(16, 5), y) == pytest.approx(base, abs=1e-6)
    assert linear_cka(x, y @ orthogonal(16, 6)) == pytest.approx(base, abs=1e-6)
    assert linear_cka(7.5 * x, 0.01 * y) == pytest.approx(base, abs=1e-6)
    assert linear_cka(x + 3.0, y - 1.0) == pytest.approx(base, abs=1e-6)
    assert linear_cka(x, x @ orthogonal(16, 7) * 2.0) == pytest.approx(1.0, abs=1e-6)


def test_cka_is_not_invariant_to_arbitrary_invertible_maps():
    x = features(128, 16, 8)
    stretch = torch.diag(torch.logspace(-2, 2, 16))  # invertible, far from orthogonal
    assert linear_cka(x, x @ stretch) < 0.8


def test_cka_is_symmetric_and_in_unit_interval():
    for seed in range(5):
        x, y = features(32, 4 + seed, seed), features(32, 10, 100 + seed)
        y = y + x.sum(dim=1, keepdim=True) * seed / 4
        value = linear_cka(x, y)
        assert value == pytest.approx(linear_cka(y, x), abs=1e-12)
        assert 0.0 <= value <= 1.0


def test_independent_random_features_give_low_cka():
    assert linear_cka(features(512, 16, 9), features(512, 24, 10)) < 0.1


def test_cka_needs_matching_samples():
    with pytest.raises(ValueError, match="same samples"):
        linear_cka(features(10, 4, 0), features(12, 4, 1))
    with pytest.raises(ValueError, match="2-D"):
        linear_cka(torch.zeros(10), features(10, 4, 1))


def test_constant_features_have_undefined_cka():
    assert math.isnan(linear_cka(torch.ones(8, 3), features(8, 3, 0)))


def test_cka_matrix_is_symmetric_with_unit_diagonal_and_matches_pairs():
    feats = [features(48, d, s) for s, d in enumerate((8, 8, 16, 4))]
    feats[1] = feats[0] @ orthogonal(8, 11) + 0.1 * feats[1]
    matrix = linear_cka_matrix(feats)
    for i in range(4):
        assert matrix[i][i] == 1.0
        for j in range(4):
            assert matrix[i][j] == matrix[j][i]
            if i != j:
                assert matrix[i][j] == pytest.approx(linear_cka(feats[i], feats[j]), abs=1e-12)
    assert matrix[0][1] > 0.9


def test_cosine_of_identical_features_is_one_and_needs_equal_widths():
    x = features(32, 8, 12)
    assert cosine(x, x) == pytest.approx(1.0, abs=1e-12)
    assert cosine(x, -x) == pytest.approx(-1.0, abs=1e-12)
    assert cosine(x, 3.0 * x) == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(ValueError, match="same shape"):
        cosine(x, features(32, 16, 13))


def test_cosine_matrix_is_none_exactly_where_widths_differ():
    feats = [features(16, d, s) for s, d in enumerate((8, 16, 8))]
    matrix = cosine_matrix(feats)
    assert matrix[0][1] is None and matrix[1][2] is None and matrix[1][0] is None
    assert matrix[0][2] == matrix[2][0] == pytest.approx(cosine(feats[0], feats[2]))
    assert all(matrix[i][i] == pytest.approx(1.0) for i in range(3))


def test_mean_off_diagonal_skips_the_diagonal_and_missing_entries():
    assert mean_off_diagonal(
        [[1.0, 0.2, None], [0.2, 1.0, 0.4], [None, 0.4, 1.0]]
    ) == pytest.approx(0.3)
    assert mean_off_diagonal([[1.0, None], [None, 1.0]]) is None
