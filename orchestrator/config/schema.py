"""The run config: one YAML file describes a whole run.

Every model forbids unknown keys, so a typo is an error naming the key, never a silently
ignored setting. Defaults follow the papers (AutoFormer, TAS-LoRA, FLORA, IT-NAS) where they
say something, and are sized for a laptop where they do not.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cluster.spec import ClusterSpec
from trainables.data.config import DataConfig
from trainables.storage import is_remote
from trainables.train.config import SupernetTrainConfig

Method = Literal["autoformer", "tas-lora", "flora", "it-nas"]
StageName = Literal[
    "pretrain", "supernet", "mole", "filter", "select", "search", "retrain", "export", "report"
]
Objective = Literal["flops", "params", "latency"]

#: The search-space family each method searches, and the stages it runs by default, in order.
METHOD_FAMILY: dict[str, str] = {
    "autoformer": "vit",
    "tas-lora": "vit",
    "flora": "lowrank",
    "it-nas": "cell",
}
METHOD_STAGES: dict[str, tuple[str, ...]] = {
    "autoformer": ("supernet", "search", "export", "report"),
    "tas-lora": ("supernet", "mole", "search", "export", "report"),
    "flora": ("pretrain", "filter", "supernet", "search", "export", "report"),
    "it-nas": ("supernet", "select", "search", "retrain", "export", "report"),
}
#: The stages a method runs when the config names none (a subset of METHOD_STAGES, in order);
#: IT-NAS's `search` is optional: a search over inherited weights or the NB201 table.
METHOD_DEFAULT_STAGES: dict[str, tuple[str, ...]] = {
    **METHOD_STAGES,
    "it-nas": ("supernet", "select", "retrain", "export", "report"),
}
#: Per method, defaults of config sections that differ from the generic ones (a config's own
#: values always win). IT-NAS trains its cell supernet as DARTS does: the mixed supernet, SGD
#: with momentum (lr 0.025 -> 0.001 cosine, weight decay 3e-4), batch 64, no label smoothing.
#: FLORA fine-tunes from the dense model: distillation from it (soft targets, T = 1, no hard
#: labels), no label smoothing, a short warmup.
METHOD_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "flora": {
        "supernet": {
            "distill": {"weight": 1.0, "temperature": 1.0},
            "label_smoothing": 0.0,
            "warmup_epochs": 0.5,
        },
    },
    "it-nas": {
        "supernet": {
            "sampling": "mixed",
            "optimizer": "sgd",
            "lr": 0.025,
            "min_lr": 0.001,
            "momentum": 0.9,
            "weight_decay": 3e-4,
            "warmup_epochs": 0.0,
            "label_smoothing": 0.0,
            "batch_size": 64,
        },
    },
}


def _merged(defaults: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """``given`` over ``defaults``, nested sections merged key by key."""
    out = dict(defaults)
    for key, value in given.items():
        if isinstance(value, dict) and isinstance(defaults.get(key), dict):
            out[key] = _merged(defaults[key], value)
        else:
            out[key] = value
    return out


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Resources(Strict):
    """Where a stage's workers run. Maps onto Ray's ScalingConfig / trial resources."""

    workers: int = Field(
        1, ge=1, description="parallel workers (data-parallel ranks or concurrent trials)"
    )
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(
        0.0, ge=0, description="fractions pack several workers on one GPU"
    )
    accelerator_type: str | None = Field(
        None, description="Ray accelerator type, e.g. A100, H100, L4"
    )
    custom: dict[str, float] = Field(
        default_factory=dict, description="custom Ray resources per worker"
    )
    placement: str | list[str] | None = Field(
        None,
        description="node groups of the cluster spec the workers may run on: a group name, a "
        "list of them, any-gpu or any (null: any)",
    )

    @model_validator(mode="after")
    def _one_way(self) -> Resources:
        if self.placement is not None and self.accelerator_type is not None:
            raise ValueError(
                f"accelerator_type={self.accelerator_type!r} and placement={self.placement!r}: "
                "choose one (a cluster spec's group names its accelerator)"
            )
        return self

    @field_validator("custom")
    @classmethod
    def _positive(cls, value: dict[str, float]) -> dict[str, float]:
        bad = {k: v for k, v in value.items() if v <= 0}
        if bad:
            raise ValueError(f"custom resource amounts must be > 0, got {bad}")
        return value


class SpaceConfig(Strict):
    family: str | None = Field(None, description="search-space family; defaults to the method's")
    preset: str | None = Field(
        None, description="a preset of the family, e.g. vit-28, autoformer-tiny"
    )
    overrides: dict[str, Any] = Field(default_factory=dict, description="preset fields to override")


class SupernetConfig(SupernetTrainConfig):
    """The `supernet` stage: the training recipe plus where the workers run."""

    max_failures: int = Field(
        2, ge=-1, description="worker-failure restarts from the last checkpoint (-1: unlimited)"
    )
    keep_checkpoints: int = Field(
        2, ge=1, description="checkpoints kept on disk (Ray Train deletes older ones)"
    )
    resources: Resources = Field(default_factory=lambda: Resources(workers=2))


class MoleConfig(Strict):
    """TAS-LoRA: Mixture-of-LoRA-Experts with an architecture router."""

    experts: int = Field(4, ge=1)
    rank: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0)
    targets: list[Literal["qkv", "proj", "fc1", "fc2"]] = Field(
        default_factory=lambda: ["qkv", "proj", "fc1", "fc2"]
    )
    router_hidden: int = Field(64, ge=1)
    router_per_layer_type: bool = False
    group_init: bool = Field(True, description="group-wise router initialisation")
    group_init_steps: int = Field(200, ge=0)
    freeze_supernet: bool = True
    epochs: int = Field(2, ge=1)
    lr: float = Field(1e-3, gt=0)
    resources: Resources = Field(default_factory=lambda: Resources(workers=2))

    @field_validator("targets")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if not value or len(set(value)) != len(value):
            raise ValueError(f"targets must be a non-empty list without repeats, got {value}")
        return value


class PretrainConfig(Strict):
    """FLORA: where the dense model the low-rank supernet is decomposed from comes from.

    At most one of ``checkpoint`` (a timm-compatible state dict: ``.safetensors``, or a torch
    file loaded with ``weights_only=True``, described by ``timm_kwargs``), ``export`` (a raynas
    export folder: ``model.json`` + ``model.safetensors``, e.g. what an AutoFormer search
    exported) or ``model`` (a timm name, downloaded from the hub where it is reachable). None
    of them: the stage trains the dense model on the run's data (Ray Train, the supernet
    stage's recipe for ``epochs``)."""

    checkpoint: str | None = Field(None, description="timm-compatible state dict file")
    timm_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="the checkpoint's timm VisionTransformer kwargs (embed_dim, depth, ...)",
    )
    export: str | None = Field(None, description="a raynas export folder of a dense ViT")
    model: str | None = Field(None, description="timm model name (hub download when reachable)")
    epochs: int = Field(5, ge=1, description="training the dense model (no source given)")
    lr: float | None = Field(None, gt=0, description="null: the supernet stage's peak lr")
    resources: Resources = Field(default_factory=lambda: Resources(workers=2))

    @model_validator(mode="after")
    def _one_source(self) -> PretrainConfig:
        given = [k for k in ("checkpoint", "export", "model") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(
                f"pretrain: {' and '.join(given)} are both set; allowed: at most one of "
                "checkpoint, export, model (none: train the dense model)"
            )
        if self.timm_kwargs and self.checkpoint is None and self.model is None:
            raise ValueError("pretrain.timm_kwargs describes a checkpoint or model; set one")
        return self

    @property
    def source(self) -> str:
        for key in ("checkpoint", "export", "model"):
            if getattr(self, key) is not None:
                return key
        return "train"


class FilterConfig(Strict):
    """FLORA's low-rank-aware candidate filtering: one local supernet per block.

    Each local supernet (only its block low-rank, every other block dense) starts from the
    SVD of the dense model and trains ``steps`` steps with distillation from it (the supernet
    stage's batch size, distillation and optimizer; uniform sampling of the block's tuples).
    Then every tuple of the block is scored on ``max_images`` VAL images; the non-dominated
    tuples (val top-1 vs MACs) are kept, topped up to ``keep_fraction`` of the block's tuples
    by the smallest accuracy gap to the front, and the full-rank tuple is always kept."""

    keep_fraction: float = Field(0.3, gt=0, le=1)
    steps: int = Field(200, ge=1, description="training steps of each local supernet")
    lr: float | None = Field(None, gt=0, description="null: the supernet stage's peak lr")
    max_images: int | None = Field(
        2000, ge=1, description="val images each tuple is scored on (null: all of val)"
    )
    resources: Resources = Field(default_factory=lambda: Resources(workers=2))


class Range(Strict):
    min: float | None = Field(None, ge=0)
    max: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min={self.min:g} is greater than max={self.max:g}")
        return self


class Constraints(Strict):
    params: Range | None = Field(None, description="parameter-count range")
    flops: Range | None = Field(None, description="FLOPs (MACs) range")


class EvolutionConfig(Strict):
    """AutoFormer's evolutionary search (its defaults). The mutation probabilities belong to the
    search space (e.g. ``space.overrides.mutate_block_prob``); ``population`` is NSGA-II's too."""

    population: int = Field(50, ge=2, description="candidates per generation (evolution and nsga2)")
    parents: int = Field(10, ge=1, description="top candidates kept as parents (evolution)")
    mutations: int = Field(25, ge=0, description="mutated children per generation (evolution)")
    crossovers: int = Field(25, ge=0, description="crossover children per generation (evolution)")

    @model_validator(mode="after")
    def _sizes(self) -> EvolutionConfig:
        if self.parents > self.population:
            raise ValueError(f"parents={self.parents} exceeds population={self.population}")
        return self


class SearchConfig(Strict):
    strategy: Literal["nsga2", "evolution", "tpe", "random", "gp"] = Field(
        "nsga2",
        description="nsga2: NSGA-II; evolution: AutoFormer's evolution; tpe: multivariate TPE; "
        "random; gp: Gaussian-process Bayesian optimisation (Optuna's GPSampler: most "
        "sample-efficient on the NAS-Bench-201 table, but each proposal costs O(n^3) in the "
        "trials so far, about 0.2 s at 150)",
    )
    evaluator: Literal["supernet", "table"] = Field(
        "supernet",
        description="supernet: val top-1 with inherited weights; table: the space's tabular "
        "benchmark (NAS-Bench-201: CIFAR-10 test accuracy of the cell, no data or supernet read)",
    )
    runner: Literal["auto", "tune", "inprocess"] = Field(
        "auto",
        description="how candidates are evaluated: tune: Ray Tune trials on workers "
        "(search.resources); inprocess: one loop in the driver process, no Ray (evaluator=table "
        "only: a lookup takes microseconds, a Tune trial about 0.1 s); auto: inprocess for "
        "evaluator=table without latency measurement, else tune. Both give the same study and "
        "archive",
    )
    objectives: list[Objective] = Field(
        default_factory=lambda: ["flops"], description="costs minimised beside val top-1 (1 to 3)"
    )
    budget: int = Field(100, ge=1, description="evaluated candidates")
    constraints: Constraints = Field(default_factory=Constraints)
    evolution: EvolutionConfig = Field(default_factory=EvolutionConfig)
    storage: str | None = Field(None, description="Optuna storage URL; null: sqlite <run>/study.db")
    study_name: str | None = None
    seed_extremes: bool = Field(
        True, description="evaluate the smallest and largest arch first (when admissible)"
    )
    eval_batch_size: int = Field(512, ge=1)
    measure_latency: bool = Field(
        False, description="time every candidate (always on when latency is an objective)"
    )
    latency_batch_size: int = Field(1, ge=1)
    latency_targets: list[str] = Field(
        default_factory=list,
        description="node groups whose latency is measured, each by a probe actor holding a "
        "whole device there (empty: the trial times the candidate where it runs)",
    )
    latency_objective: str | None = Field(
        None, description="the target whose latency is the `latency` objective; null: the first"
    )
    latency: Literal["measured", "predicted"] = Field(
        "measured",
        description="measured: every candidate timed on each target; predicted: a per-layer "
        "latency model per target, fitted on measured subnets before the search",
    )
    latency_calibration: int = Field(
        100, ge=10, description="predicted: subnets measured to fit each target's model"
    )
    latency_holdout: int = Field(
        50, ge=5, description="predicted: further subnets measured to report its error"
    )
    latency_repeats: int = Field(10, ge=1, description="timed forward passes (median)")
    max_trial_failures: int = Field(
        1, ge=0, description="retries of a crashed evaluation trial (Ray Tune FailureConfig)"
    )
    resources: Resources = Field(default_factory=lambda: Resources(workers=2))

    @model_validator(mode="after")
    def _generation_fits(self) -> SearchConfig:
        evo = self.evolution
        if self.strategy == "evolution" and evo.mutations + evo.crossovers > evo.population:
            raise ValueError(
                f"evolution.mutations + evolution.crossovers = {evo.mutations + evo.crossovers} "
                f"exceeds evolution.population={evo.population}"
            )
        return self

    @property
    def needs_latency(self) -> bool:
        """Whether candidates are timed (on latency targets or where their trial runs)."""
        return bool(self.latency_targets) or self.measure_latency or "latency" in self.objectives

    @property
    def resolved_runner(self) -> Literal["tune", "inprocess"]:
        """`runner` with auto decided: inprocess for table lookups that time nothing."""
        if self.runner != "auto":
            return self.runner
        return "inprocess" if self.evaluator == "table" and not self.needs_latency else "tune"

    @model_validator(mode="after")
    def _runner(self) -> SearchConfig:
        if self.runner != "inprocess":
            return self
        if self.evaluator != "table":
            raise ValueError(
                f"runner=inprocess with evaluator={self.evaluator!r}: the in-process loop only "
                "looks candidates up in a table; allowed: evaluator=table, or runner tune/auto"
            )
        if self.needs_latency:
            raise ValueError(
                "runner=inprocess cannot time candidates (latency_targets, measure_latency or a "
                "latency objective need Ray workers); allowed: runner tune or auto"
            )
        return self

    @model_validator(mode="after")
    def _latency(self) -> SearchConfig:
        targets = self.latency_targets
        if len(set(targets)) != len(targets):
            raise ValueError(f"latency_targets: repeated groups in {targets}")
        if self.latency_objective is not None and self.latency_objective not in targets:
            raise ValueError(
                f"latency_objective={self.latency_objective!r} is not one of "
                f"latency_targets={targets}"
            )
        if self.latency == "predicted" and not targets:
            raise ValueError("latency=predicted needs latency_targets (the groups to model)")
        return self

    @field_validator("objectives")
    @classmethod
    def _objectives(cls, value: list[str]) -> list[str]:
        if not 1 <= len(value) <= 3 or len(set(value)) != len(value):
            raise ValueError(
                f"choose 1 to 3 distinct objectives of flops, params, latency; got {value}"
            )
        return value


class SelectConfig(Strict):
    """IT-NAS: operation selection from the selector's importances over one val pass. The rule
    is the space's (NAS-Bench-201: the top op per edge; DARTS: the top-2 incoming edges per
    node by their best non-`none` importance, then that op)."""

    batch_size: int = Field(256, ge=1, description="val images per mixed forward")
    max_images: int | None = Field(
        None, ge=1, description="val images averaged over; null: the whole val split"
    )


class RetrainConfig(SupernetConfig):
    """IT-NAS: the selected arch trained from scratch on Ray Train. Defaults: NAS-Bench-201's
    recipe (SGD, Nesterov momentum 0.9, lr 0.1 cosine, weight decay 5e-4, batch 256, no label
    smoothing), for fewer epochs than its 200."""

    epochs: int = Field(10, ge=1)
    batch_size: int = Field(256, ge=1)
    optimizer: Literal["adamw", "sgd"] = "sgd"
    lr: float | None = Field(0.1, gt=0)
    min_lr: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(5e-4, ge=0)
    warmup_epochs: float = Field(0.0, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    arch: str | None = Field(
        None,
        description="retrain this arch (the space's text form, e.g. an NB201 string or a DARTS "
        "genotype, or arch JSON) instead of the select stage's choice",
    )
    space_overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="space fields changed for the retrained network only (e.g. more channels "
        "or cells than the supernet had)",
    )

    @field_validator("sampling")
    @classmethod
    def _one_arch(cls, value: str) -> str:
        if value != "uniform":
            raise ValueError(f"retrain trains one fixed arch; sampling={value!r} is not used")
        return value


class ExportConfig(Strict):
    max_models: int = Field(10, ge=1, description="at most this many Pareto subnets are exported")
    log_models: bool = Field(True, description="log exported models with mlflow.pytorch.log_model")


#: Recipe keys `analysis.ranking.recipe` may not set: the epochs come from `--epochs`, and a
#: stand-alone network trains one arch, without a teacher or an operation selector.
RANKING_FIXED_RECIPE = ("epochs", "sampling", "eval_subnets", "selector", "distill", "record_archs")


class RankingConfig(Strict):
    """`raynas analyze ranking`: subnets trained from scratch as Ray Tune trials, one trial per
    subnet. The recipe is the space family's stand-alone recipe
    (``SearchSpace.standalone_recipe``) with ``recipe`` on top."""

    recipe: dict[str, Any] = Field(
        default_factory=dict,
        description="overrides of the family's stand-alone training recipe (keys of the "
        "supernet recipe: batch_size, lr, optimizer, weight_decay, label_smoothing, precision, "
        "...); the epochs come from --epochs",
    )
    resources: Resources = Field(
        default_factory=lambda: Resources(workers=2),
        description="per trial (one subnet's training); workers: trials at once",
    )
    max_trial_failures: int = Field(
        1, ge=0, description="retries of a crashed trial, from its last epoch checkpoint"
    )

    @field_validator("recipe")
    @classmethod
    def _recipe(cls, value: dict[str, Any]) -> dict[str, Any]:
        from pydantic import ValidationError

        fixed = sorted(set(value) & set(RANKING_FIXED_RECIPE))
        if fixed:
            raise ValueError(
                f"{', '.join(fixed)} cannot be set here (--epochs gives the epochs; a stand-alone "
                "network trains one arch without a teacher or selector)"
            )
        try:
            SupernetTrainConfig(**value)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ValueError(f"{where}={first.get('input')!r}: {first['msg']}") from None
        return value


class AnalysisConfig(Strict):
    """Analyses of a finished run (`raynas analyze ...`); no pipeline stage reads them."""

    ranking: RankingConfig = Field(default_factory=RankingConfig)


class TrackingConfig(Strict):
    uri: str | None = Field(
        None, description="MLflow tracking URI; null: sqlite in the run directory"
    )
    experiment: str = Field("raynas", min_length=1)

    @field_validator("uri")
    @classmethod
    def _scheme(cls, value: str | None) -> str | None:
        allowed = (
            "http://",
            "https://",
            "sqlite:///",
            "file://",
            "postgresql://",
            "mysql://",
            "databricks",
        )
        if value is not None and not value.startswith(allowed):
            raise ValueError(f"uri={value!r} must start with one of {', '.join(allowed)}")
        return value


class RayConfig(Strict):
    address: str | None = Field(
        None, description="null: $RAY_ADDRESS if set, else a local Ray; 'auto' or ray://host:port"
    )
    namespace: str = "raynas"
    worker_niceness: int = Field(
        0,
        ge=0,
        le=19,
        description="niceness of Ray workers when raynas starts a local Ray (Ray's own default is 15, which "
        "lets its daemons preempt training on a busy machine); existing clusters keep their setting",
    )
    dashboard: bool = Field(
        True,
        description="start Ray's dashboard (port 8265) when raynas starts a local Ray; false saves "
        "its ~10 processes and a few seconds of start-up on a small machine; existing clusters "
        "keep theirs",
    )


class RunConfig(Strict):
    name: str = Field(..., description="names the run directory, MLflow run and Optuna study")
    method: Method
    seed: int = Field(0, ge=0)
    run_dir: str | None = Field(
        None, description="local path or s3:// / gs:// URI; null: runs/<name>"
    )
    stages: list[StageName] | None = Field(None, description="null: the method's default stages")
    data: DataConfig
    space: SpaceConfig = Field(default_factory=SpaceConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    supernet: SupernetConfig = Field(default_factory=SupernetConfig)
    mole: MoleConfig = Field(default_factory=MoleConfig)
    filter: FilterConfig = Field(default_factory=FilterConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    select: SelectConfig = Field(default_factory=SelectConfig)
    retrain: RetrainConfig = Field(default_factory=RetrainConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    analysis: AnalysisConfig = Field(default_factory=AnalysisConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    cluster: ClusterSpec | None = Field(
        None,
        description="the cluster spec (a path, relative to this config file, or inline) whose "
        "groups the stages' resources.placement name; null: no groups",
    )

    @model_validator(mode="before")
    @classmethod
    def _method_defaults(cls, data: Any) -> Any:
        """Fill the method's own defaults (``METHOD_DEFAULTS``) under what the config sets."""
        if not isinstance(data, dict):
            return data
        sections = METHOD_DEFAULTS.get(data.get("method"), {})  # type: ignore[arg-type]
        if not sections:
            return data
        data = dict(data)
        for section, defaults in sections.items():
            given = data.get(section)
            if given is None:
                data[section] = dict(defaults)
            elif isinstance(given, dict):
                data[section] = _merged(defaults, given)
        return data

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value):
            raise ValueError(
                "allowed: letters, digits, '.', '_' and '-', starting with a letter or digit"
            )
        return value

    @model_validator(mode="after")
    def _method_consistency(self) -> RunConfig:
        family = METHOD_FAMILY[self.method]
        if self.space.family is not None and self.space.family != family:
            raise ValueError(
                f"space.family={self.space.family!r} does not fit method {self.method!r}; allowed: {family!r}"
            )
        if self.stages is not None:
            allowed = METHOD_STAGES[self.method]
            unknown = [s for s in self.stages if s not in allowed]
            if unknown:
                raise ValueError(
                    f"stages {unknown} are not part of method {self.method!r}; allowed: {', '.join(allowed)}"
                )
            order = [allowed.index(s) for s in self.stages]
            if order != sorted(set(order)):
                raise ValueError(
                    f"stages {self.stages} must be distinct and in pipeline order: {', '.join(allowed)}"
                )
        return self

    @model_validator(mode="after")
    def _remote_run_dir_needs_a_tracking_server(self) -> RunConfig:
        if self.run_dir is None or not is_remote(self.run_dir):
            return self
        if self.tracking.uri is None or self.tracking.uri.startswith(("sqlite:", "file:")):
            raise ValueError(
                f"run_dir={self.run_dir!r} is in an object store, so the embedded MLflow store "
                "cannot live in it; set tracking.uri to a tracking server (http://...) whose "
                "artifact root is in the store (mlflow server --artifacts-destination s3://...)"
            )
        return self

    @property
    def family(self) -> str:
        return self.space.family or METHOD_FAMILY[self.method]

    @property
    def space_spec(self) -> dict[str, Any]:
        """``search_spaces.build_space(family, preset, overrides)``'s arguments, as plain data."""
        return {
            "family": self.family,
            "preset": self.space.preset,
            "overrides": dict(self.space.overrides),
        }

    @property
    def stage_names(self) -> tuple[str, ...]:
        return tuple(self.stages) if self.stages is not None else METHOD_DEFAULT_STAGES[self.method]

    @property
    def run_path(self) -> str:
        """The run directory as configured: a local path or an object-store URI."""
        return self.run_dir or f"runs/{self.name}"

    @property
    def remote(self) -> bool:
        """Whether the run directory is in an object store (``orchestrator.mirror``)."""
        return is_remote(self.run_path)

    @property
    def workspace(self) -> Path:
        """The local folder the stages read and write: the run directory itself, or the local
        mirror of an object-store one (``orchestrator.mirror.workspace_of``)."""
        from orchestrator.mirror import workspace_of

        return workspace_of(self.run_path)
