"""The `pretrain` stage (FLORA): the dense model that the low-rank supernet decomposes.

The dense model comes from one of (``pretrain`` section):

* ``checkpoint``: a timm-compatible state dict (``.safetensors``, or a torch file loaded with
  ``weights_only=True``; a ``state_dict``/``model`` entry is unwrapped) and its timm
  ``VisionTransformer`` kwargs (``timm_kwargs``);
* ``export``: a raynas export folder (``model.json`` + ``model.safetensors``), e.g. a subnet
  an AutoFormer or TAS-LoRA search exported: FLORA then compresses what that search found;
* ``model``: a timm model name, downloaded with its pretrained weights where the Hugging Face
  hub is reachable (offline this fails in one line);
* none of them: the stage trains one on the run's data with Ray Train (the supernet stage's
  recipe for ``pretrain.epochs``; checkpoints in ``pretrain/epoch_NNNN/``, resumable).

The space takes the dense model's shape from the source (``SearchSpace.dense_overrides``), so
the preset only supplies the rank choices. Outputs: ``pretrain/dense/`` (``model.safetensors``,
``model.json``, ``source.json``, written under a temporary name and renamed when complete) and
the ``space`` the later stages build. The dense model's val top-1 is measured; test is not read.
"""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path
from typing import Any

import torch

from orchestrator.config.schema import RunConfig as RaynasConfig
from orchestrator.errors import UserInputError
from orchestrator.files import write_json_atomic
from orchestrator.stage import StageContext, StageSpec
from orchestrator.stages.supernet import (
    OPTIMISER_RECIPE,
    TrainingPlan,
    file_sha256,
    run_training,
)
from search_spaces import build_from_spec, build_space
from trainables.data import load_splits
from trainables.evaluator import default_device
from trainables.supernets import DENSE_SPEC, DENSE_WEIGHTS, Standalone
from trainables.train import checkpoint as ckpt
from trainables.train.config import DistillConfig
from trainables.train.loop import check_data_fits_space, evaluate

STAGE = "pretrain"
DENSE = "dense"
HUB = ("huggingface.co", 443)
#: supernet recipe keys the dense training reads (its length and lr are pretrain's own)
RECIPE = (*OPTIMISER_RECIPE, "supernet.warmup_epochs")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict file: safetensors, or a torch file loaded with ``weights_only=True``."""
    if not path.is_file():
        raise UserInputError(f"pretrain.checkpoint: {path} does not exist or is not a file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise UserInputError(
            f"pretrain.checkpoint: {path} is not a readable state dict "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); allowed: a .safetensors "
            "file or a torch state dict that loads with weights_only=True"
        ) from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserInputError(
            f"pretrain.checkpoint: {path} holds no state dict (a mapping of tensors); allowed: "
            "a timm model's state_dict()"
        )
    return state


def read_export(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(model.json, weights) of an export folder."""
    from safetensors.torch import load_file

    spec_path, weights = folder / DENSE_SPEC, folder / DENSE_WEIGHTS
    if not spec_path.is_file() or not weights.is_file():
        raise UserInputError(
            f"pretrain.export: {folder} is not an export folder; allowed: a folder holding "
            f"{DENSE_SPEC} and {DENSE_WEIGHTS} (raynas export writes export/<arch id>/)"
        )
    try:
        return json.loads(spec_path.read_text()), load_file(str(weights))
    except Exception as exc:  # noqa: BLE001
        raise UserInputError(
            f"pretrain.export: {folder} is damaged ({type(exc).__name__}: {exc})"
        ) from None


