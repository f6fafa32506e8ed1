"""``keeneye retention run`` (apply the pipelines' ``retention:`` now) and ``keeneye storage estimate``
(the seed's storage sizing); see docs/storage.md#retention and docs/line-inspection.md#sizing."""

from __future__ import annotations

import typer
from rich.table import Table

from keeneye.cli._common import PANEL_OPS, console, print_json, settings

retention_app = typer.Typer(
    help="Delete stored images and events that their pipeline's retention policy lets go.",
    no_args_is_help=True,
)
storage_app = typer.Typer(
    help="Storage sizing: how much the object store and the DB will hold.", no_args_is_help=True
)

_UNITS = (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3))


def human_bytes(n: float | None) -> str:
    """Decimal units, as disks (and the seed's sizing) count them; None reads "grows forever"."""
    if n is None:
        return "grows forever"
    for unit, size in _UNITS:
        if abs(n) >= size:
            return f"{n / size:.3g} {unit}" if n / size < 100 else f"{n / size:,.0f} {unit}"
    return f"{n:.0f} B"


def _days(days: int | None) -> str:
    return "forever" if days is None else f"{days} d"


@retention_app.command("run")
def retention_run(
    pipeline: str | None = typer.Option(
        None, "--pipeline", "-p", help="Only this pipeline (default: every pipeline with a retention policy)."
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run/--no-dry-run", help="Count what would be deleted; change nothing."
    ),
    batch_size: int | None = typer.Option(
        None, "--batch-size", min=1, max=10000, help="Rows per transaction (default: retention.batch_size)."
    ),
    as_json: bool = typer.Option(False, "--json/--no-json", help="Print the reports as JSON."),
) -> None:
    """Apply each pipeline's `retention:` as of now: raw images, defect images, the OK sample, events.

    Images of observations with a label or a review item are never deleted (counted as protected).
    The scheduler of `keeneye up` runs this every retention.interval_seconds; reruns are safe.
    """
    from keeneye.metrics import Metrics
    from keeneye.pipelines import PipelineCatalog
    from keeneye.store import open_object_store, open_results_db
    from keeneye.store.retention import RetentionPolicy, run_retention, run_retention_all

    s = settings()
    catalog = PipelineCatalog(s)
    db = open_results_db(s)
    objects = open_object_store(s)
    size = batch_size or s.retention.batch_size
    metrics = Metrics()
    if pipeline is not None:
        policy = RetentionPolicy.from_spec(catalog.get(pipeline).retention)
        reports = [
            run_retention(db, objects, pipeline, policy, batch_size=size, dry_run=dry_run, metrics=metrics)
        ]
    else:
        policies = {spec.name: RetentionPolicy.from_spec(spec.retention) for spec in catalog.specs()}
        reports = run_retention_all(db, objects, policies, batch_size=size, dry_run=dry_run, metrics=metrics)
    if as_json:
        print_json([r.to_dict() for r in reports])
        return
    if not reports:
        console.print("no pipeline has a retention policy: everything is kept")
        return
    table = Table(title="retention (dry run: nothing deleted)" if dry_run else "retention")
    for column in (
        "pipeline",
        "kind",
        "kept for",
        "would delete" if dry_run else "deleted",
        "bytes",
        "protected",
    ):
        table.add_column(column, justify="left" if column in ("pipeline", "kind") else "right")
    for report in reports:
        for kind, count in report.kinds.items():
            table.add_row(
                report.pipeline,
                kind,
                _days(report.policy.days(kind)),
                f"{count.deleted:,}",
                human_bytes(count.bytes) if kind != "events" else "—",
                f"{count.protected:,}",
            )
    console.print(table)


@storage_app.command("estimate")
def storage_estimate(
    fps: float = typer.Option(60.0, "--fps", min=0.001, help="Frames per second of one camera."),
    cameras: int = typer.Option(1, "--cameras", min=1, help="Cameras (one inspection per frame each)."),
    hours_per_day: float = typer.Option(
        24.0, "--hours-per-day", min=0.001, max=24, help="Hours a day the line runs."
    ),
    per_day: float | None = typer.Option(
        None,
        "--inspections-per-day",
        min=1,
        help="Inspections a day, instead of fps × cameras × hours (the seed's figure is 1124316).",
    ),
    image_kb: float = typer.Option(160.0, "--image-kb", min=0.001, help="Average stored image, KB (1000 B)."),
    defect_rate: float = typer.Option(0.015, "--defect-rate", min=0, max=1, help="Share of DEFECT parts."),
    event_kb: float = typer.Option(1.5, "--event-kb", min=0, help="One inference event in the DB, KB."),
    pipeline: str = typer.Option(
        "line-inspection", "--pipeline", "-p", help="Whose retention policy (days, OK sample share) to apply."
    ),
    as_json: bool = typer.Option(False, "--json/--no-json", help="Print the estimate as JSON."),
) -> None:
    """How much storage a line needs at steady state under a pipeline's retention policy.

    The arithmetic of seed 001 (§3.2), in decimal units: raw images for raw_images_days, defect images
    for flagged_images_days, the OK sample for ok_sample_days, one event per inspection for
    events_days. `--inspections-per-day 1124316` reproduces the seed's table.
    """
    from keeneye.pipelines import PipelineCatalog
    from keeneye.store.retention import EVENTS, RetentionPolicy, estimate_storage, inspections_per_day

    policy = RetentionPolicy.from_spec(PipelineCatalog(settings()).get(pipeline).retention)
    count = per_day if per_day is not None else inspections_per_day(fps, cameras, hours_per_day)
    estimate = estimate_storage(
        count, image_kb=image_kb, defect_rate=defect_rate, policy=policy, event_kb=event_kb
    )
    if as_json:
        print_json(estimate.to_dict())
        return
    table = Table(title=f"{count:,.0f} inspections a day, {image_kb:g} KB images, {defect_rate:.2%} defects")
    for column in ("kind", "a day", "size a day", "kept for", "stored"):
        table.add_column(column, justify="left" if column == "kind" else "right")
    for k in estimate.kinds:
        table.add_row(
            k.kind,
            f"{k.per_day:,.0f}",
            human_bytes(k.bytes_per_day),
            _days(k.days),
            human_bytes(k.stored_bytes),
        )
    console.print(table)
    console.print(
        f"object store, net (no dataset copies, models or headroom): {human_bytes(estimate.objects_bytes)}"
    )
    console.print(
        f"results DB ({EVENTS}, before indexes and replicas): {human_bytes(estimate.database_bytes)}"
    )


def register(app: typer.Typer) -> None:
    app.add_typer(retention_app, name="retention", rich_help_panel=PANEL_OPS)
    app.add_typer(storage_app, name="storage", rich_help_panel=PANEL_OPS)


__all__ = ["human_bytes", "register"]
