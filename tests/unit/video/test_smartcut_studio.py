"""The smartcut studio's API (docs/smartcut.md → "Studio"): edits per request and user, exports, the
lossless cut as a zip, and the studio record (keyframes, activity curve); the page itself is driven in
tests/e2e/test_smartcut_studio.py."""

from __future__ import annotations

import io
import json
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from keeneye.serving.app import create_app
from keeneye.settings import Settings
from keeneye.stream.bus import Bus, open_bus
from keeneye.video import GroundTruth
from keeneye.video.errors import VideoRejected
from keeneye.video.segments import Segment
from keeneye.video.studio import check_edits, export, pooled
from tests.unit.video.bus_support import plugin_thread

URL = "/v1/smartcut/requests"


@pytest.fixture
def bus(settings: Settings) -> Iterator[Bus]:
    b = open_bus(settings)
    yield b
    b.close()


def _wait(client: TestClient, uid: str, user: str, until: str = "done") -> dict[str, Any]:
    deadline = time.monotonic() + 90
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = client.get(f"{URL}/{uid}/studio", params={"user_id": user}).json()
        if body["status"] in ("done", "failed") and (until != "curve" or body["activity"]["complete"]):
            return body
        time.sleep(0.1)
    raise AssertionError(f"not {until}: {body}")


def test_exports_and_edit_checks() -> None:
    segments = [Segment(1.5, 20.0), Segment(62.0, 90.25)]
    meta = {"user_id": "u", "user_request_uid": "r", "plugin_name": "motion"}
    as_json = json.loads(export(segments, "json", video_name="cam", fps=5.0, meta=meta))
    assert as_json == {
        **meta,
        "video_name": "cam",
        "timestamps": [{"start": 1.5, "stop": 20.0}, {"start": 62.0, "stop": 90.25}],
    }
    assert export(segments, "csv", video_name="cam", fps=5.0, meta=meta).splitlines() == [
        "n,start,stop,duration",
        "1,1.500,20.000,18.500",
        "2,62.000,90.250,28.250",
    ]
    edl = export(segments, "edl", video_name="cam", fps=25.0, meta=meta).splitlines()
    assert edl[0] == "TITLE: cam smartcut"
    assert edl[3] == "001  AX       V     C        00:00:01:13 00:00:20:00 00:00:00:00 00:00:18:13"
    assert edl[5] == "002  AX       V     C        00:01:02:00 00:01:30:06 00:00:18:13 00:00:46:19"
    with pytest.raises(VideoRejected) as bad_format:
        export(segments, "xml", video_name="cam", fps=None, meta=meta)
    assert bad_format.value.reason == "bad_segments"
    # the curve the page gets keeps every peak however many samples there are
    assert pooled([0.0, 1.0, 2.0, 3.0, 4.0], [0.1, 0.9, 0.2, 0.0, 0.3], 2) == ([0.0, 3.0], [0.9, 0.3])
    assert pooled([0.0, 1.0], [0.5, 0.1], 2) == ([0.0, 1.0], [0.5, 0.1])
    # sorted, stops past the end clipped; reversed or outside segments refused
    assert check_edits([{"start": 50, "stop": 200}, [0, 10]], 120.0) == [Segment(0, 10), Segment(50, 120)]
    for bad in ([{"start": 10, "stop": 5}], [{"start": 130, "stop": 140}], [{"start": "x"}], {"a": 1}):
        with pytest.raises(VideoRejected):
            check_edits(bad, 120.0)


