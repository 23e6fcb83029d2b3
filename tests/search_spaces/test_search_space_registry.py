"""Registry: finding spaces by name, override checking, and import hygiene."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import search_spaces
from search_spaces import build_space, get_family, list_families, list_presets, register_family
from search_spaces.vit import PRESETS, ViTSpace


def test_builtin_family_is_registered_on_import() -> None:
    assert "vit" in list_families()
    assert list_presets("vit") == [
        "autoformer-tiny",
        "autoformer-small",
        "autoformer-base",
        "vit-28",
        "vit-32",
    ]
    family = get_family("vit")
    assert family.config_type is type(PRESETS["vit-28"])
    assert isinstance(build_space("vit", "vit-32"), ViTSpace)


def test_unknown_family_lists_the_registered_ones() -> None:
    with pytest.raises(ValueError, match=r"'nope'.*registered: \['cell', 'lowrank', 'vit'"):
        build_space("nope")
    with pytest.raises(ValueError, match="nope"):
        list_presets("nope")


def test_unknown_preset_lists_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match=r"'vit-64'.*allowed: \['autoformer-tiny'.*'vit-32'\]"):
        build_space("vit", "vit-64")


def test_unknown_override_names_the_key_and_lists_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match=r"\['embed_dim'\].*allowed: \[.*'embed_dims'") as info:
        build_space("vit", "vit-28", overrides={"embed_dim": [64]})
    for field in ("patch_size", "img_size", "in_chans", "num_classes", "head_dim", "drop_path"):
        assert field in str(info.value)


def test_every_preset_field_is_overridable() -> None:
    space = build_space(
        "vit",
        "autoformer-tiny",
        overrides={
            "img_size": 32,
            "patch_size": 8,
            "in_chans": 1,
            "num_classes": 7,
            "head_dim": 32,
            "embed_dims": [64],
            "depths": [2],
            "num_heads": [1, 2],
            "mlp_ratios": [2],
            "supernet_embed_dim": None,
            "drop_path": 0.0,
            "drop_path_scales_with_embed": False,
            "mutate_depth_prob": 0.1,
            "mutate_embed_prob": 0.2,
            "mutate_block_prob": 0.3,
        },
    )
    cfg = space.config
    assert space.input_shape == (1, 32, 32) and space.num_classes == 7
    assert (cfg.head_dim, cfg.max_embed_dim, cfg.mutate_block_prob) == (32, 64, 0.3)


def test_registration_errors() -> None:
    def build(config: object) -> ViTSpace:
        return ViTSpace(config)  # type: ignore[arg-type]

    with pytest.raises(ValueError, match="already registered"):
        register_family("vit", build=build, presets=PRESETS, default_preset="vit-28")
    with pytest.raises(ValueError, match="default_preset 'x'"):
        register_family("other", build=build, presets=PRESETS, default_preset="x")
    with pytest.raises(ValueError, match="one frozen dataclass type"):
        register_family("other", build=build, presets={"a": {"x": 1}}, default_preset="a")
    assert list_families() == ["cell", "lowrank", "vit"]


def test_importing_search_spaces_pulls_in_no_orchestration_libraries() -> None:
    """search_spaces is pure PyTorch (DESIGN.md section 1): optuna is imported only inside
    ``distributions()``, ray and mlflow never."""
    code = (
        "import sys, search_spaces\n"
        "heavy = ('optuna', 'ray', 'mlflow')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
        "search_spaces.build_space('vit').distributions()\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    root = Path(search_spaces.__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=root, check=True
    ).stdout.split("\n")
    assert out[0] == "[]"
    assert out[1] == "['optuna']"
