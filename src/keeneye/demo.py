"""``keeneye demo``: the whole loop on the embedded defaults, for a newcomer, in a few minutes.

synthetic species photos → train (from scratch, CPU) → evaluate + gates → register → promote →
start the API → send held-out photos → show what came back → print what to try next.

The training is recorded as a ``manual`` training run (``keeneye runs species-id`` lists it). The
closing panel names the folders under the actual ``KEENEYE_HOME``, says whether the API is still
serving (not under ``--no-serve``) and spells commands the way this shell can run them
(:func:`keeneye_command`: ``keeneye`` when it is on PATH, else the path of this installation's script).
"""

from __future__ import annotations

import logging
import shlex
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from keeneye.domain import JsonObject, KeeneyeError
from keeneye.settings import Settings

if TYPE_CHECKING:  # torch behind it: the CLI starts without it
    from keeneye.training.run import TrainResult

log = logging.getLogger(__name__)

PIPELINE = "species-id"

# Small enough for a 2-core laptop to train in about two minutes, large enough to learn the classes.
DEMO_RECIPE: dict[str, int] = {"image_size": 64, "batch_size": 32, "patience": 3}


@dataclass
class DemoResult:
    version: str
    metrics: dict[str, float]
    url: str
    answers: list[JsonObject] = field(default_factory=list)
    correct: int = 0
    seconds: float = 0.0


def run_demo(
    settings: Settings,
    console: Console,
    *,
    images: int = 600,
    epochs: int = 15,
    port: int = 8000,
    requests: int = 8,
    serve_forever: bool = False,
    quiet: bool = False,
) -> DemoResult:
    from keeneye.training import generate

    started = time.perf_counter()
    demo_dir = settings.home / "demo"
    train_dir = demo_dir / "species-train"
    fresh_dir = demo_dir / "species-fresh"

    console.rule("[bold]1/5  synthetic data")
    for out, n, seed in ((train_dir, images, 1), (fresh_dir, max(requests, 8), 2)):
        if not (out / "annotations.json").exists():
            generate(PIPELINE, out, n, seed=seed, size=96, overwrite=True)
    console.print(
        f"{images} training photos of 5 fish species in {train_dir}; {requests} unseen ones for later"
    )

    result = train_and_promote(
        settings, console, PIPELINE, train_dir, epochs=epochs, quiet=quiet, overrides=DEMO_RECIPE,
        steps=("2/5", "3/5"), shown=("accuracy", "macro_f1", "latency_p50_ms"),
        fix=f"run `{keeneye_command()} demo --epochs 30` to train longer",
    )  # fmt: skip
    assert result.version is not None  # train_and_promote raises when nothing was registered

    console.rule("[bold]4/5  serve")
    with demo_server(settings, port) as url:
        console.print(f"API and web page on {url}")
        console.rule("[bold]5/5  send unseen photos")
        demo = DemoResult(version=result.version, metrics=dict(result.metrics), url=url)
        _send_requests(console, url, fresh_dir, requests, demo)
        demo.seconds = time.perf_counter() - started
        console.print(next_steps(demo, home=settings.home, serving=serve_forever))
        keep_serving(serve_forever)
    return demo


def train_and_promote(
    settings: Settings,
    console: Console,
    pipeline: str,
    train_dir: Path,
    *,
    epochs: int,
    quiet: bool,
    overrides: dict[str, Any] | None,
    steps: tuple[str, str],
    shown: tuple[str, ...],
    fix: str,
) -> TrainResult:
    """Every demo's middle: train ``pipeline`` on ``train_dir`` (a recorded ``manual`` run), show the
    test split's ``shown`` metrics, refuse with ``fix`` when the gates refuse, else promote the new
    version to champion. ``steps`` numbers the two console rules (train, promote)."""
    from keeneye.lifecycle.recorded import recorded_training
    from keeneye.registry import ModelRegistry
    from keeneye.store import open_results_db
    from keeneye.training.progress import console_progress
    from keeneye.training.run import train_pipeline

    name = "keeneye demo" + ("" if pipeline == PIPELINE else f" {pipeline}")
    console.rule(f"[bold]{steps[0]}  train, evaluate, gate, register")
    db = open_results_db(settings)
    inputs = {"requested_by": name, "data_dir": str(train_dir), "epochs": epochs}
    with (
        recorded_training(db, pipeline, reason=name, inputs=inputs) as run,
        console_progress(console, quiet=quiet) as progress,
    ):
        result = train_pipeline(
            settings, pipeline, train_dir, epochs=epochs, progress=progress, overrides=overrides,
            actor="keeneye demo", reason=name,
        )  # fmt: skip
        run.finish(result)
    metrics = {k: v for k, v in result.metrics.items() if k in shown}
    console.print("test split: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
    if result.version is None or not result.gates.passed:
        reasons = "; ".join(result.gates.reasons) or "not registered"
        raise KeeneyeError(
            f"the gates refused the demo's {pipeline} model, so it is not promoted: {reasons}", fix=fix
        )
    console.rule(f"[bold]{steps[1]}  promote to champion")
    ModelRegistry(settings, events=db).promote(
        pipeline, result.version, actor="keeneye demo", reason="passed its gates in the demo"
    )
    console.print(f"models:/{pipeline}@champion → version {result.version} (audit log: model_events)")
    return result


@contextmanager
def demo_server(settings: Settings, port: int) -> Iterator[str]:
    """The API and web page on ``port`` (any free port when it is taken) in a thread, for the block;
    yields its URL. Ctrl-C inside the block ends it quietly."""
    server, url = _start_server(settings, port)
    try:
        yield url
    except KeyboardInterrupt:
        pass
    finally:
        server.should_exit = True


def keep_serving(serve_forever: bool) -> None:
    """Under ``serve_forever``, wait (inside :func:`demo_server`'s block) until Ctrl-C."""
    while serve_forever:
        time.sleep(1)


def _start_server(settings: Settings, port: int) -> tuple[Any, str]:
    import socket

    import uvicorn

    from keeneye.serving import create_app

    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", port)) == 0:  # taken: use any free port instead
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = int(s.getsockname()[1])
    app = create_app(
        settings.model_copy(update={"serving": settings.serving.model_copy(update={"port": port})})
    )
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, name="keeneye-demo-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise KeeneyeError(
                "the demo server did not start", fix=f"run `{keeneye_command()} --debug demo` to see why"
            )
        time.sleep(0.05)
    return server, f"http://127.0.0.1:{port}"


