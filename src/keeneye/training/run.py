"""``train_pipeline``: one function, clear stages, from a data folder to a gated, registered model.

load → validate → version → split → prepare → (search) → train → export (+ parity, reference profile)
→ evaluate on the test split through ONNX Runtime → evaluate the champion on the same split → gates
→ log params / metrics / plots to MLflow → register (gates result recorded) → alias ``challenger``
when the gates pass.

The test split is never seen by training, search or early stopping (those use train and val only).
The retraining loop (lifecycle) calls the same function.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from keeneye.domain import InvalidInput, KeeneyeError, Task
from keeneye.models import ModelBundle, Thresholds
from keeneye.pipelines import PipelineCatalog, PipelineSpec, SplitsSection
from keeneye.registry import CHALLENGER, CHAMPION, ModelRegistry
from keeneye.settings import Settings
from keeneye.training.calibrate import calibrate_decision, calibrated_manifest_changes
from keeneye.training.datasets import (
    ANNOTATIONS_FILE,
    Dataset,
    DatasetImage,
    ValidationReport,
    dataset_version,
    load_coco,
    load_imagefolder,
    validate,
)
from keeneye.training.evaluate import Evaluation, evaluate_bundle
from keeneye.training.export import ParityReport, export_bundle, update_manifest
from keeneye.training.gates import GateResult, check_gates
from keeneye.training.splits import split
from keeneye.training.torchdata import (
    band_map_for,
    base_input_spec,
    category_to_class,
    channel_statistics,
    input_size,
    load_image,
    model_channels,
    model_classes,
    normalise,
    prepare_images,
    with_normalisation,
)
from keeneye.training.trainers import (
    DEFAULT_CLASSIFY_BACKBONE,
    DEFAULT_SEGMENT_ENCODER,
    ProgressCallback,
    ProgressEvent,
    SearchResult,
    TrainConfig,
    fit,
    search,
)

log = logging.getLogger(__name__)

PARITY_INPUTS = 4
PROFILE_IMAGES = 200
MAX_LISTED_PROBLEMS = 12
# The trained weights in the form ``TrainConfig.weights`` reads (the whole classifier, the segmenter's
# encoder), so retraining can fine-tune from a registered model (``keeneye.lifecycle.retrain``).
CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_INFO_FILE = "checkpoint.json"
# Registry tags of a version trained here: where its run folder and its training data live.
TAG_RUN_DIR = "keeneye.run_dir"
TAG_DATA_DIR = "keeneye.data_dir"
PSEUDO_FIELD = "pseudo"  # image metadata: the label is a model's own confident answer (train only)


@dataclass
class TrainResult:
    """What one training run produced."""

    pipeline: str
    model_name: str
    version: str | None
    alias: str | None
    metrics: dict[str, float]
    gates: GateResult
    data_version: str
    validation: ValidationReport
    split_sizes: tuple[int, int, int]
    bundle_path: Path
    run_dir: Path
    artifacts: list[Path]
    run_id: str | None
    parity: ParityReport
    evaluation: Evaluation
    config: TrainConfig
    best_epoch: int
    epochs_run: int
    search: SearchResult | None
    timings: dict[str, float] = field(default_factory=dict)
    champion_metrics: dict[str, float] | None = None  # the champion on the same test split

    def to_dict(self) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline,
            "model_name": self.model_name,
            "version": self.version,
            "alias": self.alias,
            "metrics": self.metrics,
            "gates": self.gates.to_dict(),
            "data_version": self.data_version,
            "validation": self.validation.to_dict(),
            "split_sizes": list(self.split_sizes),
            "bundle_path": str(self.bundle_path),
            "run_dir": str(self.run_dir),
            "artifacts": [str(p) for p in self.artifacts],
            "run_id": self.run_id,
            "parity": self.parity.to_dict(),
            "config": self.config.to_params(),
            "best_epoch": self.best_epoch,
            "epochs_run": self.epochs_run,
            "search": None if self.search is None else self.search.best_params,
            "timings_s": {k: round(v, 2) for k, v in self.timings.items()},
            "champion": {"version": self.gates.champion_version, "metrics": self.champion_metrics},
        }


# --------------------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------------------


def load_dataset(data_dir: str | Path) -> Dataset:
    """COCO when the folder has ``annotations.json`` (or a JSON file is given), else ImageFolder."""
    path = Path(data_dir).expanduser()
    if not path.exists():
        raise InvalidInput("bad_dataset", f"{path} does not exist", fix="point --data at a dataset folder")
    if path.is_file() or (path / ANNOTATIONS_FILE).is_file():
        return load_coco(path)
    return load_imagefolder(path)


def validated(
    dataset: Dataset, spec: PipelineSpec, *, skip_invalid: bool, progress: ProgressCallback | None = None
) -> tuple[Dataset, ValidationReport]:
    """Validate; refuse invalid data naming every problem, or drop the invalid files with ``skip_invalid``."""
    report = validate(dataset, expected_bands=spec.input.expected_bands, task=spec.task.value)
    for problem in report.warnings:
        log.warning("dataset %s", problem.one_line())
    if report.ok:
        return dataset, report
    dataset_level = [p for p in report.errors if p.file not in report.invalid_files]
    if not skip_invalid or dataset_level:
        shown = report.errors[:MAX_LISTED_PROBLEMS]
        more = len(report.errors) - len(shown)
        lines = "\n".join(f"  {p.file}: {p.message} — {p.fix}" for p in shown)
        raise InvalidInput(
            "bad_dataset",
            f"dataset {dataset.root} has {len(report.errors)} problem(s); training did not start:\n{lines}"
            + (f"\n  … and {more} more" if more else ""),
            fix="fix the files listed, or pass --skip-invalid to train without them",
        )
    report.skipped = list(report.invalid_files)
    kept = dataset.without(report.skipped)
    log.warning("skipping %d invalid image(s): %s", len(report.skipped), ", ".join(report.skipped[:20]))
    _emit(
        progress,
        "validate",
        f"skipped {len(report.skipped)} invalid image(s): {', '.join(report.skipped[:5])}",
    )
    if not kept.images:
        raise InvalidInput("bad_dataset", f"every image of {dataset.root} is invalid", fix="fix the dataset")
    return kept, report


def split_dataset(
    dataset: Dataset, spec: PipelineSpec
) -> tuple[list[DatasetImage], list[DatasetImage], list[DatasetImage]]:
    """Train / val / test images per the spec's ``splits`` section.

    Pseudo-labelled images (metadata ``pseudo: true``) only ever train: a model's own answers are no
    truth to measure a model against.
    """
    s = spec.splits
    pseudo = [im for im in dataset.images if im.metadata.get(PSEUDO_FIELD) is True]
    if pseudo:
        dataset = dataset.without(im.file_name for im in pseudo)
    parts = split(
        dataset.split_items(),
        strategy=s.strategy,
        fractions=(s.train, s.val, s.test),
        seed=s.seed,
        group_by=s.group_by if s.strategy == "grouped" else None,
        time_key=s.group_by if s.strategy == "time" else None,
    )
    by_id = {im.id: im for im in dataset.images}
    train, val, test = ([by_id[i] for i in ids] for ids in (parts.train, parts.val, parts.test))  # type: ignore[index]
    train += pseudo
    assert not ({im.id for im in test} & {im.id for im in train + val}), "test split leaked into training"
    if not train or not test:
        raise InvalidInput(
            "bad_dataset",
            f"{len(dataset.images)} images split into {len(train)} train / {len(val)} val / {len(test)} test",
            fix="add images: both the train and the test split need at least one",
        )
    return train, val, test


def _emit(progress: ProgressCallback | None, stage: str, message: str, **kw: Any) -> None:
    if progress is not None:
        progress(ProgressEvent(stage, message, **kw))


def recipe(
    spec: PipelineSpec,
    *,
    num_classes: int,
    in_channels: int,
    epochs: int | None,
    overrides: Mapping[str, Any] | None,
) -> TrainConfig:
    """The spec's training recipe as a :class:`TrainConfig`, with ``overrides`` (CLI flags) applied."""
    t = spec.training
    task = Task.classify if spec.task is Task.classify else Task.segment
    backbone = t.backbone or (DEFAULT_CLASSIFY_BACKBONE if task is Task.classify else DEFAULT_SEGMENT_ENCODER)
    config = TrainConfig(
        task=task,
        num_classes=num_classes,
        in_channels=in_channels,
        backbone=backbone,
        architecture=t.architecture or "unet",
        epochs=epochs or t.epochs,
        batch_size=t.batch_size,
        learning_rate=t.learning_rate,
        weight_decay=t.weight_decay,
        augment_strength=0.5 if t.augment else 0.0,
        seed=t.seed,
        spectral_jitter=bool(spec.input.indices) or bool(spec.input.band_map),
        image_decision=task is Task.segment and spec.decision.kind == "ok-defect",
    )
    allowed = {f for f in TrainConfig.__dataclass_fields__ if f not in {"task", "num_classes", "in_channels"}}
    extra = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = set(extra) - allowed - {"image_size"}
    if unknown:
        raise KeeneyeError(
            f"unknown training option(s): {', '.join(sorted(unknown))}", fix="see `keeneye train --help`"
        )
    extra.pop("image_size", None)
    if "weights" in extra:
        extra["weights"] = Path(extra["weights"])
    return replace(config, **extra)


