"""Run configuration: schema, loading, error messages."""

from orchestrator.config.loader import (
    apply_overrides,
    load_config,
    parse,
    read_yaml,
)
from orchestrator.config.schema import (
    METHOD_DEFAULT_STAGES,
    METHOD_FAMILY,
    METHOD_STAGES,
    RunConfig,
)

__all__ = [
    "METHOD_DEFAULT_STAGES",
    "METHOD_FAMILY",
    "METHOD_STAGES",
    "RunConfig",
    "apply_overrides",
    "load_config",
    "parse",
    "read_yaml",
]
