"""The S3 endpoint (moto behind a loopback proxy) unreachable for 10 s under a steady API load.

The proxy refuses new connections and resets open ones, as a dead network path does. While it is
cut both routes answer 503 ``object_store_unavailable`` with Retry-After (the client's short connect
timeout and few retries bound each request); afterwards the same client connects again by itself;
every acknowledged observation ends ``done`` with exactly one prediction.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import SecretStr

from keeneye.settings import S3Settings, Settings
from keeneye.store import open_object_store
from tests.integration.chaos.chaos_services import TcpProxy
from tests.integration.chaos.chaos_support import (
    audit,
    check_answers,
    object_keys,
    prepare,
    report,
    storm,
)
from tests.integration.test_stream_reliability import Workers
from tests.unit.stream.stream_support import stream_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_s3_unreachable_10s_503_then_recovers_and_nothing_is_lost_or_doubled(
    tmp_path: Path, s3_proxy: TcpProxy, workers: Callable[[Settings, str], Workers]
) -> None:
    settings, name = stream_settings(tmp_path)
    objects_url = f"s3://chaos-{uuid.uuid4().hex[:12]}/objects"
    s3 = S3Settings(
        endpoint_url=s3_proxy.url,
        access_key_id=SecretStr("test"),
        secret_access_key=SecretStr("test"),
        create_bucket=True,
    )
    settings = settings.model_copy(update={"objects_url": objects_url, "s3": s3})
    db, pool = prepare(
        settings,
        name,
        tmp_path,
        workers,
        KEENEYE_OBJECTS_URL=objects_url,
        KEENEYE_S3__ENDPOINT_URL=s3_proxy.url,
        KEENEYE_S3__ACCESS_KEY_ID="test",
        KEENEYE_S3__SECRET_ACCESS_KEY="test",
    )

    load, outage = storm(
        settings, name, take_away=s3_proxy.cut, give_back=s3_proxy.restore, outage_s=10.0, logs=pool.logs
    )
    check_answers(load, outage, reasons={"object_store_unavailable"}, must_refuse=True)
    figures = audit(db, name, {"api": load.accepted()}, 40, pool.logs)
    # Every stored observation's image is in the bucket: a 503 never left a row without its bytes.
    objects = open_object_store(settings)
    keys = object_keys(db, name)
    missing = [k for k in keys if k is None or not objects.exists(k)]
    assert not missing, missing[:3]
    report("s3 unreachable", load, outage, figures)
