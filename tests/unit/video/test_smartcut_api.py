"""smartcut over HTTP (docs/smartcut.md → "HTTP API"): upload → request_uid → poll → segments, with
a built-in plugin process on the embedded bus; refusals first."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from keeneye.serving.app import create_app
from keeneye.settings import Settings
from keeneye.stream.bus import Bus, open_bus
from keeneye.video import GroundTruth, MotionRecommender, SmartcutRequest, run_local
from keeneye.video.chunks import write_chunks
from keeneye.video.messages import STARTED_PLUGINS
from keeneye.video.probe import probe
from keeneye.video.protocol import encode
from keeneye.video.sampling import sample_frames
from tests.unit.video.bus_support import plugin_thread

URL = "/v1/smartcut/requests"


@pytest.fixture
def bus(settings: Settings) -> Iterator[Bus]:
    b = open_bus(settings)
    yield b
    b.close()


def _client(settings: Settings) -> TestClient:
    return TestClient(create_app(settings, poll_aliases=False), base_url="http://testserver")


def _post(client: TestClient, video: Path | None, **fields: str) -> Any:
    files = {"video": (video.name, video.read_bytes(), "video/mp4")} if video else None
    return client.post(URL, data=fields, files=files)


def _poll(client: TestClient, uid: str, limit: float = 90.0) -> dict[str, Any]:
    deadline = time.monotonic() + limit
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = client.get(f"{URL}/{uid}").json()
        if body["status"] in ("done", "failed"):
            return body
        time.sleep(0.1)
    raise AssertionError(f"still {body.get('status')}: {body}")


def test_upload_poll_and_segments_match_the_local_run(
    settings: Settings, bus: Bus, short_video: tuple[Path, GroundTruth], tmp_path: Path
) -> None:
    video = short_video[0]
    local = run_local(SmartcutRequest(video, "motion", 2.0), tmp_path / "local")
    assert settings.smartcut.root is not None
    with plugin_thread(bus, settings.smartcut.root), _client(settings) as client:
        plugins = client.get("/v1/smartcut/plugins").json()["plugins"]
        assert plugins == [{"plugin_name": "motion", "label": MotionRecommender.label, "img_size": 320}]
        answer = _post(client, video, plugin="motion", sensitivity="2", user_id="alice")
        assert answer.status_code == 202, answer.text
        uid = answer.json()["request_uid"]
        body = _poll(client, uid)
        listed = client.get(URL, params={"user_id": "alice"}).json()["requests"]
    assert body["status"] == "done" and body["reason"] is None
    assert body["timestamps"] == local.message["timestamps"]
    assert body["progress"] == {"frames_sampled": 90, "chunks_sent": 2, "chunks_processed": 2}
    assert body["video_name"] == video.name and body["plugin"] == "motion"
    assert [r["request_uid"] for r in listed] == [uid]
    assert not any((settings.smartcut.root / ".uploads").iterdir())  # the upload is deleted once sampled
    assert not (settings.smartcut.root / uid).exists()  # so are the chunks


def test_refusals_unknown_plugin_missing_video_bad_path_unknown_request(
    settings: Settings, tmp_path: Path
) -> None:
    outside = tmp_path / "outside.mp4"
    outside.write_bytes(b"\x00" * 10)
    with _client(settings) as client:
        unknown = _post(client, None, plugin="nope", sensitivity="1", user_id="alice")
        assert unknown.status_code == 404
        assert unknown.json()["reason"] == "unknown_plugin" and "nope" in unknown.json()["detail"]
        assert "keeneye plugin run" in unknown.json()["fix"]  # none running: says how to start one
        missing = client.get(f"{URL}/0b3f6c1e-0000-4000-8000-000000000000")
        assert missing.status_code == 404
        everyone = client.get(URL)  # no user_id, no key: every user's requests (none was stored)
        assert everyone.status_code == 200 and everyone.json() == {"user_id": None, "requests": []}


def test_unknown_plugin_names_the_running_ones_and_paths_stay_inside_allowed_roots(
    settings: Settings, bus: Bus, tmp_path: Path
) -> None:
    bus.publish(STARTED_PLUGINS, encode({"plugin_name": "silent", "label": "Silent", "img_size": 64}))
    bus.flush()
    allowed = tmp_path / "videos"
    allowed.mkdir()
    settings.smartcut.allowed_roots = [allowed]
    with _client(settings) as client:
        unknown = _post(client, None, plugin="nope", sensitivity="1", user_id="alice")
        assert unknown.status_code == 404 and unknown.json()["fix"] == "use one of: silent"
        escape = _post(
            client, None, plugin="silent", sensitivity="1", user_id="a", path=str(allowed / ".." / "x.mp4")
        )
        assert escape.status_code == 403 and escape.json()["reason"] == "path_not_allowed"
        absent = _post(
            client, None, plugin="silent", sensitivity="1", user_id="a", path=str(allowed / "no.mp4")
        )
        assert absent.status_code == 404 and absent.json()["reason"] == "video_not_found"
        neither = _post(client, None, plugin="silent", sensitivity="1", user_id="a")
        assert neither.status_code == 422
        bad = _post(client, None, plugin="silent", sensitivity="0", user_id="a")
        assert bad.status_code == 422 and bad.json()["reason"] == "bad_sensitivity"
        (allowed / "junk.mp4").write_bytes(b"this is not a video at all" * 100)
        junk = _post(
            client, None, plugin="silent", sensitivity="1", user_id="a", path=str(allowed / "junk.mp4")
        )
        assert junk.status_code == 202
        body = _poll(client, junk.json()["request_uid"])
    assert body["status"] == "failed" and body["reason"].startswith("not_a_video")


def test_limits_answer_429_with_retry_after_and_a_silent_plugin_times_out(
    settings: Settings, bus: Bus, short_video: tuple[Path, GroundTruth]
) -> None:
    bus.publish(STARTED_PLUGINS, encode({"plugin_name": "silent", "label": "Silent", "img_size": 64}))
    bus.flush()
    settings.smartcut.max_inflight_per_user = 1
    settings.smartcut.max_active_users = 1
    settings.smartcut.plugin_timeout_seconds = 1.0
    settings.smartcut.allowed_roots = [short_video[0].parent]
    path = str(short_video[0])
    with _client(settings) as client:
        first = _post(client, None, plugin="silent", sensitivity="10", user_id="alice", path=path)
        assert first.status_code == 202
        again = _post(client, None, plugin="silent", sensitivity="10", user_id="alice", path=path)
        assert again.status_code == 429 and again.headers["Retry-After"] == "30"
        assert again.json()["reason"] == "too_many_requests"
        other = _post(client, None, plugin="silent", sensitivity="10", user_id="bob", path=path)
        assert other.status_code == 429 and other.json()["reason"] == "too_many_users"
        body = _poll(client, first.json()["request_uid"])
        assert body["status"] == "failed"
        assert body["reason"] == "plugin_timeout: plugin 'silent' did not answer within 1 s"
        assert body["progress"]["chunks_sent"] == 1 and body["progress"]["chunks_processed"] == 0
        freed = _post(client, None, plugin="silent", sensitivity="10", user_id="bob", path=path)
        assert freed.status_code == 202


def test_client_side_chunks_then_complete_give_the_same_segments(
    settings: Settings, bus: Bus, short_video: tuple[Path, GroundTruth], tmp_path: Path
) -> None:
    video = short_video[0]
    local = run_local(SmartcutRequest(video, "motion", 2.0), tmp_path / "local")
    made = tmp_path / "client"
    folder = Path("00000000-0000-4000-8000-000000000000") / "cam"
    chunks = [made / c for c in write_chunks(sample_frames(probe(video), 2.0, 320), made, folder)]
    assert len(chunks) == 2  # 90 frames: 50 + 40, as a browser would send them
    assert settings.smartcut.root is not None
    with plugin_thread(bus, settings.smartcut.root), _client(settings) as client:
        created = _post(
            client, None, plugin="motion", sensitivity="2", user_id="alice", video_name=video.name
        )
        assert created.status_code == 201
        uid = created.json()["request_uid"]
        early = client.post(f"{URL}/{uid}/complete")
        assert early.status_code == 422 and early.json()["reason"] == "bad_chunk"
        junk = client.post(
            f"{URL}/{uid}/chunks", files={"chunk": ("c.zip", b"PK not a zip", "application/zip")}
        )
        assert junk.status_code == 422 and junk.json()["reason"] == "bad_chunk"
        for chunk in chunks:
            sent = client.post(
                f"{URL}/{uid}/chunks", files={"chunk": (chunk.name, chunk.read_bytes(), "application/zip")}
            )
            assert sent.status_code == 200, sent.text
        assert sent.json()["frames"] == 40
        assert client.post(f"{URL}/{uid}/complete").status_code == 202
        late = client.post(
            f"{URL}/{uid}/chunks", files={"chunk": ("x.zip", chunks[0].read_bytes(), "application/zip")}
        )
        assert late.status_code == 409 and late.json()["reason"] == "upload_closed"
        body = _poll(client, uid)
    assert body["status"] == "done", body
    assert body["timestamps"] == local.message["timestamps"]
    assert body["progress"] == {"frames_sampled": 90, "chunks_sent": 2, "chunks_processed": 2}
