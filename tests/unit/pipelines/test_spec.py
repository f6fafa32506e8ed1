"""Pipeline specs: the built-ins, validation errors, and the catalog's override / duplicate rules."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from keeneye.domain import ConfigError, InvalidInput, NotFound, Task
from keeneye.pipelines import PipelineCatalog, PipelineSpec, builtin_specs, load_spec, parse_spec_text
from keeneye.settings import Settings

MINIMAL = "name: {name}\ntask: classify\n"


def _catalog(tmp_path: Path, *dirs: Path) -> PipelineCatalog:
    return PipelineCatalog(Settings(home=tmp_path / "home", pipelines={"dirs": list(dirs)}))


def _bad_spec(text: str, tmp_path: Path) -> str:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    with pytest.raises(InvalidInput) as exc:
        load_spec(path)
    assert exc.value.reason == "bad_spec"
    assert "\n" not in exc.value.message
    return exc.value.message


def test_builtins_load_with_their_product_values(tmp_path: Path) -> None:
    catalog = _catalog(tmp_path)
    assert catalog.names() == ["crop-health", "line-inspection", "species-id"]
    assert [source for source, _ in builtin_specs()] == [
        "builtin:crop-health.yaml",
        "builtin:line-inspection.yaml",
        "builtin:species-id.yaml",
    ]

    species = catalog.get("species-id")
    assert species.task is Task.classify
    assert (species.model_name, species.model.alias) == ("species-id", "champion")
    assert species.slo.p95_latency_ms == 500
    assert species.thresholds.manifest_overrides() == {"top_k": 3}

    line = catalog.get("line-inspection")
    assert line.task is Task.segment
    assert line.gates.metrics == {"precision": 0.97, "recall": 0.95}
    assert line.slo.p95_latency_ms == 348
    assert (line.decision.kind, line.decision.fail_safe, line.decision.deadline_ms) == (
        "ok-defect",
        "DEFECT",
        348,
    )
    assert (line.splits.strategy, line.splits.group_by) == ("grouped", "batch")
    assert line.retention.ok_sample_share == 0.002
    assert line.rollout.canary_share == 0.1

    crop = catalog.get("crop-health")
    assert crop.slo.p95_latency_ms == 490
    assert crop.input.formats == ["tiff"]
    assert crop.input.band_map_by_camera["dji-p4m"] == ["blue", "green", "red", "red_edge", "nir"]
    assert crop.input.indices == ["ndvi", "ndre", "gndvi"]
    assert crop.replicas.min == 4 and crop.replicas.max == 6


def test_defaults_of_a_minimal_spec() -> None:
    spec = parse_spec_text(MINIMAL.format(name="mine"), source="mine.yaml")
    assert spec.title == "mine"
    assert spec.model_name == "mine"
    assert (spec.splits.train, spec.splits.val, spec.splits.test) == (0.7, 0.15, 0.15)
    assert spec.input.formats == ["jpeg", "png", "tiff"]
    assert spec.input.band_map is None
    assert (spec.rollout.canary_share, spec.rollout.shadow_sample) == (0.1, 1.0)
    assert spec.gates.metrics == {}


def test_spec_round_trips_through_yaml(tmp_path: Path) -> None:
    for spec in _catalog(tmp_path).specs():
        again = parse_spec_text(spec.to_yaml(), source="again")
        assert again == spec


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            MINIMAL.format(name="x") + "gates:\n  metrics: {recall: 0.9}\n  bogus: 1\n",
            "spec.yaml: gates.bogus: Extra inputs are not permitted",
        ),
        (MINIMAL.format(name="x") + "colour: red\n", "spec.yaml: colour: Extra inputs are not permitted"),
        (
            MINIMAL.format(name="x") + "splits: {train: 0.8, val: 0.15, test: 0.15}\n",
            "spec.yaml: splits: train + val + test must sum to 1, got 1.1",
        ),
        (
            MINIMAL.format(name="x") + "splits: {strategy: grouped}\n",
            "spec.yaml: splits: strategy 'grouped' needs group_by",
        ),
        ("name: Not A Slug\ntask: classify\n", "spec.yaml: name: String should match pattern"),
        ("name: x\ntask: dance\n", "spec.yaml: task: Input should be 'classify', 'detect' or 'segment'"),
        ("name: x\n", "spec.yaml: task: Field required"),
        (
            MINIMAL.format(name="x") + "input: {band_map: [red, nir], indices: [ndre]}\n",
            "spec.yaml: input: index ndre needs band(s) red_edge missing from band_map",
        ),
        (
            MINIMAL.format(name="x") + "input: {band_map: [red, red]}\n",
            "spec.yaml: input: band_map names a band twice",
        ),
        (
            MINIMAL.format(name="x") + "replicas: {min: 7, max: 6}\n",
            "spec.yaml: replicas: min (7) must not exceed",
        ),
        (
            MINIMAL.format(name="x") + "rollout: {canary_share: 1.5}\n",
            "spec.yaml: rollout.canary_share: Input should",
        ),
        (
            MINIMAL.format(name="x") + "gates: {metrics: {recall: 0.9}, primary_metric: f1}\n",
            "spec.yaml: gates: primary_metric 'f1' is not one of the gated metrics",
        ),
        (
            MINIMAL.format(name="x") + "training: {retrain: {schedule: 'every tuesday'}}\n",
            "spec.yaml: training.retrain.schedule: 'every tuesday' is not a cron expression",
        ),
        (
            MINIMAL.format(name="x") + "alerts: {DriftDetected: {for: soon}}\n",
            "spec.yaml: alerts.DriftDetected.for: 'soon' is not a duration",
        ),
        ("- just\n- a list\n", "spec.yaml: a pipeline spec must be a mapping, got list"),
        ("name: [unclosed\n", "spec.yaml: line 2: not valid YAML"),
    ],
)
def test_bad_specs_name_file_and_field(text: str, message: str, tmp_path: Path) -> None:
    assert _bad_spec(text, tmp_path).startswith(
        str(tmp_path / "spec.yaml") + message.removeprefix("spec.yaml")
    )


def test_missing_file_is_bad_spec(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="cannot read") as exc:
        load_spec(tmp_path / "nope.yaml")
    assert exc.value.reason == "bad_spec"


def test_user_file_overrides_builtin_and_adds_new(tmp_path: Path) -> None:
    user = tmp_path / "specs"
    user.mkdir()
    species = yaml.safe_load(_catalog(tmp_path).get("species-id").to_yaml())
    species["slo"]["p95_latency_ms"] = 120
    (user / "species.yaml").write_text(yaml.safe_dump(species))
    (user / "pallets.yml").write_text(MINIMAL.format(name="pallet-count").replace("classify", "detect"))

    catalog = _catalog(tmp_path, user)
    assert catalog.names() == ["crop-health", "line-inspection", "pallet-count", "species-id"]
    assert catalog.get("species-id").slo.p95_latency_ms == 120
    assert catalog.source("species-id") == str(user / "species.yaml")
    assert catalog.source("line-inspection") == "builtin:line-inspection.yaml"
    assert catalog.get("pallet-count").task is Task.detect
    assert "pallet-count" in catalog


def test_two_user_files_with_one_name_are_refused(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    for folder in (first, second):
        folder.mkdir()
        (folder / "mine.yaml").write_text(MINIMAL.format(name="mine"))
    with pytest.raises(InvalidInput) as exc:
        _catalog(tmp_path, first, second).names()
    assert exc.value.reason == "duplicate_pipeline"
    assert exc.value.message == (
        f"pipeline 'mine' is defined twice: in {first / 'mine.yaml'} and in {second / 'mine.yaml'}"
    )


def test_unknown_pipeline_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(NotFound) as exc:
        _catalog(tmp_path).get("fish")
    assert exc.value.message == "unknown pipeline 'fish'; known: crop-health, line-inspection, species-id"


def test_a_missing_spec_folder_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="KEENEYE_PIPELINES__DIRS"):
        _catalog(tmp_path, tmp_path / "missing").names()


def test_a_broken_user_file_names_itself(tmp_path: Path) -> None:
    user = tmp_path / "specs"
    user.mkdir()
    (user / "broken.yaml").write_text(MINIMAL.format(name="broken") + "slo: {p95_latency_ms: -1}\n")
    with pytest.raises(
        InvalidInput, match=r"broken\.yaml: slo\.p95_latency_ms: Input should be greater than 0"
    ):
        _catalog(tmp_path, user).names()


def test_spec_model_forbids_unknown_keys_in_every_section() -> None:
    for name, fld in PipelineSpec.model_fields.items():
        annotation = fld.annotation
        if isinstance(annotation, type) and hasattr(annotation, "model_config"):
            assert annotation.model_config.get("extra") == "forbid", name
