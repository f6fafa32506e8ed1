"""Stream throughput and latency: bus → worker → DB, against raw ONNX Runtime on the same cores.

    .venv/bin/python benchmarks/streams.py [--size 224] [--images 480] [--rate 60] [--seconds 10]
                                          [--buses sqlite,kafka]

For each bus (SQLite file; Kafka = a local tansu broker, started here):

* sustained images/s: ``--images`` JPEGs are accepted first (object + row + message), then one
  in-process :class:`~keeneye.stream.PipelineWorker` drains them (decode, batched inference, post,
  prediction + done, cache, ``.out``, ack); ratio = that / raw ONNX Runtime images/s on the same model,
  batch size and threads (the goal is ≥ 0.8);
* p95 ingest-to-result latency at an offered ``--rate`` images/s for ``--seconds``: the worker runs
  in a thread while the main thread accepts at that pace; latency = ``completed_at - created_at`` of
  each observation (from the row commit to the prediction commit; goal ≤ 348 ms).

The model is ``keeneye.models.testing.mobilenet_like_classifier`` (≈0.53 GFLOP at 224 px).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.serving_support import SPECIES, jpeg, species_manifest  # noqa: E402

from keeneye.models import OnnxModel  # noqa: E402
from keeneye.models.bundle import ModelBundle  # noqa: E402
from keeneye.models.testing import mobilenet_like_classifier  # noqa: E402
from keeneye.registry import ModelRegistry  # noqa: E402
from keeneye.settings import BusSettings, Settings, StreamSettings  # noqa: E402
from keeneye.store import open_results_db  # noqa: E402
from keeneye.stream import Ingestor, PipelineWorker  # noqa: E402

PIPELINE = "species-id"
BATCH = 16


def make_bundle(tmp: Path, size: int) -> ModelBundle:
    manifest = species_manifest()
    manifest = manifest.model_copy(
        update={"input": manifest.input.model_copy(update={"width": size, "height": size})}
    )
    return ModelBundle.write(tmp / "bundle", mobilenet_like_classifier(len(SPECIES), size=size), manifest)


def raw_ort(bundle: ModelBundle, settings: Settings, seconds: float = 5.0) -> float:
    model = OnnxModel(bundle, settings.inference)
    model.warmup()
    size = bundle.manifest.input.width
    batch = np.random.default_rng(0).normal(size=(BATCH, 3, size, size)).astype(np.float32)
    model.run(batch)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        model.run(batch)
        n += BATCH
    return n / (time.perf_counter() - t0)


def new_settings(root: Path, bus_url: str, bundle: ModelBundle, tag: str) -> Settings:
    home = root / tag
    settings = Settings(
        home=home,
        bus_url=bus_url,
        bus=BusSettings(partitions=1, lease_seconds=30),
        stream=StreamSettings(batch_size=BATCH, poll_timeout_seconds=0.05, reconcile_interval_seconds=3600),
    )
    db = open_results_db(settings)
    ModelRegistry(settings, events=db).register(PIPELINE, bundle, alias="champion", gates_passed=True)
    return settings


def distinct(jpeg_bytes: bytes, i: int) -> bytes:
    """The same picture with a JPEG comment carrying ``i``: new bytes, so the prediction cache never hits."""
    payload = f"keeneye-bench {i}".encode()
    segment = b"\xff\xfe" + (len(payload) + 2).to_bytes(2, "big") + payload
    return jpeg_bytes[:2] + segment + jpeg_bytes[2:]


def throughput(settings: Settings, images: list[bytes], n: int) -> float:
    ingestor = Ingestor(settings)
    for i in range(n):
        ingestor.accept(PIPELINE, distinct(images[i % len(images)], i), {"i": i})
    ingestor.close()
    worker = PipelineWorker(settings, PIPELINE, reconcile=False)
    worker.setup()
    try:
        # The clock starts at the first result, so joining the group (Kafka: seconds) is not counted.
        while worker.counts["done"] == 0:
            worker.step()
        t0, first = time.perf_counter(), worker.counts["done"]
        while worker.counts["done"] < n:
            worker.step()
        return (n - first) / (time.perf_counter() - t0)
    finally:
        worker.teardown()


def latency(settings: Settings, images: list[bytes], rate: float, seconds: float) -> tuple[float, float, int]:
    worker = PipelineWorker(settings, PIPELINE, reconcile=False)
    worker.setup()
    thread = threading.Thread(target=worker.run_loop, daemon=True)
    thread.start()
    time.sleep(8.0 if settings.bus_url.startswith("kafka") else 1.0)  # Kafka: let the consumer join
    ingestor = Ingestor(settings)
    ids: list[str] = []
    total = int(rate * seconds)
    t0 = time.perf_counter()
    for i in range(total):
        due = t0 + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        ids.append(ingestor.accept(PIPELINE, distinct(images[(i * 7) % len(images)], i), {"i": i}).id)
    offered = total / (time.perf_counter() - t0)
    db = open_results_db(settings)
    deadline = time.monotonic() + 60
    while worker.counts["done"] < total and time.monotonic() < deadline:
        time.sleep(0.1)
    worker.stop()
    thread.join(30)
    worker.teardown()
    ingestor.close()
    lat = []
    for i in ids:
        row = db.get_observation(i)
        if row is not None and row.completed_at is not None:
            lat.append((row.completed_at - row.created_at).total_seconds() * 1000)
    lat.sort()
    p95 = lat[int(0.95 * (len(lat) - 1))] if lat else float("nan")
    return p95, offered, len(lat)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--images", type=int, default=480)
    parser.add_argument("--rate", type=float, default=60.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--buses", default="sqlite,kafka")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    root = Path(tempfile.mkdtemp(prefix="keeneye-bench-streams-"))
    bundle = make_bundle(root, args.size)
    base = Settings(home=root / "base")
    images = [jpeg(size=args.size, seed=i) for i in range(64)]
    raw = raw_ort(bundle, base)
    print(f"model: mobilenet_like_classifier {args.size}px, batch {BATCH}; raw ONNX Runtime {raw:.1f} img/s")

    import contextlib

    from tests.services import kafka_broker

    for bus in args.buses.split(","):
        with contextlib.ExitStack() as stack:
            if bus == "kafka":
                url = stack.enter_context(kafka_broker(root)).url
            else:
                url = f"sqlite:///{root / bus / 'bus.db'}"
            tp = throughput(new_settings(root, url, bundle, f"{bus}-tp"), images, args.images)
            p95, offered, n = latency(
                new_settings(root, url, bundle, f"{bus}-lat"), images, args.rate, args.seconds
            )
            print(
                f"{bus:6s}: sustained {tp:6.1f} img/s = {tp / raw:.2f} × raw ORT | "
                f"p95 ingest→result {p95:6.1f} ms at {offered:.1f} img/s offered ({n} results)"
            )


if __name__ == "__main__":
    main()
