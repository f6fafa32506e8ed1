"""``keeneye up`` (the supervisor: API, scheduler, workers, autoscaling) and ``keeneye loadtest``."""

from __future__ import annotations

import importlib.util
import logging
import signal
import socket
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import typer
from rich.markup import escape
from rich.table import Table

from keeneye.cli._common import PANEL_OPS, PANEL_SERVE, console, err_console, print_json, settings
from keeneye.domain import ConfigError, KeeneyeError
from keeneye.settings import Settings

if TYPE_CHECKING:
    from keeneye.scaling import ChildSpec
    from keeneye.scaling.loadtest import LoadReport, StepPlan
    from keeneye.scaling.ops_scenario import LoadRun, OpsReport


def _split_names(values: list[str] | None) -> list[str]:
    """``--pipelines a --pipelines b`` and ``--pipelines a,b`` alike."""
    return [n.strip() for v in values or [] for n in v.split(",") if n.strip()]


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _prepare_stores(s: Settings) -> None:
    """Migrate the results DB (and create the embedded registry store) once, here, so the children
    starting together do not race each other to create the same tables."""
    from keeneye.registry import registry_health
    from keeneye.store import open_results_db

    open_results_db(s).ensure_schema()
    health = registry_health(s)
    if not health.reachable:
        err_console.print(f"[yellow]warning:[/] model registry: {health.detail}", highlight=False)


BUILTIN_PLUGINS = ("motion", "scene", "objects")


def _plugin_names(value: str) -> list[str]:
    """``--plugins``: ``builtin`` (motion, scene, objects), ``none``, or names, comma-separated."""
    names = _split_names([value])
    if names in (["none"], []):
        return []
    out: list[str] = []
    for name in names:
        out.extend(BUILTIN_PLUGINS if name == "builtin" else [name])
    return list(dict.fromkeys(out))


def _fixed_children(
    python: str,
    *,
    host: str,
    port: int,
    api_url: str | None,
    scheduler: bool,
    plugins: list[str] | None = None,
) -> tuple[list[ChildSpec], list[str]]:
    """The children besides the workers (the API unless ``api_url`` is None, the scheduler unless
    turned off, one process per smartcut plugin) and the notes the system view shows about what was
    not started."""
    from keeneye.scaling import ChildSpec

    fixed: list[ChildSpec] = []
    notes: list[str] = []
    if api_url is not None:
        fixed.append(
            ChildSpec(
                name="api",
                role="api",
                command=(python, "-m", "keeneye", "serve", "--host", host, "--port", str(port)),
                health_url=f"{api_url}/health",
            )
        )
    else:
        notes.append("api: not started (--no-api)")
    if scheduler:
        # The alert rules engine and the periodic monitoring jobs; restarted with backoff like the API.
        fixed.append(
            ChildSpec(name="scheduler", role="scheduler", command=(python, "-m", "keeneye", "scheduler"))
        )
    else:
        notes.append("scheduler: not started (--no-scheduler): no alert evaluation, no periodic jobs")
    for name in plugins or []:
        # Each smartcut plugin its own process (seed 004): it announces itself on started-plugins,
        # is restarted with backoff when it crashes, and says stopped-plugins on SIGTERM.
        fixed.append(
            ChildSpec(
                name=f"plugin-{name}", role="plugin", command=(python, "-m", "keeneye", "plugin", "run", name)
            )
        )
    if not plugins:
        notes.append("plugins: none started (--plugins none): smartcut requests find no plugin")
    return fixed, notes


