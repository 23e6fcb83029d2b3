"""`raynas analyze collapse RUN_DIR`: are the subnets of a trained supernet all alike?

Feature collapse (DESIGN.md section 4.2): the weight-sharing subnets of an AutoFormer supernet
produce nearly the same penultimate features; TAS-LoRA's architecture-routed experts are meant
to pull them apart. This measures it on a run directory:

1. the run's final supernet (:func:`load_final_supernet`, the one place that chooses it): the
   plain supernet, or for TAS-LoRA the MoLE supernet of the `mole` stage,
2. ``K`` subnets: the smallest, the largest and ``K - 2`` distinct ones drawn with
   ``random.Random(seed)`` from the space, ordered by parameter count,
3. a probe set of ``N`` val images, chosen from ``data.split_seed`` alone (not ``--seed``), so
   two runs on the same data config (a plain supernet run and a TAS-LoRA run) see the same
   images; with the same ``--seed`` and space they also see the same subnets,
4. each subnet's pre-logits features ``supernet.forward_features(x, arch)`` (eval mode, no
   grad, float32), and from them the pairwise linear CKA matrix (any widths) and the mean
   per-sample cosine where two subnets have the same width (``trainables.analysis.cka``).

Outputs in ``<run>/analysis/collapse/``: ``cka.json`` and ``cka.png`` (heatmaps), each written
under a temporary name and renamed; a nested MLflow run ``analyze-collapse`` under the run's
parent run (one per invocation) with params, metrics ``mean_cka`` / ``mean_cosine`` and both
files as artifacts. Every check (arguments, config, checkpoint, data) runs before anything is
written. Uses no Ray; the val split only.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from pathlib import Path
from typing import Any, NamedTuple

import torch

from orchestrator.config.schema import RunConfig as RaynasConfig
from orchestrator.errors import UserInputError
from orchestrator.files import atomic_path, write_json_atomic
from orchestrator.tracking import TRACKING_FILE, Tracker, flatten, tracking_uri
from search_spaces import SearchSpace, Supernet, arch_id, build_space
from search_spaces.base import arch_to_dict
from trainables.analysis.cka import cosine_matrix, linear_cka_matrix, mean_off_diagonal
from trainables.data import load_splits
from trainables.data.splits import generator
from trainables.evaluator import default_device
from trainables.storage import is_remote

ANALYSIS = "analyze-collapse"
OUTPUT_DIR = ("analysis", "collapse")
RESULT_FILE = "cka.json"
PLOT_FILE = "cka.png"
DEFAULT_SUBNETS = 8
DEFAULT_PROBE = 512
ANNOTATE_UP_TO = 12
"""Heatmap cells carry their value when there are at most this many subnets."""


class FinalSupernet(NamedTuple):
    space: SearchSpace
    model: Supernet
    checkpoint: Path


def output_dir(run_dir: str | Path) -> Path:
    return Path(run_dir).resolve().joinpath(*OUTPUT_DIR)


def load_final_supernet(config: RaynasConfig, supernet: str | Path | None = None) -> FinalSupernet:
    """The run's final supernet in eval mode on the CPU: the one place that chooses it.

    That is the model the search scores with: the `supernet` stage's checkpoint, or for a run
    whose stages include `mole` (TAS-LoRA) the `mole` stage's MoLE supernet (the experts and
    router on the frozen supernet), via `external_checkpoint` and the shared construction path
    `trainables.supernets.load_supernet`. `supernet` overrides the checkpoint as
    `raynas search --supernet` does (a checkpoint folder, a `supernet.pt` file or a run
    directory, of the same kind). The rest of the analysis needs only
    ``model.forward_features(x, arch)``.
    """
    from trainables.supernets import load_supernet

    space = build_space(**config.space_spec)
    trained = trained_supernet(config, supernet)
    folder = Path(trained["checkpoint"])
    model = load_supernet(space, folder, trained.get("adapter"))
    return FinalSupernet(space, model.eval(), folder)


def trained_supernet(config: RaynasConfig, supernet: str | Path | None = None) -> dict[str, Any]:
    """The result of the run's last stage that trained its final supernet (the `supernet`
    output: ``checkpoint`` made absolute, ``checkpoint_sha256``, ``adapter``, ``space``), or
    the ``--supernet`` override; a `CheckpointError` line when there is none."""
    # Lazy: these import Ray Train / Tune, which the checks before this point do not need.
    from orchestrator.stages.search import external_checkpoint

    if supernet is not None:
        return external_checkpoint(supernet)
    from orchestrator.stage import read_result
    from orchestrator.stages import registered
    from trainables.train.checkpoint import CheckpointError

    stages = registered()
    makers = [n for n in config.stage_names if n in stages and "supernet" in stages[n].provides]
    trained = read_result(config.run_path, makers[-1]) if makers else None
    if trained is None:
        raise CheckpointError(
            f"no trained supernet in {config.run_path} (from its "
            f"{makers[-1] if makers else 'training'} stage); train it first (`raynas run "
            "CONFIG`) or pass --supernet PATH"
        )
    return {**trained, "checkpoint": str(Path(config.run_path) / trained["checkpoint"])}


def choose_archs(space: SearchSpace, count: int, seed: int) -> list[Any]:
    """`count` distinct archs: smallest, largest and draws of ``random.Random(seed)``, ordered
    by parameter count (then arch id)."""
    rng = random.Random(seed)
    archs = {arch_id(a): a for a in (space.smallest(), space.largest())}
    tries = 0
    while len(archs) < count and tries < 1000 * count:
        arch = space.sample(rng)
        archs.setdefault(arch_id(arch), arch)
        tries += 1
    if len(archs) < count:
        raise UserInputError(
            f"--subnets {count}: the search space gave only {len(archs)} distinct subnets; "
            f"allowed: 2..{len(archs)}"
        )
    return sorted(archs.values(), key=lambda a: (space.cost(a)["params"], arch_id(a)))[:count]


def probe_indices(val_size: int, probe: int, split_seed: int) -> torch.Tensor:
    """`probe` positions in the val split, sorted; fixed by the data's split seed."""
    perm = torch.randperm(val_size, generator=generator(split_seed, "collapse-probe"))
    return perm[:probe].sort().values


