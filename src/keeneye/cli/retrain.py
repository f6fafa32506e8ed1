"""``keeneye retrain`` (request and run a retraining, or run a queued one) and ``keeneye runs`` (list).

Both go through :mod:`keeneye.lifecycle` — the code the scheduler's triggers and the HTTP API use —
and training itself is ``train_pipeline``, the code of ``keeneye train``.

Exit status of ``retrain``: 0 when the challenger was registered and passed its gates, 3 when the
gates refused it (registered without an alias; the same code as ``train``), 2 when the run failed or
could not start.
"""

from __future__ import annotations

import getpass
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from keeneye.cli._common import (
    EXIT_GATES_REFUSED,
    PANEL_TRAIN,
    console,
    err_console,
    print_json,
    settings,
    state,
)
from keeneye.domain import InvalidInput, JsonObject

if TYPE_CHECKING:
    from keeneye.lifecycle.runs import TrainingRunRecord

EXIT_CODES = {"succeeded": 0, "refused": EXIT_GATES_REFUSED, "failed": 2}


def register(app: typer.Typer) -> None:
    app.command("retrain", rich_help_panel=PANEL_TRAIN)(retrain)
    app.command("runs", rich_help_panel=PANEL_TRAIN)(runs)


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no user name in some containers
        return "cli"


def retrain(
    pipeline: str = typer.Argument(..., help="Pipeline whose model to retrain."),
    reason: str | None = typer.Option(None, "--reason", help="Why (recorded on the run and the model)."),
    data: Path | None = typer.Option(
        None, "--data", exists=True, help="Training data instead of the champion's (COCO or ImageFolder)."
    ),
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="Override the spec's epochs."),
    pseudo_labels: bool = typer.Option(
        False,
        "--pseudo-labels/--no-pseudo-labels",
        help="Add confident champion answers (≥ 0.95) as labels, ≤ 20 % of the data.",
    ),
    run_id: int | None = typer.Option(
        None, "--run-id", min=1, help="Execute this queued run (what the scheduler, Airflow or cron call)."
    ),
    json_out: bool = typer.Option(
        False, "--json/--no-json", help="Print the finished run as JSON (progress to stderr)."
    ),
) -> None:
    """Retrain a pipeline's model now (manual trigger), or execute an already requested run.

    The dataset is the champion's training data plus every labelled observation; the newest data is
    the test split; training starts from the champion's weights; the gates decide whether the new
    model becomes the challenger. See docs/retraining.md.
    """
    from keeneye.lifecycle.retrain import run_retraining
    from keeneye.lifecycle.runs import get_run
    from keeneye.lifecycle.triggers import request_manual
    from keeneye.pipelines import PipelineCatalog
    from keeneye.registry import ModelRegistry
    from keeneye.store import open_results_db
    from keeneye.training.progress import console_progress

    s = settings()
    PipelineCatalog(s).get(pipeline)  # NotFound naming the known pipelines
    db = open_results_db(s)
    if run_id is not None:
        extra = [flag for flag, v in (("--reason", reason), ("--data", data), ("--epochs", epochs)) if v]
        if extra or pseudo_labels:
            raise InvalidInput(
                "bad_option",
                f"--run-id executes a run as it was requested; {', '.join(extra or ['--pseudo-labels'])} "
                "cannot change it",
                fix=f"drop them, or request a new run: keeneye retrain {pipeline} --reason TEXT …",
            )
        queued = get_run(db, run_id)
        if queued.pipeline != pipeline:
            raise InvalidInput(
                "bad_option",
                f"run {run_id} belongs to pipeline {queued.pipeline}, not {pipeline}",
                fix=f"keeneye retrain {queued.pipeline} --run-id {run_id}",
            )
    else:
        if not reason or not reason.strip():
            raise InvalidInput(
                "reason_required", "a manual retraining needs a reason", fix="add --reason TEXT"
            )
        inputs: JsonObject = {"requested_by": _actor(), "pseudo_labels": pseudo_labels}
        if data is not None:
            inputs["data_dir"] = str(data.expanduser().absolute())
        if epochs is not None:
            inputs["epochs"] = epochs
        run_id = request_manual(db, pipeline, reason, inputs).id
        (err_console if json_out else console).print(f"run {run_id} of {pipeline} queued", highlight=False)
    with console_progress(err_console if json_out else console, quiet=state.quiet) as progress:
        run = run_retraining(s, run_id, progress=progress, registry=ModelRegistry(s, events=db), db=db)
    _report(run, json_out)
    raise typer.Exit(EXIT_CODES.get(run.status, 2))


def _report(run: TrainingRunRecord, json_out: bool) -> None:
    from keeneye.lifecycle.retrain import iter_outcome_lines

    if json_out:
        print_json(run.to_dict())
        return
    lines = list(iter_outcome_lines(run))
    colour = {"succeeded": "green", "refused": "yellow", "failed": "red"}.get(run.status, "white")
    console.print(f"[bold {colour}]{lines[0]}[/]", highlight=False)
    out = err_console if run.status == "failed" else console
    for line in lines[1:]:
        out.print(f"  {line}", highlight=False, markup=False)
    sys.stdout.flush()


def runs(
    pipeline: str = typer.Argument(..., help="Pipeline whose training runs to list."),
    limit: int = typer.Option(20, "--limit", min=1, max=500, help="How many, newest first."),
    json_out: bool = typer.Option(False, "--json/--no-json", help="Print JSON instead of a table."),
) -> None:
    """Training runs of a pipeline, newest first: cause, status, the model they produced."""
    from keeneye.lifecycle.runs import list_runs
    from keeneye.pipelines import PipelineCatalog
    from keeneye.store import open_results_db

    s = settings()
    PipelineCatalog(s).get(pipeline)
    found = list_runs(open_results_db(s), pipeline, limit=limit)
    if json_out:
        print_json({"pipeline": pipeline, "runs": [r.to_dict() for r in found]})
        return
    if not found:
        console.print(
            f"no training runs of {pipeline} yet (keeneye train --pipeline {pipeline} --data DIR, "
            f"or keeneye retrain {pipeline} --reason TEXT)"
        )
        return
    table = Table(title=f"training runs of {pipeline}")
    for column in ("id", "requested", "cause", "status", "model", "gates", "seconds", "reason / error"):
        table.add_column(column)
    for r in found:
        outcome = r.outcome
        version = f"v{outcome['version']}" if outcome.get("version") else ""
        gates = outcome.get("gates") or {}
        passed = "" if not gates else ("passed" if gates.get("passed") else "failed")
        table.add_row(
            str(r.id),
            f"{r.requested_at:%Y-%m-%d %H:%M}",
            r.cause,
            r.status,
            version,
            passed,
            "" if r.seconds is None else f"{r.seconds:.0f}",
            (r.error or r.reason)[:80],
        )
    console.print(table)