@contextmanager
def _stage(timings: dict[str, float], name: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - started


# --------------------------------------------------------------------------------------------------
# The whole run
# --------------------------------------------------------------------------------------------------


def train_pipeline(
    settings: Settings,
    pipeline: str,
    data_dir: str | Path,
    *,
    epochs: int | None = None,
    search: int = 0,
    skip_invalid: bool = False,
    register: bool = True,
    progress: ProgressCallback | None = None,
    overrides: Mapping[str, Any] | None = None,
    registry: ModelRegistry | None = None,
    actor: str = "keeneye",
    reason: str = "trained by keeneye train",
    splits: SplitsSection | None = None,
) -> TrainResult:
    """Train, export, evaluate, gate and (with ``register``) register a model for ``pipeline``.

    ``overrides`` replace recipe values of the spec (``backbone``, ``image_size``, ``batch_size``,
    ``learning_rate``, ``augment_strength``, ``patience``, ``weights``, ``device``, ``max_seconds`` …);
    ``splits`` replaces the spec's split (retraining splits by time so the newest data is the test).
    Raises :class:`InvalidInput` for invalid data (unless ``skip_invalid``) and
    :class:`KeeneyeError` when the export fails its parity check.
    """

    timings: dict[str, float] = {}
    started = time.perf_counter()
    spec = PipelineCatalog(settings).get(pipeline)
    if splits is not None:
        spec = spec.model_copy(update={"splits": splits})
    task = Task.classify if spec.task is Task.classify else Task.segment
    max_pixels = settings.imaging.max_pixels

    with _stage(timings, "validate"):
        _emit(progress, "load", f"reading {data_dir}")
        dataset, report = validated(
            load_dataset(data_dir), spec, skip_invalid=skip_invalid, progress=progress
        )
        version = dataset_version(dataset)
        train_imgs, val_imgs, test_imgs = split_dataset(dataset, spec)
    log.info(
        "dataset %s: %d images (%d/%d/%d), version %s",
        dataset.root, len(dataset.images), len(train_imgs), len(val_imgs), len(test_imgs), version[:12],
    )  # fmt: skip

    with _stage(timings, "prepare"):
        classes = model_classes(dataset, task)
        mapping = category_to_class(dataset, task)
        channels = model_channels(spec, band_map_for(spec, train_imgs[0].metadata))
        size = input_size(task, int((overrides or {}).get("image_size") or spec.training.image_size))
        base = base_input_spec(channels, size)
        total = len(train_imgs) + len(val_imgs)
        _emit(progress, "load", "preparing images", done=0, total=total)

        def tick(offset: int) -> Any:
            return lambda k: _emit(progress, "load", "preparing images", done=offset + k, total=total)

        train_raw = prepare_images(
            train_imgs, spec, base, mapping, task, max_pixels=max_pixels, on_image=tick(0)
        )
        mean, std = channel_statistics(train_raw.x)
        input_spec = with_normalisation(base, mean, std)
        x_train = normalise(train_raw.x, input_spec)
        val = (
            prepare_images(
                val_imgs,
                spec,
                input_spec,
                mapping,
                task,
                max_pixels=max_pixels,
                on_image=tick(len(train_imgs)),
            )
            if val_imgs
            else None
        )
        x_val = val.x if val is not None else x_train[:0]
        y_val = val.y if val is not None else train_raw.y[:0]
        config = recipe(
            spec, num_classes=len(classes), in_channels=len(channels), epochs=epochs, overrides=overrides
        )

    found: SearchResult | None = None
    if search > 0:
        with _stage(timings, "search"):
            found = _search(config, x_train, train_raw.y, x_val, y_val, search, progress)
            config = replace(config, **found.best_params)

    with _stage(timings, "train"):
        fitted = fit(config, x_train, train_raw.y, x_val, y_val, progress=progress)

    run_dir = settings.home / "runs" / spec.name / f"{datetime.now(tz=UTC):%Y%m%dT%H%M%S}-{version[:8]}"
    with _stage(timings, "export"):
        _emit(progress, "export", "exporting to ONNX and checking parity")
        parity_x = (x_val if len(x_val) else x_train)[:PARITY_INPUTS]
        rng = np.random.default_rng(config.seed)
        profile_idx = np.sort(
            rng.choice(len(train_raw.images), min(PROFILE_IMAGES, len(train_raw.images)), replace=False)
        )
        profile_images = [load_image(train_raw.images[int(i)], spec, max_pixels) for i in profile_idx]
        _save_checkpoint(fitted.model, config, run_dir)  # first: a refused export keeps the weights
        try:
            exported = export_bundle(
                fitted.model,
                run_dir / "bundle",
                name=spec.model_name,
                task=task,
                input_spec=input_spec,
                classes=classes,
                parity_inputs=parity_x,
                profile_inputs=x_train[torch.as_tensor(profile_idx)],
                profile_images=profile_images,
                thresholds=Thresholds(**spec.thresholds.manifest_overrides()),
                data_version=version,
                extra={
                    "training": {
                        **config.to_params(),
                        "best_epoch": fitted.best_epoch,
                        "epochs_run": len(fitted.history),
                        "device": fitted.device,
                        "split_sizes": [len(train_imgs), len(val_imgs), len(test_imgs)],
                    },
                },
                seed=config.seed,
            )
        except KeeneyeError as exc:
            raise KeeneyeError(
                f"{exc.message}; the trained weights are kept in {run_dir / CHECKPOINT_FILE}", fix=exc.fix
            ) from exc

    categories = {c.id: c.name for c in dataset.categories}
    if spec.decision.kind == "ok-defect" and task is not Task.classify and val_imgs:
        with _stage(timings, "calibrate"):
            _emit(progress, "calibrate", "calibrating the OK/DEFECT threshold on the validation split")
            calibration = calibrate_decision(
                exported.bundle, spec, val_imgs, categories, max_pixels=max_pixels
            )
            if calibration is not None:
                exported = replace(
                    exported,
                    bundle=update_manifest(
                        exported.bundle, **calibrated_manifest_changes(exported.bundle.manifest, calibration)
                    ),
                )
                log.info("decision calibrated on the validation split: %s", calibration.to_dict())
    with _stage(timings, "evaluate"):
        _emit(
            progress, "evaluate", "evaluating the ONNX model on the test split", done=0, total=len(test_imgs)
        )
        evaluation = evaluate_bundle(
            exported.bundle,
            spec,
            test_imgs,
            categories,
            max_pixels=max_pixels,
            on_image=lambda k: _emit(progress, "evaluate", "test split", done=k, total=len(test_imgs)),
        )
        artifacts = evaluation.write(run_dir / "evaluation")

    reg = registry or ModelRegistry(settings)
    with _stage(timings, "champion"):
        champion_metrics, champion_version = _champion_metrics(
            reg, spec, test_imgs, categories, max_pixels, progress
        )

    gate = check_gates(
        spec.gates,
        evaluation.metrics,
        champion_metrics=champion_metrics,
        champion_version=champion_version,
        subgroups=evaluation.subgroups,
    )
    manifest_metrics: dict[str, Any] = {
        **evaluation.metrics,
        "per_class": evaluation.details.get("per_class") or evaluation.details.get("iou_per_class"),
        "subgroups": evaluation.subgroups,
        "n_test": len(test_imgs),
    }
    bundle = update_manifest(exported.bundle, metrics=manifest_metrics, gates=gate.to_dict())
    artifacts += _write_run_files(run_dir, report, dataset, (train_imgs, val_imgs, test_imgs), found, gate)

    with _stage(timings, "register"):
        _emit(progress, "register", "logging the run to MLflow" + (" and registering" if register else ""))
        run_id = _log_run(
            settings, spec, config, fitted.history, evaluation, version, artifacts, found, timings
        )
        info = None
        if register:
            info = reg.register(
                spec.model_name,
                bundle,
                run_id=run_id,
                gates_passed=gate.passed,
                alias=CHALLENGER if gate.passed else None,
                tags={
                    "data_version": version,
                    TAG_RUN_DIR: str(run_dir),
                    TAG_DATA_DIR: str(Path(data_dir).expanduser().absolute()),
                },
                actor=actor,
                reason=reason,
            )
        _finish_run(settings, run_id)
    timings["total"] = time.perf_counter() - started
    alias = None
    if info is not None:
        alias = CHALLENGER if CHALLENGER in info.aliases else (CHAMPION if CHAMPION in info.aliases else None)
    result = TrainResult(
        pipeline=spec.name,
        model_name=spec.model_name,
        version=info.version if info is not None else None,
        alias=alias,
        metrics=evaluation.metrics,
        gates=gate,
        data_version=version,
        validation=report,
        split_sizes=(len(train_imgs), len(val_imgs), len(test_imgs)),
        bundle_path=bundle.path,
        run_dir=run_dir,
        artifacts=artifacts,
        run_id=run_id,
        parity=exported.parity,
        evaluation=evaluation,
        config=config,
        best_epoch=fitted.best_epoch,
        epochs_run=len(fitted.history),
        search=found,
        timings=timings,
        champion_metrics=champion_metrics,
    )
    _emit(progress, "done", "gates passed" if gate.passed else "gates failed: " + "; ".join(gate.reasons[:3]))
    return result


def _search(
    config: TrainConfig,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    trials: int,
    progress: ProgressCallback | None,
) -> SearchResult:
    if len(x_val) == 0:
        raise InvalidInput(
            "bad_split", "--search needs a validation split", fix="set splits.val above 0 in the spec"
        )
    return search(config, x_train, y_train, x_val, y_val, trials=trials, progress=progress)


def _champion_metrics(
    registry: ModelRegistry,
    spec: PipelineSpec,
    test_imgs: Sequence[DatasetImage],
    categories: Mapping[int, str],
    max_pixels: int,
    progress: ProgressCallback | None,
) -> tuple[dict[str, float] | None, str | None]:
    """The current champion's metrics on the same test images (None, None when there is none)."""

    champion = registry.resolve(spec.model_name, CHAMPION)
    if champion is None:
        return None, None
    _emit(progress, "evaluate", f"evaluating champion v{champion.version} on the same test split")
    bundle = registry.download(spec.model_name, champion.version)
    try:
        ev = evaluate_bundle(bundle, spec, test_imgs, categories, max_pixels=max_pixels)
    except KeeneyeError as exc:
        # A champion that cannot read this data (other bands, other classes) cannot be compared with.
        log.warning(
            "champion v%s could not be evaluated on this test split: %s", champion.version, exc.one_line()
        )
        return None, champion.version
    return ev.metrics, champion.version


def _save_checkpoint(model: torch.nn.Module, config: TrainConfig, run_dir: Path) -> None:
    """The weights as ``TrainConfig.weights`` loads them, and what they fit (backbone, channels)."""
    module: Any = model
    state = module.encoder.state_dict() if config.task is Task.segment else module.state_dict()
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.save(state, run_dir / CHECKPOINT_FILE)
    info = {
        "task": config.task.value,
        "backbone": config.backbone,
        "in_channels": config.in_channels,
        "num_classes": config.num_classes,
        "part": "encoder" if config.task is Task.segment else "model",
    }
    (run_dir / CHECKPOINT_INFO_FILE).write_text(json.dumps(info, indent=2))


def _write_run_files(
    run_dir: Path,
    report: ValidationReport,
    dataset: Dataset,
    parts: tuple[Sequence[DatasetImage], Sequence[DatasetImage], Sequence[DatasetImage]],
    found: SearchResult | None,
    gate: GateResult,
) -> list[Path]:
    out = run_dir / "run"
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "validation.json": report.to_dict(),
        "split.json": {
            name: [im.file_name for im in imgs]
            for name, imgs in zip(("train", "val", "test"), parts, strict=True)
        },
        "gates.json": gate.to_dict(),
    }
    if found is not None:
        files["search.json"] = {
            "best_params": found.best_params,
            "best_value": found.best_value,
            "trials": found.trials,
        }
    paths = []
    for name, data in files.items():
        path = out / name
        path.write_text(json.dumps(data, indent=2, default=str))
        paths.append(path)
    return paths


