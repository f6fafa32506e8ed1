from __future__ import annotations

import re
from pathlib import Path

import pytest

from keeneye.domain import ConfigError
from keeneye.settings import Settings, load_settings, mask_url, split_url


def test_defaults_live_under_home(tmp_path: Path) -> None:
    s = Settings(home=tmp_path)
    assert s.database_url == f"sqlite:///{tmp_path / 'keeneye.db'}"
    assert s.bus_url == f"sqlite:///{tmp_path / 'bus.db'}"
    assert s.objects_url == (tmp_path / "objects").as_uri()
    assert s.cache_url == "memory://"
    assert s.registry_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_relative_home_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert Settings().home == tmp_path / ".keeneye"


def test_env_and_nested_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEENEYE_HOME", str(tmp_path))
    monkeypatch.setenv("KEENEYE_CACHE_URL", "redis://127.0.0.1:6379/1")
    monkeypatch.setenv("KEENEYE_SERVING__PORT", "9123")
    monkeypatch.setenv("KEENEYE_BUS__MAX_MESSAGE_BYTES", "2048")
    s = Settings()
    assert (s.home, s.cache_url, s.serving.port, s.bus.max_message_bytes) == (
        tmp_path,
        "redis://127.0.0.1:6379/1",
        9123,
        2048,
    )


def test_yaml_file_is_read_and_env_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "k.yaml"
    cfg.write_text("home: /srv/keeneye\nserving:\n  port: 7000\n  max_inflight: 5\n")
    monkeypatch.setenv("KEENEYE_CONFIG", str(cfg))
    monkeypatch.setenv("KEENEYE_SERVING__PORT", "7001")
    s = Settings()
    assert (s.home, s.serving.port, s.serving.max_inflight) == (Path("/srv/keeneye"), 7001, 5)


def test_missing_config_file_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEENEYE_CONFIG", "/nonexistent/keeneye.yaml")
    with pytest.raises(
        ConfigError, match=re.escape("KEENEYE_CONFIG: file /nonexistent/keeneye.yaml does not exist")
    ):
        Settings()


def test_invalid_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEENEYE_SERVING__PORT", "not-a-port")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert info.value.setting == "KEENEYE_SERVING__PORT"


def test_unknown_section_key_is_refused() -> None:
    with pytest.raises(ConfigError, match="KEENEYE_SERVING__NO_SUCH_KEY"):
        load_settings(serving={"no_such_key": 1})


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql+psycopg://bob:secret@db:5432/k", "postgresql+psycopg://bob:***@db:5432/k"),
        ("redis://:pw@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("sqlite:////tmp/x.db", "sqlite:////tmp/x.db"),
        ("kafka://broker:9092", "kafka://broker:9092"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


SCHEMES = {"sqlite": "embedded", "kafka": "Kafka"}


def test_split_url_accepts_known_scheme() -> None:
    scheme, parts = split_url("KEENEYE_BUS_URL", "kafka://h1:9092", SCHEMES)
    assert (scheme, parts.hostname, parts.port) == ("kafka", "h1", 9092)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("amqp://h:5672", "KEENEYE_BUS_URL: scheme 'amqp' in 'amqp://h:5672' is not supported"),
        ("just-a-path", "KEENEYE_BUS_URL: no scheme in 'just-a-path' is not supported"),
        ("kafka://h:notaport", "KEENEYE_BUS_URL: malformed URL 'kafka://h:notaport'"),
    ],
)
def test_split_url_refuses_with_the_setting_and_fix(url: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        split_url("KEENEYE_BUS_URL", url, SCHEMES)
    assert info.value.message.startswith(message)
    assert info.value.fix is not None and "sqlite://" in info.value.fix and "kafka://" in info.value.fix


def test_alerting_refuses_duplicate_channel_names_and_unknown_routes() -> None:
    from pydantic import ValidationError

    from keeneye.settings import AlertingSettings

    twice = [{"name": "ops", "kind": "log"}, {"name": "ops", "kind": "webhook", "url": "http://127.0.0.1:1/"}]
    with pytest.raises(ValidationError, match=r"defines \['ops'\] more than once"):
        AlertingSettings(channels=twice, route=["ops"])
    with pytest.raises(ValidationError, match=r"unknown channels \['pager'\]"):
        AlertingSettings(channels=[{"name": "ops", "kind": "log"}], route=["ops", "pager"])
