"""Find search spaces by name, so a config can say ``family: vit, preset: vit-28``.

A family registers itself from its own package (``search_spaces/<family>/__init__.py``) with a
factory and its presets; the orchestrator only ever calls :func:`build_space` and never learns a
family's name or config class. Presets are frozen dataclasses (configuration as data, like timm's
model cfgs); overrides are applied with :func:`dataclasses.replace`, so the config class's own
``__post_init__`` is the single place that checks values.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from search_spaces.base import SearchSpace


@dataclasses.dataclass(frozen=True)
class Family:
    """A registered search-space family.

    Attributes:
        name: the name configs use (``family: vit``).
        build: ``config -> SearchSpace``; the one way a space of this family is constructed.
        presets: preset name -> frozen config dataclass, all of the same class.
        default_preset: used when a config names no preset.
        summary: one line for ``raynas`` listings.
    """

    name: str
    build: Callable[[Any], SearchSpace]
    presets: Mapping[str, Any]
    default_preset: str
    summary: str = ""

    @property
    def config_type(self) -> type:
        return type(self.presets[self.default_preset])


_FAMILIES: dict[str, Family] = {}


def register_family(
    name: str,
    *,
    build: Callable[[Any], SearchSpace],
    presets: Mapping[str, Any],
    default_preset: str,
    summary: str = "",
) -> Family:
    """Register a family; called once from the family's package ``__init__``."""
    if name in _FAMILIES:
        raise ValueError(f"search-space family {name!r} is already registered")
    if not presets:
        raise ValueError(f"family {name!r} must register at least one preset")
    if default_preset not in presets:
        raise ValueError(
            f"default_preset {default_preset!r} of family {name!r} is not one of its presets "
            f"{sorted(presets)}"
        )
    config_types = {type(cfg) for cfg in presets.values()}
    if len(config_types) != 1 or not dataclasses.is_dataclass(next(iter(config_types))):
        raise ValueError(f"presets of family {name!r} must all be one frozen dataclass type")
    family = Family(
        name=name,
        build=build,
        presets=MappingProxyType(dict(presets)),
        default_preset=default_preset,
        summary=summary,
    )
    _FAMILIES[name] = family
    return family


def list_families() -> list[str]:
    """Names of the registered families, sorted."""
    return sorted(_FAMILIES)


def get_family(name: str) -> Family:
    """The registered :class:`Family` called ``name``; ``ValueError`` lists the known ones."""
    try:
        return _FAMILIES[name]
    except KeyError:
        raise ValueError(
            f"unknown search-space family {name!r}; registered: {list_families()}"
        ) from None


def list_presets(family: str) -> list[str]:
    """Preset names of ``family``, in registration order."""
    return list(get_family(family).presets)


def preset_config(family: str, preset: str | None = None) -> Any:
    """The frozen config dataclass of a preset (the family default when ``preset`` is None)."""
    fam = get_family(family)
    name = fam.default_preset if preset is None else preset
    if name not in fam.presets:
        raise ValueError(
            f"unknown preset {name!r} for family {family!r}; allowed: {list(fam.presets)}"
        )
    return fam.presets[name]


def build_space(
    family: str,
    preset: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> SearchSpace:
    """Build the search space ``family``/``preset`` with any preset field overridden.

    Raises ``ValueError`` naming an unknown family, preset or override key (listing the allowed
    ones) or, from the config class, a field whose value is not allowed.
    """
    fam = get_family(family)
    config = preset_config(family, preset)
    if overrides:
        allowed = [f.name for f in dataclasses.fields(config)]
        unknown = [key for key in overrides if key not in allowed]
        if unknown:
            raise ValueError(
                f"unknown override(s) {unknown} for search-space family {family!r}; "
                f"allowed: {allowed}"
            )
        config = dataclasses.replace(config, **dict(overrides))
    return fam.build(config)