def up(
    pipelines: list[str] = typer.Option(
        None,
        "--pipelines",
        "-p",
        help="Pipelines to run workers for (repeat or comma-separate; default: all).",
    ),
    host: str = typer.Option(None, help="API address (default 127.0.0.1)."),
    port: int = typer.Option(None, help="API port (default 8000)."),
    min_replicas: int = typer.Option(None, "--min-replicas", min=0, help="Workers per pipeline, at least."),
    max_replicas: int = typer.Option(None, "--max-replicas", min=1, help="Workers per pipeline, at most."),
    api: bool = typer.Option(
        True, "--api/--no-api", help="Run the API (--no-api: only the workers; the API runs elsewhere)."
    ),
    scheduler: bool = typer.Option(
        True,
        "--scheduler/--no-scheduler",
        help="Run the scheduler (alert rules engine, periodic monitoring jobs).",
    ),
    plugins: str = typer.Option(
        "builtin",
        "--plugins",
        help="smartcut plugin processes, comma-separated: builtin (motion, scene, objects), "
        "installed plugin names, or none.",
    ),
) -> None:
    """Run the whole system: the API, the scheduler, the smartcut plugins and autoscaled stream
    workers, each restarted when it crashes.

    Ctrl-C (or SIGTERM) stops the API, the scheduler and the plugins first (each plugin says
    stopped-plugins), lets the workers finish their batch, then exits. The API's /metrics shows the
    metrics of every process.

    Line inspection: each camera under edge.cameras in keeneye.yaml (line, camera, source, plc, sku)
    gets its own `keeneye inspect` process, restarted with backoff when it crashes.
    """
    from keeneye.metrics import Metrics, enable_multiprocess
    from keeneye.pipelines import PipelineCatalog
    from keeneye.scaling import ScalingPolicy, Supervisor, replica_bounds
    from keeneye.scaling.cameras import camera_children
    from keeneye.scaling.supervisor import multiprocess_metrics_dir
    from keeneye.stream import DEFAULT_GROUP, input_topic, open_bus

    s = settings()
    serving = s.serving
    host = host or serving.host
    port = serving.port if port is None else port
    catalog = PipelineCatalog(s)
    names = _split_names(pipelines) or catalog.names()
    policies: dict[str, ScalingPolicy] = {}
    for name in names:
        spec = catalog.get(name)  # NotFound names the known pipelines
        lo, hi = replica_bounds(
            s.scaling,
            bus_url=s.bus_url,
            spec_min=spec.replicas.min,
            spec_max=spec.replicas.max,
            min_override=min_replicas,
            max_override=max_replicas,
        )
        policies[name] = ScalingPolicy.from_settings(s.scaling, lo, hi)
    if importlib.util.find_spec("keeneye.stream.worker") is None:  # pragma: no cover - older builds
        raise KeeneyeError("this build has no stream worker", fix="upgrade keeneye")

    python = sys.executable
    api_url = None
    if api:
        if not _port_free(host, port):
            raise ConfigError("--port", f"{host}:{port} is already in use", fix="pass another --port")
        shown = "127.0.0.1" if host in {"0.0.0.0", "::"} else host  # noqa: S104 - a bind address, shown
        api_url = f"http://{shown}:{port}"
    plugin_names = _plugin_names(plugins)
    if plugin_names:
        from keeneye.video import recommenders

        installed = recommenders()
        unknown = [n for n in plugin_names if n not in installed]
        if unknown:
            raise ConfigError(
                "--plugins",
                f"no smartcut plugin named {', '.join(unknown)}",
                fix=f"use builtin, none, or some of: {', '.join(installed)}",
            )
    fixed, notes = _fixed_children(
        python, host=host, port=port, api_url=api_url, scheduler=scheduler, plugins=plugin_names
    )

    inspectors, inspect_notes = camera_children(s, python)  # edge.cameras: one `keeneye inspect` each
    fixed, notes = [*fixed, *inspectors], [*notes, *inspect_notes]
    _prepare_stores(s)
    # One metrics directory for this supervisor and all its children, before any metric value exists
    # here; the supervisor empties it of an earlier run's files when it starts.
    metrics_dir = multiprocess_metrics_dir(s.home)
    enable_multiprocess(metrics_dir)
    bus = open_bus(s)

    def lag_of(pipeline: str) -> int:
        return bus.lag(input_topic(pipeline), DEFAULT_GROUP)

    supervisor = Supervisor(
        home=s.home,
        scaling=s.scaling,
        policies=policies,
        worker_command=lambda p: (python, "-m", "keeneye", "worker", "--pipeline", p),
        fixed=fixed,
        lag_of=lag_of,
        metrics=Metrics(),
        notes=notes,
        api_url=api_url,
        metrics_dir=metrics_dir,
    )
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop waiting for the drain
        err_console.print("stopping: API first, then the workers finish their batch …")
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    logging.getLogger("keeneye").setLevel(logging.INFO)  # scaling decisions and restarts are the news
    workers = ", ".join(f"{p} {pol.min_replicas}–{pol.max_replicas}" for p, pol in policies.items())
    console.print(
        f"keeneye up: API {api_url or '(not started)'} · scheduler {'on' if scheduler else 'off'}"
        f" · plugins: {', '.join(plugin_names) or 'none'} · workers per pipeline: {workers}\n"
        f"  logs in {s.home / 'logs'} · system view at {api_url or ''}/v1/system"
        f" · metrics of every process at {api_url or ''}/metrics · Ctrl-C to stop",
        highlight=False,
    )
    try:
        supervisor.run(stop)
    finally:
        bus.close()
    console.print("keeneye up: stopped")