# --------------------------------------------------------------------------------------------------
# MLflow run
# --------------------------------------------------------------------------------------------------


def _mlflow_client(settings: Settings) -> Any:
    from mlflow.tracking import MlflowClient

    uri = settings.registry_uri
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///").split("?", 1)[0]).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _experiment_id(client: Any, settings: Settings, pipeline: str) -> str:
    """The experiment ``keeneye/<pipeline>`` the registry uses too (same name, same artifact folder)."""
    name = f"keeneye/{pipeline}"
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return str(experiment.experiment_id)
    location = (
        (settings.home / "mlartifacts" / pipeline).absolute().as_uri()
        if settings.registry_uri.startswith("sqlite:")
        else None
    )
    try:
        return str(client.create_experiment(name, artifact_location=location))
    except Exception:  # created concurrently by another process
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return str(experiment.experiment_id)


def _log_run(
    settings: Settings,
    spec: PipelineSpec,
    config: TrainConfig,
    history: Sequence[Any],
    evaluation: Evaluation,
    data_version: str,
    artifacts: Sequence[Path],
    found: SearchResult | None,
    timings: Mapping[str, float],
) -> str:
    """Create the training run: params, per-epoch and test metrics, the evaluation artifacts."""
    import re

    from mlflow.entities import Metric, Param

    client = _mlflow_client(settings)
    run = client.create_run(
        _experiment_id(client, settings, spec.name),
        run_name=f"train-{spec.name}",
        tags={"keeneye.pipeline": spec.name, "keeneye.kind": "train"},
    )
    run_id = str(run.info.run_id)
    now = int(time.time() * 1000)
    params = {**config.to_params(), "data_version": data_version, "pipeline": spec.name}
    if found is not None:
        best = found.best_params
        params.update(
            {
                "search.learning_rate": best["learning_rate"],
                "search.batch_size": best["batch_size"],
                "search.augment_strength": best["augment_strength"],
            }
        )
    metric_key = re.compile(r"^[\w\-./ ]{1,250}$")
    metrics = [
        Metric(f"test.{k}", float(v), now, 0) for k, v in evaluation.metrics.items() if metric_key.match(k)
    ]
    for e in history:
        metrics += [
            Metric("train.loss", e.train_loss, now, e.epoch),
            Metric("val.metric", e.val_metric, now, e.epoch),
            Metric("train.lr", e.lr, now, e.epoch),
        ]
    metrics += [Metric(f"time.{k}_s", float(v), now, 0) for k, v in timings.items()]
    client.log_batch(run_id, metrics=metrics, params=[Param(k, str(v)[:500]) for k, v in params.items()])
    for path in artifacts:
        client.log_artifact(run_id, str(path), "evaluation" if path.parent.name == "evaluation" else "run")
    return run_id


