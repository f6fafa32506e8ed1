"""``keeneye inspect``: the line-inspection edge runner for one camera (keeneye.edge)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import typer
from rich.table import Table

from keeneye.cli._common import PANEL_SERVE, console, err_console, print_json, settings, state
from keeneye.edge import EventMessage, InspectOptions, SummaryJson, build_runner
from keeneye.settings import Settings
from keeneye.stream import Bus, open_bus, output_topic


def inspect(
    pipeline: str = typer.Option("line-inspection", "--pipeline", "-p", help="Pipeline whose model decides."),
    source: str = typer.Option(
        ...,
        "--source",
        help="Where frames come from: a folder of images (played in name order), a video file, or a "
        "camera stream URL (rtsp://…, http://…).",
    ),
    line: str = typer.Option(..., "--line", help="Line id, e.g. L1 (labels every decision and metric)."),
    camera: str = typer.Option(..., "--camera", help="Camera id on that line, e.g. cam-1."),
    plc: str = typer.Option(
        ...,
        "--plc",
        help="Where decisions go: modbus://HOST[:PORT][?unit=N], opcua://HOST[:PORT] or mqtt://HOST[:PORT]/TOPIC.",
    ),
    sku: str = typer.Option(
        "", "--sku", help="Product on the line now; picks per-SKU thresholds (edge.sku_thresholds)."
    ),
    batch: str = typer.Option("", "--batch", help="Production batch, stored with every event."),
    fps: float = typer.Option(
        None,
        "--fps",
        min=0.001,
        help="Play a folder or video file at this many frames a second (default: as fast as decided).",
    ),
    model: Path = typer.Option(
        None, "--model", help="A model bundle folder to use instead of the pipeline's registered champion."
    ),
    once: bool = typer.Option(
        False,
        "--once/--no-once",
        help="Stop when a folder or file is used up and print a summary (else wait for new files).",
    ),
    replay: bool = typer.Option(
        None,
        "--replay/--no-replay",
        help="Send decisions made while the PLC was down once it is back (default: plc.replay).",
    ),
    line_stop: str = typer.Option(
        "",
        "--line-stop",
        help="Stop the line while the PLC is unreachable for plc.line_stop_after_seconds (10 s): "
        "modbus://HOST[:PORT][?unit=N] (holding register plc.line_stop_register = 1 stop, 0 run) or "
        'mqtt://HOST[:PORT]/TOPIC (a retained {"stop": true|false} message).',
    ),
    json_out: bool = typer.Option(False, "--json/--no-json", help="Print the summary as JSON."),
) -> None:
    """Decide OK / DEFECT for every frame of one camera and write it to the line's PLC.

    Every frame is decided within the pipeline's deadline (348 ms for line-inspection), or gets the
    fail-safe DEFECT (result 3) and an alert. Decisions are journaled before the PLC gets them and stored
    in the background: killing the runner loses none. Exit 1 when any part got the fail-safe.

    Example: keeneye inspect --source frames/ --line L1 --camera cam-1 --plc modbus://10.0.0.5 --once
    """
    s = settings()
    options = InspectOptions(
        pipeline=pipeline,
        source=source,
        line=line,
        camera=camera,
        plc=plc,
        sku=sku,
        batch=batch,
        fps=fps,
        model=model,
        replay=replay,
        watch=not once,
        line_stop=line_stop,
    )
    publisher = _BusPublisher(s, pipeline)
    runner = build_runner(s, options, on_stored=publisher)
    # Parts decided before the first connection would only fail as plc_unreachable: give it a moment.
    if not runner.sink.wait_connected(2 * s.plc.connect_timeout_seconds):
        err_console.print(
            f"[yellow]warning:[/] the PLC at {plc} is not reachable yet; deciding anyway (decisions fail "
            "as plc_unreachable until it connects, and PlcUnreachable fires after 15 s)",
            highlight=False,
        )
    if not state.quiet and not json_out:
        console.print(
            f"inspecting {runner.source.description} · line {line} camera {camera} → {plc} "
            f"· deadline {runner.deadline_ms:g} ms · from part {runner.next_sequence}",
            highlight=False,
        )
    try:
        runner.run()
    finally:
        publisher.close()
    summary = runner.summary.to_json()
    if json_out:
        print_json(summary)
    else:
        console.print(_table(summary, line, camera))
    if summary["failsafe"]:
        raise typer.Exit(1)


class _BusPublisher:
    """Stored events → ``keeneye.<pipeline>.out``, keyed ``line_id/camera_id`` (called from the recorder
    thread; the bus is opened on first use, so a runner whose bus is down still decides)."""

    def __init__(self, s: Settings, pipeline: str) -> None:
        self.settings = s
        self.topic = output_topic(pipeline)
        self.bus: Bus | None = None

    def __call__(self, messages: Sequence[EventMessage]) -> None:
        if self.bus is None:
            self.bus = open_bus(self.settings)
        for m in messages:
            self.bus.publish(self.topic, m.value, key=m.key)
        self.bus.flush()

    def close(self) -> None:
        if self.bus is not None:
            self.bus.close()


def _table(summary: SummaryJson, line: str, camera: str) -> Table:
    table = Table(title=f"keeneye inspect · {line}/{camera}")
    for col in ("frames", "OK", "DEFECT", "fail-safe", "sequences", "p50 ms", "p95 ms", "max ms", "stored"):
        table.add_column(col)
    failsafe = ", ".join(f"{k} {v}" for k, v in summary["failsafe"].items()) or "0"
    lat = summary["latency_ms"]
    seqs = f"{summary['first_sequence']}–{summary['last_sequence']}" if summary["frames"] else "-"
    table.add_row(
        str(summary["frames"]),
        str(summary["ok"]),
        str(summary["defect"]),
        failsafe,
        seqs,
        f"{lat['p50']:.1f}",
        f"{lat['p95']:.1f}",
        f"{lat['max']:.1f}",
        str(summary["stored"]),
    )
    return table


def register(app: typer.Typer) -> None:
    app.command("inspect", rich_help_panel=PANEL_SERVE)(inspect)


__all__ = ["register"]
