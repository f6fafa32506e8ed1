"""The Kafka-protocol broker (tansu, topics kept in S3 so they survive) restarted under load.

Load comes through the API (both routes) and straight through the bus: a producer publishes
observations to ``keeneye.<pipeline>.in`` and counts one as acknowledged once its flush succeeds.
While the broker is down the API keeps accepting (the database is the outbox; the reconciler
publishes what could not be), never a 500 or a hang; the workers reconnect by themselves; every
acknowledged observation — through the API or the bus — ends ``done`` with exactly one prediction.

tansu keeps its log in S3 (dynostore) and, stopped, can lose a write it had acknowledged (seen: 1 of
64): such a message never reaches any consumer. The test counts and prints these
(``gone_upstream``) and audits every bus-acknowledged message the broker still holds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from keeneye.settings import Settings
from keeneye.stream import input_topic, open_bus
from tests import services
from tests.integration.chaos.chaos_support import (
    audit,
    bus_producer,
    check_answers,
    prepare,
    report,
    storm,
)
from tests.integration.test_stream_failures import DurableTansu
from tests.integration.test_stream_reliability import Workers
from tests.unit.stream.stream_support import stream_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def held_by_broker(settings: Settings, name: str, ids: set[str]) -> set[str]:
    """Which of ``ids`` the broker holds on the input topic, read from the start by a new group."""
    bus = open_bus(settings)
    held: set[str] = set()
    try:
        with bus.subscribe([input_topic(name)], f"audit-{time.monotonic_ns()}") as consumer:
            deadline = time.monotonic() + 20
            while not ids <= held and time.monotonic() < deadline:
                held |= {str(m.header("observation_id")) for m in consumer.poll(500, 0.2)}
    finally:
        bus.close()
    return ids & held


def test_kafka_restart_api_and_bus_load_nothing_lost_or_doubled(
    tmp_path: Path, s3_server: services.S3Server, workers: Callable[[Settings, str], Workers]
) -> None:
    broker = DurableTansu(tmp_path, s3_server)
    broker.start()
    try:
        settings, name = stream_settings(tmp_path, broker.url)
        db, pool = prepare(settings, name, tmp_path, workers)

        def logs() -> str:
            return pool.logs() + "\n--- broker\n" + broker.log()

        with bus_producer(settings, name) as through_bus:
            load, outage = storm(
                settings, name, take_away=broker.stop, give_back=broker.start, outage_s=1.0, logs=logs
            )
            on_bus_before = len(through_bus)
            deadline = time.monotonic() + 10
            while len(through_bus) < on_bus_before + 5:  # the producer delivers again after the restart
                assert time.monotonic() < deadline, "the bus producer did not recover"
                time.sleep(0.1)
        # tansu (dynostore) can lose a write it acknowledged when it is stopped: counted and reported,
        # not held against keeneye, which can only process what the broker still holds.
        bus_acked = set(through_bus)
        check_answers(load, outage, reasons={"database_unavailable", "bus_unavailable"}, must_refuse=False)

        def not_on_broker(way: str, ids: set[str]) -> set[str]:
            return ids - held_by_broker(settings, name, ids) if way == "bus" else set()

        figures = audit(
            db, name, {"api": load.accepted(), "bus": bus_acked}, 30, logs, gone_upstream=not_on_broker
        )
        assert figures["gone_upstream"] <= 0.1 * len(bus_acked), figures
    finally:
        broker.stop()
    report("kafka restart", load, outage, figures)