def test_edits_are_per_user_and_the_cut_zip_follows_them(
    settings: Settings, bus: Bus, short_video: tuple[Path, GroundTruth]
) -> None:
    video = short_video[0]
    settings.smartcut.allowed_roots = [video.parent]
    assert settings.smartcut.root is not None
    with (
        plugin_thread(bus, settings.smartcut.root),
        TestClient(create_app(settings, poll_aliases=False)) as client,
    ):
        fields = {"plugin": "motion", "sensitivity": "2", "user_id": "alice", "path": str(video)}
        uid = client.post(URL, data=fields).json()["request_uid"]
        body = _wait(client, uid, "alice", until="curve")
        assert body["status"] == "done" and body["source"] == "server"
        assert body["duration"] == pytest.approx(180.0)
        assert body["keyframes"][:3] == [0.0, 2.0, 4.0] and len(body["keyframes"]) == 90
        assert body["activity"]["label"] == "Motion score" and len(body["activity"]["times"]) == 90
        assert max(body["activity"]["scores"]) > 0.004  # the objects cross the high threshold
        plugin_segments = body["timestamps"]
        assert plugin_segments and body["edits"] is None

        # another user: the request is as unknown as a missing one
        for path in ("studio", "edits", "export", "video"):
            assert client.get(f"{URL}/{uid}/{path}", params={"user_id": "bob"}).status_code == 404
        assert client.put(f"{URL}/{uid}/edits", json={"user_id": "bob", "timestamps": []}).status_code == 404
        assert client.post(f"{URL}/{uid}/cut", json={"user_id": "bob"}).status_code == 404

        before = client.get(f"{URL}/{uid}/edits", params={"user_id": "alice"}).json()
        assert before == {
            "request_uid": uid,
            "user_id": "alice",
            "edited": False,
            "timestamps": plugin_segments,
        }
        bad = client.put(
            f"{URL}/{uid}/edits", json={"user_id": "alice", "timestamps": [{"start": 9, "stop": 3}]}
        )
        assert bad.status_code == 422 and bad.json()["reason"] == "bad_segments"
        late = client.put(
            f"{URL}/{uid}/edits", json={"user_id": "alice", "timestamps": [[170, 200], [4, 20]]}
        )
        assert late.status_code == 200
        edits = [{"start": 4.0, "stop": 20.0}, {"start": 170.0, "stop": 180.0}]
        assert late.json()["timestamps"] == edits
        after = client.get(f"{URL}/{uid}/studio", params={"user_id": "alice"}).json()
        assert after["edits"] == edits and after["timestamps"] == plugin_segments  # the plugin's stay

        csv = client.get(f"{URL}/{uid}/export", params={"user_id": "alice", "format": "csv"})
        assert csv.headers["content-disposition"] == 'attachment; filename="smartcut_segments.csv"'
        assert csv.text.splitlines()[1:] == ["1,4.000,20.000,16.000", "2,170.000,180.000,10.000"]
        as_json = client.get(f"{URL}/{uid}/export", params={"user_id": "alice"}).json()
        assert as_json["timestamps"] == edits and as_json["user_request_uid"] == uid
        assert (
            client.get(f"{URL}/{uid}/export", params={"user_id": "alice", "format": "xml"}).status_code == 422
        )

        player = client.get(
            f"{URL}/{uid}/video", params={"user_id": "alice"}, headers={"Range": "bytes=0-99"}
        )
        assert player.status_code == 206 and player.content == video.read_bytes()[:100]

        cut = client.post(f"{URL}/{uid}/cut", json={"user_id": "alice"})
        assert cut.status_code == 200 and cut.headers["content-type"] == "application/zip"
        with zipfile.ZipFile(io.BytesIO(cut.content)) as zf:
            manifest = json.loads(zf.read("clips.json"))["clips"]
            assert sorted(zf.namelist()) == sorted(["clips.json", *(c["file"] for c in manifest)])
        assert [(c["start"], c["stop"]) for c in manifest] == [(4.0, 20.0), (170.0, 180.0)]
        assert [c["clip_start"] for c in manifest] == [4.0, 170.0]  # keyframes: lossless starts exactly

        # frames for labelling: 3 per segment, inside it, as a COCO folder without annotations
        frames = client.post(
            f"{URL}/{uid}/cut", json={"user_id": "alice", "as_dataset": True, "frames_per_segment": 3}
        )
        assert frames.status_code == 200
        with zipfile.ZipFile(io.BytesIO(frames.content)) as zf:
            coco = json.loads(zf.read("annotations.json"))
            assert coco["annotations"] == [] and coco["categories"] == []
            assert sorted(zf.namelist()) == sorted(
                ["annotations.json", *(i["file_name"] for i in coco["images"])]
            )
            assert cv2.imdecode(
                np.frombuffer(zf.read(coco["images"][0]["file_name"]), np.uint8), 1
            ).shape == (180, 320, 3)
        times = [(i["metadata"]["segment"], i["metadata"]["time"]) for i in coco["images"]]
        assert [n for n, _ in times] == [0, 0, 0, 1, 1, 1]
        assert all(edits[n]["start"] <= t < edits[n]["stop"] for n, t in times)
        assert {i["width"] for i in coco["images"]} == {320}
        too_many = client.post(
            f"{URL}/{uid}/cut", json={"user_id": "alice", "as_dataset": True, "frames_per_segment": 0}
        )
        assert too_many.status_code == 422
        assert not [p for p in settings.smartcut.root.iterdir() if p.name.startswith("smartcut-cut-")]

        # a request the browser sampled: nothing to cut on the server, the export is the way
        made = client.post(
            URL, data={"plugin": "motion", "sensitivity": "1", "user_id": "alice", "video_name": "x.mp4"}
        )
        held = made.json()["request_uid"]
        client.put(f"{URL}/{held}/edits", json={"user_id": "alice", "timestamps": [[0, 15]]})
        refused = client.post(f"{URL}/{held}/cut", json={"user_id": "alice"})
        assert refused.status_code == 409 and refused.json()["reason"] == "not_server_held"
        assert "keeneye smartcut cut" in refused.json()["fix"]
