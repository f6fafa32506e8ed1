"""``keeneye scheduler``: the periodic monitoring loop (alert rules + online quality) of ``keeneye up``."""

from __future__ import annotations

import logging
import os

import typer

from keeneye.cli._common import PANEL_MONITOR, console, err_console, settings


def scheduler(
    once: bool = typer.Option(False, "--once/--no-once", help="Run one round (rules + quality), then exit."),
) -> None:
    """Evaluate the alert rules and online quality every alerting.interval_seconds until stopped.

    `keeneye up` starts it for you; run it by hand when you run the API and workers yourself.
    Notifications go to the channels of alerting.route. SIGTERM or Ctrl-C stops it cleanly.
    """
    from keeneye.lifecycle.scheduler import Scheduler

    logging.getLogger("keeneye").setLevel(logging.INFO)
    s = settings()
    sched = Scheduler(s)
    if once:
        sched.setup()
        try:
            states = sched.run_round()
        finally:
            sched.teardown()
        firing = sum(1 for a in states if a.state == "firing")
        console.print(f"one round done: {firing} alert(s) firing, {len(states) - firing} other")
        if sched.last_error:
            err_console.print(f"[yellow]warning:[/] {sched.last_error}", highlight=False)
        return
    err_console.print(
        f"scheduler (pid {os.getpid()}) evaluating every {s.alerting.interval_seconds:g}s; Ctrl-C stops"
    )
    sched.run()
    err_console.print(f"scheduler stopped after {sched.rounds} round(s)")


def register(app: typer.Typer) -> None:
    app.command("scheduler", rich_help_panel=PANEL_MONITOR)(scheduler)


__all__ = ["register"]
