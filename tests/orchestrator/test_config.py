"""Config validation: every shipped config is valid, and each kind of mistake gets a message
that names the field, the value given and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from orchestrator.config import METHOD_DEFAULT_STAGES, METHOD_STAGES, load_config, parse
from orchestrator.errors import ConfigError

# run configs; configs/cluster-*.yaml are cluster specs (tests/cluster)
CONFIGS = sorted(
    p
    for p in (Path(__file__).parents[2] / "configs").glob("*.yaml")
    if not p.name.startswith("cluster-")
)
BASE = {
    "name": "t",
    "method": "autoformer",
    "data": {"name": "digits"},
    "space": {"preset": "vit-28"},
}


def problems(data: dict) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(data, "cfg.yaml")
    return info.value.problems


def with_(**sections) -> dict:
    data = yaml.safe_load(yaml.safe_dump(BASE))
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key].update(value)
        else:
            data[key] = value
    return data


def test_configs_exist_for_every_method():
    methods = {yaml.safe_load(p.read_text())["method"] for p in CONFIGS}
    assert methods == set(METHOD_STAGES)
    assert any(p.name == "quickstart.yaml" for p in CONFIGS)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_validate(path):
    config = load_config(path)
    assert config.name == yaml.safe_load(path.read_text())["name"]
    assert config.stage_names == METHOD_DEFAULT_STAGES[config.method]


def test_unregistered_family_is_one_problem(monkeypatch):
    """A method whose family is not registered: that is the config's only problem."""
    import search_spaces.registry as registry

    monkeypatch.setattr(
        registry, "_FAMILIES", {k: v for k, v in registry._FAMILIES.items() if k != "lowrank"}
    )
    with pytest.raises(ConfigError) as info:
        load_config(CONFIGS[0].parent / "flora-cifar10.yaml")
    assert info.value.problems == [
        "space.family: 'lowrank' (method flora) is not a registered search-space family; "
        "registered: cell, vit"
    ]


def test_unregistered_stage_is_one_problem(monkeypatch):
    import orchestrator.stages

    known = orchestrator.stages.registered()
    without = {k: v for k, v in known.items() if k not in ("search", "export")}
    monkeypatch.setattr(orchestrator.stages, "registered", lambda: without)
    assert problems(with_()) == [
        f"stages: search, export (method autoformer) not registered; registered: {', '.join(without)}"
    ]


def test_minimal_config_gets_method_defaults():
    config = parse(with_(), "cfg.yaml")
    assert config.family == "vit"
    assert config.stage_names == ("supernet", "search", "export", "report")
    assert config.run_path == "runs/t"
    assert config.search.strategy == "nsga2" and config.supernet.weight_decay == 0.05


def test_typo_in_nested_key_names_field_and_suggests():
    [line] = problems(with_(data={"name": "digits", "vall_size": 100}))
    assert line.startswith("data.vall_size: unknown key")
    assert "allowed keys: " in line and "val_size" in line
    assert line.endswith("did you mean 'val_size'?")


def test_typo_in_top_level_section():
    data = with_()
    data["serach"] = {"budget": 3}
    [line] = problems(data)
    assert line.startswith("serach: unknown key") and "did you mean 'search'?" in line


def test_wrong_type_names_field_and_value():
    [line] = problems(with_(search={"budget": "lots"}))
    assert (
        line
        == "search.budget: got 'lots'; allowed: a valid integer, unable to parse string as an integer"
    )


def test_out_of_range_value():
    [line] = problems(with_(supernet={"epochs": 0}))
    assert line == "supernet.epochs: got 0; allowed: greater than or equal to 1"


def test_choice_lists_the_choices():
    [line] = problems(with_(search={"strategy": "nsgaii"}))
    assert line == (
        "search.strategy: got 'nsgaii'; allowed: 'nsga2', 'evolution', 'tpe', 'random' or 'gp'"
    )


def test_list_items_are_addressed_by_index():
    [line] = problems(with_(mole={"targets": ["qkv", "attn"]}))
    assert line.startswith("mole.targets[1]: got 'attn'; allowed: 'qkv', 'proj', 'fc1' or 'fc2'")


def test_every_problem_is_reported_at_once():
    lines = problems(with_(supernet={"epochs": -1, "lr": 0}, search={"budget": 0}))
    assert [line.split(":")[0] for line in lines] == [
        "supernet.epochs",
        "supernet.lr",
        "search.budget",
    ]


def test_missing_required_key():
    data = with_()
    del data["method"]
    assert problems(data) == ["method: required key is missing"]