def loadtest(
    pipeline: str = typer.Option(None, "--pipeline", "-p", help="Pipeline to load (default: species-id)."),
    target: str = typer.Option(
        "http", "--target", help="http (the API, with Locust) or bus (the input topic)."
    ),
    scenario: str = typer.Option(
        "steps",
        "--scenario",
        help="steps: the per-step load report. ops: the same ramp against a running `keeneye up`, "
        "watching replicas, utilisation per replica and alerts, then the cool-down; writes ops.json "
        "and ops.png into --out.",
    ),
    start: float = typer.Option(5.0, "--start", help="Requests/s of the first step."),
    step: float = typer.Option(5.0, "--step", help="Requests/s added at each step."),
    step_seconds: float = typer.Option(30.0, "--step-seconds", help="Seconds per step."),
    max_rps: float = typer.Option(50.0, "--max", help="Requests/s of the last step."),
    url: str = typer.Option(None, "--url", help="API base URL (default: the configured serving address)."),
    asynchronous: bool = typer.Option(
        False, "--async/--no-async", help="HTTP: POST to …/observations (202, queued) instead of …/predict."
    ),
    image_size: int = typer.Option(
        64,
        "--image-size",
        min=16,
        max=2048,
        help="Side in pixels of the noise JPEGs sent (cost per request).",
    ),
    out: Path = typer.Option(
        None, "--out", help="ops: folder for ops.json and ops.png (default: ./loadtest-ops-<UTC time>)."
    ),
    cooldown: float = typer.Option(
        120.0,
        "--cooldown",
        min=0,
        help="ops: seconds to keep watching after the load ends; ends early once replicas are back at "
        "their minimum with no alert firing and nothing queued.",
    ),
    interval: float = typer.Option(
        2.0, "--interval", min=0.2, help="ops: seconds between looks at the system."
    ),
    api_key: str = typer.Option(None, "--api-key", envvar="KEENEYE_API_KEY", help="Sent as X-API-Key."),
    allow_remote: bool = typer.Option(
        False,
        "--allow-remote/--no-allow-remote",
        help="Allow a target that is not this machine (you own it).",
    ),
    json_out: bool = typer.Option(False, "--json/--no-json", help="Print the report as JSON."),
) -> None:
    """Rising-intensity load: --start req/s, +--step every --step-seconds, up to --max; per-step report.

    With --scenario ops (against a running `keeneye up`) it also watches the system through the API
    while the load rises and after it ends, and prints a timeline per step: offered and served rate,
    p95, worker replicas, utilisation per replica, alerts pending and firing, 429 and 503 counts.
    """
    from keeneye.scaling.loadtest import StepPlan, ensure_local, run_bus, run_http

    s = settings()
    name = pipeline or s.serving.default_pipeline
    if target not in {"http", "bus"}:
        raise ConfigError("--target", f"{target!r} is not a target", fix="use --target http or --target bus")
    if scenario not in {"steps", "ops"}:
        raise ConfigError(
            "--scenario", f"{scenario!r} is not a scenario", fix="use --scenario steps or --scenario ops"
        )
    plan = StepPlan(start=start, step=step, step_seconds=step_seconds, max=max_rps)
    steps = len(plan.rates)
    serving = s.serving
    shown = "127.0.0.1" if serving.host in {"0.0.0.0", "::"} else serving.host  # noqa: S104
    base = url or f"http://{shown}:{serving.port}"
    if target == "http" or scenario == "ops":  # ops looks at the system through the API
        ensure_local(base, allow_remote=allow_remote)

    def say_step(index: int, rate: float) -> None:
        err_console.print(
            f"step {index + 1}/{steps}: {rate:g} req/s for {plan.step_seconds:g} s", highlight=False
        )

    def run_load(on_step: Callable[[int, float], None]) -> LoadReport:
        if target == "http":
            return run_http(
                plan,
                url=base,
                pipeline=name,
                asynchronous=asynchronous,
                api_key=api_key,
                on_step=on_step,
                image_size=image_size,
            )
        return _bus_load(
            s, plan, name, allow_remote=allow_remote, on_step=on_step, run_bus=run_bus, image_size=image_size
        )

    err_console.print(
        f"load test on {name!r} via {target}: {steps} step(s), {plan.total_seconds:g} s, "
        f"about {plan.expected_requests:,} requests",
        highlight=False,
    )
    if scenario == "ops":
        _ops_scenario(
            plan, run_load, base=base, pipeline=name, target=target, api_key=api_key,
            interval=interval, cooldown=cooldown, out=out, json_out=json_out,
        )  # fmt: skip
        return
    report = run_load(say_step)
    if json_out:
        print_json(report.as_dict())
        return
    _print_report(report)


