"""Runs the shared SearchSpace/Supernet contract on every registered family and preset."""

from __future__ import annotations

import pytest

from search_spaces import SearchSpace, build_space, list_families, list_presets
from tests.search_spaces.contract_kits import KITS
from tests.search_spaces.search_space_contract import ContractKit, SearchSpaceContract

REGISTERED = [f"{family}/{preset}" for family in list_families() for preset in list_presets(family)]


def test_every_registered_family_has_a_contract_kit() -> None:
    assert set(list_families()) <= set(KITS), "add a ContractKit in contract_kits.py"


@pytest.fixture(scope="module", params=REGISTERED)
def preset_key(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def space(preset_key: str) -> SearchSpace:
    family, preset = preset_key.split("/", 1)
    return build_space(family, preset)


@pytest.fixture(scope="module")
def kit(preset_key: str) -> ContractKit:
    return KITS[preset_key.split("/", 1)[0]]


class TestRegisteredSpaces(SearchSpaceContract):
    """Every test of the contract, once per ``family/preset``."""
