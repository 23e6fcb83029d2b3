"""Reading a run config: YAML file -> `--set` overrides -> schema -> checks against the registries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from orchestrator.config.errors import format_errors
from orchestrator.config.schema import RunConfig
from orchestrator.errors import ConfigError


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(str(path), ["file not found"]) from None
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read: {exc.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(str(path), [f"{where}invalid YAML: {problem}"]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            str(path), [f"the top level must be a mapping of keys, got {type(data).__name__}"]
        )
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str], source: str) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides (value parsed as YAML) to a nested dict, in order."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(
                source, [f"--set {item!r}: expected KEY=VALUE, e.g. search.budget=20"]
            )
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            raise ConfigError(source, [f"--set {item!r}: the value is not valid YAML"]) from None
        node = data
        parts = key.strip().split(".")
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                raise ConfigError(
                    source, [f"--set {item!r}: {where} holds {child!r}, not a mapping"]
                )
            node = child
        node[parts[-1]] = value
    return data


def parse(data: dict[str, Any], source: str, base: Path | None = None) -> RunConfig:
    """The validated config in `data`; a `cluster` given as a path is read (relative to
    `base`, the config file's folder, else the working directory) and inlined, so the resolved
    config a run directory keeps is whole."""
    data = inline_cluster(data, source, base)
    try:
        config = RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, format_errors(exc, RunConfig)) from None
    problems = check_registries(config)
    if problems:
        raise ConfigError(source, problems)
    return config


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """The validated config in `path`, with `overrides` applied; ConfigError lists every problem."""
    data = apply_overrides(read_yaml(path), overrides or [], str(path))
    return parse(data, str(path), Path(path).parent)


def inline_cluster(data: dict[str, Any], source: str, base: Path | None) -> dict[str, Any]:
    ref = data.get("cluster")
    if not isinstance(ref, str):
        return data
    path = Path(ref).expanduser()
    if not path.is_absolute() and base is not None:
        path = base / path
    if not path.exists():
        raise ConfigError(
            source,
            [
                f"cluster: {ref!r}: no such cluster spec (looked at {path}; a relative path is "
                "relative to the config file)"
            ],
        )
    return {**data, "cluster": read_yaml(path)}


def check_registries(config: RunConfig) -> list[str]:
    """Checks that need the registries: dataset name, space family, preset and overrides, and
    the stages. A family that is not registered is ONE problem (nothing about it can be
    checked further, and its method's stages are not looked at)."""
    from trainables.data import list_datasets

    problems = []
    if config.data.name not in list_datasets():
        problems.append(
            f"data.name: got {config.data.name!r}; allowed: {', '.join(list_datasets())}"
        )
    space_problems = check_space(config)
    problems.extend(space_problems)
    if not space_problems:
        problems.extend(check_stages(config))
    problems.extend(check_placements(config))
    return problems


def check_placements(config: RunConfig) -> list[str]:
    """Each stage's placement and the latency targets against the cluster spec (when there is
    one): unknown groups, GPU asks on CPU groups, fractional training GPUs."""
    from orchestrator.runtime import ResourceError, place

    problems = []
    training = ("pretrain", "supernet", "mole", "retrain")  # data-parallel ranks (run_training)
    for stage in config.stage_names:
        resources = getattr(getattr(config, stage, None), "resources", None)
        if resources is None:
            continue
        try:
            place(config, stage, resources, training=stage in training)
        except ResourceError as exc:
            problems.append(str(exc))
    spec = config.cluster
    for target in config.search.latency_targets:
        if spec is None:
            continue
        try:
            spec.group(target)
        except KeyError:
            problems.append(
                f"search.latency_targets: {target!r} is not a group of cluster {spec.name}; "
                f"groups: {', '.join(g.name for g in spec.groups)}"
            )
    return problems


def check_space(config: RunConfig) -> list[str]:
    import search_spaces

    family = config.family
    families = search_spaces.list_families()
    if family not in families:
        return [
            f"space.family: {family!r} (method {config.method}) is not a registered search-space "
            f"family; registered: {', '.join(families)}"
        ]
    presets = search_spaces.list_presets(family)
    if config.space.preset is not None and config.space.preset not in presets:
        return [f"space.preset: got {config.space.preset!r}; allowed: {', '.join(presets)}"]
    try:
        search_spaces.build_space(family, config.space.preset, dict(config.space.overrides))
    except ValueError as exc:
        return [f"space: {exc}"]
    return []


def check_stages(config: RunConfig) -> list[str]:
    """One line naming the config's stages that no stage module registers (if any)."""
    from orchestrator.stages import registered

    known = registered()
    missing = [s for s in config.stage_names if s not in known]
    if not missing:
        return []
    return [
        f"stages: {', '.join(missing)} (method {config.method}) not registered; "
        f"registered: {', '.join(known)}"
    ]


def load_cluster_spec(path: str | Path):
    """The validated cluster spec in `path` (`cluster.spec.ClusterSpec`); ConfigError lists
    every problem, each naming the field."""
    from cluster.spec import ClusterSpec, parse_spec

    data = read_yaml(path)
    try:
        return parse_spec(data)
    except ValidationError as exc:
        raise ConfigError(str(path), format_errors(exc, ClusterSpec)) from None
