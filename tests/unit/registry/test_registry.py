"""The MLflow model registry on a real SQLite store; one store per module (MLflow's first init is slow)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import pytest

from keeneye.domain import InvalidInput, KeeneyeError, NotFound
from keeneye.models.bundle import ModelBundle
from keeneye.registry import ModelRegistry, registry_health
from keeneye.settings import Settings
from tests.unit.registry.bundles import write_bundle

# MLflow's SQL store uses an SQLAlchemy loader that SQLAlchemy 2.1 deprecates; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")


@dataclass
class Event:
    pipeline: str
    event: str
    model_version: str | None
    from_version: str | None
    alias: str | None
    actor: str
    reason: str
    details: dict[str, Any]


@dataclass
class RecordingSink:
    """A plain in-memory event sink (the results DB implements the same protocol)."""

    events: list[Event] = field(default_factory=list)

    def record_model_event(
        self,
        pipeline: str,
        event: str,
        *,
        model_version: str | None = None,
        from_version: str | None = None,
        alias: str | None = None,
        actor: str,
        reason: str = "",
        details: Mapping[str, Any] | None = None,
    ) -> int:
        self.events.append(
            Event(pipeline, event, model_version, from_version, alias, actor, reason, dict(details or {}))
        )
        return len(self.events)

    def of(self, pipeline: str) -> list[tuple[str, str | None, str | None, str, str]]:
        return [
            (e.event, e.model_version, e.from_version, e.actor, e.reason)
            for e in self.events
            if e.pipeline == pipeline
        ]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("registry") / "home"


@pytest.fixture(scope="module")
def sink() -> RecordingSink:
    return RecordingSink()


@pytest.fixture(scope="module")
def registry(home: Path, sink: RecordingSink) -> ModelRegistry:
    return ModelRegistry(Settings(home=home), events=sink)


@pytest.fixture
def bundle_dir(tmp_path: Path) -> Path:
    return tmp_path / "bundle"


def test_register_resolve_and_download(registry: ModelRegistry, home: Path, bundle_dir: Path) -> None:
    bundle = write_bundle(bundle_dir, "species-id")
    assert registry.resolve("species-id") is None

    info = registry.register("species-id", bundle, alias="champion", actor="alice", reason="first model")

    assert info.version == "1"
    assert info.aliases == ("champion",)
    assert info.gates == "unknown"
    assert info.task == "classify"
    assert info.output_format == "logits"
    assert info.sha256 == bundle.sha256()
    assert info.metrics == {"accuracy": 0.91, "macro_f1": 0.88}
    assert info.ref.uri == "models:/species-id/1"
    # Artifacts stay under KEENEYE_HOME, not in ./mlruns of the working directory.
    assert info.source.startswith((home / "mlartifacts" / "species-id").as_uri())
    champion = registry.resolve("species-id")
    assert champion is not None and champion.version == "1"

    downloaded = registry.download("species-id", "1")
    assert downloaded.path == home / "models" / "species-id" / "1"
    assert downloaded.sha256() == bundle.sha256()
    assert downloaded.manifest == bundle.manifest
    assert not [p for p in downloaded.path.parent.iterdir() if p.name.startswith(".")]  # no temp left

    # A damaged cached copy is replaced by a fresh download; a good one is reused as is.
    downloaded.onnx_path.write_bytes(b"damaged")
    repaired = registry.download("species-id", "1")
    assert repaired.sha256() == bundle.sha256()
    mtime = repaired.onnx_path.stat().st_mtime_ns
    assert registry.download("species-id", "1").onnx_path.stat().st_mtime_ns == mtime


def test_promote_rollback_and_audit_events(
    registry: ModelRegistry, sink: RecordingSink, tmp_path: Path
) -> None:
    name = "line-inspection"
    v1 = registry.register(
        name, write_bundle(tmp_path / "v1", name), alias="champion", actor="ci", reason="r1"
    )
    v2 = registry.register(name, write_bundle(tmp_path / "v2", name), gates_passed=True, actor="ci")
    assert (v1.version, v2.version) == ("1", "2")
    assert v2.gates == "passed"

    promoted = registry.promote(name, "2", actor="bob", reason="better recall")
    assert promoted.aliases == ("champion",)
    assert [(v.version, v.aliases) for v in registry.versions(name)] == [
        ("1", ("previous",)),
        ("2", ("champion",)),
    ]

    back = registry.rollback(name, actor="carol", reason="false rejects")
    assert back.version == "1"
    assert registry.resolve(name) == back
    assert registry.resolve(name, "previous") is None
    with pytest.raises(NotFound, match="has no previous champion"):
        registry.rollback(name, actor="carol", reason="again")

    assert sink.of(name) == [
        ("registered", "1", None, "ci", "r1"),
        ("promoted", "1", None, "ci", "r1"),
        ("registered", "2", None, "ci", ""),
        ("promoted", "2", "1", "bob", "better recall"),
        ("rolled_back", "1", "2", "carol", "false rejects"),
    ]
    promote_event = [e for e in sink.events if e.pipeline == name and e.event == "promoted"][-1]
    assert promote_event.alias == "champion"
    assert promote_event.details == {"forced": False, "previous": "1"}


def test_rollback_walks_back_through_champion_history(registry: ModelRegistry, tmp_path: Path) -> None:
    name = "history"
    for i in range(3):
        registry.register(name, write_bundle(tmp_path / f"v{i}", name))
    for version in ("1", "2", "3"):
        registry.promote(name, version, actor="t", reason="next")
    assert registry.rollback(name, actor="t", reason="bad").version == "2"
    assert registry.rollback(name, actor="t", reason="also bad").version == "1"
    with pytest.raises(NotFound):
        registry.rollback(name, actor="t", reason="nothing left")


def test_failed_gates_never_get_a_serving_alias_unless_forced(
    registry: ModelRegistry, sink: RecordingSink, tmp_path: Path
) -> None:
    name = "crop-health"
    bundle = write_bundle(tmp_path / "b", name)
    with pytest.raises(KeeneyeError, match="failed its quality gates and cannot become champion"):
        registry.register(name, bundle, alias="champion", gates_passed=False)
    assert registry.versions(name) == []  # refused before anything was written

    failed = registry.register(name, bundle, gates_passed=False)
    for alias in ("champion", "challenger"):
        with pytest.raises(KeeneyeError, match=f"cannot become {alias}") as exc:
            registry.set_alias(name, alias, failed.version, actor="dave", reason="")
        assert "--force --reason" in exc.value.one_line()
    with pytest.raises(InvalidInput) as no_reason:
        registry.promote(name, failed.version, actor="dave", reason=" ", force=True)
    assert no_reason.value.reason == "reason_required"
    assert registry.resolve(name) is None

    forced = registry.promote(name, failed.version, actor="dave", reason="hotfix for field trial", force=True)
    assert forced.aliases == ("champion",)
    assert forced.tags["forced_champion"] == "hotfix for field trial"
    last = sink.events[-1]
    assert (last.event, last.actor, last.details["forced"]) == ("promoted", "dave", True)


def test_gate_result_falls_back_to_the_manifest(registry: ModelRegistry, tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path / "b", "manifest-gates", gates={"passed": False, "recall": 0.5})
    info = registry.register("manifest-gates", bundle)
    assert info.gates == "failed"
    with pytest.raises(KeeneyeError, match="failed its quality gates"):
        registry.promote("manifest-gates", info.version, actor="t", reason="")


def test_challenger_alias_and_delete(registry: ModelRegistry, sink: RecordingSink, tmp_path: Path) -> None:
    name = "challenge"
    registry.register(name, write_bundle(tmp_path / "v1", name), alias="champion")
    registry.register(name, write_bundle(tmp_path / "v2", name), alias="challenger", actor="lifecycle")
    assert registry.resolve(name, "challenger") is not None
    registry.promote(name, "2", actor="lifecycle", reason="won the canary")
    # The winner stops being a challenger when it becomes champion.
    assert registry.resolve(name, "challenger") is None
    registry.set_alias(name, "challenger", "1", actor="t", reason="shadow the old one")
    registry.delete_alias(name, "challenger", actor="t", reason="done")
    assert registry.resolve(name, "challenger") is None
    assert [e[0] for e in sink.of(name)] == [
        "registered", "promoted", "registered", "alias_set", "promoted", "alias_set", "alias_deleted",
    ]  # fmt: skip


def test_bad_inputs_are_refused(registry: ModelRegistry, tmp_path: Path) -> None:
    not_onnx = write_bundle(tmp_path / "junk", "species-id", onnx_bytes=b"this is not a protobuf \x00\xff")
    with pytest.raises(InvalidInput, match="is not an ONNX model") as bad_model:
        registry.register("species-id", not_onnx)
    assert bad_model.value.reason == "bad_model"

    other = write_bundle(tmp_path / "other", "line-inspection")
    with pytest.raises(
        InvalidInput, match="name is 'line-inspection' but the model is for 'species-id'"
    ) as bad:
        registry.register("species-id", other)
    assert bad.value.reason == "bad_manifest"

    with pytest.raises(InvalidInput) as reserved:
        registry.set_alias("species-id", "previous", "1", actor="t", reason="")
    assert reserved.value.reason == "reserved_alias"
    with pytest.raises(InvalidInput) as bad_alias:
        registry.set_alias("species-id", "v3", "1", actor="t", reason="")
    assert bad_alias.value.reason == "bad_alias"
    with pytest.raises(InvalidInput) as bad_name:
        registry.versions("x' OR name LIKE '%")
    assert bad_name.value.reason == "bad_name"


def test_unknown_versions_and_models(registry: ModelRegistry) -> None:
    with pytest.raises(NotFound, match=r"model 'nobody' has no version '1'; versions: \(none\)"):
        registry.get("nobody", "1")
    with pytest.raises(NotFound, match=r"has no version 'latest'; versions: 1"):
        registry.promote("species-id", "latest", actor="t", reason="")
    assert registry.resolve("nobody") is None
    assert registry.versions("nobody") == []
    assert "species-id" in registry.names()


def test_versions_survive_a_new_registry_instance(registry: ModelRegistry, home: Path) -> None:
    fresh = ModelRegistry(Settings(home=home))
    assert [v.to_dict() for v in fresh.versions("species-id")] == [
        v.to_dict() for v in registry.versions("species-id")
    ]


def test_registry_health_on_sqlite(registry: ModelRegistry, home: Path) -> None:
    health = registry_health(Settings(home=home))
    assert health.reachable is True
    assert health.setting == "KEENEYE_REGISTRY_URI"
    assert health.version == mlflow.__version__


def test_registry_health_unreachable_server_is_reported_quickly(home: Path) -> None:
    started = time.monotonic()
    health = registry_health(Settings(home=home, registry_uri="http://127.0.0.1:1"))
    assert time.monotonic() - started < 5
    assert health.reachable is False
    assert "KEENEYE_REGISTRY_URI" in health.fix
    assert health.url == "http://127.0.0.1:1"


def test_registry_refuses_an_unknown_scheme(home: Path) -> None:
    health = registry_health(Settings(home=home, registry_uri="ftp://x/y"))
    assert health.reachable is False
    assert "scheme 'ftp'" in health.detail
    with pytest.raises(KeeneyeError, match="KEENEYE_REGISTRY_URI"):
        ModelRegistry(Settings(home=home, registry_uri="ftp://x/y"))


def test_unreachable_server_fails_fast_with_one_line(home: Path, tmp_path: Path) -> None:
    remote = ModelRegistry(Settings(home=home, registry_uri="http://127.0.0.1:1"))
    started = time.monotonic()
    with pytest.raises(KeeneyeError) as exc:
        remote.register("species-id", write_bundle(tmp_path / "b", "species-id"))
    assert time.monotonic() - started < 5
    assert "KEENEYE_REGISTRY_URI" in exc.value.one_line()
    assert "\n" not in exc.value.one_line()


def test_bundle_loaded_from_disk_registers(registry: ModelRegistry, tmp_path: Path) -> None:
    write_bundle(tmp_path / "b", "species-id")
    info = registry.register("species-id", ModelBundle.load(tmp_path / "b"), tags={"origin": "byo"})
    assert info.tags["origin"] == "byo"
    assert info.aliases == ()
