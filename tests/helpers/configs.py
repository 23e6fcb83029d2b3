"""Tiny run configs for tests that run whole pipelines on a Fashion-MNIST subset."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

SMALL_SPACE = {
    "embed_dims": [32, 48],
    "depths": [2, 3],
    "num_heads": [2, 3],
    "mlp_ratios": [2.0, 3.0],
}


def tiny_run(run_dir: Path | str, name: str = "tiny", **sections: dict[str, Any]) -> dict:
    """A whole autoformer pipeline (1 supernet epoch on 1024 images, 8 candidates scored on
    512 val images, export on 512 test images); `sections` update the top-level sections."""
    data: dict[str, Any] = {
        "name": name,
        "method": "autoformer",
        "run_dir": str(run_dir),
        "data": {
            "name": "fashion_mnist",
            "download": False,
            "subset": {"train": 1024, "val": 512, "test": 512},
        },
        "space": {"preset": "vit-28", "overrides": copy.deepcopy(SMALL_SPACE)},
        "supernet": {
            "epochs": 1, "batch_size": 128, "lr": 2e-3, "warmup_epochs": 0.5, "eval_subnets": 1,
            "resources": {"workers": 2, "cpus_per_worker": 1},
        },
        "search": {
            "strategy": "nsga2", "budget": 8, "evolution": {"population": 4, "parents": 2,
            "mutations": 1, "crossovers": 1}, "eval_batch_size": 256,
            "resources": {"workers": 2, "cpus_per_worker": 1},
        },
        "export": {"max_models": 3},
        "tracking": {"experiment": "tests"},
        "ray": {"dashboard": False},  # no test reads it; its start-up costs seconds per run
    }  # fmt: skip
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return data
