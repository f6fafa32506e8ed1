"""The seed's smartcut protocol on the embedded (SQLite) bus: plugin process, backend, DLQ, limits,
timeouts (docs/smartcut.md → "Protocol"). The same flow on Kafka with a plugin that imports nothing
from keeneye is tests/integration/smartcut/test_kafka_protocol.py."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from keeneye.settings import Settings
from keeneye.store import open_results_db
from keeneye.stream.bus import Bus, open_bus
from keeneye.video import GroundTruth, SmartcutRequest, make_recommender, run_local
from keeneye.video.backend import BackendLimits, SmartcutBackend, SmartcutBusy
from keeneye.video.errors import VideoRejected
from keeneye.video.messages import PROCESSED_FILES, STARTED_PLUGINS, STOPPED_PLUGINS, new_files_topic
from keeneye.video.protocol import (
    DLQ_TOPIC,
    MalformedMessage,
    encode,
    parse_new_files,
    parse_processed,
    parse_started,
)
from tests.unit.video.bus_support import announce_chunks, drain, plugin_thread, values


@pytest.fixture
def bus(settings: Settings) -> Iterator[Bus]:
    b = open_bus(settings)
    yield b
    b.close()


@pytest.fixture
def root(settings: Settings) -> Path:
    assert settings.smartcut.root is not None
    settings.smartcut.root.mkdir(parents=True, exist_ok=True)
    return settings.smartcut.root


# ---------------------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (b"\xff\xfe", "not UTF-8 JSON"),
        (b"[1, 2]", "a JSON object is expected"),
        (b'{"status": "done", "user_id": "u"}', "'status' must be"),
        (b'{"status": "uploaded", "user_id": "u"}', "'zipped_chunks_path'"),
        (b'{"status": "uploaded", "user_id": "u", "zipped_chunks_path": "../etc"}', "relative"),
        (b'{"status": "uploaded", "user_id": "u", "zipped_chunks_path": "/abs/x"}', "relative"),
        (b'{"status": "in-progress", "user_id": "u", "last_zipped_chunk_path": "a/b/c.txt"}', ".zip"),
        (b'{"status": "in-progress", "user_id": "", "last_zipped_chunk_path": "a/b/c.zip"}', "user_id"),
        (b"{" + b'"x": "' + b"a" * (2 * 1024 * 1024) + b'"}', "over"),
    ],
)
def test_malformed_new_files_values_are_refused_with_the_reason(value: bytes, why: str) -> None:
    with pytest.raises(MalformedMessage, match=why) as err:
        parse_new_files(value)
    assert err.value.reason == "malformed_message"


def test_seed_examples_parse_as_written() -> None:
    # the seed's own examples, byte for byte apart from the typo'd quote in its "uploaded" sample
    started = parse_started('{"plugin_name" : "plugin1", "label" : "плагин 1", "img_size": 640 }'.encode())
    assert started == {"plugin_name": "plugin1", "label": "плагин 1", "img_size": 640}
    chunk = parse_new_files(
        b'{"status" : "in-progress", "user_id" : "user_id1", "last_zipped_chunk_path" : '
        b'"40b1fea2-4a91-11ee-be56-0242ac120002/video_name1/folder1.zip"}'
    )
    assert chunk["status"] == "in-progress"
    answer = parse_processed(
        b'{"user_id": "user_id1", "user_request_uid": "40b1fea2-4a91-11ee-be56-0242ac120002", '
        b'"video_name": "video_name1", "plugin_name": "plugin1", "timestamps": '
        b'[{"start": 10, "stop": 30}, {"start": 60, "stop": 90}, {"start": 2330, "stop": 3245}]}'
    )
    assert answer["timestamps"][2] == {"start": 2330.0, "stop": 3245.0}


@pytest.mark.parametrize(
    "timestamps",
    ['[{"start": 5, "stop": 1}]', '[{"start": -1, "stop": 1}]', '[{"start": true, "stop": 1}]', '{"a": 1}'],
)
def test_bad_timestamps_are_refused(timestamps: str) -> None:
    value = (
        '{"user_id": "u", "user_request_uid": "r", "video_name": "v", "plugin_name": "p", '
        f'"timestamps": {timestamps}}}'
    ).encode()
    with pytest.raises(MalformedMessage):
        parse_processed(value)


def test_img_size_must_be_a_pixel_count() -> None:
    with pytest.raises(MalformedMessage, match="img_size"):
        parse_started(b'{"plugin_name": "p", "label": "P", "img_size": true}')


# ---------------------------------------------------------------------------------------- plugin process


def test_plugin_process_answers_what_the_local_run_finds_and_deletes_chunks(
    bus: Bus, root: Path, short_video: tuple[Path, GroundTruth], tmp_path: Path
) -> None:
    video, _truth = short_video
    local = run_local(SmartcutRequest(video, "motion", 1.0), tmp_path / "local")
    uid, n_chunks = announce_chunks(bus, root, video, "motion", "user_id1")
    assert n_chunks == 4  # 180 frames: 50 + 50 + 50 + 30
    with plugin_thread(bus, root):
        answers = drain(bus, PROCESSED_FILES, "test-answers", 1)
    assert len(answers) == 1 and answers[0].headers == {}  # a plain JSON value, no envelope
    answer = json.loads(answers[0].value)
    assert answer == {
        "user_id": "user_id1",
        "user_request_uid": uid,
        "video_name": video.stem,
        "plugin_name": "motion",
        "timestamps": local.message["timestamps"],
    }
    assert len(answer["timestamps"]) >= 1
    assert not (root / uid).exists()  # the seed: processed files are deleted
    announced = values(drain(bus, STARTED_PLUGINS, "test-started", 1))
    stopped = values(drain(bus, STOPPED_PLUGINS, "test-stopped", 1))
    assert announced == [
        {"plugin_name": "motion", "label": make_recommender("motion").label, "img_size": 320}
    ]
    assert stopped == [{"plugin_name": "motion"}]


def test_malformed_and_escaping_messages_go_to_the_dlq_and_the_plugin_carries_on(
    bus: Bus, root: Path, short_video: tuple[Path, GroundTruth]
) -> None:
    topic = new_files_topic("motion")
    bus.publish(topic, b"not json")
    bus.publish(topic, encode({"status": "uploaded", "user_id": "u", "zipped_chunks_path": "../../etc"}))
    missing = f"{uuid.uuid4()}/cam/chunk_000000.zip"
    bus.publish(topic, encode({"status": "in-progress", "user_id": "u", "last_zipped_chunk_path": missing}))
    bus.flush()
    uid, _ = announce_chunks(bus, root, short_video[0], "motion", "u2")
    with plugin_thread(bus, root):
        answers = values(drain(bus, PROCESSED_FILES, "test-answers", 1))
        dlq = drain(bus, DLQ_TOPIC, "test-dlq", 3)
    assert [a["user_request_uid"] for a in answers] == [uid]  # type: ignore[index]
    assert [m.value for m in dlq[:2]] == [
        b"not json",
        encode({"status": "uploaded", "user_id": "u", "zipped_chunks_path": "../../etc"}),
    ]
    reasons = [m.header("reason") or "" for m in dlq]
    assert reasons[0].startswith("malformed_message: not UTF-8 JSON")
    assert "relative to the smartcut root" in reasons[1]
    assert reasons[2].startswith("bad_chunk") and dlq[2].header("request_uid") == missing.split("/")[0]


# ---------------------------------------------------------------------------------------- backend


def _backend(settings: Settings, bus: Bus, root: Path, **limits: float) -> SmartcutBackend:
    db = open_results_db(settings)
    return SmartcutBackend(bus, db, root, BackendLimits(**limits))  # type: ignore[arg-type]


def _wait_closed(backend: SmartcutBackend, uid: str, limit: float = 90.0) -> str:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        backend.collect(timeout=0.2)
        record = backend.db.smartcut_request(uid)
        if record.status in ("done", "failed"):
            return record.status
    raise AssertionError(f"request {uid} still {backend.db.smartcut_request(uid).status}")


def test_backend_samples_announces_and_stores_the_plugins_segments(
    settings: Settings, bus: Bus, root: Path, short_video: tuple[Path, GroundTruth], tmp_path: Path
) -> None:
    video, _ = short_video
    local = run_local(SmartcutRequest(video, "motion", 1.0), tmp_path / "local")
    backend = _backend(settings, bus, root)
    with plugin_thread(bus, root):
        backend.directory.refresh(timeout=2.0)
        assert list(backend.plugins()) == ["motion"]
        uid = backend.submit_video(video, user_id="alice", plugin="motion", sensitivity=1.0)
        assert _wait_closed(backend, uid) == "done"
    record = backend.db.smartcut_request(uid)
    assert record.segments == {"timestamps": local.message["timestamps"]}
    assert (record.frames_sampled, record.chunks_sent, record.chunks_processed) == (180, 4, 4)
    assert record.video_name == video.name and record.reason is None
    assert not (root / uid).exists()
    new_files = values(drain(bus, new_files_topic("motion"), "test-new-files", 4))
    assert [m["status"] for m in new_files] == ["in-progress"] * 3 + ["uploaded"]  # type: ignore[index]
    assert new_files[3] == {
        "status": "uploaded",
        "user_id": "alice",
        "zipped_chunks_path": f"{uid}/{video.stem}",
    }
    assert new_files[0]["last_zipped_chunk_path"] == f"{uid}/{video.stem}/chunk_000000.zip"  # type: ignore[index]
    backend.close()


def test_unknown_plugin_is_refused_naming_the_running_ones(settings: Settings, bus: Bus, root: Path) -> None:
    bus.publish(STARTED_PLUGINS, encode({"plugin_name": "scene", "label": "Scene", "img_size": 320}))
    bus.flush()
    backend = _backend(settings, bus, root)
    backend.directory.refresh(timeout=1.0)
    with pytest.raises(VideoRejected, match="no smartcut plugin named 'nope'") as err:
        backend.admit("alice", "nope", 1.0)
    assert err.value.status == 404 and err.value.fix == "use one of: scene"
    bus.publish(STOPPED_PLUGINS, encode({"plugin_name": "scene"}))
    bus.flush()
    backend.directory.refresh(timeout=1.0)
    assert backend.plugins() == {}
    backend.close()


def test_limits_per_user_and_active_users(settings: Settings, bus: Bus, root: Path) -> None:
    bus.publish(STARTED_PLUGINS, encode({"plugin_name": "silent", "label": "Silent", "img_size": 64}))
    bus.flush()
    backend = _backend(settings, bus, root, max_inflight_per_user=3, max_active_users=2)
    backend.directory.refresh(timeout=1.0)
    db = backend.db
    for n in range(3):
        backend.admit("alice", "silent", 1.0)
        db.create_smartcut_request(
            str(uuid.uuid4()), user_id="alice", plugin="silent", video_name=f"v{n}", sensitivity=1.0
        )
    with pytest.raises(SmartcutBusy, match="3 requests in flight, at most 3") as err:
        backend.admit("alice", "silent", 1.0)
    assert (err.value.status, err.value.reason, err.value.retry_after) == (429, "too_many_requests", 30)
    db.create_smartcut_request(
        str(uuid.uuid4()), user_id="bob", plugin="silent", video_name="b", sensitivity=1.0
    )
    with pytest.raises(SmartcutBusy, match="2 users have requests in flight, at most 2") as err:
        backend.admit("carol", "silent", 1.0)
    assert err.value.reason == "too_many_users"
    backend.admit("bob", "silent", 1.0)  # an active user may add to their own requests
    backend.close()


def test_a_plugin_that_never_answers_fails_the_request_and_frees_the_slot(
    settings: Settings, bus: Bus, root: Path, short_video: tuple[Path, GroundTruth]
) -> None:
    bus.publish(STARTED_PLUGINS, encode({"plugin_name": "silent", "label": "Silent", "img_size": 64}))
    bus.flush()
    backend = _backend(settings, bus, root, max_inflight_per_user=1, plugin_timeout_seconds=60.0)
    backend.directory.refresh(timeout=1.0)
    uid = backend.submit_video(short_video[0], user_id="alice", plugin="silent", sensitivity=5.0)
    deadline = time.monotonic() + 60
    while backend.db.smartcut_request(uid).status == "sampling" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert backend.db.smartcut_request(uid).status == "processing"
    with pytest.raises(SmartcutBusy):
        backend.admit("alice", "silent", 1.0)
    assert backend.check_progress(now=time.time() + 30) == 0  # not yet
    assert backend.check_progress(now=time.time() + 61) == 1
    record = backend.db.smartcut_request(uid)
    assert record.status == "failed"
    assert record.reason == "plugin_timeout: plugin 'silent' did not answer within 60 s"
    assert not (root / uid).exists()
    backend.admit("alice", "silent", 1.0)  # slot freed
    backend.close()


def test_late_answers_do_not_reopen_a_failed_request_and_malformed_answers_go_to_the_dlq(
    settings: Settings, bus: Bus, root: Path
) -> None:
    backend = _backend(settings, bus, root)
    uid = str(uuid.uuid4())
    backend.db.create_smartcut_request(
        uid, user_id="alice", plugin="motion", video_name="v.mp4", sensitivity=1.0
    )
    assert backend.db.finish_smartcut_request(uid, reason="plugin_timeout: gone")
    late = {
        "user_id": "alice",
        "user_request_uid": uid,
        "video_name": "v",
        "plugin_name": "motion",
        "timestamps": [],
    }
    bus.publish(PROCESSED_FILES, encode(late))
    bus.publish(PROCESSED_FILES, b'{"user_id": "alice"}')
    bus.flush()
    deadline = time.monotonic() + 30
    closed = 0
    while bus.lag(PROCESSED_FILES, "smartcut-backend") and time.monotonic() < deadline:
        closed += backend.collect(timeout=0.5)
    assert closed == 0 and bus.lag(PROCESSED_FILES, "smartcut-backend") == 0
    record = backend.db.smartcut_request(uid)
    assert (record.status, record.reason, record.segments) == ("failed", "plugin_timeout: gone", None)
    dlq = drain(bus, DLQ_TOPIC, "t-dlq", 1)
    assert dlq[0].value == b'{"user_id": "alice"}' and dlq[0].header("topic") == PROCESSED_FILES
    assert (dlq[0].header("reason") or "").startswith("malformed_message: 'timestamps' must be a list")
    backend.close()