def hub_model(name: str, kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(timm kwargs, weights) of a timm model with pretrained weights from the hub."""
    try:
        socket.create_connection(HUB, timeout=3).close()
    except OSError as exc:
        raise UserInputError(
            f"pretrain.model={name!r} needs the Hugging Face hub, which is not reachable from "
            f"here ({exc}); allowed offline: pretrain.checkpoint (+ timm_kwargs), "
            "pretrain.export, or no source (train the dense model)"
        ) from None
    import timm

    try:
        model = timm.create_model(name, pretrained=True, **kwargs)
    except Exception as exc:  # noqa: BLE001
        raise UserInputError(f"pretrain.model={name!r}: timm could not load it ({exc})") from None
    block = model.blocks[0]
    described = {
        "img_size": model.patch_embed.img_size[0],
        "patch_size": model.patch_embed.patch_size[0],
        "in_chans": model.patch_embed.proj.in_channels,
        "num_classes": model.num_classes,
        "embed_dim": model.embed_dim,
        "depth": len(model.blocks),
        "num_heads": block.attn.num_heads,
        "mlp_ratio": block.mlp.fc1.out_features / model.embed_dim,
    }
    return described, model.state_dict()


def training_plan(config: RaynasConfig, space) -> TrainingPlan:
    """Train the dense model (the space's full-rank arch) with the supernet's recipe."""
    pre = config.pretrain
    train = config.supernet.model_copy(
        update={
            "epochs": pre.epochs,
            "lr": pre.lr if pre.lr is not None else config.supernet.lr,
            "sampling": "uniform",
            "distill": DistillConfig(),
            "inject_failure": None,
        }
    )
    return TrainingPlan(
        stage=STAGE,
        train=train,
        resources=pre.resources,
        max_failures=config.supernet.max_failures,
        keep_checkpoints=config.supernet.keep_checkpoints,
        params={"pretrain": pre.model_dump(mode="json"), "train": train.model_dump(mode="json")},
        space=config.space_spec,
        arch=space.to_json(space.largest()),
    )


def run(ctx: StageContext) -> dict[str, Any]:
    config = ctx.config
    pre = config.pretrain
    base_spec = config.space_spec
    base = build_space(**base_spec)
    source = pre.source
    result: dict[str, Any] = {"source": source}
    if source == "checkpoint":
        path = Path(pre.checkpoint)
        state, described = read_state_dict(path), {"timm": pre.timm_kwargs}
        result["from"] = str(path.resolve())
    elif source == "export":
        described, state = read_export(Path(pre.export))
        result["from"] = str(Path(pre.export).resolve())
    elif source == "model":
        kwargs, state = hub_model(pre.model, pre.timm_kwargs)
        described = {"timm": kwargs}
        result["from"] = pre.model
    else:
        trained = run_training(ctx, training_plan(config, base))
        weights = ckpt.load_weights(ctx.path(trained["checkpoint"]))
        state = {k.removeprefix("model."): v for k, v in weights.items()}
        described = base.dense_spec()
        result.update({k: trained[k] for k in ("epochs", "checkpoint", "history")})
    try:
        overrides = base.dense_overrides(described)
        spec = {**base_spec, "overrides": {**base_spec["overrides"], **overrides}}
        space = build_space(**spec)
    except ValueError as exc:
        raise UserInputError(f"pretrain.{source}: {exc}") from None
    model = build_from_spec(space.dense_spec())
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()
        raise UserInputError(
            f"pretrain.{source}: the weights do not fit the timm ViT described "
            f"({' '.join(line.strip() for line in first[:3])[:300]}); allowed: the state dict "
            "of that model"
        ) from None
    splits = load_splits(config.data, ("val",), purpose="pretrain")
    check_data_fits_space(splits, space)
    device = default_device()
    correct, _ = evaluate(
        Standalone(model).to(device).eval(),
        None,
        splits.val,
        list(range(len(splits.val))),
        config.search.eval_batch_size,
        device,
        None,
    )
    val_top1 = 100.0 * correct / len(splits.val)
    folder = _write_dense(ctx, model.cpu(), space, result)
    cost = space.cost(space.largest())
    ctx.tracker.log_metrics(ctx.run_id, {"dense_val_top1": val_top1, **cost})
    ctx.tracker.client.log_artifacts(ctx.run_id, str(folder), artifact_path=DENSE)
    print(
        f"[pretrain] dense model from {source}: {cost['params'] / 1e6:.3f}M params, "
        f"{cost['flops'] / 1e6:.2f} MFLOPs, val top-1 {val_top1:.2f}%",
        flush=True,
    )
    return {
        **result,
        "dense": ctx.rel(folder),
        "dense_sha256": file_sha256(folder / DENSE_WEIGHTS),
        "space": spec,
        "val_top1": val_top1,
        **cost,
        "mlflow_run_id": ctx.run_id,
    }


def _write_dense(ctx: StageContext, model, space, result: dict[str, Any]) -> Path:
    from safetensors.torch import save_file

    folder = ctx.folder / DENSE
    tmp = ctx.folder / f".{DENSE}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp / DENSE_WEIGHTS)
    write_json_atomic(tmp / DENSE_SPEC, space.dense_spec())
    write_json_atomic(
        tmp / "source.json", {k: result[k] for k in ("source", "from") if k in result}
    )
    shutil.rmtree(folder, ignore_errors=True)
    tmp.replace(folder)
    return folder


SPEC = StageSpec(
    name=STAGE,
    run=run,
    reads=("seed", "data", "space", "pretrain", *RECIPE),
    ignores=("pretrain.resources",),
    extends=("pretrain.epochs",),
    provides={"dense": ("dense", "dense_sha256"), "space": ("space",)},
    describe="the dense model: a checkpoint, an export, the hub, or trained here (Ray Train)",
)
