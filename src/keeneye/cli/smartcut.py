"""``keeneye smartcut run | cut | evaluate | plugins`` and ``keeneye plugin run NAME`` (docs/smartcut.md,
docs/plugins.md).

``run`` works in this process (probe → sample → chunks → recommender → segments) and prints the seed's
``processed-files`` message; ``plugin run`` serves the same recommender as its own process on the bus.
Refusals (not a video, damaged, too long, unknown plugin …) print one line with the fix and exit 2.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from keeneye.cli._common import PANEL_DATA, console, err_console, print_json, settings, state

if TYPE_CHECKING:
    from keeneye.video import Evaluation, Recommender, RequestOptions, VideoLimits

smartcut_app = typer.Typer(
    help="smartcut: find the relevant segments of very long videos, cut them into clips, measure TPR/FPR.",
    no_args_is_help=True,
)

_VIDEO_ARG = typer.Argument(..., help="Video file (MP4, MKV, MOV, AVI, TS …; up to 24 h / 25 GB by default).")
_RUN_VIDEO_ARG = typer.Argument(
    ...,
    help="Video file (MP4, MKV, MOV, AVI, TS …; up to 24 h / 25 GB by default), or an s3://bucket/key URL "
    "read with the KEENEYE_S3__* settings (copied to a temporary file first: decoding seeks).",
    metavar="VIDEO",
)
_PLUGIN_HELP = (
    "Recommender: motion (fixed cameras: something moves), scene (content changes) or objects "
    "(people, or the --classes of a detector); see `smartcut plugins`."
)
_CLASSES_HELP = "objects only: classes to look for, comma-separated (default: every class of the detector)."
_DETECTOR_HELP = (
    "objects only: a detection pipeline (its served model) or a model bundle folder. "
    "Default: KEENEYE_SMARTCUT__OBJECTS_DETECTOR, else OpenCV's HOG people detector."
)
_SENSITIVITY_HELP = "Seconds between sampled frames: 1 finds short events, 5 runs about 5× faster."
_JSON_HELP = "Print JSON (the seed's processed-files message for run) instead of a table."


plugin_app = typer.Typer(
    help="smartcut plugin processes: one recommender each, on the seed's bus protocol (docs/plugins.md).",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    app.add_typer(smartcut_app, name="smartcut", rich_help_panel=PANEL_DATA)
    app.add_typer(plugin_app, name="plugin", rich_help_panel=PANEL_DATA)


def _recommender(name: str, detector: str | None) -> Recommender:
    """The named recommender; ``objects`` with its detector (option, setting, or HOG)."""
    from keeneye.video import ObjectsRecommender, load_detector, make_recommender

    if name != ObjectsRecommender.name:
        if detector:
            raise typer.BadParameter("--detector is for the objects plugin only", param_hint="--detector")
        return make_recommender(name)
    ref = detector if detector is not None else settings().smartcut.objects_detector
    return ObjectsRecommender(detector=load_detector(settings(), ref))


def _options(classes: str | None) -> RequestOptions | None:
    names = [c.strip() for c in (classes or "").split(",") if c.strip()]
    return {"classes": names} if names else None


def _limits() -> VideoLimits:
    from keeneye.video import VideoLimits

    s = settings().smartcut
    return VideoLimits(max_duration_seconds=s.max_duration_seconds, max_bytes=s.max_video_bytes)


@contextmanager
def _progress(label: str, quiet: bool) -> Iterator[Callable[[float], None]]:
    """A bar on stderr (stdout stays clean for --json); ``quiet`` hides it."""
    with Progress(
        TextColumn(f"[bold]{label}[/]"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
        disable=quiet or state.quiet,
    ) as bar:
        task = bar.add_task(label, total=1.0)
        yield lambda done: bar.update(task, completed=done)


@contextmanager
def _local_video(video: str) -> Iterator[Path]:
    """``video`` as a local file: the path itself, or an ``s3://`` object copied under the smartcut
    root for the run and deleted after (a missing object, one over the size limit or an unreachable
    S3 is refused with its reason, as the API refuses it)."""
    if not video.startswith("s3://"):
        yield Path(video)
        return
    from keeneye.video.remote import open_s3_video, split_s3_url

    s = settings()
    assert s.smartcut.root is not None
    bucket, _ = split_s3_url(video)
    # The allow-list guards the server's credentials from API callers; here they are the user's own.
    remote = open_s3_video(video, allowed=[f"s3://{bucket}"], s3=s.s3, max_bytes=s.smartcut.max_video_bytes)
    with err_console.status(f"copying {video} ({remote.size / 1e6:.1f} MB) …", spinner="dots"):
        local = remote.fetch(s.smartcut.root / ".uploads", s.smartcut.max_video_bytes)
    try:
        yield local
    finally:
        local.unlink(missing_ok=True)


@smartcut_app.command("run")
def run(
    video: str = _RUN_VIDEO_ARG,
    plugin: str = typer.Option("motion", "--plugin", "-p", help=_PLUGIN_HELP),
    sensitivity: float | None = typer.Option(
        None,
        "--sensitivity",
        "-s",
        help=_SENSITIVITY_HELP + " Default: KEENEYE_SMARTCUT__DEFAULT_SENSITIVITY (1).",
    ),
    user_id: str = typer.Option("local", "--user-id", help="user_id of the message (who asked)."),
    request_uid: str | None = typer.Option(None, "--request-uid", help="Request UUID (default: a new one)."),
    keep_chunks: bool = typer.Option(
        False,
        "--keep-chunks/--no-keep-chunks",
        help="Keep the JPEG chunks under the smartcut root (deleted by default).",
    ),
    classes: str | None = typer.Option(None, "--classes", help=_CLASSES_HELP),
    detector: str | None = typer.Option(None, "--detector", help=_DETECTOR_HELP),
    json_out: bool = typer.Option(False, "--json/--no-json", help=_JSON_HELP),
) -> None:
    """Recommend the relevant segments of VIDEO (in this process) and print them.

    Example: [bold]keeneye smartcut run cam1.mp4 --plugin motion --sensitivity 1 --json > cam1.json[/]

    On S3: [bold]keeneye smartcut run s3://cameras/site-a/cam1.mp4[/] (KEENEYE_S3__ENDPOINT_URL and keys
    for MinIO and other S3-protocol stores).

    People or objects: [bold]keeneye smartcut run cam1.mp4 -p objects --classes person,car --detector
    my-detector[/] (a detection pipeline or bundle folder; without --detector, OpenCV's HOG finds people).

    A refused video (not a video, damaged, no video stream, over 24 h / 25 GB …) prints one line with
    the fix and exits 2.
    """
    from keeneye.video import SmartcutRequest, run_local

    s = settings().smartcut
    assert s.root is not None  # derived from KEENEYE_HOME
    recommender = _recommender(plugin, detector)
    with _local_video(video) as local:
        request = SmartcutRequest(
            video=local,
            plugin=plugin,
            sensitivity=sensitivity if sensitivity is not None else s.default_sensitivity,
            user_id=user_id,
            request_uid=request_uid or str(uuid.uuid4()),
            options=_options(classes),
        )
        name = video.rsplit("/", 1)[-1] if video.startswith("s3://") else local.name
        with _progress(f"{name} · {plugin}", json_out) as progress:
            result = run_local(
                request,
                s.root,
                _limits(),
                keep_chunks=keep_chunks,
                progress=progress,
                recommender=recommender,
            )
    if json_out:
        print_json(result.message)
        return
    info = result.info
    table = Table(
        title=f"{name} · {result.message['plugin_name']} · every {request.sensitivity:g} s",
        title_justify="left",
    )
    for col in ("#", "start", "stop", "length"):
        table.add_column(col, justify="right")
    for n, seg in enumerate(result.recommendation.segments, 1):
        table.add_row(str(n), _clock(seg.start), _clock(seg.stop), f"{seg.length:.1f} s")
    console.print(table)
    covered = sum(seg.length for seg in result.recommendation.segments)
    console.print(
        f"{len(result.recommendation.segments)} segments, {covered:.0f} s of {info.duration:.0f} s "
        f"({covered / info.duration:.1%}) · {result.n_frames} frames in {result.n_chunks} chunks "
        f"({'keyframes only' if result.keyframes_only else 'seek + decode'}) · {result.seconds:.1f} s"
        + (f" · chunks kept in {s.root / result.chunk_folder}" if result.chunk_folder else ""),
        highlight=False,
    )


def _clock(seconds: float) -> str:
    h, rest = divmod(seconds, 3600)
    m, sec = divmod(rest, 60)
    return f"{int(h):d}:{int(m):02d}:{sec:06.3f}"


def _read_json(path: Path, what: str) -> object:
    from keeneye.video import VideoRejected

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise VideoRejected(
            "bad_segments", f"{path}: cannot read {what} ({exc})", fix=f"pass a JSON {what} file"
        ) from exc


@smartcut_app.command("cut")
def cut_cmd(
    video: Path = _VIDEO_ARG,
    segments: Path = typer.Argument(
        ..., help='JSON: the output of `smartcut run --json`, or [{"start","stop"}, …].'
    ),
    out: Path = typer.Option(..., "--out", help="Folder for the clips."),
    reencode: bool = typer.Option(
        False,
        "--reencode/--no-reencode",
        help="Exact boundaries by re-encoding (slower, lossy). "
        "Default: lossless copy from the keyframe before each start.",
    ),
    json_out: bool = typer.Option(False, "--json/--no-json", help="Print the clips as JSON."),
) -> None:
    """Cut VIDEO into one clip per segment (lossless at keyframes unless --reencode)."""
    from keeneye.video import parse_segments, probe
    from keeneye.video.cut import cut

    info = probe(video, _limits())
    segs = parse_segments(_read_json(segments, "segments"), info.duration)
    clips = cut(info, segs, out, reencode=reencode)
    rows = [
        {
            "path": str(c.path),
            "start": round(c.start, 3),
            "stop": round(c.stop, 3),
            "asked": c.segment.to_json(),
        }
        for c in clips
    ]
    if json_out:
        print_json(rows)
        return
    for r in rows:
        console.print(f"{r['path']}  {r['start']:.3f}–{r['stop']:.3f} s", highlight=False)
    console.print(f"{len(rows)} clips in {out} ({'re-encoded' if reencode else 'lossless'})", highlight=False)


@smartcut_app.command("evaluate")
def evaluate_cmd(
    video: Path = _VIDEO_ARG,
    truth: Path | None = typer.Option(
        None,
        "--truth",
        help="Ground truth (default: VIDEO's .events.json beside it, as `synth smartcut` writes).",
    ),
    plugin: str = typer.Option("motion", "--plugin", "-p", help=_PLUGIN_HELP),
    sensitivity: float = typer.Option(1.0, "--sensitivity", "-s", help=_SENSITIVITY_HELP),
    segments: Path | None = typer.Option(
        None, "--segments", help="Score these segments (e.g. edited ones) instead of running the plugin."
    ),
    check: bool = typer.Option(
        False, "--check/--no-check", help="Exit 1 unless the seed's bar is met (TPR > 0.9 and FPR < 0.2)."
    ),
    classes: str | None = typer.Option(None, "--classes", help=_CLASSES_HELP),
    detector: str | None = typer.Option(None, "--detector", help=_DETECTOR_HELP),
    json_out: bool = typer.Option(False, "--json/--no-json", help="Print the figures as JSON."),
) -> None:
    """TPR and FPR by seconds, and event recall, of a plugin's segments against ground-truth events."""
    from keeneye.video import GroundTruth, SmartcutRequest, evaluate, parse_segments, probe, run_local

    gt = GroundTruth.load(truth or video.with_suffix(".events.json"))
    if segments is not None:
        info = probe(video, _limits())
        segs, seconds = parse_segments(_read_json(segments, "segments"), info.duration), 0.0
    else:
        root = settings().smartcut.root
        assert root is not None
        with _progress(f"{video.name} · {plugin}", json_out) as progress:
            result = run_local(
                SmartcutRequest(video, plugin, sensitivity, options=_options(classes)),
                root,
                _limits(),
                progress=progress,
                recommender=_recommender(plugin, detector),
            )
        info, segs, seconds = result.info, result.recommendation.segments, result.seconds
    ev = evaluate(segs, gt.events, info.duration)
    if json_out:
        print_json(
            {
                "video": str(video),
                "plugin": plugin if segments is None else None,
                "sensitivity": sensitivity if segments is None else None,
                "seconds": round(seconds, 2),
                **ev.to_dict(),
            }
        )
    else:
        _print_evaluation(ev, video, plugin if segments is None else str(segments), seconds)
    if check and not ev.meets_seed:
        raise typer.Exit(1)


def _print_evaluation(ev: Evaluation, video: Path, source: str, seconds: float) -> None:
    verdict = "[green]meets the seed's bar[/]" if ev.meets_seed else "[bold red]below the seed's bar[/]"
    console.print(
        f"{video.name} · {source}: TPR {ev.tpr:.3f} · FPR {ev.fpr:.3f} · events found {ev.n_events_found}/"
        f"{ev.n_events} (recall {ev.event_recall:.2f}) · {ev.n_segments} segments"
        + (f" · {seconds:.1f} s" if seconds else "")
        + f" — {verdict}",
        highlight=False,
    )


@smartcut_app.command("plugins")
def plugins(
    json_out: bool = typer.Option(False, "--json/--no-json", help="Print the started-plugins messages."),
) -> None:
    """The recommenders available here: built-ins and installed `keeneye.smartcut` entry points."""
    from keeneye.video import recommenders

    rows = [cls().announcement() for cls in recommenders().values()]  # objects: HOG's classes
    if json_out:
        print_json(rows)
        return
    table = Table(title="smartcut plugins", title_justify="left")
    for col in ("plugin_name", "label", "img_size", "classes"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["plugin_name"], r["label"], str(r["img_size"]), ", ".join(r.get("classes", [])))
    console.print(table)


@plugin_app.command("run")
def plugin_run(
    name: str = typer.Argument(
        ..., help="Recommender to serve: motion, scene, objects, or an installed plugin."
    ),
    detector: str | None = typer.Option(None, "--detector", help=_DETECTOR_HELP),
) -> None:
    """Serve one smartcut plugin on the bus until stopped (Ctrl-C or SIGTERM).

    Example: [bold]keeneye plugin run motion[/]

    It announces itself on started-plugins, scores the chunks announced on NAME-new-files (paths
    relative to KEENEYE_SMARTCUT__ROOT, which must be the backend's folder), answers on
    processed-files and sends stopped-plugins when stopped. The bus is KEENEYE_BUS_URL (SQLite by
    default, kafka://host:9092 for Kafka). An unknown NAME exits 2 and lists the installed ones.
    """
    import signal

    from keeneye.settings import mask_url
    from keeneye.stream.bus import open_bus
    from keeneye.video.plugins import PluginProcess

    s = settings()
    assert s.smartcut.root is not None  # derived from KEENEYE_HOME
    recommender = _recommender(name, detector)
    bus = open_bus(s)
    process = PluginProcess(recommender, bus, s.smartcut.root)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: process.stop())
    err_console.print(
        f"plugin [bold]{name}[/] ({recommender.label}, {recommender.img_size} px) on {mask_url(bus.url)}: "
        f"reading {process.topic}, chunks under {s.smartcut.root}",
        highlight=False,
    )
    try:
        process.run()
    finally:
        bus.close()
    err_console.print(f"plugin {name} stopped after {process.answered} answered requests", highlight=False)