def arch_label(arch: Any) -> str:
    """Short heatmap label: "E64 D4" for ViT archs, else the arch id."""
    if hasattr(arch, "embed_dim") and hasattr(arch, "depth"):
        return f"E{arch.embed_dim} D{arch.depth}"
    return arch_id(arch)[:8]


def _labels(archs: list[Any]) -> list[str]:
    labels = [arch_label(a) for a in archs]
    return [
        f"{label} {arch_id(a)[:4]}" if labels.count(label) > 1 else label
        for label, a in zip(labels, archs, strict=True)
    ]


@torch.no_grad()
def subnet_features(
    model: Supernet,
    archs: list[Any],
    images: torch.Tensor,
    batch_size: int,
    device: torch.device,
) -> list[torch.Tensor]:
    """Pre-logits features ``(N, width)`` of each arch on `images`, on the CPU in float32."""
    model = model.to(device).eval()
    features = []
    for arch in archs:
        parts = [
            model.forward_features(images[i : i + batch_size].to(device), arch).float().cpu()
            for i in range(0, len(images), batch_size)
        ]
        features.append(torch.cat(parts))
    return features


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _json_matrix(matrix: list[list[float | None]]) -> list[list[float | None]]:
    return [[_finite(v) for v in row] for row in matrix]


def plot_heatmaps(
    labels: list[str],
    cka: list[list[float | None]],
    cosine: list[list[float | None]],
    path: Path,
    title: str,
) -> Path:
    """CKA heatmap, and beside it the cosine heatmap (grey where widths differ)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    k = len(labels)
    has_cosine = any(
        v is not None for i, row in enumerate(cosine) for j, v in enumerate(row) if i != j
    )
    panels = [("linear CKA", cka)] + ([("cosine (same width)", cosine)] if has_cosine else [])
    side = max(3.6, 0.5 * k + 1.6)
    fig, axes = plt.subplots(
        1, len(panels), figsize=(side * len(panels) + 0.8, side), dpi=120, squeeze=False
    )
    for ax, (name, matrix) in zip(axes[0], panels, strict=True):
        values = np.array([[np.nan if v is None else v for v in row] for row in matrix], float)
        shown = np.ma.masked_invalid(values)
        cmap = matplotlib.colormaps["viridis"].with_extremes(bad="0.85")
        low = min(0.0, float(np.nanmin(values))) if np.isfinite(values).any() else 0.0
        image = ax.imshow(shown, vmin=low, vmax=1.0, cmap=cmap)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        ax.set_xticks(range(k), labels, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(k), labels, fontsize=8)
        ax.set_title(name, fontsize=10)
        if k <= ANNOTATE_UP_TO:
            for i in range(k):
                for j in range(k):
                    if np.isfinite(values[i, j]):
                        ax.text(
                            j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=6,
                            color="black" if values[i, j] > 0.6 else "white",
                        )  # fmt: skip
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path


def analyze_collapse(
    run_dir: str | Path,
    subnets: int = DEFAULT_SUBNETS,
    probe: int = DEFAULT_PROBE,
    seed: int | None = None,
    supernet: str | Path | None = None,
) -> dict[str, Any]:
    """Run the analysis on `run_dir` and return what `cka.json` holds (plus its path).

    `seed` defaults to the run's `seed`. Raises `UserInputError` (before writing anything)
    for bad arguments, a folder that is not a run directory, a missing or unfitting supernet
    checkpoint, or a probe larger than the val split.
    """
    from orchestrator.pipeline import config_for_resume
    from trainables.train.loop import check_data_fits_space

    if subnets < 2:
        raise UserInputError(f"--subnets {subnets}: CKA compares subnets; allowed: 2 or more")
    if probe < 2:
        raise UserInputError(f"--probe {probe}: CKA needs several probe images; allowed: 2 or more")
    if is_remote(str(run_dir)):
        raise UserInputError(
            f"{run_dir}: `raynas analyze collapse` reads a local run directory; copy the run "
            "from the store first (e.g. `raynas report` fills the local mirror, see README)"
        )
    run_path = Path(run_dir).resolve()
    if not (run_path / "config.yaml").is_file():
        raise UserInputError(f"{run_dir}: no config.yaml there; not a raynas run directory")
    config = config_for_resume(run_path)
    seed = config.seed if seed is None else seed

    final = load_final_supernet(config, supernet)
    space = final.space
    archs = choose_archs(space, subnets, seed)
    splits = load_splits(config.data, ("val",), purpose=ANALYSIS)
    check_data_fits_space(splits, space)
    val = splits.split("val")
    if probe > len(val):
        raise UserInputError(
            f"--probe {probe} exceeds the {len(val)} images of the val split of {run_dir}; "
            f"allowed: 2..{len(val)}"
        )
    positions = probe_indices(len(val), probe, config.data.split_seed)
    images, _ = val.batch(positions)

    device = default_device()
    started = time.perf_counter()
    features = subnet_features(final.model, archs, images, config.search.eval_batch_size, device)
    cka = linear_cka_matrix(features)
    cosine = cosine_matrix(features)
    seconds = time.perf_counter() - started
    mean_cka = _finite(mean_off_diagonal(cka))
    mean_cosine = _finite(mean_off_diagonal(cosine))
    labels = _labels(archs)
    ids = [arch_id(a) for a in archs]

    # Everything is checked; from here on files and MLflow runs are written.
    uri = tracking_uri(config.tracking.uri, str(run_path))
    new_parent = not (run_path / TRACKING_FILE).exists()
    tracker = Tracker(uri, config.tracking.experiment, str(run_path), config.name)
    run = tracker.client.create_run(
        tracker.experiment_id,
        run_name=ANALYSIS,
        tags={"mlflow.parentRunId": tracker.parent_run_id, "raynas.stage": ANALYSIS},
    )
    run_id = run.info.run_id
    parent = tracker.running(tracker.parent_run_id) if new_parent else contextlib.nullcontext()
    with parent, tracker.running(run_id):
        out = output_dir(run_path)
        out.mkdir(parents=True, exist_ok=True)
        result: dict[str, Any] = {
            "run_dir": str(run_path),
            "run_name": config.name,
            "method": config.method,
            "supernet": {"checkpoint": str(final.checkpoint), "class": type(final.model).__name__},
            "seed": seed,
            "probe": {
                "split": "val",
                "size": probe,
                "split_seed": config.data.split_seed,
                "indices": [int(i) for i in val.indices[positions]],
            },
            "arch_ids": ids,
            "labels": labels,
            "archs": [arch_to_dict(a) for a in archs],
            "widths": [int(f.shape[1]) for f in features],
            "params": [int(space.cost(a)["params"]) for a in archs],
            "cka": _json_matrix(cka),
            "cosine": _json_matrix(cosine),
            "cosine_definition": "mean over probe images of the per-image cosine of the raw features",
            "mean_cka": mean_cka,
            "mean_cosine": mean_cosine,
            "seconds": round(seconds, 3),
            "mlflow_run_id": run_id,
        }
        json_path = out / RESULT_FILE
        png_path = out / PLOT_FILE
        write_json_atomic(json_path, result, allow_nan=False)
        title = f"{config.name}: {subnets} subnets on {probe} val images"
        plot_heatmaps(labels, result["cka"], result["cosine"], png_path, title)

        from mlflow.entities import Metric

        tracker.log_params(
            run_id,
            flatten(
                {
                    "subnets": subnets,
                    "probe": probe,
                    "seed": seed,
                    "checkpoint": str(final.checkpoint),
                    "supernet_class": type(final.model).__name__,
                }
            ),
        )
        now = int(time.time() * 1000)
        metrics = {"mean_cka": mean_cka, "mean_cosine": mean_cosine}
        tracker.client.log_batch(
            run_id,
            metrics=[Metric(k, v, now, 0) for k, v in metrics.items() if v is not None],
        )
        for path in (json_path, png_path):
            tracker.client.log_artifact(run_id, str(path), artifact_path="collapse")
    return {**result, "path": str(out)}
