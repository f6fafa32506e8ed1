"""Bad input of issue 15 item 9 that the other smartcut tests leave out: limits refused over HTTP
with the limit named, bad chunks and too many frames through the chunk route, S3 URLs, a scorer that
raises, and a plugin killed
mid-request — the request fails at once with a reason instead of an answer for part of the video."""

from __future__ import annotations

import io
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from keeneye.domain import InvalidInput
from keeneye.serving.app import create_app
from keeneye.settings import S3Settings, Settings
from keeneye.store import open_results_db
from keeneye.stream.bus import Bus, open_bus
from keeneye.video import FrameScorer, GroundTruth, Recommender, SegmentPolicy, make_recommender
from keeneye.video.backend import BackendLimits, SmartcutBackend
from keeneye.video.chunks import write_chunks
from keeneye.video.messages import PROCESSED_FILES, STARTED_PLUGINS, new_files_topic
from keeneye.video.plugins import PluginProcess, plugin_group
from keeneye.video.protocol import DLQ_TOPIC, encode
from keeneye.video.remote import check_allowed, open_s3_video
from keeneye.video.sampling import SampledFrame
from tests.unit.video.bus_support import drain, plugin_thread

URL = "/v1/smartcut/requests"


@pytest.fixture
def bus(settings: Settings) -> Iterator[Bus]:
    b = open_bus(settings)
    yield b
    b.close()


def _silent_plugin(bus: Bus) -> None:
    bus.publish(STARTED_PLUGINS, encode({"plugin_name": "silent", "label": "Silent", "img_size": 64}))
    bus.flush()


