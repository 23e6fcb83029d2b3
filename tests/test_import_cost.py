"""What a Ray worker imports to train or score a supernet stays cheap: no timm, torchvision or
torch._dynamo (3-5 s per process on this machine), no MLflow. Each Train worker, evaluator
actor and the driver pay these imports, so one careless top-level import slows every stage."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("timm", "torchvision", "torch._dynamo", "mlflow")

# the modules a training worker, an evaluator and the driver's stage code load
WORKER_MODULES = (
    "search_spaces",
    "trainables.train.loop",
    "trainables.evaluator",
    "trainables.data",
)


def loaded_after(statement: str) -> set[str]:
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout.splitlines()[-1]))


def test_building_training_and_scoring_a_supernet_import_no_heavy_package():
    statement = "\n".join(f"import {m}" for m in WORKER_MODULES) + (
        "\nfrom search_spaces import build_space"
        "\nfor family, preset in (('vit', 'vit-28'), ('lowrank', 'vit-28'), ('cell', 'nb201-28')):"
        "\n    build_space(family, preset, None).build_supernet()"
    )
    assert not sorted(set(HEAVY) & loaded_after(statement))
