"""Labelling commands: ``labels queue | export | import`` — the review queue and the round trip through
CVAT or Label Studio (see docs/labelling.md)."""

from __future__ import annotations

import enum
import getpass
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from keeneye.cli._common import PANEL_DATA, console, err_console, print_json, settings, state
from keeneye.domain import JsonValue

if TYPE_CHECKING:
    from keeneye.lifecycle import ImportReport, ReviewEntry

labels_app = typer.Typer(
    help=(
        "The labelling loop: list the answers a person should check (the review queue), export them "
        "with the model's answers as pre-annotations for CVAT or Label Studio, and import the "
        "corrected labels back as feedback."
    ),
    no_args_is_help=True,
)

PIPELINE_OPT = typer.Option(
    ..., "--pipeline", "-p", help="Pipeline name, e.g. species-id (keeneye pipelines list)."
)
JSON_OPT = typer.Option(False, "--json/--no-json", help="Print JSON instead of a table / summary.")


class LabelFormat(enum.StrEnum):
    coco = "coco"
    label_studio = "label-studio"


def register(app: typer.Typer) -> None:
    app.add_typer(labels_app, name="labels", rich_help_panel=PANEL_DATA)


@contextmanager
def _progress(what: str, quiet: bool) -> Iterator[Callable[[int, int], None]]:
    """A progress bar on stderr (stdout stays clean for --json); yields ``update(done, total)``."""
    with Progress(
        TextColumn(f"[bold]{what}[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
        disable=quiet,
    ) as bar:
        task = bar.add_task(what, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def _number(value: JsonValue | None) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


def _answer(entry: ReviewEntry) -> str:
    """The model's answer in a few words."""
    p = entry.prediction
    if p is None:
        return "(no answer yet)"
    if p.get("task") == "classify":
        return f"{p.get('predicted_label') or p.get('predicted_class')} ({_number(p.get('confidence')):.0%})"
    instances = p.get("instances")
    text = f"{len(instances) if isinstance(instances, list) else 0} instance(s)"
    return text + (f" · {p['decision']}" if p.get("decision") else "")


def _age(when: datetime | None) -> str:
    if when is None:
        return ""
    seconds = (datetime.now(UTC) - when).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


@labels_app.command("queue")
def queue(
    pipeline: str = PIPELINE_OPT,
    limit: int = typer.Option(50, "--limit", "-n", min=1, max=10_000, help="Show at most this many."),
    json_out: bool = JSON_OPT,
) -> None:
    """Show the review queue: observations a person should check, most uncertain first.

    Reasons: low_confidence (the model was unsure), drift, disagreement (shadow model disagreed) and
    audit (a random 2% sample that keeps the online quality estimate honest).
    """
    from keeneye.lifecycle import review_queue
    from keeneye.pipelines import PipelineCatalog
    from keeneye.store import open_results_db

    s = settings()
    PipelineCatalog(s).get(pipeline)  # an unknown name fails with the known ones
    entries = review_queue(open_results_db(s), pipeline, limit=limit)
    if json_out:
        print_json([e.to_dict() for e in entries])
        return
    if not entries:
        console.print(f"the review queue of {pipeline} is empty", highlight=False)
        return
    table = Table(title=f"review queue of {pipeline} ({len(entries)} shown)")
    for col in ("priority", "observation", "reasons", "model answer", "version", "queued"):
        table.add_column(col, overflow="fold")
    for e in entries:
        table.add_row(
            f"{e.priority:.2f}",
            e.observation_id,
            ", ".join(e.reasons),
            _answer(e),
            e.model_version or "",
            _age(e.queued_at),
        )
    console.print(table)
    console.print(
        f"export them for labelling: keeneye labels export --pipeline {pipeline} --out DIR", highlight=False
    )


@labels_app.command("export")
def export(
    pipeline: str = PIPELINE_OPT,
    out: Path = typer.Option(
        ..., "--out", "-o", help="Folder to write images/ and the annotation file into."
    ),
    fmt: LabelFormat = typer.Option(
        LabelFormat.coco,
        "--format",
        "-f",
        help="coco: annotations.json for CVAT, Label Studio or keeneye train; "
        "label-studio: tasks.json with predictions + label_config.xml.",
    ),
    limit: int = typer.Option(
        500, "--limit", "-n", min=1, max=100_000, help="Export at most this many images."
    ),
    all_answers: bool = typer.Option(
        False, "--all/--no-all", help="Export the newest answers of the pipeline, not only the review queue."
    ),
    image_root: str = typer.Option(
        "images/",
        "--image-root",
        help="label-studio only: prefix of data.image, e.g. '/data/local-files/?d=labels/images/'.",
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite/--no-overwrite", help="Replace an annotation file already in --out."
    ),
    json_out: bool = JSON_OPT,
) -> None:
    """Export images with the model's answers as pre-annotations, for a person to correct."""
    from keeneye.domain import InvalidInput
    from keeneye.lifecycle import export_labels, load_label_schema
    from keeneye.lifecycle.labels import COCO_FILE, LABEL_STUDIO_FILE
    from keeneye.pipelines import PipelineCatalog
    from keeneye.store import open_object_store, open_results_db

    target = out / (COCO_FILE if fmt is LabelFormat.coco else LABEL_STUDIO_FILE)
    if target.exists() and not overwrite:
        raise InvalidInput(
            "exists",
            f"{target} exists (corrections in it would be lost)",
            fix="import it first, choose another --out, or pass --overwrite",
        )
    s = settings()
    spec = PipelineCatalog(s).get(pipeline)
    schema = load_label_schema(s, spec)
    with _progress("exporting", json_out or state.quiet) as progress:
        report = export_labels(
            open_results_db(s),
            open_object_store(s),
            pipeline,
            out,
            schema=schema,
            fmt="coco" if fmt is LabelFormat.coco else "label-studio",
            limit=limit,
            only_queue=not all_answers,
            image_root=image_root,
            progress=progress,
        )
    if json_out:
        print_json(report.to_dict())
        return
    what = "answers" if all_answers else "review queue items"
    console.print(
        f"exported {report.n_images} {what} ({report.n_annotations} pre-annotations, model "
        f"v{schema.model_version}) to {', '.join(str(f) for f in report.files)}",
        highlight=False,
    )
    for obs_id, why in report.skipped:
        err_console.print(f"skipped {obs_id}: {why}", highlight=False)
    if report.n_images:
        console.print(
            f"correct them in your labelling tool, then: keeneye labels import --pipeline {pipeline} "
            f"{report.files[0]}",
            highlight=False,
        )


def _user() -> str | None:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name in some containers
        return None


@labels_app.command("import")
def import_(
    path: Path = typer.Argument(
        ...,
        exists=True,
        help="The corrected labels: a COCO folder or annotations.json (CVAT, Label Studio 'COCO'), "
        "or a Label Studio 'JSON' export.",
    ),
    pipeline: str = PIPELINE_OPT,
    author: str | None = typer.Option(
        None, "--author", "-a", help="Who labelled them (default: your user name)."
    ),
    skip_invalid: bool = typer.Option(
        False, "--skip-invalid/--no-skip-invalid", help="Store the valid images even when others have errors."
    ),
    json_out: bool = JSON_OPT,
) -> None:
    """Import corrected labels as feedback; they resolve the review queue and feed quality and retraining.

    Every image is checked first (known observation, the model's classes, geometry inside the image);
    when any has an error nothing is stored unless --skip-invalid.
    """
    from keeneye.lifecycle import import_labels
    from keeneye.monitoring.quality import registry_manifests
    from keeneye.pipelines import PipelineCatalog
    from keeneye.registry import ModelRegistry
    from keeneye.store import open_results_db

    s = settings()
    catalog = PipelineCatalog(s)
    db = open_results_db(s)
    with _progress("importing", json_out or state.quiet) as progress:
        report = import_labels(
            db,
            pipeline,
            path,
            catalog=catalog,
            manifests=registry_manifests(ModelRegistry(s, events=db)),
            author=author or _user(),
            skip_invalid=skip_invalid,
            progress=progress,
        )
    if json_out:
        print_json(report.to_dict())
    else:
        _print_import(report)
    if not report.ok and not skip_invalid:
        raise typer.Exit(1)


def _print_import(report: ImportReport) -> None:
    for p in report.problems:
        err_console.print(
            f"[red]{p.severity}[/]: {p.file}: {p.message}" + (f" — {p.fix}" if p.fix else ""), highlight=False
        )
    errors = len(report.errors)
    if errors and not report.skipped:
        err_console.print(
            f"nothing stored: {errors} error(s) in {report.n_images} image(s) — fix them, "
            "or pass --skip-invalid to store the valid ones",
            highlight=False,
        )
        return
    parts = [f"stored {report.written} label(s) from {report.n_images} image(s)"]
    if report.unchanged:
        parts.append(f"{report.unchanged} already stored")
    if report.skipped:
        parts.append(f"{len(report.skipped)} skipped (errors above)")
    if report.not_labelled:
        parts.append(f"{len(report.not_labelled)} not labelled yet")
    console.print(", ".join(parts), highlight=False)
