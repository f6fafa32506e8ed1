"""``POST /v1/smartcut/requests`` with an ``s3://`` URL on a real S3-protocol server (moto): allowed
locations only, 404 / 413 at request time from one HEAD, the object copied beside the chunks and
sampled like an upload, then deleted (docs/smartcut.md → "Videos on S3")."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import boto3
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from keeneye.serving.app import create_app
from keeneye.settings import S3Settings, Settings, SmartcutSettings
from keeneye.stream.bus import open_bus
from keeneye.video import GroundTruth, SmartcutRequest, SynthSpec, generate_video, run_local
from keeneye.video.messages import STARTED_PLUGINS
from keeneye.video.protocol import encode
from tests import services
from tests.unit.video.bus_support import plugin_thread

pytestmark = pytest.mark.integration

URL = "/v1/smartcut/requests"
BUCKET = "cameras"


@pytest.fixture(scope="module")
def tiny_video(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GroundTruth]:
    spec = SynthSpec(hours=75 / 3600, events=1, seed=3, width=160, height=90, name="gate")
    return generate_video(tmp_path_factory.mktemp("tiny"), spec)


def _settings(tmp_path: Path, endpoint: str, **smartcut: Any) -> Settings:
    keys = SecretStr("test")  # moto takes any key
    return Settings(
        home=tmp_path / "home",
        s3=S3Settings(endpoint_url=endpoint, access_key_id=keys, secret_access_key=keys),
        smartcut=SmartcutSettings(allowed_s3=[f"s3://{BUCKET}/site-a"], **smartcut),
    )


def _upload(endpoint: str, key: str, data: bytes) -> None:
    client = boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="t", aws_secret_access_key="t"
    )
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=BUCKET)
    client.put_object(Bucket=BUCKET, Key=key, Body=data)


def _poll(client: TestClient, uid: str, limit: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + limit
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = client.get(f"{URL}/{uid}").json()
        if body["status"] in ("done", "failed"):
            return body
        time.sleep(0.1)
    raise AssertionError(f"still {body.get('status')}: {body}")


def test_an_s3_video_is_fetched_sampled_and_answered_like_an_upload(
    s3_server: services.S3Server, tmp_path: Path, tiny_video: tuple[Path, GroundTruth]
) -> None:
    video = tiny_video[0]
    _upload(s3_server.endpoint_url, "site-a/cam 1/gate.mp4", video.read_bytes())
    local = run_local(SmartcutRequest(video, "motion", 1.0), tmp_path / "local")
    settings = _settings(tmp_path, s3_server.endpoint_url)
    root = settings.smartcut.root
    assert root is not None
    bus = open_bus(settings)
    try:
        with plugin_thread(bus, root), TestClient(create_app(settings, poll_aliases=False)) as client:
            form = {"plugin": "motion", "sensitivity": "1", "user_id": "alice"}
            answer = client.post(URL, data={**form, "path": f"s3://{BUCKET}/site-a/cam%201/gate.mp4"})
            assert answer.status_code == 202, answer.text
            body = _poll(client, answer.json()["request_uid"])
    finally:
        bus.close()
    assert body["status"] == "done", body
    assert body["timestamps"] == local.message["timestamps"]
    assert body["video_name"] == "gate.mp4" and body["progress"]["frames_sampled"] == 75
    assert not any((root / ".uploads").iterdir())  # the copy is deleted once sampled


REFUSED = [
    (f"s3://{BUCKET}/site-b/gate.mp4", 403, "path_not_allowed"),  # outside the allowed prefix
    (f"s3://{BUCKET}/site-abc/gate.mp4", 403, "path_not_allowed"),  # a prefix is a folder
    ("s3://elsewhere/site-a/gate.mp4", 403, "path_not_allowed"),
    (f"s3://{BUCKET}/site-a/missing.mp4", 404, "video_not_found"),
    (f"s3://{BUCKET}/site-a/big.mp4", 413, "video_too_large"),
    (f"s3://{BUCKET}/site-a/", 422, "bad_video_url"),
    (f"s3://{BUCKET}/site-a/../site-b/gate.mp4", 422, "bad_video_url"),
]


def test_s3_urls_are_refused_at_request_time(s3_server: services.S3Server, tmp_path: Path) -> None:
    _upload(s3_server.endpoint_url, "site-a/big.mp4", b"\0" * 5000)
    settings = _settings(tmp_path, s3_server.endpoint_url, max_video_bytes=4000)
    bus = open_bus(settings)
    bus.publish(STARTED_PLUGINS, encode({"plugin_name": "silent", "label": "Silent", "img_size": 64}))
    bus.close()
    with TestClient(create_app(settings, poll_aliases=False)) as client:
        for url, status, reason in REFUSED:
            form = {"plugin": "silent", "sensitivity": "1", "user_id": "alice", "path": url}
            answer = client.post(URL, data=form)
            assert (answer.status_code, answer.json()["reason"]) == (status, reason), (url, answer.text)
        assert client.get(URL, params={"user_id": "alice"}).json()["requests"] == []  # nothing recorded


def _cli(endpoint: str, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "KEENEYE_HOME": str(home),
        "KEENEYE_CONFIG": os.devnull,
        "KEENEYE_S3__ENDPOINT_URL": endpoint,
        "KEENEYE_S3__ACCESS_KEY_ID": "t",
        "KEENEYE_S3__SECRET_ACCESS_KEY": "t",
    }
    return subprocess.run(
        [sys.executable, "-m", "keeneye", "smartcut", "run", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_the_cli_runs_an_s3_video_like_a_local_file(
    s3_server: services.S3Server, tmp_path: Path, tiny_video: tuple[Path, GroundTruth]
) -> None:
    video = tiny_video[0]
    _upload(s3_server.endpoint_url, "site-c/gate.mp4", video.read_bytes())
    local = run_local(SmartcutRequest(video, "motion", 1.0), tmp_path / "local")
    home = tmp_path / "home"
    out = _cli(s3_server.endpoint_url, home, f"s3://{BUCKET}/site-c/gate.mp4", "-s", "1", "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    message = json.loads(out.stdout)
    assert message["timestamps"] == local.message["timestamps"] and message["timestamps"]
    assert not any((home / "smartcut" / ".uploads").glob("*"))  # the copy is deleted after the run
    # A missing object is refused with its reason and exit 2, as the API refuses it with 404.
    missing = _cli(s3_server.endpoint_url, home, f"s3://{BUCKET}/site-c/nope.mp4")
    assert missing.returncode == 2 and "no object at s3://cameras/site-c/nope.mp4" in missing.stderr
