"""Crop-health benchmark: a 2048² 5-band image end to end, raw ONNX Runtime on the same tiles, and an
orthomosaic streamed from disk, in one run.

    .venv/bin/python benchmarks/crop_health.py [--images 8] [--backbone resnet18] [--mosaic-side 20000]
                                                [--no-mosaic] [--mosaic-workers 2] [--json out.json]

1. **End to end, 2048² × 5 bands uint16** (MicaSense RedEdge-MX stacks, DN = reflectance × 32768, each
   image distinct: its own blight patches and noise, so no cache answers): keeneye's prediction
   service in process — decode the GeoTIFF → reflectance, the model's input channels computed once →
   the model on every 128 px tile at its native size (484 tiles, one model call per 16-tile batch)
   → stitched logits → vigour and disease zones as polygons → the observation and its answer stored
   (SQLite + the file object store). p50 / p95 over ``--images`` images after one warm-up, and the
   mean time per stage (``timings_ms``: decode, infer, post, store).
2. **Raw ONNX Runtime on the same tiles**: the very tensors keeneye built for each image, through an
   ``onnxruntime.InferenceSession`` in batches of 16 with the same threads (inference only); the
   ratio end to end / raw says what keeneye adds around the model. The load average is printed
   before and after: the figures mean little on a busy machine.
3. **Mosaic**: a ``--mosaic-side``² 5-band uint16 GeoTIFF (generated once, strip by strip, cached
   under ``~/.cache/keeneye-bench/crop-health``) through :func:`keeneye.pipelines.mosaic.analyse_mosaic`
   with the same model, in a child process whose peak RSS (``VmHWM``) is reported with the throughput
   in megapixels per second.

4. **Mosaic through the workers** (``--mosaic-workers N``): the same mosaic queued as a user does
   (``keeneye ingest`` into a fresh home whose champion is the benchmark model) and answered by N
   ``keeneye worker`` processes of one consumer group with the default lease, poll interval and
   reconciler: wall time from ingest to ``done``, each worker's peak RSS, which worker answered it,
   its keep-alives, and the stored result (one prediction, one attempt: nobody answered it twice).
   ``--no-end-to-end --no-mosaic`` runs only this.

The model is the built-in crop-health architecture (``--backbone``: smp U-Net with a resnet18 encoder,
as ``training.backbone`` in the pipeline; ``lite16``, the demo's small U-Net) with random weights,
128 px, channels blue, green, red, nir, red_edge and ndvi — exported with keeneye's own ONNX export.
Its head is damped and the blight logit gets a term from the NDVI channel (:func:`model_bundle`), so
it flags each image's blight patches as a trained model would and the disease zones are measured too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "src"))

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "keeneye-bench" / "crop-health"
SIDE = 2048
TILE = 128
SCALE = 32768  # MicaSense: reflectance × 32768
CHANNELS = ["blue", "green", "red", "nir", "red_edge", "ndvi"]
BAND_MAP: dict[str, Any] = {"band_map": "micasense-rededge-mx"}
# The benchmark model flags pixels whose NDVI is under BLIGHT_NDVI (healthy crop here: 0.33-0.7;
# a blight patch, red reflectance 0.8: below 0).
BLIGHT_NDVI = 0.15
BLIGHT_SLOPE = 12.0
RAW_BATCH = 16  # tiles per raw ONNX Runtime call: keeneye's inference.max_batch


def _load() -> str:
    """The 1, 5 and 15 minute load averages: the figures mean little on a busy machine."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _hwm_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) * 1024
    return 0


# --------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------


def field_reflectance(rows: np.ndarray, width: int, seed: int) -> np.ndarray:
    """(5, len(rows), width) reflectance of a field: NDVI rising west → east, seeded blight patches."""
    rng = np.random.default_rng(seed)
    cols = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    r = rows.astype(np.float32)[:, None] / max(1.0, float(rows.max() + 1))
    h = rows.size
    refl = np.empty((5, h, width), dtype=np.float32)
    refl[0] = 0.04
    refl[1] = 0.08
    refl[2] = 0.15 - 0.1 * cols
    refl[3] = 0.3 + 0.3 * cols + 0.05 * np.sin(6 * r)
    refl[4] = 0.2
    refl += rng.normal(0, 0.005, refl.shape).astype(np.float32)
    return np.clip(refl, 0.001, 1.0)


