"""Helpers for tests that need a registered model and a live server on a real port."""

from __future__ import annotations

import contextlib
import io
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import uvicorn

from keeneye.models.bundle import ModelBundle
from keeneye.models.manifest import ModelManifest
from keeneye.models.testing import tiny_classifier
from keeneye.registry import ModelRegistry
from keeneye.serving import create_app
from keeneye.settings import Settings
from keeneye.store import open_results_db
from tests.services import free_port

SPECIES = [
    ("salmo_trutta", "Brown trout"),
    ("esox_lucius", "Pike"),
    ("perca_fluviatilis", "Perch"),
    ("sander_lucioperca", "Zander"),
    ("abramis_brama", "Bream"),
]


def species_manifest(**extra: Any) -> ModelManifest:
    return ModelManifest.model_validate(
        {
            "name": "species-id",
            "task": "classify",
            "output_format": "logits",
            "input": {
                "width": 32,
                "height": 32,
                "channels": ["red", "green", "blue"],
                "mean": [0.5, 0.5, 0.5],
                "std": [0.25, 0.25, 0.25],
            },
            "classes": [{"id": i, "name": n, "label": lbl} for i, (n, lbl) in enumerate(SPECIES)],
            **extra,
        }
    )


_MLFLOW_TEMPLATE: Path | None = None


def fast_registry_store(settings: Settings) -> None:
    """Seed a new KEENEYE_HOME with an already-migrated, empty MLflow store.

    MLflow migrates a new SQLite store on first use (seconds); copying a migrated empty one is
    instant and gives the same empty registry.
    """
    global _MLFLOW_TEMPLATE
    target = settings.home / "mlflow.db"
    if target.exists() or settings.registry_uri != f"sqlite:///{target}":
        return
    if _MLFLOW_TEMPLATE is None:
        import tempfile

        home = Path(tempfile.mkdtemp(prefix="keeneye-mlflow-template-"))
        ModelRegistry(Settings(home=home)).versions("warm-up")
        _MLFLOW_TEMPLATE = home / "mlflow.db"
    settings.home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_MLFLOW_TEMPLATE, target)


def register_species_model(settings: Settings, tmp: Path, *, seed: int = 0, alias: str = "champion") -> str:
    """Register a tiny 5-class classifier for species-id; returns its version."""
    fast_registry_store(settings)
    bundle = ModelBundle.write(
        tmp / f"bundle-{seed}", tiny_classifier(len(SPECIES), seed=seed), species_manifest()
    )
    db = open_results_db(settings)
    db.ensure_schema()
    registry = ModelRegistry(settings, events=db)
    info = registry.register("species-id", bundle, alias=alias, gates_passed=True)
    return str(info.version)


def with_species_limits(settings: Settings, tmp: Path, **limits: Any) -> Settings:
    """Settings whose species-id spec (a user file overriding the built-in) has these limits."""
    import yaml

    from keeneye.pipelines import PipelineCatalog

    spec = PipelineCatalog(settings).get("species-id").model_dump(mode="json", exclude_none=True)
    spec["limits"] = limits
    folder = tmp / "pipelines"
    folder.mkdir(exist_ok=True)
    (folder / "species-id.yaml").write_text(yaml.safe_dump(spec))
    return settings.model_copy(update={"pipelines": settings.pipelines.model_copy(update={"dirs": [folder]})})


def jpeg(color: tuple[int, int, int] = (200, 60, 30), size: int = 48, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    img = np.clip(np.array(color, np.float32)[None, None, ::-1] + rng.normal(0, 20, (size, size, 3)), 0, 255)
    ok, buf = cv2.imencode(".jpg", img.astype(np.uint8))
    assert ok
    return bytes(buf)


def png(array: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", array)
    assert ok
    return bytes(buf)


def tiff(array: np.ndarray, **kwargs: Any) -> bytes:
    import tifffile

    out = io.BytesIO()
    tifffile.imwrite(out, array, **kwargs)
    return out.getvalue()


class LiveServer:
    def __init__(self, settings: Settings, *, poll_aliases: bool = True) -> None:
        self.port = free_port()
        settings = settings.model_copy(
            update={"serving": settings.serving.model_copy(update={"port": self.port})}
        )
        self.settings = settings
        self.app = create_app(settings, poll_aliases=poll_aliases)
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@contextlib.contextmanager
def live_server(settings: Settings, **kwargs: Any) -> Iterator[LiveServer]:
    server = LiveServer(settings, **kwargs).start()
    try:
        yield server
    finally:
        server.stop()
