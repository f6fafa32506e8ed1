"""Shared fixtures: isolated settings per test and real services per session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from keeneye.settings import Settings, get_settings
from keeneye.store.db import close_results_dbs, opened_results_dbs
from tests import services

# Keep a developer's environment and keeneye.yaml out of the tests.
for _name in list(os.environ):
    if _name.startswith("KEENEYE_") and not _name.startswith("KEENEYE_TEST_"):
        del os.environ[_name]
os.environ["KEENEYE_CONFIG"] = os.devnull  # an empty YAML file: defaults only
os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
# The CLI's rich consoles take their width when keeneye.cli is first imported; without a terminal that
# would be 80 or whatever COLUMNS the first invoking test passed. One wide width: tables never truncate.
os.environ["COLUMNS"] = "200"  # per-test registries, never a developer's shared dir
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# MLflow keeps one engine per registry URI for the process, each with its pooled SQLite connections:
# every test's own registry would hold its file open to the end (see _close_the_databases_a_test_opened).
os.environ.setdefault("MLFLOW_SQLALCHEMYSTORE_POOLCLASS", "NullPool")


@pytest.fixture(autouse=True)
def _fresh_settings_cache() -> Iterator[None]:
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture(autouse=True)
def _close_the_databases_a_test_opened() -> Iterator[None]:
    """Each test's results database closed after it: open_results_db keeps one handle per URL for
    the process, and an xdist worker running ~1,300 tests, each on its own SQLite file, ran out of
    descriptor numbers that select() can watch (pymodbus' client and the flood test then failed)."""
    before = opened_results_dbs()
    yield
    close_results_dbs(opened_results_dbs() - before)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Embedded-default settings rooted in a fresh temporary KEENEYE_HOME."""
    return Settings(home=tmp_path / "home")


@pytest.fixture(scope="session")
def postgres_admin() -> str:
    return services.postgres_admin_url()


@pytest.fixture
def postgres_url(postgres_admin: str) -> Iterator[str]:
    with services.postgres_database() as url:
        yield url


@pytest.fixture
def redis_url() -> str:
    return services.redis_url()


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[services.Broker]:
    with services.kafka_broker(tmp_path_factory.mktemp("kafka")) as broker:
        yield broker


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[services.S3Server]:
    with services.s3_server(tmp_path_factory.mktemp("s3")) as server:
        yield server
