"""Pipeline commands: ``pipelines list`` and ``pipelines show``."""

from __future__ import annotations

import typer
from rich.syntax import Syntax
from rich.table import Table

from keeneye.cli._common import PANEL_MODELS, console, print_json, settings

pipelines_app = typer.Typer(
    help="Pipeline specs: what each application accepts, serves and gates.", no_args_is_help=True
)


@pipelines_app.command("list")
def list_pipelines(
    json_out: bool = typer.Option(False, "--json/--no-json", help="Print JSON instead of a table."),
) -> None:
    """List every pipeline: built-ins and those in KEENEYE_PIPELINES__DIRS."""
    from keeneye.pipelines import PipelineCatalog

    catalog = PipelineCatalog(settings())
    specs = catalog.specs()
    if json_out:
        print_json(
            [
                {
                    "name": s.name,
                    "title": s.title,
                    "task": s.task.value,
                    "model": s.model_name,
                    "alias": s.model.alias,
                    "p95_latency_ms": s.slo.p95_latency_ms,
                    "description": s.description,
                    "source": catalog.source(s.name),
                }
                for s in specs
            ]
        )
        return
    table = Table(title="pipelines")
    for col in ("name", "task", "model @ alias", "p95 SLO", "description"):
        table.add_column(col, overflow="fold")
    for s in specs:
        table.add_row(
            s.name,
            s.task.value,
            f"{s.model_name}@{s.model.alias}",
            f"{s.slo.p95_latency_ms:g} ms",
            s.description,
        )
    console.print(table)


@pipelines_app.command("show")
def show_pipeline(
    name: str = typer.Argument(..., help="Pipeline name, e.g. species-id."),
    json_out: bool = typer.Option(False, "--json/--no-json", help="Print JSON instead of YAML."),
) -> None:
    """Show one pipeline's spec, every default spelled out, as YAML."""
    from keeneye.pipelines import PipelineCatalog

    spec = PipelineCatalog(settings()).get(name)
    if json_out:
        print_json(spec.model_dump(mode="json"))
    elif console.is_terminal:
        console.print(Syntax(spec.to_yaml(), "yaml", theme="ansi_dark", background_color="default"))
    else:
        # Plain text when piped, so `keeneye pipelines show P > my.yaml` gives a valid spec to edit.
        console.out(spec.to_yaml().rstrip("\n"), highlight=False)


def register(app: typer.Typer) -> None:
    app.add_typer(pipelines_app, name="pipelines", rich_help_panel=PANEL_MODELS)