@pytest.mark.parametrize(
    ("sections", "fragment"),
    [
        (
            {"space": {"family": "cell"}},
            "space.family='cell' does not fit method 'autoformer'; allowed: 'vit'",
        ),
        ({"stages": ["supernet", "mole"]}, "stages ['mole'] are not part of method 'autoformer'"),
        ({"stages": ["search", "supernet"]}, "must be distinct and in pipeline order"),
        (
            {"search": {"constraints": {"params": {"min": 5, "max": 1}}}},
            "min=5 is greater than max=1",
        ),
        ({"search": {"objectives": []}}, "choose 1 to 3 distinct objectives"),
        (
            {"tracking": {"uri": "mlflow.local:5000"}},
            "uri='mlflow.local:5000' must start with one of",
        ),
        (
            {"data": {"name": "digits", "normalize": "custom", "mean": [0.5]}},
            "normalize=custom needs both",
        ),
        (
            {"data": {"name": "digits", "val_size": 10.5}},
            "val_size=10.5: a count must be a whole number",
        ),
        (
            {"name": "my run!"},
            "name: got 'my run!'; allowed: letters, digits, '.', '_' and '-', starting with a letter or digit",
        ),
    ],
)
def test_cross_field_rules(sections, fragment):
    lines = problems(with_(**sections))
    assert any(fragment in line for line in lines), lines


def test_registry_checks_name_the_allowed_values():
    [line] = problems(with_(data={"name": "mnistt"}))
    assert line.startswith("data.name: got 'mnistt'; allowed: ") and "fashion_mnist" in line
    [line] = problems(with_(space={"preset": "vit-99"}))
    assert (
        line.startswith("space.preset: got 'vit-99'; allowed: ")
        and "vit-28" in line
        and "autoformer-tiny" in line
    )


def test_space_overrides_are_checked_by_the_family():
    [line] = problems(with_(space={"preset": "vit-28", "overrides": {"embed_choicez": [32]}}))
    assert line.startswith("space: ") and "embed_choicez" in line


def test_set_overrides_apply_in_order_and_are_validated(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(BASE))
    config = load_config(
        path, ["search.budget=7", "search.objectives=[flops, params]", "search.budget=9"]
    )
    assert config.search.budget == 9 and config.search.objectives == ["flops", "params"]
    assert load_config(path, ["supernet.resources.workers=3"]).supernet.resources.workers == 3
    with pytest.raises(ConfigError) as info:
        load_config(path, ["search.budget=none-such"])
    assert info.value.problems[0].startswith("search.budget: got 'none-such'")
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(path, ["search.budget"])
    with pytest.raises(ConfigError, match="name holds 't', not a mapping"):
        load_config(path, ["name.first=x"])


def test_unreadable_files_are_one_line(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "missing.yaml")
    assert str(info.value) == f"{tmp_path / 'missing.yaml'}: file not found"
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ndata: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert "invalid YAML" in str(info.value) and "line 3" in str(info.value)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="the top level must be a mapping"):
        load_config(listy)


def flora(**sections) -> dict:
    return with_(**{"method": "flora", "space": {"preset": "vit-28"}, **sections})


def test_flora_defaults_merge_nested_sections():
    """A config that sets only the temperature keeps FLORA's distillation weight."""
    config = parse(flora(supernet={"distill": {"temperature": 2.0}}), "cfg.yaml")
    assert config.supernet.distill.weight == 1.0 and config.supernet.distill.temperature == 2.0
    assert config.stage_names == ("pretrain", "filter", "supernet", "search", "export", "report")
    assert config.pretrain.source == "train"
    plain = parse(with_(), "cfg.yaml")  # other methods do not distill
    assert plain.supernet.distill.weight == 0.0


def test_pretrain_takes_at_most_one_source():
    found = problems(flora(pretrain={"checkpoint": "a.safetensors", "export": "runs/x/export/y"}))
    assert len(found) == 1 and "checkpoint and export are both set" in found[0]
    found = problems(flora(pretrain={"timm_kwargs": {"embed_dim": 192}}))
    assert len(found) == 1 and "timm_kwargs describes a checkpoint or model" in found[0]
    assert parse(flora(pretrain={"export": "runs/x"}), "c").pretrain.source == "export"


def test_filter_and_distill_values_are_checked():
    assert any("filter.keep_fraction" in p for p in problems(flora(filter={"keep_fraction": 0})))
    found = problems(flora(supernet={"distill": {"weight": 1.5}}))
    assert any("supernet.distill.weight" in p for p in found)


def test_lowrank_space_overrides_are_checked():
    found = problems(flora(space={"preset": "vit-28", "overrides": {"rank_ratios": [0.5]}}))
    assert len(found) == 1 and "contain 1.0" in found[0]