def _finish_run(settings: Settings, run_id: str) -> None:
    _mlflow_client(settings).set_terminated(run_id)


# --------------------------------------------------------------------------------------------------
# Evaluating a registered version on other data (``keeneye evaluate``)
# --------------------------------------------------------------------------------------------------


def evaluate_version(
    settings: Settings,
    pipeline: str,
    version: str,
    data_dir: str | Path,
    *,
    skip_invalid: bool = False,
    registry: ModelRegistry | None = None,
    progress: ProgressCallback | None = None,
) -> tuple[Evaluation, list[Path]]:
    """Evaluate a registered version (number or alias) on every image of a labelled dataset."""

    spec = PipelineCatalog(settings).get(pipeline)
    reg = registry or ModelRegistry(settings)
    if not version.isdigit():
        info = reg.resolve(spec.model_name, version)
        if info is None:
            raise KeeneyeError(
                f"model {spec.model_name!r} has no alias {version!r}",
                fix="pass a version number or an existing alias",
            )
        version = info.version
    bundle: ModelBundle = reg.download(spec.model_name, version)
    dataset, _ = validated(load_dataset(data_dir), spec, skip_invalid=skip_invalid, progress=progress)
    images = dataset.images
    _emit(progress, "evaluate", f"evaluating v{version}", done=0, total=len(images))
    evaluation = evaluate_bundle(
        bundle,
        spec,
        images,
        {c.id: c.name for c in dataset.categories},
        max_pixels=settings.imaging.max_pixels,
        on_image=lambda k: _emit(progress, "evaluate", f"evaluating v{version}", done=k, total=len(images)),
    )
    out = settings.home / "evaluations" / spec.name / f"v{version}-{datetime.now(tz=UTC):%Y%m%dT%H%M%S}"
    return evaluation, evaluation.write(out)


