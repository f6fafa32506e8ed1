"""``keeneye fields add | list | show | history | prescription`` (docs/crop-health.md, "Fields, history
and prescriptions").

Fields live in the results DB (``KEENEYE_DATABASE_URL``); crop-health images join them when they are
predicted or ingested (``metadata.field``, or by overlap with the boundary). A refused boundary
(self-intersecting, not a polygon, unknown CRS, coordinates off the globe) prints one line with the
reason and the fix, and exits 2.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from keeneye.cli._common import PANEL_DATA, console, print_json, settings
from keeneye.domain import InvalidInput

if TYPE_CHECKING:
    from keeneye.fields import FieldBook

fields_app = typer.Typer(
    help="crop-health fields: boundaries, per-field history of flights, prescription maps for sprayers.",
    no_args_is_help=True,
)

_ID_ARG = typer.Argument(..., help="Field id (see `keeneye fields list`).")
_JSON_HELP = "Print JSON (the same shape as the HTTP API) instead of a table."


def register(app: typer.Typer) -> None:
    app.add_typer(fields_app, name="fields", rich_help_panel=PANEL_DATA)


def _book() -> FieldBook:
    from keeneye.fields import FieldBook
    from keeneye.store import open_cache, open_results_db

    s = settings()
    return FieldBook(open_results_db(s), open_cache(s))


def _ha(value: float) -> str:
    return f"{value:,.2f}"


@fields_app.command("add")
def add(
    boundary: Path = typer.Argument(
        ...,
        help="GeoJSON file: a Polygon or MultiPolygon, a Feature, or a FeatureCollection (lon/lat WGS84 "
        "unless --crs or the file's crs member names another CRS).",
        exists=True,
        dir_okay=False,
    ),
    name: str = typer.Option(..., "--name", "-n", help="Name for people, e.g. 'North 12'."),
    field_id: str | None = typer.Option(
        None, "--id", help="Id (lower-case letters, digits, - and _); default: made from the name."
    ),
    crop: str | None = typer.Option(None, "--crop", help="What grows there, e.g. winter-wheat."),
    sowing_date: str | None = typer.Option(None, "--sowing-date", help="Sowing date, YYYY-MM-DD."),
    crs: str | None = typer.Option(
        None, "--crs", help="CRS of the file's coordinates, e.g. EPSG:32633 (default: WGS84 lon/lat)."
    ),
    json_out: bool = typer.Option(False, "--json/--no-json", help=_JSON_HELP),
) -> None:
    """Register a field from a GeoJSON boundary; prints its id and geodesic area.

    Example: [bold]keeneye fields add n12.geojson --name 'North 12' --crop wheat --sowing-date 2026-03-20[/]
    """
    from keeneye.fields import field_detail_json

    try:
        doc = json.loads(boundary.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidInput(
            "boundary_not_polygon",
            f"{boundary} is not GeoJSON ({exc})",
            fix="export the outline as GeoJSON from your GIS or farm software",
        ) from exc
    field = _book().add(
        name=name, boundary=doc, crs=crs, field_id=field_id, crop=crop, sowing_date=sowing_date
    )
    if json_out:
        print_json(field_detail_json(field))
        return
    console.print(f"field [bold]{field.id}[/] ({field.name}): {_ha(field.area_ha)} ha")


@fields_app.command("list")
def list_fields(json_out: bool = typer.Option(False, "--json/--no-json", help=_JSON_HELP)) -> None:
    """Every field with its area, crop and flights."""
    from keeneye.fields import field_json

    fields = _book().fields()
    if json_out:
        print_json({"fields": [field_json(f) for f in fields]})
        return
    if not fields:
        console.print("no field yet — add one with `keeneye fields add BOUNDARY.geojson --name NAME`")
        return
    table = Table("id", "name", "crop", "sown", "area ha", "flights", "last flight")
    for f in fields:
        table.add_row(
            f.id,
            f.name,
            f.crop or "–",
            f.sowing_date.isoformat() if f.sowing_date else "–",
            _ha(f.area_ha),
            str(f.flights),
            f.last_flight or "–",
        )
    console.print(table)


@fields_app.command("show")
def show(
    field_id: str = _ID_ARG, json_out: bool = typer.Option(False, "--json/--no-json", help=_JSON_HELP)
) -> None:
    """One field: crop, sowing date, geodesic area, bounding box (lon/lat), flights."""
    from keeneye.fields import field_detail_json

    book = _book()
    field = book.get(field_id)
    if json_out:
        print_json(field_detail_json(field))
        return
    x0, y0, x1, y1 = field.bbox
    console.print(f"[bold]{field.id}[/] · {field.name}")
    console.print(f"  crop: {field.crop or '–'}   sown: {field.sowing_date or '–'}")
    console.print(
        f"  area: {_ha(field.area_ha)} ha (geodesic)   bbox: {x0:.6f}, {y0:.6f} … {x1:.6f}, {y1:.6f}"
    )
    console.print(f"  flights: {field.flights}   last: {field.last_flight or '–'}")


@fields_app.command("history")
def history(
    field_id: str = _ID_ARG, json_out: bool = typer.Option(False, "--json/--no-json", help=_JSON_HELP)
) -> None:
    """The field's flights, oldest first: NDVI, diseased and vigour-zone hectares."""
    from keeneye.fields import history_json

    flights = _book().history(field_id)
    if json_out:
        print_json(history_json(field_id, flights))
        return
    if not flights:
        console.print(f"field {field_id} has no flight yet")
        return
    table = Table("flight", "observed", "NDVI mean", "p10", "p90", "diseased ha", "vigour ha (low/…/high)")
    for f in flights:
        ndvi = f.indices.get("ndvi")
        stats = ndvi if isinstance(ndvi, dict) else {}

        def num(key: str, stats: Mapping[str, object] = stats) -> str:
            value = stats.get(key)
            return f"{value:.3f}" if isinstance(value, int | float) else "–"

        diseased = sum(float(v) for v in f.disease_ha.values() if isinstance(v, int | float))
        vigour = " / ".join(
            f"{k} {float(v):.2f}" for k, v in f.vigour_ha.items() if isinstance(v, int | float)
        )
        table.add_row(
            f.flight,
            f.observed_at.strftime("%Y-%m-%d %H:%M"),
            num("mean"),
            num("p10"),
            num("p90"),
            _ha(diseased),
            vigour or "–",
        )
    console.print(table)