def _ops_scenario(
    plan: StepPlan,
    run_load: LoadRun,
    *,
    base: str,
    pipeline: str,
    target: str,
    api_key: str | None,
    interval: float,
    cooldown: float,
    out: Path | None,
    json_out: bool,
) -> None:
    from keeneye.scaling.ops_scenario import SystemWatcher, run_ops, write_outputs

    watcher = SystemWatcher(base, pipeline, api_key=api_key, interval=interval)
    first = watcher.look()
    if first.error is not None or first.replicas is None:
        raise KeeneyeError(
            f"cannot watch {pipeline!r} at {base}: {first.error or 'the supervisor runs no worker for it'}",
            fix="start `keeneye up` (its API at --url) and load a pipeline it runs workers for",
        )
    report = run_ops(
        plan,
        load=run_load,
        watcher=watcher,
        target=target,
        cooldown_seconds=cooldown,
        say=lambda line: err_console.print(line, highlight=False, markup=False),  # "Rule[kind]" is no tag
    )
    folder = out or Path(f"loadtest-ops-{datetime.now(UTC):%Y%m%dT%H%M%SZ}")
    paths = write_outputs(report, folder)
    if json_out:
        print_json(report.as_dict())
        return
    _print_timeline(report)
    console.print(f"written: {', '.join(str(p) for p in paths)}", highlight=False)


