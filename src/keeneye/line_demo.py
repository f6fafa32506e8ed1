"""``keeneye demo line-inspection``: a whole inspection line on one machine, in a few minutes.

synthetic line frames → train the line-inspection recipe (CPU) → gates → register → promote → a
stand-in PLC (a real pymodbus server on loopback) → record a short line video from unseen synthetic
frames (PyAV) → run the edge runner (``keeneye inspect``) over it, each part decided by its deadline and
written to the PLC → print what was decided, the latency and the PLC's registers read back → serve
the API with the line dashboard (``/lines``) showing the run.

``model_dir`` skips training (a bundle folder, e.g. from ``keeneye train``): the runner inspects with it
directly, as ``keeneye inspect --model DIR`` does.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from keeneye.demo import demo_server, keeneye_command, keep_serving, shown_path, train_and_promote
from keeneye.domain import KeeneyeError
from keeneye.edge import SummaryJson
from keeneye.pipelines import PipelineCatalog
from keeneye.settings import Settings

log = logging.getLogger(__name__)

PIPELINE = "line-inspection"
LINE, CAMERA = "L1", "cam-1"
VIDEO_SEED = 11  # the video's frames are not the training frames (seed 0)
VIDEO_DEFECT_RATE = 0.2


@dataclass
class LineDemoResult:
    version: str | None
    summary: SummaryJson
    registers: list[int]
    url: str
    video: Path
    dashboard: dict[str, Any] = field(default_factory=dict)
    agreement: tuple[int, int] = (0, 0)  # decisions matching the synthetic truth, parts compared
    seconds: float = 0.0


def run_line_demo(
    settings: Settings,
    console: Console,
    *,
    frames: int = 300,
    epochs: int | None = None,
    parts: int = 150,
    fps: float | None = 30.0,
    port: int = 8000,
    serve_forever: bool = False,
    quiet: bool = False,
    model_dir: Path | None = None,
) -> LineDemoResult:
    from keeneye.edge import InspectOptions, build_runner
    from keeneye.sinks.standin import StandInPlc
    from keeneye.store import open_results_db
    from keeneye.training import generate
    from keeneye.training.synth.line import TRAINING_DEFECT_RATE, line_batch_size

    started = time.perf_counter()
    demo_dir = settings.home / "demo"
    train_dir, video_dir = demo_dir / "line-train", demo_dir / "line-video"

    console.rule("[bold]1/6  synthetic line frames")
    # what `keeneye synth line-inspection --size 128` makes, the set docs/training.md trains on
    batch = line_batch_size(frames)
    recipe = {"n": frames, "seed": 0, "defect_rate": TRAINING_DEFECT_RATE, "batch_size": batch}
    if model_dir is None and _made_with(train_dir) != recipe:  # new, or left by another recipe
        generate(
            PIPELINE,
            train_dir,
            frames,
            seed=0,
            defect_rate=TRAINING_DEFECT_RATE,
            batch_size=batch,
            overwrite=True,
        )
    generate(PIPELINE, video_dir, parts, seed=VIDEO_SEED, defect_rate=VIDEO_DEFECT_RATE, overwrite=True)
    truth = _truth(video_dir)
    console.print(
        ("" if model_dir is not None else f"{frames} training frames in {shown_path(train_dir)}; ")
        + f"{parts} unseen parts for the line video ({sum(truth)} defective) in {shown_path(video_dir)}"
    )

    version: str | None = None
    if model_dir is None:
        epochs = epochs or PipelineCatalog(settings).get(PIPELINE).training.epochs  # the spec's recipe
        version = train_and_promote(
            settings, console, PIPELINE, train_dir, epochs=epochs, quiet=quiet, overrides=None,
            steps=("2/6", "3/6"), shown=("precision", "recall", "mask_map50"),
            fix=f"train longer: `{keeneye_command()} demo line-inspection --epochs {epochs * 2}`"
            " (or on more frames: --images 600)",
        ).version  # fmt: skip
    else:
        console.rule("[bold]2/6  3/6  model")
        console.print(f"no training: the runner inspects with the bundle in {shown_path(model_dir)}")

    console.rule("[bold]4/6  a stand-in PLC")
    with StandInPlc() as plc:
        console.print(
            f"pymodbus server on {plc.url} — holding registers HR0-HR5 as docs/line-inspection.md maps them"
        )

        console.rule("[bold]5/6  record a line video and inspect it")
        video = record_video(video_dir, demo_dir / "line.mp4", fps=fps or 30.0)
        console.print(f"{parts} frames → {shown_path(video)} ({video.stat().st_size // 1024} KiB)")
        sku = _first_sku(video_dir)
        options = InspectOptions(
            pipeline=PIPELINE, source=str(video), line=LINE, camera=CAMERA, plc=plc.url, sku=sku,
            batch="demo", fps=fps, model=model_dir,
        )  # fmt: skip
        runner = build_runner(settings, options)
        if not runner.sink.wait_connected(10):
            raise KeeneyeError("the runner could not reach the stand-in PLC", fix="see the log above")
        runner.run(handle_signals=False)
        summary = runner.summary.to_json()
        registers = plc.registers()
    agreement = _agreement(open_results_db(settings), summary, truth)
    console.print(_summary_table(summary, registers, runner.deadline_ms, agreement))

    console.rule("[bold]6/6  the line dashboard")
    with demo_server(settings, port) as url:
        result = LineDemoResult(
            version=version, summary=summary, registers=registers, url=url, video=video, agreement=agreement
        )
        with httpx.Client(timeout=30) as client:
            result.dashboard = client.get(f"{url}/v1/lines", params={"pipeline": PIPELINE}).json()
        shown = next(
            (
                c
                for line in result.dashboard.get("lines", [])
                for c in line["cameras"]
                if c["camera"] == CAMERA
            ),
            None,
        )
        if shown is not None:
            console.print(
                f"{url}/lines shows {LINE}/{CAMERA}: {shown['parts']} parts in the last hour, "
                f"p95 {shown['latency_ms']['p95']} ms, PLC {shown['plc']['state']}"
            )
        result.seconds = time.perf_counter() - started
        console.print(next_steps(result, home=settings.home, serving=serve_forever))
        keep_serving(serve_forever)
    return result


def _made_with(dataset: Path) -> dict[str, Any] | None:
    """The generator parameters a synthetic dataset folder was made with (its dataset.json), or None."""
    try:
        made = json.loads((dataset / "dataset.json").read_text())
    except (OSError, ValueError):
        return None
    return {k: made.get(k) for k in ("n", "seed", "defect_rate", "batch_size")}


def record_video(frames_dir: Path, out: Path, *, fps: float) -> Path:
    """The synthetic frames of ``frames_dir/images`` (sorted) as an H.264 video at ``fps``: what a line
    camera's recording looks like. Near-lossless (4:4:4, CRF 4) so small defects survive."""
    import av
    import cv2

    paths = sorted((frames_dir / "images").iterdir())
    if not paths:
        raise KeeneyeError(f"no frames in {frames_dir / 'images'}", fix="generate them first")
    first = cv2.imread(str(paths[0]), cv2.IMREAD_COLOR)
    if first is None:
        raise KeeneyeError(f"{paths[0]} is not an image", fix="generate the frames again")
    height, width = (first.shape[0] // 2) * 2, (first.shape[1] // 2) * 2  # H.264 wants even sizes
    out.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(out), mode="w") as container:
        stream = container.add_stream("libx264", rate=round(fps), options={"crf": "4", "preset": "veryfast"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv444p"
        for path in paths:
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if bgr is None:
                continue
            bgr = cv2.resize(bgr, (width, height)) if bgr.shape[:2] != (height, width) else bgr
            frame = av.VideoFrame.from_ndarray(bgr.astype(np.uint8), format="bgr24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return out


def _images(frames_dir: Path) -> list[dict[str, Any]]:
    doc = json.loads((frames_dir / "annotations.json").read_text())
    images: list[dict[str, Any]] = sorted(doc["images"], key=lambda i: str(i["file_name"]))
    return images


def _truth(frames_dir: Path) -> list[bool]:
    """Whether each frame (in file order: the video's order) carries a defect."""
    return [bool(i.get("metadata", {}).get("defective")) for i in _images(frames_dir)]


def _first_sku(frames_dir: Path) -> str:
    images = _images(frames_dir)
    sku = images[0].get("metadata", {}).get("sku") if images else None
    return str(sku) if sku else "demo-part"


def _agreement(db: Any, summary: Any, truth: list[bool]) -> tuple[int, int]:
    """How many of the run's decisions (model decisions, fail-safes excluded) match the synthetic truth."""
    from keeneye.store import ObservationFilter

    first, last = summary["first_sequence"], summary["last_sequence"]
    if first is None or last is None:
        return (0, 0)
    page = db.find_observations(ObservationFilter(pipeline=PIPELINE), limit=min(5000, 4 * len(truth) + 100))
    right = compared = 0
    for o in page.observations:
        meta = o.metadata
        if meta.get("line") != LINE or meta.get("camera") != CAMERA:
            continue
        seq = meta.get("sequence")
        if not isinstance(seq, int) or not first <= seq <= last or meta.get("result_code") == 3:
            continue
        index = seq - first
        if index < len(truth):
            compared += 1
            right += (meta.get("result_code") == 2) == truth[index]
    return (right, compared)


def _summary_table(
    summary: Any, registers: list[int], deadline_ms: float, agreement: tuple[int, int]
) -> Table:
    table = Table(title=f"{LINE}/{CAMERA}: what the line decided", show_header=False)
    table.add_column("what")
    table.add_column("value")
    failsafe = sum(summary["failsafe"].values())
    table.add_row("parts", str(summary["frames"]))
    table.add_row("OK / DEFECT / fail-safe", f"{summary['ok']} / {summary['defect']} / {failsafe}")
    lat = summary["latency_ms"]
    table.add_row(
        "latency p50 / p95 / max",
        f"{lat['p50']} / {lat['p95']} / {lat['max']} ms (deadline {deadline_ms:g} ms)",
    )
    right, compared = agreement
    if compared:
        table.add_row("agrees with the synthetic truth", f"{right} of {compared} parts")
    names = ["sequence", "result", "class id", "confidence ‰", "latency ms", "heartbeat"]
    table.add_row(
        "PLC registers read back",
        ", ".join(f"HR{i} {n} = {v}" for i, (n, v) in enumerate(zip(names, registers, strict=False))),
    )
    last = summary["last_sequence"]
    if last is not None:
        table.add_row(
            "HR0 = last part's sequence", "yes" if registers and registers[0] == last % 65536 else "NO"
        )
    table.add_row("stored in the results DB", str(summary["stored"]))
    return table


def next_steps(result: LineDemoResult, *, home: Path, serving: bool, command: str | None = None) -> Panel:
    kee = command or keeneye_command()
    video = shown_path(result.video)
    if serving:
        head = (
            f"[bold]the line dashboard is at {result.url}/lines[/] (Ctrl-C to stop)\n\n"
            f"  open {result.url}/lines        OK / DEFECT, latency vs deadline, PLC link, last defects\n"
            f"  curl {result.url}/v1/lines      the same as JSON\n"
        )
    else:
        head = (
            "[bold]the line was inspected[/]; the demo's API has stopped (--no-serve)\n\n"
            f"  {kee} serve                       then open http://127.0.0.1:8000/lines\n"
        )
    runs = (
        ""
        if result.version is None
        else (f"  {kee} runs {PIPELINE}           the training run (champion: version {result.version})\n")
    )
    return Panel.fit(
        head
        + f"  {kee} inspect --pipeline {PIPELINE} --source {video} --line {LINE} --camera cam-2 \\\n"
        + "      --plc modbus://127.0.0.1:5020 --fps 30 --once     inspect again (with a PLC on :5020)\n"
        + runs
        + "\n"
        + f"data and models in {shown_path(home)} · finished in {result.seconds:.0f} s",
        title="what to try next",
    )


__all__ = ["LineDemoResult", "next_steps", "record_video", "run_line_demo"]
