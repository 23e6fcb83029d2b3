"""The engine is family-neutral: nothing under `trainables/` or `orchestrator/` imports a
search-space family's package or branches on a family's or method's name.

What a family needs from the engine (weight-decay groups, initialisation and freezing, adapters,
pre-logits features, BatchNorm recalibration, the export builder) reaches it through the
`SearchSpace` / `Supernet` contracts of `search_spaces/base.py`. The one exception is a method's
own stage module: `orchestrator/stages/mole.py` is TAS-LoRA's. Tables that map methods to
families and stages as data (`METHOD_FAMILY`, `METHOD_STAGES` in `orchestrator/config/schema.py`)
are dict literals, not branches, and are not flagged; neither are docstrings or messages.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import search_spaces
from orchestrator.config import METHOD_FAMILY

ROOT = Path(__file__).parents[1]
EXEMPT = {Path("orchestrator/stages/mole.py")}
NEUTRAL_MODULES = {"search_spaces", "search_spaces.base", "search_spaces.registry"}
NAMES = (
    set(search_spaces.list_families()) | set(METHOD_FAMILY) | set(METHOD_FAMILY.values())
)  # families (registered or not) and methods

FILES = sorted(
    path.relative_to(ROOT)
    for package in ("trainables", "orchestrator")
    for path in (ROOT / package).rglob("*.py")
    if path.relative_to(ROOT) not in EXEMPT
)


def _string_constants(node: ast.AST) -> list[str]:
    """String constants of a comparison operand: itself, or the items of a tuple/list/set."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [s for elt in node.elts for s in _string_constants(elt)]
    return []


def violations(source: str, filename: str = "<source>") -> list[str]:
    """Family-specific imports and name comparisons in `source`, as `file:line: what`."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("search_spaces.") and alias.name not in NEUTRAL_MODULES:
                    found.append(f"{filename}:{line}: imports {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            module = node.module
            if module.startswith("search_spaces.") and module not in NEUTRAL_MODULES:
                found.append(f"{filename}:{line}: imports from {module}")
            elif module == "search_spaces":
                for alias in node.names:  # a family's sub-package, e.g. `vit`
                    if alias.name in NAMES or _is_package(alias.name):
                        found.append(f"{filename}:{line}: imports search_spaces.{alias.name}")
        elif isinstance(node, ast.Compare):
            for operand in (node.left, *node.comparators):
                for value in _string_constants(operand):
                    if value in NAMES:
                        found.append(f"{filename}:{line}: compares with {value!r}")
        elif isinstance(node, ast.MatchValue):
            for value in _string_constants(node.value):
                if value in NAMES:
                    found.append(f"{filename}:{line}: matches {value!r}")
    return found


def _is_package(name: str) -> bool:
    return hasattr(getattr(search_spaces, name, None), "__path__")


def test_files_are_found():
    assert Path("trainables/supernets.py") in FILES
    assert Path("orchestrator/config/schema.py") in FILES
    assert Path("orchestrator/stages/mole.py") not in FILES
    assert {"vit", "autoformer", "tas-lora", "flora", "it-nas", "lowrank", "cell"} <= NAMES


@pytest.mark.parametrize("path", FILES, ids=str)
def test_engine_module_is_family_neutral(path):
    assert violations((ROOT / path).read_text(), str(path)) == []


@pytest.mark.parametrize(
    "snippet",
    [
        "import search_spaces.vit.mole",
        "from search_spaces.vit.mole import group_init",
        "from search_spaces import vit",
        "if space.family == 'vit':\n    pass",
        "ok = config.method in ('autoformer', 'tas-lora')",
        "ok = 'flora' != method",
        "match method:\n    case 'it-nas':\n        pass",
    ],
)
def test_the_check_catches_family_branches(snippet):
    assert violations(snippet)


@pytest.mark.parametrize(
    "snippet",
    [
        '"""Docstring naming vit, autoformer and tas-lora."""',
        "from search_spaces import Supernet, build_space, arch_id",
        "from search_spaces.base import SearchSpace",
        "TABLE = {'autoformer': 'vit', 'tas-lora': 'vit'}",
        "raise ValueError(f\"method {'flora'} is not available\")",
        "ok = name == 'supernet'",
    ],
)
def test_the_check_leaves_data_and_text_alone(snippet):
    assert violations(snippet) == []
