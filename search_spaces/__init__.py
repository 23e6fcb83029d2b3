"""Search spaces and supernets, one family per sub-package; pure PyTorch and plain Python.

``import search_spaces`` registers the built-in families, after which a config names a space
by family and preset::

    space = build_space("vit", "vit-28", overrides={"depths": [2, 3]})
    supernet = space.build_supernet()
"""

from search_spaces.base import Arch, SearchSpace, Supernet, arch_id, build_from_spec
from search_spaces.registry import (
    build_space,
    get_family,
    list_families,
    list_presets,
    register_family,
)

# Built-in families register themselves on import (after the registry exists).
from search_spaces import vit  # noqa: E402,F401  isort: skip
from search_spaces import cell  # noqa: E402,F401  isort: skip
from search_spaces import lowrank  # noqa: E402,F401  isort: skip

__all__ = [
    "Arch",
    "SearchSpace",
    "Supernet",
    "arch_id",
    "build_from_spec",
    "build_space",
    "get_family",
    "list_families",
    "list_presets",
    "register_family",
]
