"""Pipeline stages: each a function of (config, run directory) -> outputs in the run directory."""
