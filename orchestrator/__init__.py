"""raynas orchestrator: config schema, CLI, pipeline stages, samplers, tracking, reports."""

__version__ = "0.1.0"