def image_2048(seed: int) -> bytes:
    """One distinct 2048² MicaSense GeoTIFF (UTM 33N, 5 cm)."""
    import rasterio
    from affine import Affine

    refl = field_reflectance(np.arange(SIDE), SIDE, seed)
    rng = np.random.default_rng(seed + 1000)
    for _ in range(3):
        r, c = rng.integers(0, SIDE - 300, 2)
        refl[2, r : r + 200, c : c + 250] = 0.8  # blight: red up, NDVI down
    dn = np.round(refl * SCALE).astype(np.uint16)
    with rasterio.MemoryFile() as mem:
        with mem.open(
            driver="GTiff", width=SIDE, height=SIDE, count=5, dtype="uint16", crs="EPSG:32633",
            transform=Affine(0.05, 0, 500_000, 0, -0.05, 5_500_000), tiled=True, compress="deflate",
        ) as ds:  # fmt: skip
            ds.write(dn)
        return bytes(mem.read())


def mosaic(side: int) -> Path:
    """The cached ``side``² mosaic, written strip by strip once."""
    import rasterio
    from affine import Affine
    from rasterio.windows import Window

    path = CACHE / f"mosaic-{side}.tif"
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    part = path.with_suffix(".part.tif")
    profile = {
        "driver": "GTiff", "width": side, "height": side, "count": 5, "dtype": "uint16",
        "crs": "EPSG:32633", "transform": Affine(0.05, 0, 500_000, 0, -0.05, 5_500_000), "tiled": True,
        "blockxsize": 512, "blockysize": 512, "compress": "deflate", "zlevel": 1, "BIGTIFF": "YES",
    }  # fmt: skip
    print(f"writing {path} ({side}² × 5 bands, once)…", file=sys.stderr)
    with rasterio.open(part, "w", **profile) as ds:
        for row in range(0, side, 512):
            h = min(512, side - row)
            refl = field_reflectance(np.arange(row, row + h), side, seed=row)
            ds.write(np.round(refl * SCALE).astype(np.uint16), window=Window(0, row, side, h))
    part.rename(path)
    return path


