"""Analyses of trained supernets that need only torch (no Ray, no MLflow)."""

from trainables.analysis.cka import (
    cosine,
    cosine_matrix,
    linear_cka,
    linear_cka_matrix,
    mean_off_diagonal,
)

__all__ = ["cosine", "cosine_matrix", "linear_cka", "linear_cka_matrix", "mean_off_diagonal"]
