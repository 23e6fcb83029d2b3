"""Shared fixtures. Data is real: Fashion-MNIST from Debian's dataset-fashion-mnist (installed by
`make test`) and scikit-learn's bundled digits."""

from __future__ import annotations

import pytest

from trainables.data import DataConfig, load_splits


@pytest.fixture(scope="session")
def fashion_mnist_splits():
    """Fashion-MNIST with the default 5000-image val carve-out (loaded once per session)."""
    return load_splits(DataConfig(name="fashion_mnist", download=False))


@pytest.fixture(scope="session")
def digits_splits():
    return load_splits(DataConfig(name="digits"))
