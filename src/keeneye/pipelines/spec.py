"""Pipeline specs: one YAML file per application, validated into :class:`PipelineSpec`.

A spec says what a pipeline accepts, which registered model (and alias) serves it, the decision
thresholds, its latency SLO, how its data is split, which quality gates a model must pass before it
may serve, the default training recipe, and how new models roll out. Every section forbids unknown
keys so a typo fails loudly instead of silently falling back to a default.

The built-in specs live in ``pipelines/builtin/*.yaml`` (package data); users add or override them
with YAML files in the folders listed in ``settings.pipelines.dirs`` (``KEENEYE_PIPELINES__DIRS``).
"""

from __future__ import annotations

import logging
import math
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypedDict

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from keeneye.domain import ConfigError, InvalidInput, NotFound, Task, parse_duration
from keeneye.settings import Settings

log = logging.getLogger(__name__)

SLUG_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
MIN_IMAGE_SIDE = 8  # pixels: no camera keeneye serves makes less; the smallest model input is 32
ImageFormat = Literal["jpeg", "png", "tiff"]
ALL_FORMATS: tuple[ImageFormat, ...] = ("jpeg", "png", "tiff")
SpectralIndex = Literal["ndvi", "ndre", "gndvi"]

# Which bands each spectral index needs (PRODUCT.md, crop-health).
INDEX_BANDS: dict[str, tuple[str, ...]] = {
    "ndvi": ("nir", "red"),
    "ndre": ("nir", "red_edge"),
    "gndvi": ("nir", "green"),
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RuleOverride(BaseModel):
    """A pipeline spec's change to one alert rule (``keeneye.monitoring.alerts``), for that pipeline's
    series only. Part of the spec's schema, so it lives with the other sections."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    enabled: bool = True
    threshold: float | None = None
    for_: str | None = Field(None, alias="for")

    @field_validator("for_")
    @classmethod
    def _check_duration(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value


class ModelSection(_Strict):
    """Which registered model serves the pipeline."""

    name: str = Field(
        "",
        pattern=r"^$|^[a-z0-9][a-z0-9._-]{0,127}$",
        description="registered model name; empty = the pipeline name",
    )
    alias: str = Field("champion", pattern=r"^[a-z][a-z0-9_-]*$", description="alias that serves traffic")


class InputSection(_Strict):
    """What an input image must look like before it reaches the model."""

    formats: list[ImageFormat] = Field(
        default_factory=lambda: list(ALL_FORMATS), min_length=1, description="accepted file formats"
    )
    band_map: list[str] | None = Field(
        None, description="band names in file order (e.g. [blue, green, red, nir, red_edge]); null = RGB"
    )
    band_map_by_camera: dict[str, list[str]] = Field(
        default_factory=dict,
        description="per-camera band order, chosen by metadata.camera; falls back to band_map",
    )
    expected_bands: int | None = Field(None, ge=1, description="refuse images with another band count")
    indices: list[SpectralIndex] = Field(
        default_factory=list, description="spectral indices computed from the bands (ndvi, ndre, gndvi)"
    )
    max_upload_bytes: int | None = Field(None, gt=0, description="overrides serving.max_upload_bytes")
    max_pixels: int | None = Field(None, gt=0, description="overrides imaging.max_pixels")
    min_side: int = Field(
        MIN_IMAGE_SIDE,
        ge=1,
        description="refuse images with a side shorter than this many pixels (422 image_too_small): "
        "a model scales any image to its input size, but a 1-pixel image holds nothing to find and its "
        "answers' outlines collapse to a point",
    )
    geo: bool = Field(
        False,
        description="read uploads as (Geo)TIFF rasters with keeneye.geo: per-request band maps, masks, "
        "per-tile inference and the geo part (crop-health; keeneye.pipelines.crophealth)",
    )

    @model_validator(mode="after")
    def _check_bands(self) -> InputSection:
        maps = ([("band_map", self.band_map)] if self.band_map is not None else []) + [
            (f"band_map_by_camera.{cam}", bands) for cam, bands in self.band_map_by_camera.items()
        ]
        for where, bands in maps:
            if len(set(bands)) != len(bands):
                raise ValueError(f"{where} names a band twice: {bands}")
            if self.expected_bands is not None and len(bands) != self.expected_bands:
                raise ValueError(
                    f"{where} has {len(bands)} bands but expected_bands is {self.expected_bands}"
                )
            for index in self.indices:
                missing = [b for b in INDEX_BANDS[index] if b not in bands]
                if missing:
                    raise ValueError(f"index {index} needs band(s) {', '.join(missing)} missing from {where}")
        if self.indices and not maps:
            raise ValueError("spectral indices need a band_map naming the nir/red/red_edge/green bands")
        return self


class ThresholdOverrides(TypedDict, total=False):
    """The manifest thresholds a pipeline spec sets (:meth:`ThresholdsSection.manifest_overrides`)."""

    score: float
    iou: float
    mask: float
    min_area: int
    max_instances: int
    top_k: int


class ThresholdsSection(_Strict):
    """Overrides of the model manifest's thresholds; ``None`` keeps the manifest's value."""

    score: float | None = Field(None, ge=0, le=1)
    iou: float | None = Field(None, ge=0, le=1)
    mask: float | None = Field(None, ge=0, le=1)
    min_area: int | None = Field(None, ge=0)
    max_instances: int | None = Field(None, ge=1)
    top_k: int | None = Field(None, ge=1)
    defect_score: float | None = Field(
        None,
        ge=0,
        le=1,
        description="OK/DEFECT: the item is DEFECT when a defect instance scores at least this",
    )
    defect_min_area: int | None = Field(
        None, ge=0, description="OK/DEFECT: ignore smaller defect instances (px)"
    )

    def manifest_overrides(self) -> ThresholdOverrides:
        """The values that replace the manifest's ``thresholds`` (only the ones set here)."""
        out: ThresholdOverrides = {}
        if self.score is not None:
            out["score"] = self.score
        if self.iou is not None:
            out["iou"] = self.iou
        if self.mask is not None:
            out["mask"] = self.mask
        if self.min_area is not None:
            out["min_area"] = self.min_area
        if self.max_instances is not None:
            out["max_instances"] = self.max_instances
        if self.top_k is not None:
            out["top_k"] = self.top_k
        return out


class DecisionSection(_Strict):
    """How predictions become a decision (line-inspection's OK / DEFECT)."""

    kind: Literal["none", "ok-defect"] = "none"
    fail_safe: Literal["OK", "DEFECT"] | None = Field(
        None, description="the answer when the model cannot answer within deadline_ms"
    )
    deadline_ms: float | None = Field(None, gt=0, description="end-to-end budget before the fail-safe answer")

    @model_validator(mode="after")
    def _check(self) -> DecisionSection:
        if self.kind == "ok-defect" and self.fail_safe is None:
            raise ValueError("an ok-defect decision needs a fail_safe answer")
        return self


class SloSection(_Strict):
    p95_latency_ms: float = Field(500.0, gt=0, description="95th percentile latency per image, end to end")
    availability: float | None = Field(None, gt=0, le=1, description="e.g. 0.9995")
    peak_rps: float | None = Field(None, gt=0, description="fleet-wide peak the deployment is sized for")


class LimitsSection(_Strict):
    """Per-pipeline overrides of the serving limits; ``None`` keeps the global setting."""

    rate_per_second: float | None = Field(None, gt=0, description="token-bucket refill per client")
    burst: int | None = Field(None, ge=1)
    max_inflight: int | None = Field(None, ge=1, description="requests in flight before 503")


class SplitsSection(_Strict):
    """How labelled data is split into train / val / test."""

    strategy: Literal["random", "grouped", "time"] = "random"
    group_by: str | None = Field(
        None, description="metadata key: whole groups stay in one split (grouped), or the time key (time)"
    )
    train: float = Field(0.7, ge=0, le=1)
    val: float = Field(0.15, ge=0, le=1)
    test: float = Field(0.15, ge=0, le=1)
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> SplitsSection:
        total = self.train + self.val + self.test
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise ValueError(f"train + val + test must sum to 1, got {total:g}")
        if self.train <= 0 or self.test <= 0:
            raise ValueError("train and test fractions must be above 0")
        if self.strategy != "random" and not self.group_by:
            raise ValueError(f"strategy {self.strategy!r} needs group_by (the metadata key to split on)")
        return self


class GatesSection(_Strict):
    """What a model must achieve on the test split before it may get a serving alias."""

    metrics: dict[str, float] = Field(
        default_factory=dict,
        description="absolute floors: metric name → minimum value (e.g. precision: 0.97)",
    )
    primary_metric: str | None = Field(
        None, description="the metric a challenger must not lose on; defaults to the first gated metric"
    )
    max_regression: float = Field(
        0.01, ge=0, le=1, description="how far a challenger may trail the champion on a gated metric"
    )
    subgroup_by: str | None = Field(None, description="metadata key whose groups are gated separately")
    subgroup_floor: float | None = Field(
        None, ge=0, le=1, description="every subgroup must reach this value on each gated metric"
    )
    targets: dict[str, float] = Field(
        default_factory=dict,
        description="quality targets reported with the gates (met or not, with the gap) but not blocking, "
        "e.g. the design's mask_map50: 0.62",
    )

    @model_validator(mode="after")
    def _check(self) -> GatesSection:
        if self.primary_metric is None and self.metrics:
            self.primary_metric = next(iter(self.metrics))
        if self.primary_metric is not None and self.metrics and self.primary_metric not in self.metrics:
            raise ValueError(f"primary_metric {self.primary_metric!r} is not one of the gated metrics")
        if self.subgroup_floor is not None and not self.subgroup_by:
            raise ValueError("subgroup_floor needs subgroup_by")
        return self


class RetrainSection(_Strict):
    """When a new model is trained (lifecycle triggers)."""

    schedule: str | None = Field(None, description="cron expression or @daily/@weekly/@monthly")
    new_labels: int | None = Field(None, ge=1, description="retrain after this many new labelled images")
    drift_psi: float = Field(0.2, gt=0, description="PSI on an input feature above this → retrain")
    drift_ks: float = Field(0.1, gt=0, le=1, description="KS statistic above this (p < 0.05) → retrain")
    metric_drop: float = Field(0.1, gt=0, le=1, description="relative precision/recall drop → retrain")

    @field_validator("schedule")
    @classmethod
    def _check_schedule(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from croniter import croniter

        aliases = {"@daily": "0 0 * * *", "@weekly": "0 0 * * 0", "@monthly": "0 0 1 * *"}
        expr = aliases.get(value.strip().lower(), value.strip())
        if len(expr.split()) != 5 or not croniter.is_valid(expr):
            raise ValueError(f"{value!r} is not a cron expression (5 fields, or @daily/@weekly/@monthly)")
        return value


class TrainingSection(_Strict):
    """The default training recipe; ``keeneye train`` flags override it."""

    backbone: str = Field("efficientnet_b0", description="timm model name (classify) or encoder (segment)")
    architecture: str | None = Field(None, description="segmentation head, e.g. unet, fpn")
    image_size: int = Field(224, ge=8)
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(32, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    pretrained: bool = Field(True, description="use pretrained weights when available; else from scratch")
    augment: bool = True
    search_trials: int = Field(0, ge=0, description="Optuna trials; 0 = train the recipe as written")
    seed: int = 0
    retrain: RetrainSection = Field(default_factory=RetrainSection)


class RolloutSection(_Strict):
    canary_share: float = Field(
        0.1, ge=0, le=1, description="share of traffic (by input hash) for the challenger"
    )
    shadow_sample: float = Field(
        1.0, ge=0, le=1, description="share of requests mirrored to a shadow challenger"
    )
    min_samples: int = Field(
        200, ge=1, description="shadow/canary samples needed before a promotion decision"
    )


class RetentionSection(_Strict):
    """How long stored things live; ``None`` = forever."""

    events_days: int | None = Field(None, ge=1, description="inference events / predictions")
    raw_images_days: int | None = Field(None, ge=1)
    flagged_images_days: int | None = Field(None, ge=1, description="images with a DEFECT / positive result")
    ok_sample_share: float | None = Field(None, ge=0, le=1, description="share of OK images kept longer")
    ok_sample_days: int | None = Field(None, ge=1)


class ReplicasSection(_Strict):
    min: int = Field(4, ge=0)
    max: int = Field(6, ge=1)
    scale_up_utilisation: float = Field(0.8, gt=0, le=1, description="scale up above this load per replica")

    @model_validator(mode="after")
    def _check(self) -> ReplicasSection:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must not exceed max ({self.max})")
        return self


class PipelineSpec(_Strict):
    name: str = Field(..., pattern=SLUG_PATTERN, description="lower-case slug, e.g. line-inspection")
    title: str = Field("", description="human name")
    description: str = ""
    task: Task
    model: ModelSection = Field(default_factory=ModelSection)
    input: InputSection = Field(default_factory=InputSection)
    thresholds: ThresholdsSection = Field(default_factory=ThresholdsSection)
    decision: DecisionSection = Field(default_factory=DecisionSection)
    slo: SloSection = Field(default_factory=SloSection)
    limits: LimitsSection = Field(default_factory=LimitsSection)
    splits: SplitsSection = Field(default_factory=SplitsSection)
    gates: GatesSection = Field(default_factory=GatesSection)
    training: TrainingSection = Field(default_factory=TrainingSection)
    rollout: RolloutSection = Field(default_factory=RolloutSection)
    retention: RetentionSection = Field(default_factory=RetentionSection)
    replicas: ReplicasSection = Field(default_factory=ReplicasSection)
    alerts: dict[str, RuleOverride] = Field(
        default_factory=dict,
        description="alert rule name → change for this pipeline (enabled, threshold, for)",
    )

    @field_validator("title")
    @classmethod
    def _strip_title(cls, value: str) -> str:
        return value.strip()

    @model_validator(mode="after")
    def _defaults(self) -> PipelineSpec:
        if not self.model.name:
            self.model.name = self.name
        if not self.title:
            self.title = self.name
        return self

    @property
    def model_name(self) -> str:
        """The registered model that serves this pipeline (``model.name``, always filled in)."""
        return self.model.name or self.name

    def to_yaml(self) -> str:
        """The spec as YAML, every default spelled out (what ``keeneye pipelines show`` prints)."""
        data = self.model_dump(mode="json")
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=1000)


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def parse_spec(data: Any, *, source: str) -> PipelineSpec:
    """Validate already-parsed YAML; errors are one line: ``<source>: <field path>: <message>``."""
    if not isinstance(data, dict):
        raise InvalidInput(
            "bad_spec", f"{source}: a pipeline spec must be a mapping, got {type(data).__name__}"
        )
    try:
        return PipelineSpec.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        raise InvalidInput("bad_spec", f"{source}: {where}: {msg}") from exc


def parse_spec_text(text: str, *, source: str) -> PipelineSpec:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        # The first line of PyYAML's message plus the position keeps the error on one line.
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InvalidInput("bad_spec", f"{source}: {where}not valid YAML ({problem})") from exc
    return parse_spec(data, source=source)


def load_spec(path: Path) -> PipelineSpec:
    """Read and validate one spec file; raises :class:`InvalidInput` (reason ``bad_spec``)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidInput("bad_spec", f"{path}: cannot read ({exc.strerror or exc})") from exc
    return parse_spec_text(text, source=str(path))


def builtin_specs() -> list[tuple[str, PipelineSpec]]:
    """The specs shipped in the package, as ``(source, spec)``."""
    folder = resources.files("keeneye.pipelines").joinpath("builtin")
    out = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.is_file() and entry.name.endswith((".yaml", ".yml")):
            source = f"builtin:{entry.name}"
            out.append((source, parse_spec_text(entry.read_text(encoding="utf-8"), source=source)))
    return out


class PipelineCatalog:
    """Every pipeline known to this installation: the built-ins plus the user's spec folders.

    A user file whose ``name`` matches a built-in replaces it (that is how a site tunes a blueprint);
    two user files with the same name are an error naming both, as are two built-ins.
    """

    def __init__(self, settings: Settings) -> None:
        self._dirs = list(settings.pipelines.dirs)
        self._specs: dict[str, PipelineSpec] | None = None
        self._sources: dict[str, str] = {}

    def _load(self) -> dict[str, PipelineSpec]:
        if self._specs is not None:
            return self._specs
        builtin: dict[str, tuple[str, PipelineSpec]] = {}
        for source, spec in builtin_specs():
            _add_unique(builtin, spec, source)
        user: dict[str, tuple[str, PipelineSpec]] = {}
        for folder in self._dirs:
            folder = folder.expanduser()
            if not folder.is_dir():
                raise ConfigError(
                    "KEENEYE_PIPELINES__DIRS",
                    f"{folder} is not a folder",
                    fix="create it or remove it from the list of pipeline folders",
                )
            for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
                _add_unique(user, load_spec(path), str(path))
        for name, (source, _) in user.items():
            if name in builtin:
                log.info("pipeline %s from %s overrides the built-in", name, source)
        merged = {**builtin, **user}
        self._sources = {name: source for name, (source, _) in merged.items()}
        self._specs = {name: spec for name, (_, spec) in sorted(merged.items())}
        return self._specs

    def names(self) -> list[str]:
        return list(self._load())

    def specs(self) -> list[PipelineSpec]:
        return list(self._load().values())

    def get(self, name: str) -> PipelineSpec:
        specs = self._load()
        try:
            return specs[name]
        except KeyError:
            raise NotFound(
                f"unknown pipeline {name!r}; known: {', '.join(specs) or '(none)'}",
                fix="run `keeneye pipelines list`, or add a spec folder to KEENEYE_PIPELINES__DIRS",
            ) from None

    def source(self, name: str) -> str:
        """Where a pipeline's spec came from (``builtin:<file>`` or a path)."""
        self.get(name)
        return self._sources[name]

    def __contains__(self, name: object) -> bool:
        return name in self._load()


def _add_unique(into: dict[str, tuple[str, PipelineSpec]], spec: PipelineSpec, source: str) -> None:
    if spec.name in into:
        raise InvalidInput(
            "duplicate_pipeline",
            f"pipeline {spec.name!r} is defined twice: in {into[spec.name][0]} and in {source}",
            fix="rename or remove one of the two files",
        )
    into[spec.name] = (source, spec)
