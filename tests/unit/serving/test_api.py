"""The HTTP API on a real port: predictions checked numerically, persistence, cache, refusals."""

from __future__ import annotations

import hashlib
import io
import json
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from keeneye.imaging import decode_image, prepare_input
from keeneye.registry import ModelRegistry
from keeneye.settings import Settings
from keeneye.store import open_object_store, open_results_db
from tests.serving_support import (
    SPECIES,
    LiveServer,
    fast_registry_store,
    jpeg,
    live_server,
    png,
    register_species_model,
    tiff,
    with_species_limits,
)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One server for the tests that only read or add observations."""
    tmp = tmp_path_factory.mktemp("served")
    settings = Settings(home=tmp / "home")
    register_species_model(settings, tmp)
    with live_server(settings) as server:
        yield server


@pytest.fixture
def own_server(settings: Settings, tmp_path: Path) -> Iterator[LiveServer]:
    """A server of its own, for tests that move aliases (no rate limit: the test hammers it)."""
    settings = with_species_limits(settings, tmp_path, rate_per_second=1e6, burst=10**6)
    settings = settings.model_copy(
        update={"inference": settings.inference.model_copy(update={"alias_poll_seconds": 0.3})}
    )
    register_species_model(settings, tmp_path)
    with live_server(settings) as server:
        yield server


def raw_ort_probabilities(settings: Settings, data: bytes) -> np.ndarray:
    """What raw ONNX Runtime says for the same bytes, for a numeric comparison."""
    registry = ModelRegistry(settings)
    info = registry.resolve("species-id", "champion")
    assert info is not None
    bundle = registry.download("species-id", str(info.version))
    tensor, _ = prepare_input(decode_image(data, max_pixels=10**8), bundle.manifest.input)
    session = ort.InferenceSession(str(bundle.onnx_path), providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: tensor[None]})[0][0].astype(np.float64)
    e = np.exp(logits - logits.max())
    return e / e.sum()


def test_multipart_prediction_matches_raw_onnxruntime_and_is_stored(served: LiveServer) -> None:
    data = jpeg((30, 200, 40))
    r = httpx.post(
        f"{served.url}/v1/pipelines/species-id/predict",
        files={"file": ("fish.jpg", data, "image/jpeg")},
        data={"metadata": json.dumps({"pond": "A7", "note": "щука?"})},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    probs = raw_ort_probabilities(served.settings, data)
    order = np.argsort(-probs)
    assert body["predicted_class"] == SPECIES[order[0]][0]
    assert body["predicted_label"] == SPECIES[order[0]][1]
    assert body["confidence"] == pytest.approx(probs[order[0]], abs=1e-5)
    assert [p["class"] for p in body["top_3_predictions"]] == [SPECIES[i][0] for i in order[:3]]
    assert [p["probability"] for p in body["top_3_predictions"]] == pytest.approx(probs[order[:3]], abs=1e-5)
    assert body["model_version"] == "1" and body["cached"] is False
    assert body["processing_time_ms"] > 0

    obs = httpx.get(f"{served.url}/v1/observations/{body['observation_id']}").json()
    assert obs["status"] == "done"
    assert obs["metadata"] == {"pond": "A7", "note": "щука?"}
    assert obs["result"]["predicted_class"] == body["predicted_class"]
    db = open_results_db(served.settings)
    record = db.get_observation(body["observation_id"])
    assert record is not None and record.object_key is not None
    assert open_object_store(served.settings).get(record.object_key) == data


def test_repeat_is_answered_from_cache_and_still_recorded(served: LiveServer) -> None:
    data = jpeg((10, 10, 220), seed=3)
    first = httpx.post(
        f"{served.url}/v1/pipelines/species-id/predict", content=data, headers={"content-type": "image/jpeg"}
    ).json()
    second = httpx.post(
        f"{served.url}/v1/pipelines/species-id/predict", content=data, headers={"content-type": "image/jpeg"}
    ).json()
    assert (first["cached"], second["cached"]) == (False, True)
    assert second["top_3_predictions"] == first["top_3_predictions"]
    assert second["observation_id"] != first["observation_id"]
    db = open_results_db(served.settings)
    assert len(db.predictions_for(second["observation_id"])) == 1


def test_a_repeated_image_is_queued_for_review_once(served: LiveServer) -> None:
    url = f"{served.url}/v1/pipelines/species-id/predict"
    db = open_results_db(served.settings)
    for seed in range(60):  # find an image the tiny model is unsure about (it is queued for review)
        data = jpeg((120, 120, 120), seed=100 + seed)
        first = httpx.post(url, content=data, headers={"content-type": "image/jpeg"}).json()
        if db.review_items_of([first["observation_id"]]):
            break
    else:
        pytest.fail("no uncertain answer in 60 images: the precondition of this test does not hold")
    second = httpx.post(url, content=data, headers={"content-type": "image/jpeg"}).json()
    assert second["cached"] is True and second["observation_id"] != first["observation_id"]
    assert db.review_items_of([second["observation_id"]]) == {}  # the same image is not queued twice


def test_default_predict_route_is_species_id(served: LiveServer) -> None:
    r = httpx.post(
        f"{served.url}/predict", files={"file": ("f.png", png(np.full((40, 40, 3), 90, np.uint8)))}
    )
    assert r.status_code == 200, r.text
    assert set(r.json()) >= {
        "predicted_class",
        "predicted_label",
        "confidence",
        "top_3_predictions",
        "processing_time_ms",
        "model_version",
        "cached",
        "observation_id",
    }


def _png_bomb(side: int = 30000) -> bytes:
    """A valid PNG header claiming side×side pixels with a tiny compressed body of zeros."""
    import struct

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    comp = zlib.compressobj(9)
    row = b"\x00" * (side + 1)
    body = b"".join(comp.compress(row) for _ in range(64)) + comp.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


GOOD = jpeg()
BAD_INPUTS = [
    # (id, body, content type, expected status, expected reason)
    ("corrupt-jpeg", GOOD[:200] + bytes(range(256)) * 8 + b"\xff\xd9", "image/jpeg", 422, "corrupt_image"),
    ("truncated-png", png(np.full((64, 64, 3), 7, np.uint8))[:150], "image/png", 422, "corrupt_image"),
    ("png-bomb", _png_bomb(), "image/png", 422, "too_many_pixels"),
    ("text-named-jpg", b"this is not an image at all\n" * 10, "image/jpeg", 422, "unsupported_format"),
    (
        "tiff-2-bands",
        tiff(np.zeros((16, 16, 2), np.uint8), planarconfig="contig"),
        "image/tiff",
        422,
        "wrong_band_count",
    ),
    ("empty", b"", "image/jpeg", 400, "empty"),
    ("text-content-type", b"hello", "text/plain", 415, "unsupported_media_type"),
]


@pytest.mark.parametrize(
    ("case", "body", "ctype", "status", "reason"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS]
)
def test_bad_input_gets_precise_4xx_and_nothing_half_written(
    served: LiveServer, case: str, body: bytes, ctype: str, status: int, reason: str
) -> None:
    db = open_results_db(served.settings)
    before = db.count_predictions()
    r = httpx.post(
        f"{served.url}/v1/pipelines/species-id/predict", content=body, headers={"content-type": ctype}
    )
    assert r.status_code == status, r.text
    payload = r.json()
    assert payload["reason"] == reason
    assert "\n" not in payload["detail"] and payload["detail"]
    assert db.count_predictions() == before  # no prediction for a refused input
    ok = httpx.post(
        f"{served.url}/v1/pipelines/species-id/predict", content=GOOD, headers={"content-type": "image/jpeg"}
    )
    assert ok.status_code == 200  # the server keeps serving


def test_refused_image_is_quarantined_as_one_complete_rejected_observation(served: LiveServer) -> None:
    db = open_results_db(served.settings)
    before = len(db.observations_with_status("species-id", "rejected"))
    r = httpx.post(
        f"{served.url}/v1/pipelines/species-id/predict",
        content=b"GIF89a not supported",
        headers={"content-type": "image/jpeg"},
    )
    assert r.status_code == 422
    rejected = db.observations_with_status("species-id", "rejected")
    assert len(rejected) == before + 1
    assert rejected[0].reason is not None and rejected[0].reason.startswith("unsupported_format")
    assert rejected[0].object_key is not None and rejected[0].object_key.startswith("quarantine/")
    assert open_object_store(served.settings).get(rejected[0].object_key) == b"GIF89a not supported"


def test_oversized_upload_is_refused_with_413(served: LiveServer) -> None:
    from keeneye.pipelines import PipelineCatalog

    spec = PipelineCatalog(served.settings).get("species-id")
    limit = spec.input.max_upload_bytes or served.settings.serving.max_upload_bytes
    big = io.BytesIO(b"\xff\xd8" + b"\0" * (200 * 1024 * 1024))
    try:
        r = httpx.post(
            f"{served.url}/v1/pipelines/species-id/predict",
            content=big.getvalue(),
            headers={"content-type": "image/jpeg"},
            timeout=60,
        )
        assert r.status_code == 413
        assert r.json()["reason"] == "too_large"
        assert str(limit) in r.json()["detail"]
    except httpx.WriteError:
        pass  # the server answered 413 and closed before the client finished sending: also a refusal
    assert httpx.get(f"{served.url}/health").status_code == 200


def test_malformed_metadata_and_unknown_pipeline(served: LiveServer) -> None:
    r = httpx.post(
        f"{served.url}/v1/pipelines/species-id/predict",
        files={"file": ("f.jpg", GOOD)},
        data={"metadata": "{not json"},
    )
    assert (r.status_code, r.json()["reason"]) == (400, "bad_metadata")
    r = httpx.post(
        f"{served.url}/v1/pipelines/no-such-pipeline/predict",
        content=GOOD,
        headers={"content-type": "image/jpeg"},
    )
    assert r.status_code == 404 and "species-id" in r.json()["detail"]
    r = httpx.post(f"{served.url}/v1/pipelines/species-id/predict", files={"other": ("f.jpg", GOOD)})
    assert (r.status_code, r.json()["reason"]) == (400, "missing_file")


def test_health_ready_metrics(served: LiveServer) -> None:
    assert httpx.get(f"{served.url}/health").json() == {"status": "ok"}
    ready = httpx.get(f"{served.url}/ready")
    assert ready.status_code == 200 and ready.json()["models"]["species-id"] == "1"
    httpx.post(
        f"{served.url}/v1/pipelines/species-id/predict", content=GOOD, headers={"content-type": "image/jpeg"}
    )
    text = httpx.get(f"{served.url}/metrics").text
    assert 'keeneye_requests_total{pipeline="species-id",status="200"}' in text
    for stage in ("decode", "infer", "post", "store"):
        assert f'keeneye_stage_seconds_count{{pipeline="species-id",stage="{stage}"}}' in text
    assert 'keeneye_model_info{model="species-id",pipeline="species-id",version="1"} 1.0' in text
    assert "keeneye_batch_size_bucket" in text and "keeneye_cache_total" in text


def test_not_ready_without_a_model(settings: Settings) -> None:
    fast_registry_store(settings)
    with live_server(settings) as server:
        assert httpx.get(f"{server.url}/ready").status_code == 503
        r = httpx.post(f"{server.url}/predict", content=GOOD, headers={"content-type": "image/jpeg"})
        assert r.status_code == 503 and r.headers["retry-after"] == "10"
        assert "keeneye models register" in r.json()["fix"]


def test_rate_limit_answers_429_with_retry_after(settings: Settings, tmp_path: Path) -> None:
    settings = with_species_limits(settings, tmp_path, rate_per_second=0.5, burst=2)
    register_species_model(settings, tmp_path)
    with live_server(settings) as server:
        codes = [
            httpx.post(f"{server.url}/predict", content=GOOD, headers={"content-type": "image/jpeg"})
            for _ in range(3)
        ]
        assert [c.status_code for c in codes] == [200, 200, 429]
        assert int(codes[2].headers["retry-after"]) >= 1


def test_api_key_required_when_configured(settings: Settings, tmp_path: Path) -> None:
    settings = settings.model_copy(
        update={"serving": settings.serving.model_copy(update={"require_api_key": True})}
    )
    register_species_model(settings, tmp_path)
    db = open_results_db(settings)
    db.ensure_schema()
    key_id, secret = db.create_api_key("tests")
    with live_server(settings) as server:
        url = f"{server.url}/predict"
        assert httpx.post(url, content=GOOD, headers={"content-type": "image/jpeg"}).status_code == 401
        wrong = httpx.post(url, content=GOOD, headers={"content-type": "image/jpeg", "x-api-key": "nope"})
        assert wrong.status_code == 401
        ok = httpx.post(url, content=GOOD, headers={"content-type": "image/jpeg", "x-api-key": secret})
        assert ok.status_code == 200
        assert db.revoke_api_key(key_id)
        again = httpx.post(
            url, content=GOOD, headers={"content-type": "image/jpeg", "authorization": f"Bearer {secret}"}
        )
        assert again.status_code == 401


def test_alias_move_is_picked_up_without_a_failed_request(own_server: LiveServer, tmp_path: Path) -> None:
    served = own_server
    failures: list[int] = []
    versions: set[str] = set()
    stop = threading.Event()

    def hammer() -> None:
        with httpx.Client() as client:
            i = 0
            while not stop.is_set():
                i += 1
                r = client.post(
                    f"{served.url}/predict", content=jpeg(seed=i % 50), headers={"content-type": "image/jpeg"}
                )
                if r.status_code != 200:
                    failures.append(r.status_code)
                else:
                    versions.add(r.json()["model_version"])

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        new = register_species_model(served.settings, tmp_path, seed=7, alias="champion")
        assert new == "2"
        import time

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            r = httpx.get(f"{served.url}/ready").json()
            if r["models"].get("species-id") == "2":
                break
            time.sleep(0.1)
        else:
            pytest.fail("the alias move was not picked up within 10 s")
        after = httpx.post(
            f"{served.url}/predict", content=jpeg(seed=999), headers={"content-type": "image/jpeg"}
        )
        assert after.status_code == 200, after.text
        assert after.json()["model_version"] == "2"
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == []
    assert versions >= {"1"}


def test_an_uncertain_answer_is_queued_for_review(served: LiveServer) -> None:
    # The tiny random classifier spreads its probability over five species: confidence well below 0.6.
    body = httpx.post(
        f"{served.url}/v1/pipelines/species-id/predict",
        content=jpeg((90, 120, 150), seed=11),
        headers={"content-type": "image/jpeg"},
    ).json()
    assert body["confidence"] < 0.6
    queue = httpx.get(f"{served.url}/v1/pipelines/species-id/review", params={"limit": 200}).json()
    items = {item["observation_id"]: item for item in queue["items"]}
    assert body["observation_id"] in items
    assert "low_confidence" in items[body["observation_id"]]["reasons"]


def test_a_corrupt_jpeg_leaves_no_image_under_observations(served: LiveServer) -> None:
    """At low load the image is stored while the model runs; a JPEG that then fails to decode is taken
    back, so the only copy is the quarantined one its rejected observation points at."""
    corrupt = GOOD[:200] + b"\0" * 64  # JPEG magic, truncated body
    digest = hashlib.sha256(corrupt).hexdigest()
    url = f"{served.url}/v1/pipelines/species-id/predict"
    r = httpx.post(url, content=corrupt, headers={"content-type": "image/jpeg"})
    assert r.status_code == 422, r.text
    store = open_object_store(served.settings)
    assert [o.key for o in store.list("observations/") if digest in o.key] == []
    assert [o.key for o in store.list("quarantine/") if digest in o.key] != []
    ok = httpx.post(
        f"{served.url}/v1/pipelines/species-id/predict", content=GOOD, headers={"content-type": "image/jpeg"}
    )
    assert ok.status_code == 200
    stored = open_results_db(served.settings).get_observation(ok.json()["observation_id"])
    assert stored is not None and stored.object_key is not None
    assert store.get(stored.object_key) == GOOD  # staged while the model ran, then pointed at
