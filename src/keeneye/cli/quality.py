"""``keeneye feedback`` (send one label) and ``keeneye quality`` (online metrics per model version).

Both go through :mod:`keeneye.monitoring.quality`, the code the HTTP API uses, so a label refused by
the API is refused here with the same message, and the table shows what the scheduler publishes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from keeneye.cli._common import PANEL_DATA, PANEL_MONITOR, console, print_json, settings
from keeneye.domain import InvalidInput, JsonObject, JsonValue

if TYPE_CHECKING:
    from keeneye.monitoring.quality import QualityWindow

SHOWN_METRICS = ("precision", "recall", "f1", "accuracy")


def feedback(
    observation_id: str = typer.Argument(..., help="The observation id predict/observations returned."),
    class_name: str | None = typer.Option(None, "--class", help="classify: the true class name."),
    decision: str | None = typer.Option(None, "--decision", help="ok-defect pipelines: OK or DEFECT."),
    coco: Path | None = typer.Option(
        None, "--coco", help="segment/detect: a JSON file with the instances (COCO annotations)."
    ),
    author: str | None = typer.Option(None, "--author", help="Who labelled it."),
    json_out: bool = typer.Option(False, "--json/--no-json", help="Print the stored feedback as JSON."),
) -> None:
    """Record the ground truth of one observation (one of --class, --decision, --coco)."""
    from keeneye.monitoring.quality import registry_manifests, submit_feedback
    from keeneye.pipelines import PipelineCatalog
    from keeneye.registry import ModelRegistry
    from keeneye.store import open_results_db

    body: JsonObject = {}
    if class_name is not None:
        body["class"] = class_name
    if decision is not None:
        body["decision"] = decision
    if coco is not None:
        body["instances"] = read_coco_instances(coco)
    if author is not None:
        body["author"] = author
    s = settings()
    db = open_results_db(s)
    receipt = submit_feedback(
        db,
        PipelineCatalog(s),
        registry_manifests(ModelRegistry(s, events=db)),
        observation_id,
        body,
        default_source="cli",
    )
    if json_out:
        print_json(receipt.to_dict())
        return
    console.print(
        f"feedback {receipt.id} recorded for observation {receipt.observation_id} "
        f"({receipt.pipeline}, answered by v{receipt.model_version}): {_describe(receipt.label)}",
        highlight=False,
    )


def _describe(label: Mapping[str, JsonValue]) -> str:
    if "class" in label:
        return f"class {label['class']}"
    instances = label.get("instances")
    if isinstance(instances, list):  # the shared parser stores a list
        decision = f", {label['decision']}" if "decision" in label else ""
        return f"{len(instances)} instance(s){decision}"
    return f"decision {label['decision']}"


def read_coco_instances(path: Path) -> list[Any]:
    """Instances from ``{"instances": […]}``, a bare list, or a COCO file with the annotations of one
    image (``categories`` give the class names). Validation happens in the shared parser."""
    from keeneye.monitoring.quality import MAX_FEEDBACK_BYTES

    try:
        size = path.stat().st_size
        if size > MAX_FEEDBACK_BYTES:
            raise InvalidInput(
                "too_large", f"{path} is {size} bytes, over the limit of {MAX_FEEDBACK_BYTES}", status=413
            )
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InvalidInput("bad_coco", f"cannot read {path} ({exc.strerror or exc})") from exc
    except (ValueError, RecursionError) as exc:
        raise InvalidInput("bad_coco", f"{path} is not valid JSON ({exc})"[:300]) from exc
    if isinstance(data, list):
        return data
    if isinstance(data, dict) and "instances" in data:
        instances = data["instances"]
        return instances if isinstance(instances, list) else [instances]
    if isinstance(data, dict) and isinstance(data.get("annotations"), list):
        return _from_coco(path, data)
    raise InvalidInput(
        "bad_coco",
        f"{path} has neither 'instances' nor COCO 'annotations'",
        fix='write {"instances": [{"class": "...", "bbox": [x, y, w, h]}]} or a COCO file of one image',
    )


def _from_coco(path: Path, data: JsonObject) -> list[JsonValue]:
    categories = data.get("categories")
    listed = categories if isinstance(categories, list) else []
    names = {c.get("id"): c.get("name") for c in listed if isinstance(c, dict)}
    raw = data.get("annotations")
    annotations = [a for a in raw if isinstance(a, dict)] if isinstance(raw, list) else []
    images = {a.get("image_id") for a in annotations}
    if len(images) > 1:
        raise InvalidInput(
            "bad_coco",
            f"{path} has annotations of {len(images)} images; feedback labels one observation",
            fix="keep the annotations of one image (or use `keeneye labels import` for datasets)",
        )
    out: list[JsonValue] = []
    for a in annotations:
        if a.get("category_id") not in names:
            raise InvalidInput(
                "bad_coco",
                f"{path}: annotation {a.get('id')} has category_id {a.get('category_id')!r} "
                "that is not in categories",
            )
        item: JsonObject = {"class": names[a["category_id"]]}
        if a.get("segmentation") not in (None, []):
            item["segmentation"] = a["segmentation"]
        if "bbox" in a:
            item["bbox"] = a["bbox"]
        out.append(item)
    return out


def quality(
    pipeline: str = typer.Option(..., "--pipeline", "-p", help="The pipeline."),
    json_out: bool = typer.Option(False, "--json/--no-json", help="Print JSON instead of a table."),
) -> None:
    """Online precision / recall / F1 of each model version on labelled traffic, with drop marks."""
    from keeneye.monitoring.quality import pipeline_quality, quality_report
    from keeneye.pipelines import PipelineCatalog
    from keeneye.registry import ModelRegistry
    from keeneye.store import open_results_db

    s = settings()
    spec = PipelineCatalog(s).get(pipeline)
    db = open_results_db(s)
    windows = pipeline_quality(s, db, ModelRegistry(s, events=db), spec)
    if json_out:
        print_json(quality_report(s, spec, windows))
        return
    hours = s.monitoring.quality_window_seconds / 3600
    if not windows:
        console.print(
            f"no labelled observations of {pipeline} in the last {hours:g} h — "
            f"send labels with `keeneye feedback OBSERVATION_ID …` or POST /v1/observations/ID/feedback",
            highlight=False,
        )
        return
    console.print(
        _table(windows, pipeline, hours, s.monitoring.quality_min_feedback, s.monitoring.quality_drop)
    )


def _table(
    windows: list[QualityWindow], pipeline: str, hours: float, min_feedback: int, drop: float
) -> Table:
    shown = [m for m in SHOWN_METRICS if any(m in w.metrics for w in windows)]
    table = Table(
        title=f"{pipeline}: online quality, last {hours:g} h "
        f"(drop = more than {drop:.0%} below the test value on ≥ {min_feedback} labels)"
    )
    for col in ("version", "variant", "labels", *shown, "status"):
        table.add_column(col, overflow="fold")
    for w in windows:
        cells = [_cell(w, m, drop) for m in shown]
        if w.drop:
            status = "[bold red]▼ DROP[/]"
        elif w.n < min_feedback:
            status = f"[dim]too few labels (< {min_feedback})[/]"
        elif not w.reference:
            status = "[yellow]no test values to compare[/]"
        else:
            status = "[green]ok[/]"
        table.add_row(w.model_version, w.variant, str(w.n), *cells, status)
    return table


def _cell(w: QualityWindow, metric: str, drop: float) -> str:
    value = w.metrics.get(metric)
    if value is None:
        return "n/a" if metric in w.metrics else ""
    text = f"{value:.3f}"
    ref = w.reference.get(metric)
    if ref is None:
        return text
    rel = w.relative_drops.get(metric, 0.0)
    colour = "red" if rel > drop else ("yellow" if rel > 0 else "green")
    return f"{text} [dim](test {ref:.3f},[/] [{colour}]{-rel:+.1%}[/][dim])[/]"


def register(app: typer.Typer) -> None:
    app.command("feedback", rich_help_panel=PANEL_DATA)(feedback)
    app.command("quality", rich_help_panel=PANEL_MONITOR)(quality)