@fields_app.command("prescription")
def prescription(
    field_id: str = _ID_ARG,
    out: Path = typer.Option(..., "--out", "-o", help="File to write (.geojson, or .zip for a Shapefile)."),
    flight: str | None = typer.Option(None, "--flight", "-f", help="Flight (default: the latest)."),
    fmt: str = typer.Option(
        "geojson", "--format", help="geojson (RFC 7946) or shapefile (zipped .shp/.shx/.dbf/.prj, WGS84)."
    ),
    threshold: float = typer.Option(
        0.5, "--threshold", help="Treat disease zones with severity ≥ this (0–1)."
    ),
    buffer_m: float = typer.Option(5.0, "--buffer-m", help="Margin around each zone, metres (0–100)."),
    base_rate: float = typer.Option(
        100.0, "--base-rate", help="Dose at severity 0.5; rate = round(base × (0.5 + severity), 1)."
    ),
    unit: str = typer.Option("l/ha", "--unit", help="Unit of the rate, written into the file."),
) -> None:
    """Write a flight's treatment prescription: severe disease zones buffered, merged, clipped, rated.

    Zones with severity ≥ --threshold are buffered by --buffer-m in the field's UTM zone, merged,
    clipped to the boundary; each gets rate = round(base × (0.5 + severity), 1) (docs/crop-health.md).

    Example: [bold]keeneye fields prescription north-12 --flight 2026-06-12 --format shapefile --out rx.zip[/]
    """
    from keeneye.fields import FORMATS

    if fmt not in FORMATS:
        raise InvalidInput(
            "bad_format", f"format {fmt!r} is not one of {', '.join(FORMATS)}", fix="--format geojson"
        )
    rx = _book().prescription(
        field_id, flight, threshold=threshold, buffer_m=buffer_m, base_rate=base_rate, unit=unit
    )
    if fmt == "shapefile":
        out.write_bytes(rx.to_shapefile_zip())
    else:
        out.write_text(json.dumps(rx.to_geojson()), encoding="utf-8")
    total = sum(z.area_ha for z in rx.zones)
    console.print(
        f"{out}: {len(rx.zones)} zone{'s' if len(rx.zones) != 1 else ''}, {_ha(total)} ha to treat "
        f"(field {rx.field_id}, flight {rx.flight}, severity ≥ {rx.threshold:g}, buffer {rx.buffer_m:g} m)"
    )
