"""``keeneye demo crop-health``: from drone flights to a prescription map, in a few minutes on a laptop.

synthetic multispectral tiles → train the crop-health recipe (a small U-Net, CPU) → gates → register →
promote → register two fields (boundaries written in UTM 37N, EPSG:32637, the synthetic rasters' CRS)
→ three flights a few days apart, each one GeoTIFF per field, with a rust patch that starts in the
west field and spreads across the field edge → every image through ``POST
/v1/pipelines/crop-health/predict`` (the real predict path: tiles, model, zones, the field join by
overlap) → each field's history printed, the last flight's prescription written as GeoJSON and zipped
Shapefile → the API keeps serving with the fields page (``/fields``) unless ``--no-serve``.

The flights are synthetic but honest about their geometry: 512 × 512 px GeoTIFFs at
:data:`FLIGHT_GSD_M` per pixel, placed side by side so the two fields share an edge.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from keeneye.demo import demo_server, keeneye_command, keep_serving, shown_path, train_and_promote
from keeneye.domain import KeeneyeError
from keeneye.settings import Settings

log = logging.getLogger(__name__)

PIPELINE = "crop-health"
EPSG = 32637  # WGS 84 / UTM zone 37N: the synthetic tiles' CRS
FLIGHT_GSD_M = 0.4  # metres per pixel of the demo flights (a field of about 4 ha)
SIDE = 512  # pixels a side of one field's image
TILE = 128  # the synthetic generator's tile (the model's native input)
ORIGIN = (410_000.0, 5_010_000.0)  # UTM easting / northing of the scene's top-left corner
MARGIN_M = 2.0  # the boundary lies this far inside the image, so the image covers the field
FIELDS = (("demo-west", "West 7", "wheat"), ("demo-east", "East 8", "wheat"))
FLIGHTS = (("2026-06-02", 40.0), ("2026-06-12", 85.0), ("2026-06-22", 135.0))  # flight, patch radius px
PATCH_CENTRE = (440.0, 250.0)  # scene x (column), y (row): in the west field, near the shared edge
DISEASE = "rust"
# Small enough to train in about two minutes on two cores, large enough to pass the gates.
DEMO_RECIPE: dict[str, Any] = {"backbone": "lite16"}


@dataclass
class CropDemoResult:
    version: str | None
    url: str
    fields: list[str]
    history: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    prescriptions: list[Path] = field(default_factory=list)
    seconds: float = 0.0


def run_crop_demo(
    settings: Settings,
    console: Console,
    *,
    tiles: int = 160,
    epochs: int = 8,
    port: int = 8000,
    serve_forever: bool = False,
    quiet: bool = False,
    recipe: dict[str, Any] | None = None,
    train: bool = True,
) -> CropDemoResult:
    """The demo (module docstring). ``train=False`` skips steps 1–3 and answers the flights with
    the champion already registered (how the tests run it without minutes of training)."""
    from keeneye.training import generate

    started = time.perf_counter()
    demo_dir = settings.home / "demo"
    train_dir, flight_dir = demo_dir / "crop-train", demo_dir / "crop-flights"

    version: str | None = None
    if train:
        console.rule("[bold]1/6  synthetic multispectral tiles")
        generate(PIPELINE, train_dir, tiles, seed=0, size=TILE, tiles_per_field=8, overwrite=True)
        console.print(
            f"{tiles} GeoTIFF tiles (nir, red edge, red, green) with rust, blight and water-stress "
            f"zones in {shown_path(train_dir)}"
        )
        version = train_and_promote(
            settings, console, PIPELINE, train_dir, epochs=epochs, quiet=quiet,
            overrides=recipe or DEMO_RECIPE, steps=("2/6", "3/6"), shown=("mean_iou", "recall", "precision"),
            fix=f"train longer: `{keeneye_command()} demo crop-health --epochs {max(epochs * 2, 20)}`",
        ).version  # fmt: skip
    else:
        console.rule("[bold]1/6  2/6  3/6  model")
        console.print(f"no training: the flights are answered by models:/{PIPELINE}@champion")

    console.rule("[bold]4/6  two fields and three flights")
    flights = write_flights(flight_dir)
    console.print(
        f"{len(flights)} GeoTIFFs ({len(FLIGHTS)} flights × {len(FIELDS)} fields, {SIDE}² px at "
        f"{FLIGHT_GSD_M} m) in {shown_path(flight_dir)}: a {DISEASE} patch spreading east"
    )
    with demo_server(settings, port) as url:
        result = CropDemoResult(version=version, url=url, fields=[f[0] for f in FIELDS])
        with httpx.Client(base_url=url, timeout=120) as client:
            register_fields(client, console)
            for path, meta in flights:
                _predict(client, path, meta)
            console.rule("[bold]5/6  field history and prescription")
            result.history = _wait_for_history(client)
            console.print(history_table(result.history))
            result.prescriptions = _write_prescriptions(client, demo_dir)
            for p in result.prescriptions:
                console.print(f"prescription → {shown_path(p)}")
        console.rule("[bold]6/6  the fields page")
        result.seconds = time.perf_counter() - started
        console.print(next_steps(result, home=settings.home, serving=serve_forever))
        keep_serving(serve_forever)
    return result


# --------------------------------------------------------------------------------------------------
# The flights
# --------------------------------------------------------------------------------------------------


def field_boundary(index: int) -> dict[str, Any]:
    """Field ``index``'s boundary as a GeoJSON Polygon in UTM 37N metres (``crs`` sent beside it)."""
    x0, y0 = ORIGIN
    side = SIDE * FLIGHT_GSD_M
    west = x0 + index * side + (MARGIN_M if index == 0 else 0.0)
    east = x0 + (index + 1) * side - (MARGIN_M if index == len(FIELDS) - 1 else 0.0)
    north, south = y0 - MARGIN_M, y0 - side + MARGIN_M
    ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
    return {"type": "Polygon", "coordinates": [ring]}


