"""``keeneye drift report``: a pipeline's latest drift windows as a table, JSON or a self-contained HTML page.

The reports are read from the results database (written by the serving processes and stream workers
when a window closes, see :mod:`keeneye.monitoring.drift`); this command computes nothing itself.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from keeneye.cli._common import PANEL_MONITOR, console, err_console, print_json, settings
from keeneye.domain import JsonValue, KeeneyeError

if TYPE_CHECKING:
    from keeneye.store import DriftReportRecord

drift_app = typer.Typer(
    help="Data drift: live windows compared with the served model's reference profile.", no_args_is_help=True
)

MAX_LIMIT = 200  # = keeneye.monitoring.drift.MAX_REPORTS (not imported here: keeps `--help` fast)


def register(app: typer.Typer) -> None:
    app.add_typer(drift_app, name="drift", rich_help_panel=PANEL_MONITOR)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, float) and 0 < abs(value) < 10**-digits:
        return f"{value:.1e}"
    return f"{value:.{digits}f}"


def _verdict(alarm: bool) -> str:
    return "[bold red]ALARM[/]" if alarm else "[green]ok[/]"


def _window_title(r: DriftReportRecord) -> str:
    return (
        f"{r.pipeline} · model v{r.model_version} · {r.window_start:%Y-%m-%d %H:%M:%S} → "
        f"{r.window_end:%H:%M:%S} UTC · {r.n} predictions"
    )


def _print_report(r: DriftReportRecord) -> None:
    table = Table(title=f"{_window_title(r)} · {_verdict(r.alarm)}", title_justify="left")
    for col in ("feature", "PSI", "KS", "KS p", "ref mean", "live mean", "alarm"):
        table.add_column(col, justify="left" if col == "feature" else "right")
    for name, f in sorted(r.features.items(), key=lambda kv: (not kv[1].get("alarm"), kv[0])):
        ref, cur = f.get("reference", {}), f.get("current", {})
        table.add_row(
            name,
            _fmt(f.get("psi")),
            _fmt(f.get("ks")),
            _fmt(f.get("ks_p")),
            _fmt(ref.get("mean"), 4) if "mean" in ref else "",
            _fmt(cur.get("mean"), 4) if "mean" in cur else "",
            _verdict(bool(f.get("alarm"))),
        )
    console.print(table)
    e = r.embedding
    if e:
        console.print(
            f"embedding ({e.get('source')}, {e.get('dim')} → {e.get('reduced_dim')} dims, "
            f"{e.get('n_current')} live vs {e.get('n_reference')} reference): "
            f"MMD² {_fmt(e.get('mmd'), 4)}, p {_fmt(e.get('p_value'))} — {_verdict(bool(e.get('alarm')))}",
            highlight=False,
        )
    else:
        console.print("embedding: not compared (the profile or the served model has no embedding)")


@drift_app.command("report")
def report(
    pipeline: str = typer.Option(..., "--pipeline", "-p", help="The pipeline."),
    limit: int = typer.Option(1, "--limit", "-n", min=1, max=MAX_LIMIT, help="How many latest windows."),
    json_out: bool = typer.Option(False, "--json/--no-json", help="Print JSON instead of tables."),
    html_out: Path | None = typer.Option(
        None, "--html", dir_okay=False, help="Also write a self-contained HTML report with plots here."
    ),
) -> None:
    """PSI, KS and alarm per feature (and the embedding MMD test) of the latest drift window(s)."""
    from keeneye.monitoring.drift import latest_reports, no_report_note
    from keeneye.pipelines import PipelineCatalog
    from keeneye.store import open_results_db

    s = settings()
    PipelineCatalog(s).get(pipeline)  # an unknown pipeline: one line with the known names, exit 2
    reports = latest_reports(open_results_db(s), pipeline, limit=limit)
    if not reports:
        note = no_report_note(pipeline, s.monitoring)
        if html_out is not None:
            raise KeeneyeError(f"nothing to write to {html_out}: {note}")
        if json_out:
            print_json({"pipeline": pipeline, "reports": [], "note": note})
        else:
            console.print(note, highlight=False)
        return
    if html_out is not None:
        try:
            html_out.write_text(render_html(reports), encoding="utf-8")
        except OSError as exc:
            raise KeeneyeError(f"cannot write {html_out}: {exc.strerror or exc}") from None
        (err_console if json_out else console).print(f"wrote {html_out}", highlight=False)
    if json_out:
        print_json({"pipeline": pipeline, "reports": [r.to_dict() for r in reports]})
        return
    for r in reports:
        _print_report(r)


# --------------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
td, th { border: 1px solid #ccc; padding: 4px 10px; text-align: right; }
td:first-child, th:first-child { text-align: left; }
.alarm { color: #b00; font-weight: bold; } .ok { color: #070; }
figure { display: inline-block; margin: 0.5em; } figcaption { font-size: 0.9em; }
"""


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=72)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _section(f: Mapping[str, JsonValue], key: str) -> Mapping[str, JsonValue]:
    """A feature's ``reference`` or ``current`` part (an object in every drift report)."""
    part = f.get(key)
    return part if isinstance(part, dict) else {}


def _share(value: JsonValue | None) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