def model_bundle(backbone: str) -> Path:
    """The crop-health architecture with random weights as a keeneye bundle (built once).

    Random weights alone answer speckle or nothing, which would leave the disease-zone half of the
    path unmeasured; so the head's output is damped and the blight logit gets a term from the input's
    NDVI channel (``BLIGHT_SLOPE`` × (``BLIGHT_NDVI`` − NDVI)): the model flags the images' blight
    patches and the answer carries disease polygons, as a trained model's does. The extra term is two
    element-wise ops on the logits: the network's cost is the architecture's.
    """
    folder = CACHE / f"model-{backbone}-flags-blight"
    if (folder / "keeneye.json").exists():
        return folder
    import torch
    from torch import nn

    from keeneye.domain import Task
    from keeneye.models.testing import write_bundle
    from keeneye.training.export import EMBEDDING_OUTPUT, export_onnx
    from keeneye.training.trainers import TrainConfig, build_model

    ndvi = CHANNELS.index("ndvi")

    class PassInput(nn.Module):  # the decoder's features and the input (maps[0]) for the head
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, maps: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
            return self.inner(maps), maps[0]

    class FlagsBlight(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, pair: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
            features, x = pair
            logits = 0.1 * self.inner(features)
            blight = BLIGHT_SLOPE * (BLIGHT_NDVI - x[:, ndvi : ndvi + 1])
            return torch.cat([logits[:, :1], logits[:, 1:] + blight], 1)

    torch.manual_seed(0)
    net = build_model(
        TrainConfig(task=Task.segment, num_classes=2, in_channels=len(CHANNELS), backbone=backbone)
    )
    net.decoder = PassInput(cast(nn.Module, net.decoder))
    net.segmentation_head = FlagsBlight(cast(nn.Module, net.segmentation_head))
    onnx = export_onnx(net.eval(), Task.segment, torch.rand(1, len(CHANNELS), TILE, TILE))
    write_bundle(
        folder,
        onnx,
        name="crop-health",
        output_format="seg-logits",
        input={"width": TILE, "height": TILE, "channels": CHANNELS},
        classes=["healthy", "blight"],
        background_class=0,
        thresholds={"score": 0.5, "mask": 0.5, "min_area": 64},
        embedding_output=EMBEDDING_OUTPUT,
    )
    return folder


# --------------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------------


def end_to_end(bundle_dir: Path, images: int) -> dict[str, Any]:
    """keeneye's prediction service in process, then raw ONNX Runtime on the same tiles."""
    import onnxruntime as ort

    from keeneye.models.bundle import ModelBundle
    from keeneye.pipelines import PipelineCatalog, prepare
    from keeneye.registry import ModelRegistry
    from keeneye.serving.state import close_state, open_state
    from keeneye.settings import Settings
    from keeneye.store import open_results_db

    home = Path(tempfile.mkdtemp(prefix="keeneye-bench-crop-"))
    settings = Settings(home=home)
    bundle = ModelBundle.load(bundle_dir)
    db = open_results_db(settings)
    db.ensure_schema()
    ModelRegistry(settings, events=db).register("crop-health", bundle, alias="champion", gates_passed=True)
    datas = [image_2048(seed) for seed in range(images + 1)]
    latencies: list[float] = []
    stages: list[dict[str, float]] = []

    async def run() -> None:
        state = await open_state(settings, poll_aliases=False)
        try:
            for k, data in enumerate(datas):
                t = time.perf_counter()
                out = await state.service.predict("crop-health", data, BAND_MAP, source="bench")
                if k:  # the first is the warm-up
                    latencies.append((time.perf_counter() - t) * 1000)
                    stages.append(dict(out["timings_ms"]))
                assert out["geo"]["model"]["tiles"] == 484, out["geo"]["model"]
        finally:
            await close_state(state)

    asyncio.run(run())
    # Raw ONNX Runtime: the same tensors keeneye built, RAW_BATCH a call, the same thread count.
    spec = PipelineCatalog(settings).get("crop-health")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = settings.inference.intra_op_threads or os.cpu_count() or 1
    session = ort.InferenceSession(str(bundle.onnx_path), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    raw: list[float] = []
    for k, data in enumerate(datas):
        geo = prepare(spec, bundle.manifest, data, settings, BAND_MAP).geo
        assert geo is not None
        tensors = geo.batch()  # every tile's input, built before the clock starts
        t = time.perf_counter()
        for start in range(0, len(tensors), RAW_BATCH):
            session.run(None, {name: tensors[start : start + RAW_BATCH]})
        if k:
            raw.append((time.perf_counter() - t) * 1000)
    p50, p95 = np.percentile(latencies, [50, 95])
    r50, r95 = np.percentile(raw, [50, 95])
    mean_stages = {s: round(float(np.mean([x.get(s, 0.0) for x in stages])), 1) for s in stages[0]}
    return {
        "images": images,
        "e2e_p50_ms": round(float(p50), 1),
        "e2e_p95_ms": round(float(p95), 1),
        "raw_ort_p50_ms": round(float(r50), 1),
        "raw_ort_p95_ms": round(float(r95), 1),
        "ratio_p50": round(float(p50 / r50), 2),
        "ratio_p95": round(float(p95 / r95), 2),
        "keeneye_p50_ms": round(float(p50 - r50), 1),  # what keeneye adds around the model
        "stages_mean_ms": mean_stages,
    }


def mosaic_child(path: Path, bundle_dir: Path) -> None:
    """In a child process: stream the mosaic, print seconds, Mpx/s and peak RSS as JSON."""
    from keeneye.models import OnnxModel
    from keeneye.models.bundle import ModelBundle
    from keeneye.pipelines import PipelineCatalog
    from keeneye.pipelines.crophealth import geo_request
    from keeneye.pipelines.mosaic import analyse_mosaic
    from keeneye.settings import Settings

    settings = Settings(home=Path(tempfile.mkdtemp(prefix="keeneye-bench-mosaic-")))
    spec = PipelineCatalog(settings).get("crop-health")
    bundle = ModelBundle.load(bundle_dir)
    model = OnnxModel(bundle, settings.inference)
    before = _hwm_bytes()
    last = [time.perf_counter()]

    def progress(done: int, total: int) -> None:
        if time.perf_counter() - last[0] > 30:
            last[0] = time.perf_counter()
            print(f"  mosaic: {done}/{total} blocks", file=sys.stderr, flush=True)

    out = analyse_mosaic(
        path, spec, bundle.manifest, model.run, geo_request(spec, BAND_MAP), progress=progress
    )
    print(
        json.dumps(
            {
                "side": out.width,
                "seconds": round(out.seconds, 1),
                "mpx_per_s": round(out.megapixels_per_second, 2),
                "tiles": out.geo.model["tiles"] if out.geo.model else 0,
                "zone_factor": out.zone_factor,
                "zones": len(out.geo.zones["features"]),
                "peak_rss_mb": round(_hwm_bytes() / 1e6),
                "rss_before_mb": round(before / 1e6),
            }
        )
    )


def _hwm_of(pid: int) -> int:
    """Peak RSS (``VmHWM``) of a running process, 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def mosaic_through_workers(path: Path, bundle_dir: Path, workers: int) -> dict[str, Any]:
    """The mosaic as a user queues it: ``keeneye ingest`` into a fresh home whose champion is the
    benchmark model, then ``workers`` × ``keeneye worker`` (one consumer group, default lease,
    poll interval and reconciler) until it is ``done``. Reports the wall time from ingest to done,
    each worker's peak RSS, which workers answered it, the keep-alives logged, and the stored result
    (one prediction, one attempt: no second worker answered it while the first was busy)."""
    import signal

    from keeneye.models.bundle import ModelBundle
    from keeneye.registry import ModelRegistry
    from keeneye.settings import Settings
    from keeneye.store import open_results_db

    home = Path(tempfile.mkdtemp(prefix="keeneye-bench-mosaic-workers-"))
    env = {
        **os.environ,
        "KEENEYE_HOME": str(home),
        "KEENEYE_OBJECTS__MAX_OBJECT_BYTES": str(path.stat().st_size * 2),
        "KEENEYE_LOG_LEVEL": "INFO",
    }
    settings = Settings(home=home)
    db = open_results_db(settings)
    db.ensure_schema()
    bundle = ModelBundle.load(bundle_dir)
    ModelRegistry(settings, events=db).register("crop-health", bundle, alias="champion", gates_passed=True)
    keeneye = str(Path(sys.executable).with_name("keeneye"))
    logs = [home / f"worker-{i}.log" for i in range(workers)]
    procs = [
        subprocess.Popen(
            [keeneye, "worker", "--pipeline", "crop-health"],
            env=env,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
        )
        for log in logs
    ]
    peaks = [0] * workers
    try:
        started = time.perf_counter()
        subprocess.run(
            [keeneye, "ingest", str(path), "--pipeline", "crop-health", "--metadata", json.dumps(BAND_MAP)],
            env=env,
            check=True,
            capture_output=True,
        )
        ingested = time.perf_counter() - started
        print(f"  ingested in {ingested:.0f} s; {workers} workers answering …", file=sys.stderr, flush=True)
        obs_id = None
        deadline = time.monotonic() + 3 * 3600  # a 20,000² mosaic takes minutes; a hang is not a figure
        while True:
            time.sleep(2)
            if time.monotonic() > deadline:
                raise SystemExit(f"the mosaic was not answered in 3 h; see {home}")
            peaks = [max(p, _hwm_of(proc.pid)) for p, proc in zip(peaks, procs, strict=True)]
            if any(proc.poll() is not None for proc in procs):
                raise SystemExit(f"a worker exited; see {home}")
            page = db.find_observations(_filter("crop-health"), limit=5)
            rows = list(page.observations)
            if rows:
                obs_id = rows[0].id
                if str(rows[0].status) in ("done", "rejected", "failed"):
                    break
        seconds = time.perf_counter() - started
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=60)
    record = db.get_observation(obs_id)
    assert record is not None
    texts = [log.read_text() for log in logs]
    return {
        "side": _side(path),
        "workers": workers,
        "status": str(record.status),
        "reason": record.reason,
        "attempts": record.attempts,
        "predictions": len(db.predictions_for(record.id)),
        "seconds_ingest": round(ingested, 1),
        "seconds_to_done": round(seconds, 1),
        "peak_rss_mb": [round(p / 1e6) for p in peaks],
        "answered_by": [i for i, t in enumerate(texts) if "blocks" in t],
        "keep_alives": [t.count("still working on") for t in texts],
        "home": str(home),
    }


def _filter(pipeline: str) -> Any:
    from keeneye.store import ObservationFilter

    return ObservationFilter(pipeline=pipeline)


def _side(path: Path) -> int:
    import rasterio

    with rasterio.open(path) as ds:
        return int(ds.width)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--images", type=int, default=8, help="distinct 2048² images measured (after one warm-up)"
    )
    parser.add_argument("--backbone", default="resnet18", help="resnet18 (the pipeline's) or lite16 …")
    parser.add_argument("--mosaic-side", type=int, default=20_000)
    parser.add_argument("--no-mosaic", action="store_true")
    parser.add_argument("--no-end-to-end", action="store_true", help="only the mosaic")
    parser.add_argument(
        "--mosaic-workers",
        type=int,
        default=0,
        help="also queue the mosaic with `keeneye ingest` and answer it with this many `keeneye worker`s",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--mosaic-child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--bundle", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mosaic_child is not None:
        mosaic_child(args.mosaic_child, args.bundle)
        return
    bundle_dir = model_bundle(args.backbone)
    figures: dict[str, Any] = {"backbone": args.backbone, "cpus": os.cpu_count()}
    print(
        f"crop-health benchmark · model {args.backbone} U-Net, 128 px tiles · {os.cpu_count()} CPUs · "
        f"load average {_load()}"
    )
    if not args.no_end_to_end:
        _end_to_end(figures, bundle_dir, args.images)
    if not args.no_mosaic:
        _mosaic(figures, bundle_dir, args.mosaic_side)
    if args.mosaic_workers:
        w = mosaic_through_workers(mosaic(args.mosaic_side), bundle_dir, args.mosaic_workers)
        figures["mosaic_workers"] = w
        print(
            f"mosaic {w['side']}² through `keeneye ingest` + {w['workers']} workers: {w['status']} in "
            f"{w['seconds_to_done']} s (ingest {w['seconds_ingest']} s), answered by worker(s) "
            f"{w['answered_by']}, {w['predictions']} prediction(s), {w['attempts']} attempt(s), keep-alives "
            f"{w['keep_alives']}, peak RSS per worker {w['peak_rss_mb']} MB · load {_load()}"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2))


def _end_to_end(figures: dict[str, Any], bundle_dir: Path, images: int) -> None:
    e2e = end_to_end(bundle_dir, images)
    e2e["load_after"] = _load()
    figures["end_to_end"] = e2e
    print(
        f"2048² × 5 bands, {e2e['images']} distinct images, one at a time: end to end "
        f"p50 {e2e['e2e_p50_ms']} ms, p95 {e2e['e2e_p95_ms']} ms\n"
        f"raw ONNX Runtime on the same 484 tiles (inference only, {RAW_BATCH} a call): "
        f"p50 {e2e['raw_ort_p50_ms']} ms, p95 {e2e['raw_ort_p95_ms']} ms\n"
        f"ratio end to end / raw: p50 {e2e['ratio_p50']}×, p95 {e2e['ratio_p95']}× "
        f"(keeneye adds {e2e['keeneye_p50_ms']} ms at p50)\n"
        f"stages (mean ms): {e2e['stages_mean_ms']} · load average after {e2e['load_after']}"
    )


def _mosaic(figures: dict[str, Any], bundle_dir: Path, side: int) -> None:
    path = mosaic(side)
    cmd = [sys.executable, __file__, "--mosaic-child", str(path), "--bundle", str(bundle_dir)]
    run = subprocess.run(cmd, capture_output=True, text=True, check=False)
    sys.stderr.write(run.stderr)
    if run.returncode != 0:
        raise SystemExit(f"mosaic run failed ({run.returncode})")
    m = json.loads(run.stdout.strip().splitlines()[-1])
    figures["mosaic"] = m
    print(
        f"mosaic {m['side']}² × 5 bands: {m['seconds']} s, {m['mpx_per_s']} Mpx/s, {m['tiles']} tiles, "
        f"peak RSS {m['peak_rss_mb']} MB (process before: {m['rss_before_mb']} MB), zones on a "
        f"{m['zone_factor']}×{m['zone_factor']} px grid"
    )


if __name__ == "__main__":
    main()
