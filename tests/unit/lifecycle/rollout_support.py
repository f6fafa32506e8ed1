"""Real parts for the rollout tests: an MLflow registry with two species-id versions, a SQLite results
database, and answers stored the way serving stores them (``record_prediction`` / ``save_prediction``)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from keeneye.domain import Variant
from keeneye.lifecycle.rollout import RolloutController, RolloutPolicy
from keeneye.metrics import Metrics
from keeneye.models.bundle import ModelBundle
from keeneye.models.testing import tiny_classifier
from keeneye.pipelines import PipelineCatalog
from keeneye.registry import ModelRegistry
from keeneye.settings import Settings
from keeneye.store import NewObservation, NewPrediction, ResultsDB, open_results_db, utcnow
from tests.serving_support import SPECIES, register_species_model, species_manifest

PIPELINE = "species-id"


class FakeClock:
    """``now`` for the controller; the tests move it."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def with_rollout(settings: Settings, tmp: Path, **rollout: Any) -> Settings:
    """Settings whose species-id spec (a user file overriding the built-in) has this rollout section."""
    spec = PipelineCatalog(settings).get(PIPELINE).model_dump(mode="json", exclude_none=True)
    spec["rollout"] = {**spec["rollout"], **rollout}
    folder = tmp / "pipelines"
    folder.mkdir(exist_ok=True)
    (folder / f"{PIPELINE}.yaml").write_text(yaml.safe_dump(spec))
    return settings.model_copy(update={"pipelines": settings.pipelines.model_copy(update={"dirs": [folder]})})


def register_version(settings: Settings, tmp: Path, *, seed: int, gates_passed: bool = True) -> str:
    """One more species-id version (no alias); ``gates_passed=False`` makes one the gates refused."""
    bundle = ModelBundle.write(
        tmp / f"bundle-{seed}", tiny_classifier(len(SPECIES), seed=seed), species_manifest()
    )
    registry = ModelRegistry(settings, events=open_results_db(settings))
    return str(registry.register(PIPELINE, bundle, gates_passed=gates_passed).version)


@dataclass
class World:
    settings: Settings
    db: ResultsDB
    registry: ModelRegistry
    catalog: PipelineCatalog
    metrics: Metrics
    clock: FakeClock
    controller: RolloutController

    def gauge(self, state: str) -> float | None:
        return self.metrics.registry.get_sample_value(
            "keeneye_rollout_state", {"pipeline": PIPELINE, "state": state}
        )

    def rollout_events(self) -> list[Any]:
        return [e for e in self.db.model_events(PIPELINE) if e.event.startswith("rollout_")]

    def alias(self, alias: str) -> str | None:
        info = self.registry.resolve(PIPELINE, alias)
        return None if info is None else info.version


def make_world(
    settings: Settings, tmp: Path, *, policy: RolloutPolicy | None = None, **rollout: Any
) -> World:
    """v1 champion and v2 challenger of species-id; the controller's clock starts an hour ago, so that
    rows stored now fall inside any window it opens."""
    settings = with_rollout(settings, tmp, **rollout) if rollout else settings
    register_species_model(settings, tmp, seed=0)
    register_species_model(settings, tmp, seed=1, alias="challenger")
    db = open_results_db(settings)
    registry = ModelRegistry(settings, events=db)
    catalog = PipelineCatalog(settings)
    metrics = Metrics()
    clock = FakeClock(utcnow() - timedelta(hours=1))
    controller = RolloutController(settings, db, registry, catalog, metrics, clock, policy=policy)
    return World(settings, db, registry, catalog, metrics, clock, controller)


def answer(
    db: ResultsDB,
    variant: Variant,
    version: str,
    *,
    predicted: str = "esox_lucius",
    latency_ms: float = 10.0,
) -> str:
    """A new observation answered by ``version`` as ``variant`` (champion or canary); its id."""
    return db.record_prediction(
        NewObservation(
            pipeline=PIPELINE,
            content_hash=uuid.uuid4().hex * 2,
            object_key=None,
            content_type="image/jpeg",
            size_bytes=100,
            metadata={},
            source="test",
        ),
        NewPrediction(
            model_name=PIPELINE,
            model_version=version,
            variant=variant,
            task="classify",
            result={"task": "classify", "predicted_class": predicted, "confidence": 0.9},
            decision=None,
            confidence=0.9,
            latency_ms=latency_ms,
        ),
    )


def shadow_answer(db: ResultsDB, observation_id: str, version: str, predicted: str) -> None:
    """The challenger's silent answer to an observation the champion answered."""
    db.save_prediction(
        observation_id,
        PIPELINE,
        PIPELINE,
        version,
        Variant.shadow,
        "classify",
        {"task": "classify", "predicted_class": predicted, "confidence": 0.8},
        None,
        0.8,
        5.0,
    )
