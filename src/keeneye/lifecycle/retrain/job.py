"""The retraining run: one queued run → a dataset → ``train_pipeline`` → the run's outcome.

:func:`run_retraining` takes the queued run, picks the base data (:func:`base_data_dir`) and the
weights to fine-tune from (:func:`start_weights`), builds the dataset
(:func:`~keeneye.lifecycle.retrain.dataset.build_dataset`), trains with the time split of
:func:`time_splits`, and finishes the run ``succeeded``, ``refused`` or ``failed`` with its outcome.
Errors do not escape it; :func:`iter_outcome_lines` says the outcome to a person.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from keeneye.domain import InvalidInput, JsonObject, KeeneyeError, Task
from keeneye.lifecycle.retrain.dataset import TIME_KEY, build_dataset, jsonable
from keeneye.lifecycle.retrain.sources import MAX_FEEDBACK
from keeneye.lifecycle.runs import TrainingRunRecord, finish, start
from keeneye.metrics import Metrics
from keeneye.pipelines import PipelineCatalog, PipelineSpec, SplitsSection
from keeneye.registry import CHAMPION, ModelRegistry, ModelVersionInfo
from keeneye.settings import Settings
from keeneye.store import ObjectStore, ResultsDB, open_object_store, open_results_db

# keeneye.training.run / trainers import torch (the optional `train` extra): the scheduler and the API
# import this module without it, so those names are imported where a retraining run uses them.
if TYPE_CHECKING:
    from keeneye.training.trainers import ProgressCallback

log = logging.getLogger(__name__)

ACTOR: Final = "keeneye-retrain"


def time_splits(spec: PipelineSpec) -> SplitsSection:
    """The spec's fractions and seed, split by :data:`TIME_KEY`: the newest images are the test."""

    s = spec.splits
    return SplitsSection(
        strategy="time", group_by=TIME_KEY, train=s.train, val=s.val, test=s.test, seed=s.seed
    )


def base_data_dir(
    inputs: Mapping[str, Any], champion: ModelVersionInfo | None, notes: list[str]
) -> Path | None:
    """The run's ``data_dir`` input, else the champion's training folder when it is still there."""
    from keeneye.training.run import TAG_DATA_DIR

    given = inputs.get("data_dir")
    if given:
        path = Path(str(given)).expanduser()
        if not path.exists():
            raise InvalidInput(
                "bad_dataset", f"{path} does not exist", fix="point --data at a dataset folder"
            )
        return path
    if champion is None:
        notes.append("no champion: trained on the labelled observations only")
        return None
    tagged = champion.tags.get(TAG_DATA_DIR)
    if not tagged:
        notes.append(
            f"champion v{champion.version} records no training data folder: trained on the labelled "
            "observations only (pass --data to add its data)"
        )
        return None
    path = Path(tagged)
    if not path.exists():
        notes.append(
            f"champion v{champion.version}'s training data {path} is not on this machine: labels only"
        )
        return None
    return path


