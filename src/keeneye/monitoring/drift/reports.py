"""Reading drift reports back: the newest ``drift_reports`` rows of a pipeline (at most
:data:`MAX_REPORTS`), and the note that explains an empty list.
"""

from __future__ import annotations

from typing import Final

from keeneye.settings import MonitoringSettings
from keeneye.store import DriftReportRecord, ResultsDB

MAX_REPORTS: Final = 200  # the most reports one query returns


def latest_reports(
    db: ResultsDB, pipeline: str, *, limit: int = 20, model_version: str | None = None
) -> list[DriftReportRecord]:
    """The pipeline's latest windows, newest first; at most ``min(limit, MAX_REPORTS)`` rows.

    Served by the ``(pipeline, window_end)`` index: never a scan of the table.
    """
    limit = max(1, min(int(limit), MAX_REPORTS))
    return db.latest_drift_reports(pipeline, limit, model_version=model_version)


def no_report_note(
    pipeline: str,
    settings: MonitoringSettings,
    *,
    pending: int | None = None,
    has_profile: bool | None = None,
) -> str:
    """Why a pipeline has no drift report yet, in one sentence (the API and ``keeneye drift report``)."""
    if has_profile is False:
        return (
            f"no drift report for {pipeline!r}: the served model has no reference profile "
            "(models exported by `keeneye train` carry one)"
        )
    size, seconds, least = (
        settings.drift_window_size,
        settings.drift_window_seconds,
        settings.drift_min_samples,
    )
    so_far = f" ({pending} observed so far in this process)" if pending is not None else ""
    return (
        f"no drift report for {pipeline!r} yet{so_far}: reports need traffic — a window closes after "
        f"{size} predictions, or after {seconds:g} s once it holds {least} — and a served model with a "
        "reference profile (models exported by `keeneye train` carry one)"
    )