def flight_scene(seed: int, radius_px: float) -> npt.NDArray[np.float32]:
    """The two fields side by side (4, SIDE, 2·SIDE) with the rust patch at ``radius_px``: the same
    crop every flight (tiles from one seed), only the patch grows."""
    from keeneye.training.synth.common import blob_mask
    from keeneye.training.synth.crop import SIGNATURES, render_crop_tile

    rows, cols = SIDE // TILE, len(FIELDS) * SIDE // TILE
    base = np.random.default_rng(seed)
    angle, moisture = float(base.uniform(0.2, 1.2)), 0.15
    bands = np.zeros((4, SIDE, cols * TILE), np.float32)
    canopy = np.zeros((SIDE, cols * TILE), np.float32)
    for r in range(rows):
        for c in range(cols):
            tile = render_crop_tile(np.random.default_rng([seed, r, c]), [], TILE, None, angle, moisture)
            bands[:, r * TILE : (r + 1) * TILE, c * TILE : (c + 1) * TILE] = tile.bands
            canopy[r * TILE : (r + 1) * TILE, c * TILE : (c + 1) * TILE] = tile.canopy
    mask = blob_mask(np.random.default_rng(seed + 1), canopy.shape, PATCH_CENTRE, radius_px)
    weight = np.where(mask, 0.9, 0.0).astype(np.float32)
    shift = np.asarray(SIGNATURES[DISEASE], np.float32) - np.asarray(SIGNATURES["healthy"], np.float32)
    bands += canopy[None] * weight[None] * shift[:, None, None]
    return np.clip(bands, 0.0, 1.0).astype(np.float32)


def write_flights(out: Path, *, seed: int = 7) -> list[tuple[Path, dict[str, Any]]]:
    """One GeoTIFF per flight and field under ``out``, with the metadata each is sent with."""
    from keeneye.training.synth.crop import geotiff_bytes

    out.mkdir(parents=True, exist_ok=True)
    written: list[tuple[Path, dict[str, Any]]] = []
    x0, y0 = ORIGIN
    for flight, radius in FLIGHTS:
        scene = flight_scene(seed, radius)
        for i, (field_id, _, _) in enumerate(FIELDS):
            part = np.ascontiguousarray(scene[:, :, i * SIDE : (i + 1) * SIDE])
            path = out / f"{flight}-{field_id}.tif"
            path.write_bytes(
                geotiff_bytes(part, x0 + i * SIDE * FLIGHT_GSD_M, y0, gsd=FLIGHT_GSD_M, epsg=EPSG)
            )
            # no metadata.field: the image joins its field by overlap, as a drone folder would
            written.append((path, {"flight": flight, "observed_at": f"{flight}T10:00:00Z"}))
    return written


def register_fields(client: httpx.Client, console: Console) -> None:
    for i, (field_id, name, crop) in enumerate(FIELDS):
        r = client.post(
            "/v1/fields",
            json={"id": field_id, "name": name, "crop": crop, "sowing_date": "2026-04-10",
                  "boundary": field_boundary(i), "crs": f"EPSG:{EPSG}"},
        )  # fmt: skip
        if r.status_code == 409:  # the demo ran before: the field is there already
            r = client.get(f"/v1/fields/{field_id}")
        _check(r, f"register field {field_id}")
        console.print(f"field {field_id} ({name}, {crop}): {r.json()['area_ha']:.2f} ha")


