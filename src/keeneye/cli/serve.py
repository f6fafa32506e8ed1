"""``keeneye serve``, ``keeneye predict`` and ``keeneye keys``."""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from keeneye.cli._common import (
    PANEL_OPS,
    PANEL_SERVE,
    console,
    err_console,
    print_json,
    progress_bar,
    settings,
)
from keeneye.domain import InvalidInput, KeeneyeError, Role
from keeneye.settings import Settings


def serve(
    host: str = typer.Option(
        None, help="Address to bind (default 127.0.0.1; a non-loopback address requires API keys)."
    ),
    port: int = typer.Option(None, help="Port to listen on (default 8000)."),
    workers: int = typer.Option(
        1,
        min=1,
        help="Server processes sharing the port, each with its own models (ONNX Runtime may use every "
        "core in each: its threads sleep when idle); 2 on a 2-core machine decodes and stores in "
        "parallel.",
    ),
) -> None:
    """Run the HTTP API and web page alone (no stream workers).

    With [bold]--workers N[/] the port is shared by N processes (uvicorn's process manager restarts
    one that dies); /metrics adds up all of them, and the rate and in-flight limits are divided among
    them so the configured limits hold for the whole server. See docs/serving.md.
    """
    import uvicorn

    s = settings()
    serving = s.serving.model_copy(
        update={k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    )
    s = s.model_copy(update={"serving": serving})
    from keeneye.serving.app import create_app
    from keeneye.serving.state import is_loopback

    if not is_loopback(serving.host) and serving.require_api_key is False:
        err_console.print("[yellow]warning:[/] serving on a public address without API keys")
    console.print(
        f"keeneye serving on http://{serving.host}:{serving.port}  (docs: /docs, metrics: /metrics)"
    )
    if workers == 1:
        uvicorn.run(
            create_app(s), host=serving.host, port=serving.port, log_level="warning", access_log=False
        )
        return
    _serve_processes(s, workers)


def _serve_processes(s: Settings, workers: int) -> None:
    """``serve --workers N``: uvicorn's process manager over ``serving.app.app_from_environment``.

    Every process reads its settings from the environment, so the command line's choices go there
    first; the processes share one metrics folder (unless ``keeneye up`` gave one) so that /metrics
    counts all of them. Each process's ONNX Runtime may use every core (``intra_op_threads`` 0): with
    spinning off its threads sleep when idle, and measured on 2 cores with 2 processes, all cores each
    beat a core each at 1, 8 and 32 clients (p50 at 1 client 16 vs 20 ms; docs/serving.md).
    """
    import os
    import shutil

    import uvicorn

    from keeneye.metrics import enable_multiprocess, multiprocess_dir, prepare_multiprocess_dir

    serving = s.serving
    os.environ["KEENEYE_SERVING__HOST"] = serving.host
    os.environ["KEENEYE_SERVING__PORT"] = str(serving.port)
    os.environ["KEENEYE_SERVING__PROCESSES"] = str(workers)
    own_metrics = None
    if multiprocess_dir() is None:
        own_metrics = s.home / "run" / f"metrics-serve-{os.getpid()}"
        prepare_multiprocess_dir(own_metrics)
        enable_multiprocess(own_metrics)
    try:
        uvicorn.run(
            "keeneye.serving.app:app_from_environment",
            factory=True,
            workers=workers,
            host=serving.host,
            port=serving.port,
            log_level="warning",
            access_log=False,
        )
    finally:
        if own_metrics is not None:
            shutil.rmtree(own_metrics, ignore_errors=True)


def predict(
    files: list[Path] = typer.Argument(
        ...,
        help="Image files (JPEG, PNG, TIFF/GeoTIFF). crop-health also takes a capture folder or zip "
        "(one TIFF per band) and orthomosaics of any size (streamed from the file).",
        exists=False,
    ),
    pipeline: str = typer.Option(None, "--pipeline", "-p", help="Pipeline to use (default: species-id)."),
    metadata: str = typer.Option(None, help="JSON object stored with each observation."),
    json_out: bool = typer.Option(False, "--json/--no-json", help="Print JSON results."),
    band_map: str = typer.Option(
        None,
        "--band-map",
        help="crop-health: which band is which — a camera preset (micasense-rededge-mx, dji-p4m, "
        "sentinel2-l2a-10m, … see docs/crop-health.md) or the bands in file order, e.g. "
        "blue,green,red,nir,red_edge. Default: the pipeline's band map.",
    ),
    crs: str = typer.Option(
        None,
        "--crs",
        help="crop-health: zone coordinates, wgs84 (GeoJSON lon/lat, the default) or native "
        "(the raster's own CRS, e.g. its UTM zone).",
    ),
    geojson: Path = typer.Option(
        None,
        "--geojson",
        help="crop-health: write the vigour and disease zones of the (one) file to this GeoJSON file.",
        dir_okay=False,
    ),
    index_dir: Path = typer.Option(
        None,
        "--index-dir",
        help="crop-health mosaics: also write each index (NDVI, …) at full resolution as a tiled "
        "GeoTIFF in this folder.",
        file_okay=False,
    ),
    store: bool = typer.Option(
        True,
        "--store/--no-store",
        help="crop-health mosaics: store the mosaic, its answer, its index maps (as COGs) and its "
        "field history like any answer (the default; the mosaic is copied into the object store). "
        "--no-store only prints the answer (and writes --index-dir / --geojson). Other files are "
        "always stored.",
    ),
) -> None:
    """Predict on local files through the same code path as the API (results are stored too).

    crop-health: a [bold]folder[/] or [bold]zip[/] of one TIFF per band (a DJI P4M / MicaSense
    capture, IMG_0001_1.tif … _5.tif) is stacked in band order; a raster over the synchronous limit
    (an orthomosaic, 10k–40k px) is streamed block by block with a progress bar, answered and
    stored with its index maps and field history ([bold]--no-store[/]: answered only;
    docs/crop-health.md, "Mosaics").

    Crop-health answers carry a [bold]geo[/] part: NDVI/NDRE/GNDVI statistics and vigour and disease
    zones with their areas; [bold]--geojson FILE[/] writes the zones, e.g.
    [dim]keeneye predict -p crop-health field.tif --band-map micasense-rededge-mx --geojson zones.geojson[/]
    """
    from keeneye.geo.capture import capture_files
    from keeneye.imaging.archive import pack_files
    from keeneye.pipelines.mosaic_jobs import is_mosaic_file
    from keeneye.serving.routes.predict import parse_metadata
    from keeneye.serving.state import close_state, open_state

    s = settings()
    name = pipeline or s.serving.default_pipeline
    meta = parse_metadata(metadata)
    if band_map is not None:
        meta["band_map"] = band_map
    if crs is not None:
        if crs not in ("wgs84", "native"):
            err_console.print(f"[red]--crs must be wgs84 or native, not {crs!r}[/]")
            raise typer.Exit(2)
        meta["crs"] = crs
    if geojson is not None and len(files) != 1:
        err_console.print("[red]--geojson writes the zones of one file: give exactly one file[/]")
        raise typer.Exit(2)

    async def run() -> list[dict[str, Any]]:
        state = await open_state(s, poll_aliases=False)
        results: list[dict[str, Any]] = []
        try:
            spec = state.catalog.get(name)
            for path in files:
                try:
                    if spec.input.geo and path.is_dir():
                        data = pack_files([(n, p.read_bytes()) for n, p in capture_files(path)])
                    elif is_mosaic_file(path, spec, s):
                        results.append(await _predict_mosaic(state, spec, path, meta, index_dir, store))
                        continue
                    else:
                        data = path.read_bytes()
                except OSError as exc:
                    results.append({"file": str(path), "error": f"cannot read: {exc.strerror}"})
                    continue
                except KeeneyeError as exc:
                    reason = exc.reason if isinstance(exc, InvalidInput) else "not_ready"
                    results.append({"file": str(path), "error": exc.one_line(), "reason": reason})
                    continue
                try:
                    out = await state.service.predict(name, data, meta, source="cli")
                    results.append({"file": str(path), **out})
                except InvalidInput as exc:
                    results.append({"file": str(path), "error": exc.one_line(), "reason": exc.reason})
        finally:
            await close_state(state)
        return results

    results = asyncio.run(run())
    if geojson is not None and "error" not in results[0]:
        geo = results[0].get("geo")
        if not isinstance(geo, dict):
            err_console.print(f"[red]pipeline {name!r} answers no zones; --geojson needs crop-health[/]")
            raise typer.Exit(1)
        geojson.write_text(json.dumps(geo["zones"], ensure_ascii=False))
    if json_out:
        print_json(results)
    else:
        table = Table(title=f"keeneye predict · {name}")
        for col in ("file", "answer", "confidence", "ms", "model", "cached"):
            table.add_column(col)
        for r in results:
            if "error" in r:
                table.add_row(r["file"], f"[red]{r['error']}[/]", "", "", "", "")
                continue
            answer = r.get("predicted_label") or (
                f"{r.get('count', 0)} instance(s)" + (f" · {r['decision']}" if r.get("decision") else "")
            )
            if "mosaic" in r:
                m = r["mosaic"]
                zones = len(r["geo"]["zones"]["features"])
                answer = (
                    f"mosaic {m['width']}×{m['height']}: {zones} zone(s), {m['megapixels_per_second']} Mpx/s"
                )
            conf = r.get("confidence")
            table.add_row(
                r["file"],
                answer,
                "" if conf is None else f"{conf:.3f}",
                f"{r['processing_time_ms']:.1f}",
                r["model_version"],
                "yes" if r["cached"] else "no",
            )
        console.print(table)
    if any("error" in r for r in results):
        raise typer.Exit(1)


async def _predict_mosaic(
    state: Any, spec: Any, path: Path, meta: dict[str, Any], index_dir: Path | None, store: bool
) -> dict[str, Any]:
    """One orthomosaic, streamed (keeneye.pipelines.mosaic_jobs) on the pipeline's serving model;
    with ``store``, stored like any answer (:func:`_store_mosaic`)."""
    from keeneye.pipelines.mosaic_jobs import answer_mosaic, check_mosaic

    loaded = state.runtime.get(spec.name)  # ModelNotReady: reported like any other file's error
    check_mosaic(path, spec, meta)
    size, limit = path.stat().st_size, state.settings.objects.max_object_bytes
    if store and size > limit:  # refused before minutes of work, not after
        raise InvalidInput(
            "too_large",
            f"the mosaic of {size} bytes is over the object store's limit of {limit} bytes",
            status=413,
            fix="raise KEENEYE_OBJECTS__MAX_OBJECT_BYTES, or answer it without storing (--no-store)",
        )
    with tempfile.TemporaryDirectory(prefix="keeneye-index-maps-") as tmp:
        maps = index_dir if index_dir is not None else Path(tmp) if store else None
        with progress_bar(f"{path.name}: blocks") as update:
            result = await asyncio.to_thread(
                answer_mosaic, spec, loaded, path, meta, index_dir=maps, progress=update
            )
        observation_id = None
        if store:
            observation_id = await asyncio.to_thread(_store_mosaic, state, spec, loaded, path, meta, result)
    answer = result.answer.to_json()
    return {
        "file": str(path),
        **answer,
        "mosaic": {
            **result.summary(),
            "index_maps": {k: str(v) for k, v in result.mosaic.index_maps.items()} if index_dir else {},
        },
        "pipeline": spec.name,
        "model_name": loaded.ref.name,
        "model_version": loaded.ref.version,
        **({"observation_id": observation_id} if observation_id else {}),
        "cached": False,
        "processing_time_ms": round(result.mosaic.seconds * 1000, 2),
    }


def _store_mosaic(state: Any, spec: Any, loaded: Any, path: Path, meta: dict[str, Any], result: Any) -> str:
    """A mosaic answered by ``keeneye predict``, stored as the stream worker stores one: the file in
    the object store (streamed, content-addressed), the index maps as COGs, the observation with its
    prediction, then the field history (``Answering.stored``). Returns the observation id."""
    import uuid

    from keeneye.answering import StoredAnswer
    from keeneye.domain import ObservationStatus, Variant
    from keeneye.pipelines import content_type_of, observation_key
    from keeneye.pipelines.mosaic_jobs import file_digest, store_index_maps

    digest = file_digest(path)
    key = observation_key(spec.name, digest, "tiff")
    if not state.objects.exists(key):
        with path.open("rb") as f:
            state.objects.put(key, f, content_type=content_type_of("tiff"))
    observation_id = uuid.uuid4().hex
    answer = result.answer
    store_index_maps(state.objects, spec.name, observation_id, result.mosaic.index_maps, answer)
    state.db.create_observation(
        pipeline=spec.name,
        content_hash=digest,
        object_key=key,
        content_type=content_type_of("tiff"),
        size_bytes=path.stat().st_size,
        metadata={**meta, "file": path.name},
        source="cli",
        status=ObservationStatus.processing,
        id=observation_id,
    )
    answering = state.service.answering
    latency_ms = result.mosaic.seconds * 1000
    completion = answering.completion(
        observation_id, spec.name, loaded, Variant.champion, answer, latency_ms, {"infer": latency_ms}
    )
    state.db.complete_many([completion])
    answering.stored(spec, [StoredAnswer(observation_id, answer, Variant.champion)], review=False)
    return observation_id


keys_app = typer.Typer(
    help="API keys, each with a role (viewer, operator, admin): required when the server binds a "
    "non-loopback address.",
    no_args_is_help=True,
)


@keys_app.command("create")
def keys_create(
    name: str = typer.Argument(..., help="Who or what the key is for, e.g. 'field-app'."),
    role: Role = typer.Option(
        Role.operator,
        "--role",
        case_sensitive=False,
        help="viewer: read pages and GET APIs; operator: also predict, review, ack/silence alerts, "
        "shadow/canary/abort rollouts; admin: also API keys, promote and roll back.",
    ),
) -> None:
    """Create an API key with a role; it is shown once, only its hash is stored."""
    from keeneye.store import open_results_db

    db = open_results_db(settings())
    db.ensure_schema()
    key_id, secret = db.create_api_key(name, role)
    console.print(f"API key {key_id} for {name!r}, role {role.value} (store it now, it is not shown again):")
    console.print(secret, highlight=False, soft_wrap=True)


@keys_app.command("list")
def keys_list(json_out: bool = typer.Option(False, "--json/--no-json", help="Print JSON.")) -> None:
    """List API keys (never the secrets)."""
    from keeneye.store import open_results_db

    db = open_results_db(settings())
    db.ensure_schema()
    keys = [k.__dict__ for k in db.list_api_keys()]
    if json_out:
        print_json(keys)
        return
    table = Table(title="API keys")
    for col in ("id", "name", "role", "prefix", "created", "revoked"):
        table.add_column(col)
    for k in keys:
        table.add_row(
            str(k["id"]),
            k["name"],
            str(k["role"]),
            k["prefix"],
            str(k["created_at"]),
            str(k["revoked_at"] or ""),
        )
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: int = typer.Argument(..., help="The key id from `keeneye keys list`.")) -> None:
    """Revoke an API key; requests using it get 401 from then on."""
    from keeneye.store import open_results_db

    db = open_results_db(settings())
    db.ensure_schema()
    if not db.revoke_api_key(key_id):
        raise KeeneyeError(f"no active API key with id {key_id}", fix="see `keeneye keys list`")
    console.print(f"revoked API key {key_id}")


def register(app: typer.Typer) -> None:
    app.command("serve", rich_help_panel=PANEL_SERVE)(serve)
    app.command("predict", rich_help_panel=PANEL_SERVE)(predict)
    app.add_typer(keys_app, name="keys", rich_help_panel=PANEL_OPS)


__all__ = ["register"]