def start_weights(
    spec: PipelineSpec, champion: ModelVersionInfo | None, overrides: Mapping[str, Any], notes: list[str]
) -> tuple[Path | None, str | None]:
    """(checkpoint, champion version) to fine-tune from, or (None, None) with the reason in ``notes``."""
    from keeneye.training.run import CHECKPOINT_FILE, CHECKPOINT_INFO_FILE, TAG_RUN_DIR

    if overrides.get("weights"):
        return Path(str(overrides["weights"])), None
    if champion is None:
        notes.append("trained from scratch: there is no champion to start from")
        return None, None
    run_dir = champion.tags.get(TAG_RUN_DIR)
    checkpoint = Path(run_dir) / CHECKPOINT_FILE if run_dir else None
    if checkpoint is None or not checkpoint.is_file():
        notes.append(f"trained from scratch: champion v{champion.version} has no checkpoint on this machine")
        return None, None
    try:
        saved = json.loads((checkpoint.parent / CHECKPOINT_INFO_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        saved = {}
    backbone = overrides.get("backbone") or spec.training.backbone
    task = "classify" if spec.task is Task.classify else "segment"
    if saved.get("backbone") != backbone or saved.get("task") != task:
        notes.append(
            f"trained from scratch: champion v{champion.version} is a {saved.get('backbone')} "
            f"{saved.get('task')} model, the recipe asks for a {backbone} {task} model"
        )
        return None, None
    return checkpoint, champion.version


def run_retraining(
    settings: Settings,
    run_id: int,
    *,
    progress: ProgressCallback | None = None,
    registry: ModelRegistry | None = None,
    db: ResultsDB | None = None,
    objects: ObjectStore | None = None,
    metrics: Metrics | None = None,
) -> TrainingRunRecord:
    """Execute the queued run ``run_id`` and return it finished (see the module docstring).

    Errors do not escape: the run finishes ``failed`` with the error's one line (the log has the
    traceback). A 409 ``InvalidInput`` is raised when the run is not queued (already taken).
    """

    db = db or open_results_db(settings)
    run = start(db, run_id)
    started = time.perf_counter()
    try:
        outcome, status = _execute(
            settings,
            db,
            run,
            registry=registry,
            objects=objects or open_object_store(settings),
            progress=progress,
        )
    except KeeneyeError as exc:
        log.warning("training run %d of %s failed: %s", run.id, run.pipeline, exc.one_line())
        return _failed(db, run, exc.one_line(), started, metrics)
    except Exception as exc:
        log.exception("training run %d of %s failed", run.id, run.pipeline)
        return _failed(db, run, f"{type(exc).__name__}: {exc}", started, metrics)
    except BaseException:  # Ctrl-C, SystemExit: leave no run "running" behind
        _failed(db, run, "interrupted", started, metrics)
        raise
    timings = outcome["timings_s"]
    assert isinstance(timings, dict)  # _execute writes it
    timings["total"] = round(time.perf_counter() - started, 2)
    return finish(db, run.id, status, jsonable(outcome), metrics=metrics)


def _failed(
    db: ResultsDB, run: TrainingRunRecord, error: str, started: float, metrics: Metrics | None
) -> TrainingRunRecord:
    outcome = {"timings_s": {"total": round(time.perf_counter() - started, 2)}}
    return finish(db, run.id, "failed", outcome, error[:4000], metrics=metrics)


def _execute(
    settings: Settings,
    db: ResultsDB,
    run: TrainingRunRecord,
    *,
    registry: ModelRegistry | None,
    objects: ObjectStore,
    progress: ProgressCallback | None,
) -> tuple[JsonObject, str]:
    from keeneye.training.run import train_pipeline

    spec = PipelineCatalog(settings).get(run.pipeline)
    reg = registry or ModelRegistry(settings, events=db)
    champion = reg.resolve(spec.model_name, CHAMPION)
    inputs = run.inputs
    notes: list[str] = []
    overrides = dict(inputs.get("overrides") or {})
    weights, fine_tuned_from = start_weights(spec, champion, overrides, notes)
    if weights is not None:
        overrides["weights"] = str(weights)
    began = time.perf_counter()
    built = build_dataset(
        db,
        objects,
        spec,
        settings.home / "datasets" / spec.name / f"retrain-{run.id}",
        base_dir=base_data_dir(inputs, champion, notes),
        champion=champion,
        pseudo_labels=bool(inputs.get("pseudo_labels")),
        max_feedback=int(inputs.get("max_feedback") or MAX_FEEDBACK),
        info={
            "run_id": run.id,
            "cause": run.cause,
            "champion_version": champion.version if champion else None,
        },
        progress=progress,
    )
    dataset_seconds = time.perf_counter() - began
    result = train_pipeline(
        settings,
        spec.name,
        built.path,
        epochs=int(inputs["epochs"]) if inputs.get("epochs") else None,
        skip_invalid=True,  # an unreadable upload must not stop the whole retraining; it is reported
        progress=progress,
        overrides=overrides,
        registry=reg,
        actor=ACTOR,
        reason=f"{run.cause}: {run.reason}"[:1000],
        splits=time_splits(spec),
    )
    gates = result.gates
    outcome: JsonObject = {
        "version": result.version,
        "alias": result.alias,
        "gates": {"passed": gates.passed, "reasons": list(gates.reasons), "notes": list(gates.notes)},
        "metrics": dict(result.metrics),
        "champion": {
            "version": gates.champion_version,
            "metrics": None if result.champion_metrics is None else dict(result.champion_metrics),
        },
        "data_version": result.data_version,
        "dataset": {**built.to_dict(), "skipped_invalid": list(result.validation.skipped)},
        "split_sizes": list(result.split_sizes),
        "fine_tuned_from": fine_tuned_from,
        "weights": str(weights) if weights is not None else None,
        "notes": list(notes),
        "run_dir": str(result.run_dir),
        "mlflow_run_id": result.run_id,
        "timings_s": {
            "dataset": round(dataset_seconds, 2),
            **{k: round(v, 2) for k, v in result.timings.items()},
        },
    }
    status = "succeeded" if gates.passed and result.version is not None else "refused"
    return outcome, status


def iter_outcome_lines(run: TrainingRunRecord) -> Iterator[str]:
    """A human summary of a finished run, one line each (the CLI prints these)."""
    o = run.outcome
    yield f"run {run.id} of {run.pipeline} ({run.cause}): {run.status}"
    if run.error:
        yield f"error: {run.error}"
    dataset = o.get("dataset") or {}
    if dataset:
        skipped = ", ".join(f"{k} {v}" for k, v in sorted((dataset.get("skipped") or {}).items()))
        yield (
            f"dataset: {dataset.get('images')} images ({dataset.get('base')} base, {dataset.get('feedback')} "
            f"labelled, {dataset.get('pseudo')} pseudo-labelled)"
            + (f"; skipped {skipped}" if skipped else "")
        )
    if o.get("split_sizes"):
        yield "train/val/test (test = newest): " + "/".join(str(n) for n in o["split_sizes"])
    if o.get("metrics"):
        yield "challenger: " + ", ".join(
            f"{k}={v:.4f}" for k, v in o["metrics"].items() if isinstance(v, float)
        )
    champion = o.get("champion") or {}
    if champion.get("metrics"):
        yield f"champion v{champion['version']} on the same test split: " + ", ".join(
            f"{k}={v:.4f}" for k, v in champion["metrics"].items() if isinstance(v, float)
        )
    for note in o.get("notes") or []:
        yield f"note: {note}"
    gates = o.get("gates") or {}
    if gates:
        yield (
            "gates passed"
            if gates.get("passed")
            else "gates failed: " + "; ".join(gates.get("reasons") or [])
        )
    if o.get("version"):
        alias = f" with alias {o['alias']}" if o.get("alias") else " without an alias"
        yield f"registered v{o['version']}{alias}"


__all__ = [
    "ACTOR",
    "base_data_dir",
    "iter_outcome_lines",
    "run_retraining",
    "start_weights",
    "time_splits",
]