def _feature_plot(name: str, f: Mapping[str, JsonValue]) -> str:
    """Reference vs live: histograms of the samples and the quantile curves, as a base64 PNG."""
    import numpy as np
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    ref, cur = _section(f, "reference"), _section(f, "current")
    fig = Figure(figsize=(8, 2.8))
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.18, top=0.9, wspace=0.2)  # no costly tight bbox
    hist, quant = fig.subplots(1, 2)
    ref_q = np.asarray(ref.get("quantiles") or [], dtype=float)
    cur_q = np.asarray(cur.get("quantiles") or [], dtype=float)
    levels = np.asarray(ref.get("levels") or np.linspace(0, 1, ref_q.size), dtype=float)
    live = np.asarray(cur.get("sample") or [], dtype=float)
    pooled = np.concatenate([ref_q, live])
    if pooled.size:
        lo, hi = float(pooled.min()), float(pooled.max())
        edges = np.linspace(lo, hi if hi > lo else lo + 1.0, 31)
        if ref_q.size > 1:  # the reference's share per bin, from its piecewise-linear quantile CDF
            ref_share = np.diff(np.interp(edges, ref_q, levels, left=0.0, right=1.0))
            hist.stairs(ref_share, edges, fill=True, alpha=0.5, label="reference", color="tab:blue")
        if live.size:
            live_share = np.histogram(live, bins=edges)[0] / live.size
            hist.stairs(live_share, edges, fill=True, alpha=0.5, label="live", color="tab:orange")
        hist.legend(fontsize=8)
    hist.set_title(f"{name}: share per bin", fontsize=9)
    if ref_q.size:
        quant.plot(levels, ref_q, "o-", ms=3, label="reference", color="tab:blue")
    if cur_q.size == levels.size:
        quant.plot(levels, cur_q, "o-", ms=3, label="live", color="tab:orange")
    quant.set_xlabel("quantile level", fontsize=8)
    quant.set_title(f"{name}: quantiles", fontsize=9)
    quant.legend(fontsize=8)
    return _png(fig)


def _class_mix_plot(f: Mapping[str, JsonValue]) -> str:
    import numpy as np
    from matplotlib.figure import Figure

    ref, cur = _section(f, "reference"), _section(f, "current")
    names = sorted(set(ref) | set(cur))
    x = np.arange(len(names))
    fig = Figure(figsize=(max(4.0, 0.6 * len(names) + 2), 2.8))
    fig.subplots_adjust(bottom=0.3, top=0.9)
    ax = fig.subplots()
    ax.bar(x - 0.2, [_share(ref.get(n)) for n in names], 0.4, label="reference", color="tab:blue")
    ax.bar(x + 0.2, [_share(cur.get(n)) for n in names], 0.4, label="live", color="tab:orange")
    ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
    ax.set_title("class mix: share of predictions", fontsize=9)
    ax.legend(fontsize=8)
    return _png(fig)


def _cell(alarm: bool) -> str:
    return '<td class="alarm">ALARM</td>' if alarm else '<td class="ok">ok</td>'


def _summary_table(r: DriftReportRecord) -> str:
    rows = []
    for name, f in sorted(r.features.items()):
        rows.append(
            f"<tr><td>{html.escape(name)}</td><td>{_fmt(f.get('psi'))}</td><td>{_fmt(f.get('ks'))}</td>"
            f"<td>{_fmt(f.get('ks_p'))}</td>{_cell(bool(f.get('alarm')))}</tr>"
        )
    e = r.embedding
    if e:
        source = html.escape(str(e.get("source")))
        rows.append(
            f"<tr><td>embedding ({source}) — MMD²</td><td>{_fmt(e.get('mmd'), 4)}</td>"
            f"<td>—</td><td>{_fmt(e.get('p_value'))}</td>{_cell(bool(e.get('alarm')))}</tr>"
        )
    head = "<tr><th>feature</th><th>PSI</th><th>KS</th><th>p</th><th>alarm</th></tr>"
    verdict = '<span class="alarm">ALARM</span>' if r.alarm else '<span class="ok">ok</span>'
    return f"<h2>{html.escape(_window_title(r))} · {verdict}</h2><table>{head}{''.join(rows)}</table>"


def render_html(reports: Sequence[DriftReportRecord]) -> str:
    """One self-contained page: a table per window, plots of the latest window (PNG, inline base64)."""
    latest = reports[0]
    figures = []
    for name, f in sorted(latest.features.items(), key=lambda kv: (not kv[1].get("alarm"), kv[0])):
        png = _class_mix_plot(f) if "levels" not in f.get("reference", {}) else _feature_plot(name, f)
        caption = f"{name}: PSI {_fmt(f.get('psi'))}, KS {_fmt(f.get('ks'))} (p {_fmt(f.get('ks_p'))})"
        figures.append(
            f'<figure><img src="data:image/png;base64,{png}" alt="{html.escape(name)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    title = f"keeneye drift report: {latest.pipeline}"
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"
        "<p>PSI alarms above 0.2; KS when the statistic is above 0.1 and p below 0.05; the embedding MMD "
        "test when p is below 0.05.</p>"
        + "".join(_summary_table(r) for r in reports)
        + f"<h2>Reference vs live, latest window</h2>{''.join(figures)}</body></html>"
    )
