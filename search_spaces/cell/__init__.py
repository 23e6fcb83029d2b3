"""The cell family (IT-NAS): NAS-Bench-201 and DARTS cell spaces, one supernet, two selectors.

Importing this package registers the family as ``"cell"`` with the presets of ``presets.py``;
``config.kind`` picks :class:`NB201Space` or :class:`DartsSpace`. ``table.py`` (the
NAS-Bench-201 CIFAR-10 table) is imported only when a space's ``tabular_benchmark()`` is asked.
"""

from search_spaces.cell.arch import (
    DartsArch,
    NB201Arch,
    from_genotype_text,
    from_index,
    from_nb201_string,
    to_genotype_text,
    to_index,
    to_nb201_string,
)
from search_spaces.cell.config import CellSpaceConfig
from search_spaces.cell.network import DartsNetwork, NB201Network, build_cell_network
from search_spaces.cell.presets import DEFAULT_PRESET, PRESETS
from search_spaces.cell.selector import IndicatorTokenSelector
from search_spaces.cell.space import DartsSpace, NB201Space, build_cell_space
from search_spaces.cell.supernet import CellSupernet
from search_spaces.registry import register_family

register_family(
    "cell",
    build=build_cell_space,
    presets=PRESETS,
    default_preset=DEFAULT_PRESET,
    summary="cell spaces (NAS-Bench-201, DARTS): one op per edge, IT-NAS or DARTS selector",
)

__all__ = [
    "PRESETS",
    "CellSpaceConfig",
    "CellSupernet",
    "DartsArch",
    "DartsNetwork",
    "DartsSpace",
    "IndicatorTokenSelector",
    "NB201Arch",
    "NB201Network",
    "NB201Space",
    "build_cell_network",
    "build_cell_space",
    "from_genotype_text",
    "from_index",
    "from_nb201_string",
    "to_genotype_text",
    "to_index",
    "to_nb201_string",
]
