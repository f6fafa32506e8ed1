"""deploy/compose: the production-like single host. The file validates against the Compose
specification schema vendored beside it (check-jsonschema, offline), every component of issue 19 is
there with a health check and a restart policy, every file it mounts exists, every variable it reads
is in .env.example, and the Prometheus files are exactly what ``keeneye alerts export`` writes today."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from keeneye.monitoring.alerts.export import export_prometheus
from keeneye.monitoring.alerts.rules import load_rules
from keeneye.pipelines.spec import builtin_specs
from keeneye.settings import Settings
from keeneye.video import recommenders
from tests.unit.monitoring.promtool_support import require_tool, run_promtool

ROOT = Path(__file__).resolve().parents[3]
COMPOSE_DIR = ROOT / "deploy" / "compose"
COMPOSE = COMPOSE_DIR / "compose.yaml"
SCHEMA = COMPOSE_DIR / "compose-spec.json"
CHECK_JSONSCHEMA = Path(sys.executable).parent / "check-jsonschema"


def _check(path: Path) -> subprocess.CompletedProcess[str]:
    if not CHECK_JSONSCHEMA.exists():
        pytest.fail(f"{CHECK_JSONSCHEMA} is missing: install the dev extra (pip install check-jsonschema)")
    return subprocess.run(
        [str(CHECK_JSONSCHEMA), "--schemafile", str(SCHEMA), "--no-cache", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def test_compose_file_matches_the_compose_specification(tmp_path: Path) -> None:
    done = _check(COMPOSE)
    assert done.returncode == 0, done.stdout + done.stderr
    # ... and the same check refuses a broken copy: a service key Compose does not know
    broken = tmp_path / "compose.yaml"
    broken.write_text(COMPOSE.read_text().replace("stop_grace_period: 30s", "stop_grace_periods: 30s", 1))
    done = _check(broken)
    assert done.returncode == 1 and "stop_grace_periods" in done.stdout, done.stdout


def test_every_component_is_there(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"postgres", "kafka", "redis", "minio", "mlflow", "prometheus", "alertmanager", "grafana"} <= set(
        services
    )
    assert [services[n]["command"][0] for n in ("api-1", "api-2")] == ["serve", "serve"]
    workers = {s["command"][2] for s in services.values() if s.get("command", [""])[0] == "worker"}
    assert workers == {spec.name for _, spec in builtin_specs()}
    plugins = {s["command"][2] for s in services.values() if s.get("command", [""])[:2] == ["plugin", "run"]}
    assert plugins == set(recommenders())
    assert services["scheduler"]["command"] == ["scheduler"]
    (camera,) = [s for s in services.values() if s.get("command", [""])[0] == "inspect"]
    assert camera["profiles"] == ["line"]  # needs a real camera and PLC: started on demand
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft
    nginx = (COMPOSE_DIR / "nginx" / "nginx.conf").read_text()
    assert re.findall(r"server (api-\d):8000", nginx) == ["api-1", "api-2"]


def test_restart_policies_and_health_checks(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if name == "migrate":
            assert service["restart"] == "no"
            continue
        assert service["restart"] == "unless-stopped", name
        check = service.get("healthcheck")
        assert check is not None, name
        if check.get("disable"):  # processes with no port: restarts are their health check
            assert service["command"][0] in {"scheduler", "plugin", "inspect", "db"}, name
        else:
            assert check["test"][0] in {"CMD", "CMD-SHELL"} and check["retries"] >= 3, name
    assert "/health" in " ".join(compose["services"]["api-1"]["healthcheck"]["test"])
    keeneye = [s for s in compose["services"].values() if s.get("image", "").startswith("${KEENEYE_IMAGE")]
    assert all(s["depends_on"] for s in keeneye)
    assert all(s["env_file"] == [".env"] for s in keeneye)


def test_mounted_files_exist_and_variables_are_documented(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE_DIR / source).exists(), f"{name}: {source}"
    assert sorted(p.name for p in (ROOT / "deploy" / "grafana").glob("*.json"))  # dashboards to provision
    text = COMPOSE.read_text()
    used = set(re.findall(r"\$\{([A-Z_0-9]+)", text))
    env = {
        line.split("=", 1)[0]
        for line in (COMPOSE_DIR / ".env.example").read_text().splitlines()
        if "=" in line
    }
    assert used <= env, used - env
    for key in (
        "KEENEYE_DATABASE_URL",
        "KEENEYE_BUS_URL",
        "KEENEYE_OBJECTS_URL",
        "KEENEYE_CACHE_URL",
        "KEENEYE_REGISTRY_URI",
    ):
        assert key in env


def test_prometheus_files_are_a_fresh_export(tmp_path: Path, settings: Settings) -> None:
    written = export_prometheus(
        load_rules(settings.alerting.rules), [s for _, s in builtin_specs()], tmp_path
    )
    for path in written:
        committed = COMPOSE_DIR / "prometheus" / path.name
        assert committed.read_bytes() == path.read_bytes(), (
            f"{committed} is stale: keeneye alerts export --prometheus deploy/compose/prometheus"
        )
    prometheus = yaml.safe_load((COMPOSE_DIR / "prometheus" / "prometheus.yml").read_text())
    assert prometheus["rule_files"] == ["/etc/prometheus/rules/keeneye-rules.yaml"]
    mounts = compose_mounts("prometheus")
    assert mounts["/etc/prometheus/rules/keeneye-rules.yaml"] == "./prometheus/keeneye-rules.yaml"
    assert (
        compose_mounts("alertmanager")["/etc/alertmanager/alertmanager.yml"]
        == "./prometheus/alertmanager.yml"
    )


def compose_mounts(service: str) -> dict[str, str]:
    volumes = yaml.safe_load(COMPOSE.read_text())["services"][service]["volumes"]
    return {v.split(":")[1]: v.split(":")[0] for v in volumes}


def test_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    """The mounted prometheus.yml with its rule file where the container sees it: promtool accepts both,
    and amtool accepts the Alertmanager configuration."""
    rules = tmp_path / "keeneye-rules.yaml"
    rules.write_bytes((COMPOSE_DIR / "prometheus" / "keeneye-rules.yaml").read_bytes())
    config = tmp_path / "prometheus.yml"
    config.write_text(
        (COMPOSE_DIR / "prometheus" / "prometheus.yml")
        .read_text()
        .replace("/etc/prometheus/rules/keeneye-rules.yaml", str(rules))
    )
    done = run_promtool("check", "config", config)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 1 rule files found" in done.stdout
    assert re.search(r"SUCCESS: (\d+) rules found", done.stdout), done.stdout
    amtool = require_tool("amtool", "prometheus-alertmanager")
    done = subprocess.run(
        [amtool, "check-config", str(COMPOSE_DIR / "prometheus" / "alertmanager.yml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
