"""The local object store's disk (a small tmpfs) filled to the last page under a steady API load.

While it is full both routes answer 503 ``storage_full`` with Retry-After (the writes fail with
``ENOSPC``; nothing half-written stays); once space is freed they accept again by themselves, and
every acknowledged observation ends ``done`` with exactly one prediction.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from keeneye.settings import Settings
from keeneye.store import open_object_store
from tests.integration.chaos.chaos_services import SmallDisk
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


def test_object_disk_full_503_then_recovers_and_nothing_is_lost_or_doubled(
    tmp_path: Path, small_disk: SmallDisk, workers: Callable[[Settings, str], Workers]
) -> None:
    settings, name = stream_settings(tmp_path)
    objects_url = (small_disk.path / "objects").as_uri()
    settings = settings.model_copy(update={"objects_url": objects_url})
    db, pool = prepare(settings, name, tmp_path, workers, KEENEYE_OBJECTS_URL=objects_url)
    ballast: list[int] = []

    load, outage = storm(
        settings,
        name,
        take_away=lambda: ballast.append(small_disk.fill()),
        give_back=small_disk.empty,
        outage_s=5.0,
        logs=pool.logs,
    )
    check_answers(load, outage, reasons={"storage_full"}, must_refuse=True)
    figures = audit(db, name, {"api": load.accepted()}, 40, pool.logs)
    objects = open_object_store(settings)
    leftovers = [p for p in (small_disk.path / "objects").rglob(".keeneye-tmp-*")]
    assert not leftovers, leftovers[:3]  # no temporary file left behind by a failed write
    keys = object_keys(db, name)
    assert all(k is not None and objects.exists(k) for k in keys)  # every row's image is whole
    report("object disk full", load, outage, {**figures, "ballast_bytes": ballast[0]})
