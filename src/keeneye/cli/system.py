"""System commands: ``doctor`` and ``db upgrade``."""

from __future__ import annotations

from collections.abc import Callable

import typer
from rich.table import Table

from keeneye.cli._common import PANEL_OPS, console, print_json, settings
from keeneye.domain import BackendHealth, KeeneyeError
from keeneye.settings import Settings, mask_url


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


def doctor(
    json_out: bool = typer.Option(False, "--json/--no-json", help="Print JSON instead of a table."),
) -> None:
    """Check every configured backend (database, bus, objects, cache, registry); exit 1 if one fails."""
    results = run_doctor(settings())
    if json_out:
        print_json([r.__dict__ for r in results])
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
    if not all(r.reachable for r in results):
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
