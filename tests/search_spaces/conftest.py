"""Fixtures for the search-space tests; the family-specific ones live in ``contract_kits.py``."""

from __future__ import annotations

import pytest
import torch

from search_spaces import build_space
from search_spaces.vit import ViTSpace
from tests.search_spaces.search_space_contract import SupernetCache


@pytest.fixture(autouse=True)
def _two_threads() -> None:
    """Match the 2-core CI machines; results do not depend on it, wall time does."""
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def supernets() -> SupernetCache:
    return SupernetCache()


@pytest.fixture(scope="session")
def vit28() -> ViTSpace:
    return build_space("vit", "vit-28")


@pytest.fixture(scope="session")
def vit28_supernet(vit28: ViTSpace) -> torch.nn.Module:
    torch.manual_seed(0)
    return vit28.build_supernet()