def _poll(client: TestClient, uid: str, limit: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + limit
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = client.get(f"{URL}/{uid}").json()
        if body["status"] in ("done", "failed"):
            return body
        time.sleep(0.1)
    raise AssertionError(f"still {body.get('status')}: {body}")


def _zip(entries: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return out.getvalue()


def test_over_http_limits_are_refused_naming_the_limit_and_bad_chunks_are_refused(
    settings: Settings, bus: Bus, short_video: tuple[Path, GroundTruth]
) -> None:
    _silent_plugin(bus)
    limit = 20_000_000  # the 3-minute test video (11 MB) fits, its duration does not
    settings.smartcut.max_video_bytes = limit
    settings.smartcut.max_duration_seconds = 60
    allowed = short_video[0].parent
    settings.smartcut.allowed_roots = [allowed]
    sparse = allowed / "sparse.mp4"
    with sparse.open("wb") as f:
        f.truncate(limit + 1)  # no disk used
    form = {"plugin": "silent", "sensitivity": "1", "user_id": "alice"}
    with TestClient(create_app(settings, poll_aliases=False)) as client:
        # a body far over the limit: refused from its Content-Length, before a byte is read
        huge = client.post(URL, data=form, files={"video": ("big.mp4", b"\0" * (limit + 2 * 1024 * 1024))})
        assert huge.status_code == 413 and huge.json()["reason"] == "video_too_large"
        assert f"over {limit}" in huge.json()["detail"]
        # a little over: refused while it is copied, and nothing is left behind
        over = client.post(URL, data=form, files={"video": ("v.mp4", b"\0" * (limit + 5000))})
        assert over.status_code == 413 and over.json()["detail"] == f"the video is over {limit} bytes"
        assert settings.smartcut.root is not None
        assert not any((settings.smartcut.root / ".uploads").iterdir())
        # a file on the server: its size is checked before the 202
        big = client.post(URL, data={**form, "path": str(sparse)})
        assert big.status_code == 413
        assert big.json()["detail"] == f"sparse.mp4 is {limit + 1} bytes, over the limit of {limit} bytes"
        # its duration once probed: the request fails with the limit in the reason
        long = client.post(URL, data={**form, "path": str(short_video[0])})
        assert long.status_code == 202
        body = _poll(client, long.json()["request_uid"])
        listed = client.get(URL, params={"user_id": "alice"}).json()["requests"]
        _refuse_bad_chunks(client, settings.smartcut.root)  # one app for both: its start-up is slow
    sparse.unlink()
    assert body["status"] == "failed"
    assert body["reason"] == f"video_too_long: {short_video[0].name} lasts 180 s, over the limit of 60 s"
    assert [r["request_uid"] for r in listed] == [long.json()["request_uid"]]  # refusals left no row


def _refuse_bad_chunks(client: TestClient, root: Path) -> None:
    """Chunks through HTTP: traversal, folders, foreign members, not JPEG, more than 50 frames."""
    ok, jpeg = cv2.imencode(".jpg", np.zeros((16, 16, 3), np.uint8))
    assert ok
    frame = jpeg.tobytes()
    cases = {
        "traversal": ({"../../0000000_00000000000.jpg": frame}, "is not a frame named"),
        "folder": ({"sub/0000000_00000000000.jpg": frame}, "is not a frame named"),
        "png": ({"0000000_00000000000.png": frame}, "is not a frame named"),
        "not a jpeg": ({"0000000_00000000000.jpg": b"\x89PNG\r\n\x1a\n"}, "is not a JPEG"),
        "51 frames": ({f"{i:07d}_{i * 1000:011d}.jpg": frame for i in range(51)}, "51 entries, at most 50"),
    }
    created = client.post(
        URL, data={"plugin": "silent", "sensitivity": "1", "user_id": "bob", "video_name": "cam.mp4"}
    )
    uid = created.json()["request_uid"]
    for case, (entries, message) in cases.items():
        answer = client.post(f"{URL}/{uid}/chunks", files={"chunk": ("c.zip", _zip(entries))})
        assert answer.status_code == 422, case
        assert answer.json()["reason"] == "bad_chunk" and message in answer.json()["detail"], case
    body = client.get(f"{URL}/{uid}").json()
    assert body["progress"] == {"frames_sampled": 0, "chunks_sent": 0, "chunks_processed": 0}
    assert not (root / uid).exists()  # nothing refused was filed


def test_a_plugin_killed_mid_request_fails_it_at_once_with_the_reason(
    settings: Settings, bus: Bus, short_video: tuple[Path, GroundTruth]
) -> None:
    root = settings.smartcut.root
    assert root is not None
    root.mkdir(parents=True)
    bus.publish(STARTED_PLUGINS, encode(make_recommender("motion").announcement()))
    bus.flush()
    backend = SmartcutBackend(bus, open_results_db(settings), root, BackendLimits())
    backend.directory.refresh(timeout=1.0)
    uid = backend.submit_video(short_video[0], user_id="alice", plugin="motion", sensitivity=1.0)
    deadline = time.monotonic() + 60
    while backend.db.smartcut_request(uid).status == "sampling" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert backend.db.smartcut_request(uid).chunks_sent == 4  # 180 frames: 3 × in-progress + uploaded

    # The first plugin process scores chunk 0 (and deletes it), then dies without a word.
    first = PluginProcess(make_recommender("motion"), bus, root)
    with bus.subscribe([new_files_topic("motion")], plugin_group("motion")) as consumer:
        (message,) = consumer.poll(max_messages=1, timeout=10)
        assert first.handle(message) is None
        consumer.ack(message)
    assert not (root / uid / short_video[0].stem / "chunk_000000.zip").exists()

    # Its restart reads the rest: frames 50… without 0–49 — it refuses instead of answering for 3/4.
    with plugin_thread(bus, root) as second:
        while backend.db.smartcut_request(uid).status == "processing" and time.monotonic() < deadline:
            backend.collect(timeout=0.2)
        assert bus.lag(new_files_topic("motion"), plugin_group("motion")) == 0
    record = backend.db.smartcut_request(uid)
    assert record.status == "failed"
    assert record.reason == (
        "plugin refused the request: lost_frames: frames 0–49 of this request were not scored by this "
        "plugin process (it restarted mid-request, or a chunk is missing)"
    )
    assert second.answered == 0  # no answer for part of the video
    assert drain(bus, PROCESSED_FILES, "t-answers", 1, limit=1.0) == []
    dlq = drain(bus, DLQ_TOPIC, "t-dlq", 2, limit=2.0)
    assert [m.header("request_uid") for m in dlq] == [uid]  # once: its later messages were dropped
    assert not (root / uid).exists()
    backend.close()


@pytest.mark.parametrize(
    ("url", "allowed", "reason"),
    [
        ("s3://cams/a/v.mp4", ["s3://cams/b"], "path_not_allowed"),
        ("s3://cams/ab/v.mp4", ["s3://cams/a"], "path_not_allowed"),  # a prefix is a folder
        ("s3://other/a/v.mp4", ["s3://cams"], "path_not_allowed"),
        ("s3://cams/", ["s3://cams"], "bad_video_url"),
        ("s3://cams/a/../b/v.mp4", ["s3://cams"], "bad_video_url"),
        ("s3://cams/v.mp4?versionId=1", ["s3://cams"], "bad_video_url"),
        ("http://cams/v.mp4", ["s3://cams"], "bad_video_url"),
    ],
)
def test_s3_urls_outside_the_allowed_locations_or_naming_no_object(
    url: str, allowed: list[str], reason: str
) -> None:
    with pytest.raises(InvalidInput) as err:
        check_allowed(url, allowed)
    assert err.value.reason == reason
    assert check_allowed("s3://cams/a/b%20c.mp4", ["s3://cams/a"]) == ("cams", "a/b c.mp4")


def test_an_unreachable_s3_is_a_503_naming_the_settings() -> None:
    from tests.services import free_port

    closed = S3Settings(endpoint_url=f"http://127.0.0.1:{free_port()}", access_key_id=SecretStr("k"),
                        secret_access_key=SecretStr("k"))  # fmt: skip
    with pytest.raises(InvalidInput) as err:
        open_s3_video("s3://cams/v.mp4", allowed=["s3://cams"], s3=closed, max_bytes=10**9)
    assert (err.value.reason, err.value.status) == ("s3_unavailable", 503)
    assert "KEENEYE_S3__ENDPOINT_URL" in (err.value.fix or "")


@dataclass(frozen=True)
class _Message:
    topic: str
    value: bytes
    headers: dict[str, bytes] = field(default_factory=dict)


class _Broken(Recommender):  # not registered: only this test knows it
    name = "broken"
    label = "Broken"
    img_size = 64
    default_policy = SegmentPolicy(high=1.0, low=0.5)

    def scorer(self) -> FrameScorer:
        def score(image: np.ndarray) -> float:
            raise RuntimeError("boom")

        return score


def test_a_scorer_that_raises_fails_its_request_and_the_plugin_carries_on(
    settings: Settings, bus: Bus
) -> None:
    root = settings.smartcut.root
    assert root is not None
    uid = "6f1c1a52-8d1e-4c55-9a47-1a1f3f0e6a10"
    frames = [SampledFrame(i, float(i), np.zeros((8, 8, 3), np.uint8)) for i in range(3)]
    list(write_chunks(frames, root, Path(uid) / "cam"))
    process = PluginProcess(_Broken(), bus, root)
    uploaded = encode({"status": "uploaded", "user_id": "u", "zipped_chunks_path": f"{uid}/cam"})
    assert process.handle(_Message("broken-new-files", uploaded)) is None
    assert process.handle(_Message("broken-new-files", uploaded)) is None  # redelivered: dropped
    bus.flush()
    dlq = drain(bus, DLQ_TOPIC, "t-dlq", 2, limit=2.0)
    assert [(m.header("request_uid"), m.header("reason")) for m in dlq] == [
        (uid, "plugin_error: RuntimeError: boom")
    ]
    assert not (root / uid).exists()