# --------------------------------------------------------------------------------------------------
# A rich progress display for the CLI and the demo
# --------------------------------------------------------------------------------------------------


class RichProgress:
    """A :data:`ProgressCallback` that draws one rich progress bar per stage, epoch metrics included.

    Use as a context manager:
    ``with RichProgress(console) as progress: train_pipeline(..., progress=progress)``.
    """

    def __init__(self, console: Console | None = None) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.fields[stage]:<9}[/]"),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[metrics]}"),
            console=console,
            transient=False,
        )
        self._tasks: dict[str, Any] = {}
        self._totals: dict[str, int | None] = {}

    def __enter__(self) -> RichProgress:
        self._progress.start()
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:  # finished: no stage is left spinning
            for stage, task in self._tasks.items():
                total = self._totals.get(stage) or 1
                self._progress.update(task, completed=total, total=total)
        self._progress.stop()

    def __call__(self, event: ProgressEvent) -> None:
        if event.stage == "done":
            return  # the caller prints the outcome (gates, version) itself
        for stage, previous in self._tasks.items():  # a new stage means the earlier ones are over
            if stage != event.stage:
                total = self._totals.get(stage) or 1
                self._progress.update(previous, completed=total, total=total)
        metrics = "  ".join(f"{k}={v:.4f}" for k, v in event.metrics.items())
        description = event.message if len(event.message) <= 44 else event.message[:43] + "…"
        task = self._tasks.get(event.stage)
        if task is None:
            task = self._progress.add_task(description, total=event.total, stage=event.stage, metrics=metrics)
            self._tasks[event.stage] = task
        self._totals[event.stage] = event.total
        self._progress.update(
            task,
            description=description,
            completed=event.done if event.done is not None else 0,
            total=event.total,
            metrics=metrics,
        )