def _check(r: httpx.Response, what: str) -> None:
    if r.status_code >= 400:
        raise KeeneyeError(f"{what}: HTTP {r.status_code} {r.text[:300]}", fix="see the server log above")


def _predict(client: httpx.Client, path: Path, meta: dict[str, Any]) -> None:
    r = client.post(
        f"/v1/pipelines/{PIPELINE}/predict",
        files={"file": (path.name, path.read_bytes(), "image/tiff")},
        data={"metadata": json.dumps(meta)},
    )
    _check(r, f"predict {path.name}")


def _wait_for_history(client: httpx.Client, timeout_s: float = 60.0) -> dict[str, list[dict[str, Any]]]:
    """Each field's flights, once every flight is recorded (answers are stored by a group commit)."""
    deadline = time.monotonic() + timeout_s
    while True:
        history: dict[str, list[dict[str, Any]]] = {}
        for field_id, _, _ in FIELDS:
            r = client.get(f"/v1/fields/{field_id}/history")
            _check(r, f"history of {field_id}")
            history[field_id] = r.json()["flights"]
        if all(len(h) >= len(FLIGHTS) for h in history.values()) or time.monotonic() > deadline:
            return history
        time.sleep(0.5)


def _write_prescriptions(client: httpx.Client, demo_dir: Path) -> list[Path]:
    out: list[Path] = []
    flight = FLIGHTS[-1][0]
    for field_id, _, _ in FIELDS:
        for fmt, ext in (("geojson", "geojson"), ("shapefile", "zip")):
            r = client.get(f"/v1/fields/{field_id}/prescription", params={"flight": flight, "format": fmt})
            if r.status_code == 404:
                continue
            _check(r, f"prescription of {field_id}")
            path = demo_dir / f"prescription-{field_id}-{flight}.{ext}"
            path.write_bytes(r.content)
            out.append(path)
    return out


def diseased_ha(flight: dict[str, Any]) -> float:
    return float(sum(v for v in flight["disease_ha"].values() if isinstance(v, int | float)))


def history_table(history: dict[str, list[dict[str, Any]]]) -> Table:
    table = Table(title="field history (GET /v1/fields/{id}/history)")
    for col in ("field", "flight", "NDVI mean", "NDRE mean", "diseased ha", "by class"):
        table.add_column(col)
    for field_id, flights in history.items():
        for f in flights:
            idx = f["indices"]
            mean = {k: (idx.get(k) or {}).get("mean") for k in ("ndvi", "ndre")}
            table.add_row(
                field_id,
                f["flight"],
                "–" if mean["ndvi"] is None else f"{mean['ndvi']:.3f}",
                "–" if mean["ndre"] is None else f"{mean['ndre']:.3f}",
                f"{diseased_ha(f):.3f}",
                ", ".join(f"{k} {v:.3f}" for k, v in f["disease_ha"].items()) or "–",
            )
    return table


def next_steps(result: CropDemoResult, *, home: Path, serving: bool, command: str | None = None) -> Panel:
    kee = command or keeneye_command()
    if serving:
        head = (
            f"[bold]the fields page is at {result.url}/fields[/] (Ctrl-C to stop)\n\n"
            f"  open {result.url}/fields/{result.fields[0]}   map, NDVI, zones, trend, downloads\n"
        )
    else:
        head = (
            "[bold]the flights were answered[/]; the demo's API has stopped (--no-serve)\n\n"
            f"  {kee} serve                       then open http://127.0.0.1:8000/fields\n"
        )
    flight = FLIGHTS[-1][0]
    return Panel.fit(
        head
        + f"  {kee} fields list                 the fields, their area and last flight\n"
        + f"  {kee} fields history {result.fields[0]}   NDVI and diseased hectares per flight\n"
        + f"  {kee} fields prescription {result.fields[0]} --flight {flight} --format shapefile \\\n"
        + "      --out rx.zip             the treatment map for a farm terminal\n"
        + "\n"
        + f"data and models in {shown_path(home)} · finished in {result.seconds:.0f} s",
        title="what to try next",
    )


__all__ = [
    "CropDemoResult",
    "field_boundary",
    "flight_scene",
    "history_table",
    "run_crop_demo",
    "write_flights",
]