def _print_timeline(report: OpsReport) -> None:
    lo, hi = report.bounds
    table = Table(
        title=f"keeneye loadtest --scenario ops · {report.pipeline} · {report.target} · "
        f"replicas {lo}–{hi}, peak {report.replicas_peak}"
    )
    columns = ["phase", "t s", "offered/s", "served/s", "p95 ms", "429", "503", "errors", "replicas",
               "lag", "utilisation per replica", "api", "pending", "firing"]  # fmt: skip
    for col in columns:
        table.add_column(
            col,
            justify="left" if col in {"phase", "utilisation per replica", "pending", "firing"} else "right",
        )

    def num(v: float | None, fmt: str = ".0f") -> str:
        return "" if v is None else format(v, fmt)

    for r in report.rows:
        table.add_row(
            f"{r.phase} {r.step}",
            f"{r.start:.0f}–{r.end:.0f}",
            f"{r.offered_rps:g}" if r.phase == "ramp" else "",
            num(r.served_rps, ".1f"),
            num(r.p95_ms),
            str(r.refused_429) if r.refused_429 else "",
            str(r.refused_503) if r.refused_503 else "",
            str(r.other_errors) if r.other_errors else "",
            "" if r.replicas is None else f"{r.replicas} (peak {r.replicas_peak})",
            num(r.lag),
            " ".join(f"{u:.2f}" for u in r.utilization.values()),
            num(r.api_utilization, ".2f"),
            escape(", ".join(r.pending)),
            escape(", ".join(r.firing)),
        )
    console.print(table)
    for e in report.events:
        console.print(f"  {e.t:7.1f} s  {e.what}", highlight=False, markup=False)
    if report.load.truncated:
        console.print(f"[yellow]run ended early:[/] {report.load.truncated}")
    if not report.at_rest:
        console.print(
            "[yellow]not back at rest when the watch ended[/] (replicas above the minimum, an alert "
            "firing or messages queued): raise --cooldown to see the scale-back",
        )


def _bus_load(
    s: Settings,
    plan: StepPlan,
    name: str,
    *,
    allow_remote: bool,
    on_step: Callable[[int, float], None],
    run_bus: Callable[..., LoadReport],
    image_size: int = 64,
) -> LoadReport:
    from keeneye.pipelines import PipelineCatalog
    from keeneye.scaling.loadtest import ensure_local
    from keeneye.settings import mask_url
    from keeneye.stream import DEFAULT_GROUP, Ingestor, input_topic

    if s.bus_url.lower().startswith("kafka:"):
        ensure_local(s.bus_url, allow_remote=allow_remote, what="KEENEYE_BUS_URL")
    PipelineCatalog(s).get(name)  # unknown pipeline: refuse before sending anything
    ingestor = Ingestor(s)
    try:
        return run_bus(
            plan,
            # The ingestion path: object + queued row + publish to keeneye.<pipeline>.in, as the API's 202.
            accept=lambda data: ingestor.accept(name, data, source="bus"),
            lag=lambda: ingestor.bus.lag(input_topic(name), DEFAULT_GROUP),
            url=mask_url(s.bus_url),
            pipeline=name,
            on_step=on_step,
            image_size=image_size,
        )
    finally:
        ingestor.close()


def _print_report(report: LoadReport) -> None:
    bus = report.target == "bus"
    table = Table(title=f"keeneye loadtest · {report.pipeline} · {report.target} · {report.url}")
    columns = ["step", "offered/s", "achieved/s", "requests", "p50 ms", "p95 ms", "p99 ms", "errors"]
    for col in [*columns, *(["lag"] if bus else [])]:
        table.add_column(col, justify="right" if col != "errors" else "left")

    def ms(v: float | None) -> str:
        return "" if v is None else f"{v:.1f}"

    for st in report.steps:
        errors = ", ".join(f"{k}: {v}" for k, v in st.errors.items())
        row = [
            str(st.step),
            f"{st.offered_rps:g}",
            f"{st.achieved_rps:g}",
            str(st.requests),
            ms(st.p50_ms),
            ms(st.p95_ms),
            ms(st.p99_ms),
            f"[red]{errors}[/]" if errors else "0",
        ]
        if bus:
            row.append("" if st.lag is None else str(st.lag))
        table.add_row(*row)
    console.print(table)
    if report.truncated:
        console.print(f"[yellow]run ended early:[/] {report.truncated}")


def register(app: typer.Typer) -> None:
    app.command("up", rich_help_panel=PANEL_SERVE)(up)
    app.command("loadtest", rich_help_panel=PANEL_OPS)(loadtest)


__all__ = ["register"]