def _send_requests(console: Console, url: str, fresh_dir: Path, n: int, demo: DemoResult) -> None:
    from keeneye.training import load_coco

    dataset = load_coco(fresh_dir)
    table = Table(title="unseen photos → POST /predict")
    for col in ("photo", "truth", "answer", "confidence", "ms", "cached"):
        table.add_column(col)
    with httpx.Client(timeout=30) as client:
        for image in dataset.images[:n]:
            truth = dataset.label_of(image)
            data = image.path.read_bytes()
            body = client.post(f"{url}/predict", files={"file": (image.file_name, data, "image/jpeg")}).json()
            demo.answers.append(body)
            ok = body.get("predicted_class") == truth
            demo.correct += ok
            answer = ("[green]" if ok else "[red]") + body["predicted_class"] + "[/]"
            cached = "yes" if body["cached"] else "no"
            ms = f"{body['processing_time_ms']:.1f}"
            table.add_row(image.file_name, str(truth), answer, f"{body['confidence']:.3f}", ms, cached)
        again = client.post(f"{url}/predict", files={"file": ("again.jpg", data, "image/jpeg")}).json()
        table.add_row("(the last one again)", "", again["predicted_class"], f"{again['confidence']:.3f}",
                      f"{again['processing_time_ms']:.1f}", "yes" if again["cached"] else "no")  # fmt: skip
        refused = client.post(
            f"{url}/predict", content=b"not a photo", headers={"content-type": "image/jpeg"}
        )
    console.print(table)
    console.print(f"{demo.correct}/{n} correct. A text file sent as a photo gets {refused.status_code}: "
                  f"{refused.json()['detail']}")  # fmt: skip


def keeneye_command() -> str:
    """How to run keeneye from this shell: ``keeneye`` when it is on PATH, else this installation's
    script (``.venv/bin/keeneye`` from the repository), else ``python -m keeneye``."""
    if shutil.which("keeneye"):
        return "keeneye"
    script = Path(sys.executable).with_name("keeneye")
    if script.is_file():
        return shown_path(script)
    return f"{shlex.quote(sys.executable)} -m keeneye"


def shown_path(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it, else absolute; shell-quoted."""
    absolute = path.absolute()
    try:
        shown = str(absolute.relative_to(Path.cwd()))
    except ValueError:
        shown = str(absolute)
    return shlex.quote(shown)


def next_steps(demo: DemoResult, *, home: Path, serving: bool, command: str | None = None) -> Panel:
    """The closing panel: what runs now, and commands to try that work from this shell."""
    kee = command or keeneye_command()
    photos = f"{shown_path(home / 'demo' / 'species-fresh' / 'images')}/*.jpg"
    if serving:
        head = (
            f"[bold]keeneye is serving {PIPELINE} version {demo.version}[/] at {demo.url}"
            " (Ctrl-C to stop)\n\n"
            f"  open {demo.url}/            choose a photo, see the top-3\n"
            f"  open {demo.url}/docs        the HTTP API\n"
            f"  curl -F file=@photo.jpg {demo.url}/predict\n"
        )
    else:
        head = (
            f"[bold]{PIPELINE} version {demo.version} is the champion[/]; the demo's API has stopped "
            "(--no-serve)\n\n"
            f"  {kee} serve            serve it again on http://127.0.0.1:8000 (/ and /docs)\n"
        )
    return Panel.fit(
        head
        + f"  {kee} predict {photos}\n"
        + f"  {kee} models list         versions, aliases, metrics, gates\n"
        + f"  {kee} runs {PIPELINE}     the training runs, this one included\n"
        + f"  {kee} synth line-inspection --out data/line   another application (docs/training.md)\n\n"
        + f"data and models in {shown_path(home)} · finished in {demo.seconds:.0f} s",
        title="what to try next",
    )
