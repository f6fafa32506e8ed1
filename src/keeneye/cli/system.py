"""System commands: ``doctor`` (``--deep`` reads back every stored object, docs/backup.md) and
``db upgrade``."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from keeneye.cli._common import PANEL_OPS, console, print_json, progress_bar, settings
from keeneye.domain import BackendHealth, KeeneyeError
from keeneye.settings import Settings, mask_url

if TYPE_CHECKING:
    from keeneye.store import IntegrityReport


def _health_checks(s: Settings) -> list[tuple[str, Callable[[], BackendHealth]]]:
    from keeneye.registry import registry_health
    from keeneye.store import open_cache, open_object_store, open_results_db
    from keeneye.stream import open_bus

    def db() -> BackendHealth:
        return open_results_db(s, migrate=False).check()

    def bus() -> BackendHealth:
        b = open_bus(s)
        try:
            return b.check()
        finally:
            b.close()

    def objects() -> BackendHealth:
        return open_object_store(s).check()

    def cache() -> BackendHealth:
        c = open_cache(s)
        try:
            return c.check()
        finally:
            c.close()

    def registry() -> BackendHealth:
        return registry_health(s)

    return [
        ("KEENEYE_DATABASE_URL", db),
        ("KEENEYE_BUS_URL", bus),
        ("KEENEYE_OBJECTS_URL", objects),
        ("KEENEYE_CACHE_URL", cache),
        ("KEENEYE_REGISTRY_URI", registry),
    ]


def run_doctor(s: Settings) -> list[BackendHealth]:
    """Check every configured backend; never raises for an unreachable or misconfigured one."""
    urls = s.backend_urls()
    results = []
    for setting, check in _health_checks(s):
        try:
            results.append(check())
        except KeeneyeError as exc:
            results.append(
                BackendHealth(setting, mask_url(urls[setting]), False, detail=exc.message, fix=exc.fix or "")
            )
        except Exception as exc:  # a doctor reports, it does not crash
            results.append(
                BackendHealth(setting, mask_url(urls[setting]), False, detail=f"{type(exc).__name__}: {exc}")
            )
    return results


def _deep_check(s: Settings, max_problems: int, *, transient: bool) -> IntegrityReport:
    from keeneye.store import check_integrity, open_object_store, open_results_db

    with progress_bar("reading back every object", transient=transient) as update:
        return check_integrity(
            open_results_db(s, migrate=False),
            open_object_store(s),
            max_problems=max_problems,
            progress=update,
        )


def _print_deep(report: IntegrityReport | None) -> None:
    if report is None:
        console.print("[red]✗ deep check not run[/]: the results database or the object store is unreachable")
        return
    console.print(
        f"deep check: {report.observations:,} observations' objects ({report.with_predictions:,} with a "
        f"prediction, {report.keys_checked:,} distinct objects) against their recorded sha256 and size; "
        f"{report.other_objects:,} other objects against their recorded MD5; "
        f"{report.unverifiable:,} objects with no recorded hash",
        highlight=False,
    )
    for p in report.problems:
        where = f" (observation {p.observation_id})" if p.observation_id else ""
        console.print(f"[red]✗ {p.kind}[/] {p.key}{where}: {p.detail}", highlight=False, soft_wrap=True)
    if report.problem_count > len(report.problems):
        console.print(
            f"… {report.problem_count - len(report.problems)} more (raise --max-problems to list them)"
        )
    if report.ok:
        console.print("[green]✓ every object holds what was recorded[/]")
    else:
        kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(report.problems_by_kind.items()))
        console.print(f"[red]{report.problem_count} problems[/]: {kinds}", highlight=False)


def doctor(
    json_out: bool = typer.Option(False, "--json/--no-json", help="Print JSON instead of a table."),
    deep: bool = typer.Option(
        False,
        "--deep/--no-deep",
        help="Also read back every stored object: each observation's object exists with its recorded "
        "sha256 and size, every other object matches its recorded MD5 (reads all objects).",
    ),
    max_problems: int = typer.Option(
        20, "--max-problems", min=1, help="With --deep: how many problems to list (all are counted)."
    ),
) -> None:
    """Check every configured backend (database, bus, objects, cache, registry); exit 1 if one fails.

    With --deep, also check that every stored object holds what was recorded; exit 1 on any problem.
    """
    s = settings()
    results = run_doctor(s)
    report = None
    reachable = {r.setting: r.reachable for r in results}
    if deep and reachable.get("KEENEYE_DATABASE_URL") and reachable.get("KEENEYE_OBJECTS_URL"):
        report = _deep_check(s, max_problems, transient=json_out)
    if json_out:
        backends = [r.__dict__ for r in results]
        print_json({"backends": backends, "deep": report.to_dict() if report else None} if deep else backends)
    else:
        table = Table(title="keeneye doctor")
        for col in ("backend", "URL", "reachable", "version", "fix / detail"):
            table.add_column(col, overflow="fold")
        for r in results:
            table.add_row(
                r.setting,
                r.url,
                "[green]yes[/]" if r.reachable else "[red]no[/]",
                r.version,
                r.fix if not r.reachable and r.fix else r.detail,
            )
        console.print(table)
        for r in results:
            if not r.reachable:
                console.print(
                    f"[red]✗ {r.setting}[/]: {r.detail}" + (f" — {r.fix}" if r.fix else ""), highlight=False
                )
        if deep:
            _print_deep(report)
    if not all(reachable.values()) or (deep and (report is None or not report.ok)):
        raise typer.Exit(1)


db_app = typer.Typer(help="Results database: migrations.", no_args_is_help=True)


@db_app.command("upgrade")
def db_upgrade(revision: str = typer.Argument("head", help="Alembic revision to upgrade to.")) -> None:
    """Apply database migrations (creates the SQLite file on first use)."""
    from keeneye.store import open_results_db

    db = open_results_db(settings(), migrate=False)
    db.upgrade(revision)
    console.print(f"database at {mask_url(db.url)} is at revision {db.current_revision()}")


def register(app: typer.Typer) -> None:
    app.command("doctor", rich_help_panel=PANEL_OPS)(doctor)
    app.add_typer(db_app, name="db", rich_help_panel=PANEL_OPS)
