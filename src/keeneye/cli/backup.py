"""``keeneye backup create | verify | restore`` (docs/backup.md): backups of the embedded deployment."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from keeneye.cli._common import PANEL_OPS, console, print_json, progress_bar, settings, state

backup_app = typer.Typer(
    help="Back up the embedded deployment (databases, bus, objects, registry, config) and restore it.",
    no_args_is_help=True,
)

_FIRST = 20  # problems printed; --json carries them all


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


def _summary_table(title: str, summary: dict[str, int]) -> Table:
    table = Table(title=title)
    table.add_column("what")
    table.add_column("count", justify="right")
    for key, value in summary.items():
        table.add_row(key.replace("_", " "), _human(value) if key == "bytes" else f"{value:,}")
    return table


def _print_problems(problems: list[tuple[str, str, str]]) -> None:
    for kind, path, detail in problems[:_FIRST]:
        console.print(f"[red]✗ {kind}[/] {path}: {detail}", highlight=False, soft_wrap=True)
    if len(problems) > _FIRST:
        console.print(f"… and {len(problems) - _FIRST} more (--json lists them all)")


@backup_app.command("create")
def create(
    dest: Path = typer.Argument(
        ..., help="Where to write the backup: a new folder, or a file ending in .tar for one archive."
    ),
    force: bool = typer.Option(
        False, "--force/--no-force", help="Replace an existing backup at DEST (never other files)."
    ),
    as_json: bool = typer.Option(False, "--json/--no-json", help="Print the result as JSON."),
) -> None:
    """Back up the embedded deployment into a folder or one .tar, consistently while it runs.

    The results DB and the bus (SQLite online backup: consistent while `keeneye up` runs), every
    object, the MLflow registry (its DB and artifacts) and keeneye.yaml, with a manifest of versions,
    the schema revision, row counts and the sha256 of every file.

    The scaled deployment (PostgreSQL, Kafka, S3, an MLflow server) is backed up with its own tools:
    see docs/backup.md.
    """
    from keeneye.scaling import create_backup

    with progress_bar("backing up", transient=as_json) as update:
        result = create_backup(settings(), dest, force=force, progress=update)
    if as_json:
        print_json(result.to_dict())
        return
    console.print(_summary_table(f"backup at {result.path}", result.manifest.summary()))
    console.print(f"results database schema revision {result.manifest.alembic_revision}", highlight=False)
    for note in result.manifest.excluded:
        console.print(f"[yellow]not included:[/] {note}", highlight=False, soft_wrap=True)


@backup_app.command("verify")
def verify(
    src: Path = typer.Argument(..., help="The backup: its folder or its .tar file."),
    as_json: bool = typer.Option(False, "--json/--no-json", help="Print the report as JSON."),
) -> None:
    """Check a backup against its manifest and its own records; exit 1 naming each problem.

    Every file against the manifest's sha256, `PRAGMA integrity_check` of every database, every
    stored prediction's object present with its recorded hash, every registered model version's
    artifacts present."""
    from keeneye.scaling import verify_backup

    with progress_bar("verifying", transient=as_json) as update:
        report = verify_backup(src, progress=update)
    if as_json:
        print_json(report.to_dict())
    else:
        if report.manifest is not None:
            console.print(
                f"backup made {report.manifest.created_at} by keeneye {report.manifest.keeneye_version}, "
                f"schema revision {report.manifest.alembic_revision}",
                highlight=False,
            )
        console.print(
            f"hashed {report.files:,} files ({_human(report.bytes)}); checked {report.databases} databases, "
            f"the objects of {report.predicted_objects:,} observations with predictions, the artifacts "
            f"of {report.model_versions} model versions",
            highlight=False,
            soft_wrap=True,
        )
        _print_problems([(p.kind, p.path, p.detail) for p in report.problems])
        console.print(
            "[green]✓ the backup is sound[/]" if report.ok else f"[red]{len(report.problems)} problems[/]"
        )
    if not report.ok:
        raise typer.Exit(1)


@backup_app.command("restore")
def restore(
    src: Path = typer.Argument(..., help="The backup: its folder or its .tar file."),
    home: Path = typer.Option(..., "--home", help="The keeneye home to restore into (new or empty)."),
    force: bool = typer.Option(
        False,
        "--force/--no-force",
        help="Restore into a home that is not empty: its databases, objects, registry and keeneye.yaml "
        "are replaced, everything else is left.",
    ),
    as_json: bool = typer.Option(False, "--json/--no-json", help="Print the result as JSON."),
) -> None:
    """Restore a backup into a fresh home, then check that its served models load.

    Verifies the backup first, writes the embedded layout into --home, migrates an older results
    database to this keeneye's schema (a newer one is refused), moves the registry's artifact paths
    to the new home and downloads every champion and challenger. Then run keeneye with
    KEENEYE_HOME set to the new home. Exit 1 if a served model cannot be loaded."""
    from keeneye.scaling import restore_backup

    with progress_bar("restoring", transient=as_json) as update:
        result = restore_backup(src, home, force=force, progress=update)
    if as_json:
        print_json(result.to_dict())
    else:
        console.print(_summary_table(f"restored into {result.home}", result.summary))
        moved = (
            f"migrated from {result.revision_before} to {result.revision_after}"
            if result.revision_before != result.revision_after
            else f"at {result.revision_after}"
        )
        console.print(f"results database schema {moved}", highlight=False)
        for model in result.models_checked:
            console.print(f"[green]✓[/] {model} loads from the restored registry", highlight=False)
        _print_problems([(p.kind, p.path, p.detail) for p in result.problems])
        if not state.quiet:
            config = f" KEENEYE_CONFIG={result.config}" if result.config else ""
            console.print(f"next: KEENEYE_HOME={result.home}{config} keeneye up", highlight=False)
    if not result.ok:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(backup_app, name="backup", rich_help_panel=PANEL_OPS)


__all__ = ["register"]
