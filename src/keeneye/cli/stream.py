"""``keeneye worker``, ``keeneye ingest`` and ``keeneye reconcile``: the asynchronous path."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from keeneye.cli._common import (
    PANEL_DATA,
    PANEL_OPS,
    PANEL_SERVE,
    console,
    err_console,
    print_json,
    settings,
    state,
)
from keeneye.domain import ConfigError, InvalidInput, MessageTooLarge
from keeneye.settings import Settings

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff"}
FORMAT_SUFFIXES = {"jpeg": (".jpg", ".jpeg"), "png": (".png",), "tiff": (".tif", ".tiff")}


def worker(
    pipeline: str = typer.Option(..., "--pipeline", "-p", help="Pipeline whose input topic to consume."),
    batch: int = typer.Option(None, "--batch", min=1, help="Messages per model run (default 16)."),
    group: str = typer.Option("keeneye-workers", "--group", help="Consumer group (workers share its work)."),
    metrics_port: int = typer.Option(
        0,
        "--metrics-port",
        min=0,
        max=65535,
        help="Serve Prometheus /metrics on this port (0 = off). For a worker without the API beside it, "
        "e.g. a Kubernetes pod; under `keeneye up` the API's /metrics already has every worker's numbers.",
    ),
    metrics_host: str = typer.Option(
        "127.0.0.1",
        "--metrics-host",
        help="Address for --metrics-port (0.0.0.0 in a pod Prometheus scrapes).",
    ),
) -> None:
    """Process queued observations of one pipeline until stopped (SIGTERM/Ctrl-C finish the batch)."""
    from keeneye.stream import PipelineWorker

    logging.getLogger("keeneye").setLevel(logging.INFO)
    with contextlib.ExitStack() as stack:
        if metrics_port:
            stack.enter_context(_metrics_endpoint(metrics_host, metrics_port))
        w = PipelineWorker(settings(), pipeline, group=group, batch_size=batch)
        err_console.print(f"worker for {pipeline!r} (group {group}, pid {os.getpid()}) starting")
        w.run()
    err_console.print(f"worker for {pipeline!r} stopped after {w.processed} observation(s)")


@contextlib.contextmanager
def _metrics_endpoint(host: str, port: int) -> Iterator[None]:
    """``/metrics`` on ``host:port`` while the worker runs.

    The worker creates its metrics when it starts, so they are served through a metrics directory
    rather than a registry object: the one ``keeneye up`` gave (PROMETHEUS_MULTIPROC_DIR: then every
    local process is shown), else a private one holding this process's values only. Either way the
    port is bound before the worker connects to anything, so a taken port fails fast.
    """
    from keeneye.metrics import enable_multiprocess, multiprocess_dir, serve_metrics

    with contextlib.ExitStack() as stack:
        if multiprocess_dir() is None:
            private = stack.enter_context(tempfile.TemporaryDirectory(prefix="keeneye-metrics-"))
            enable_multiprocess(Path(private))
        try:
            server = serve_metrics(None, port, host)
        except OSError as exc:
            raise ConfigError(
                "--metrics-port",
                f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                fix="pick a free port, or 0 for no metrics endpoint",
            ) from exc
        stack.callback(server.server_close)
        stack.callback(server.shutdown)
        err_console.print(f"metrics on http://{host}:{server.server_port}/metrics", highlight=False)
        yield


@dataclass(frozen=True)
class _Source:
    """A folder or an S3 prefix of images to ingest."""

    name: str  # as given, for messages and the ledger
    suffixes: frozenset[str]  # the files it sends

    def files(self) -> list[str]:
        raise NotImplementedError

    def read(self, name: str) -> bytes:
        raise NotImplementedError

    def size(self, name: str) -> int:
        raise NotImplementedError

    def local(self, name: str) -> contextlib.AbstractContextManager[Path]:
        """The file as a local path, for one that is sent without reading it into memory (a mosaic)."""
        raise NotImplementedError

    def signature(self, name: str) -> tuple[int, int] | None:
        """(size, mtime) of a file that may still be growing; ``None`` when it appears whole at once."""
        return None

    @property
    def kind(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class _Folder(_Source):
    """A folder walked for files; with ``captures`` (crop-health), the band files of one multi-file
    capture (``IMG_0001_1.tif`` … ``_5.tif``, ``DJI_0011.TIF`` … ``DJI_0015.TIF``) are one input,
    named like ``flight/IMG_0001_*.tif`` and sent packed as the API packs several files."""

    root: Path
    captures: bool = False
    groups: dict[str, list[Path]] = field(default_factory=dict, compare=False)  # name → band files

    @property
    def kind(self) -> str:
        return "folder"

    def files(self) -> list[str]:
        if self.root.is_file():
            return [self.root.name]
        paths = [p for p in self.root.rglob("*") if p.is_file() and p.suffix.lower() in self.suffixes]
        if not self.captures:
            return sorted(p.relative_to(self.root).as_posix() for p in paths)
        from keeneye.geo.capture import group_captures

        captures, others = group_captures(paths)
        self.groups.clear()
        for key, members in captures.items():
            folder = members[0].parent.relative_to(self.root)
            name = (folder / f"{Path(key).name}*{members[0].suffix}").as_posix()
            self.groups[name] = members
        return sorted([*self.groups, *(p.relative_to(self.root).as_posix() for p in others)])

    def read(self, name: str) -> bytes:
        if name in self.groups:
            from keeneye.imaging.archive import pack_files

            return pack_files([(p.name, p.read_bytes()) for p in self.groups[name]])
        return self._path(name).read_bytes()

    def size(self, name: str) -> int:
        return sum(p.stat().st_size for p in self.groups.get(name, [self._path(name)]))

    @contextlib.contextmanager
    def local(self, name: str) -> Iterator[Path]:
        if name not in self.groups:
            yield self._path(name)
            return
        with tempfile.TemporaryDirectory(prefix="keeneye-capture-") as tmp:
            packed = Path(tmp) / "capture.zip"
            packed.write_bytes(self.read(name))
            yield packed

    def signature(self, name: str) -> tuple[int, int] | None:
        stats = [p.stat() for p in self.groups.get(name, [self._path(name)])]
        return (sum(st.st_size for st in stats), max(st.st_mtime_ns for st in stats))

    def _path(self, name: str) -> Path:
        return self.root.parent / name if self.root.is_file() else self.root / name


@dataclass(frozen=True)
class _Bucket(_Source):
    store: Any  # an ObjectStore rooted at s3://bucket/prefix

    @property
    def kind(self) -> str:
        return "s3"

    def files(self) -> list[str]:
        return [o.key for o in self.store.list("") if Path(o.key).suffix.lower() in self.suffixes]

    def read(self, name: str) -> bytes:
        data: bytes = self.store.get(name)
        return data

    def size(self, name: str) -> int:
        return int(self.store.info(name).size)

    @contextlib.contextmanager
    def local(self, name: str) -> Iterator[Path]:
        from keeneye.pipelines.mosaic_jobs import local_object

        with local_object(self.store, name) as path:  # streamed to a temporary file
            yield path


def _open_source(s: Settings, source: str, *, geo_formats: list[str] | None = None) -> _Source:
    """``geo_formats``: a geo pipeline's accepted formats: only those files and zips are walked (a DJI
    folder's JPEG previews are skipped) and a folder's band files are grouped into captures."""
    suffixes = frozenset(IMAGE_SUFFIXES)
    if geo_formats is not None:
        suffixes = frozenset({".zip", *(x for f in geo_formats for x in FORMAT_SUFFIXES.get(f, ()))})
    if source.startswith("s3://"):
        from keeneye.store import open_object_store

        store = open_object_store(s.model_copy(update={"objects_url": source}))
        return _Bucket(source, suffixes, store)
    root = Path(source).expanduser()
    if not root.exists():
        raise ConfigError(
            "PATH", f"{source} does not exist", fix="give a folder, an image file or s3://bucket/prefix"
        )
    return _Folder(source, suffixes, root.absolute(), captures=geo_formats is not None)


class _Ledger:
    """What was already sent from one source to one pipeline, so nothing is sent twice (even across runs)."""

    def __init__(self, s: Settings, pipeline: str, source: _Source) -> None:
        ident = hashlib.sha256(f"{pipeline}\0{source.kind}\0{source.name}".encode()).hexdigest()[:16]
        self.path = s.home / "run" / "ingest" / f"{pipeline}-{ident}.jsonl"
        self.sent: set[str] = set()
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                if line.strip():
                    self.sent.add(json.loads(line)["file"])

    def add(self, name: str, observation_id: str) -> None:
        self.sent.add(name)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps({"file": name, "id": observation_id}) + "\n")


class _Sent(TypedDict):
    """One file ``keeneye ingest`` queued, as its ``--json`` summary lists it."""

    file: str
    id: str
    published: bool


class _Refused(TypedDict):
    """One file refused (for good, or unavailable until the next poll)."""

    file: str
    reason: str
    error: str


def ingest(
    source: str = typer.Argument(
        ...,
        help="A folder (walked for images), an image file, or s3://bucket/prefix. crop-health also "
        "takes drone folders (each capture's band files are one image), zips (one capture each) and "
        "GeoTIFF orthomosaics of any size.",
    ),
    pipeline: str = typer.Option(..., "--pipeline", "-p", help="Pipeline to queue the images for."),
    watch: bool = typer.Option(False, "--watch/--no-watch", help="Keep polling for new files until Ctrl-C."),
    interval: float = typer.Option(2.0, "--interval", min=0.1, help="Seconds between polls with --watch."),
    metadata: str = typer.Option(None, help="JSON object stored with each observation."),
    resend: bool = typer.Option(False, "--resend/--no-resend", help="Send files again even if sent before."),
    json_out: bool = typer.Option(False, "--json/--no-json", help="Print one JSON summary (ids per file)."),
) -> None:
    """Queue images for asynchronous processing (the workers do the rest).

    crop-health: the band files of one capture in a drone folder (MicaSense IMG_0001_1.tif …
    _5.tif, DJI P4M DJI_0011.TIF … DJI_0015.TIF) are one observation, and so is a [bold]zip[/] of
    one TIFF per band; JPEG previews are skipped. A GeoTIFF [bold]orthomosaic[/] over the upload
    limit is stored from its file without being read into memory and answered by a worker block by
    block — its answer, index maps and field history are stored like any other
    (docs/crop-health.md, "Drone folders, zips and mosaics through the stream").
    """
    from keeneye.pipelines.mosaic_jobs import upload_limit_of
    from keeneye.serving.routes.predict import parse_metadata
    from keeneye.stream import Ingestor, IngestUnavailable
    from keeneye.training.progress import PlainProgress
    from keeneye.training.trainers import ProgressEvent

    s = settings()
    meta = parse_metadata(metadata)
    ingestor = Ingestor(s)
    spec = ingestor.catalog.get(pipeline)  # refuse an unknown pipeline before walking anything
    src = _open_source(s, source, geo_formats=list(spec.input.formats) if spec.input.geo else None)
    upload_limit = upload_limit_of(spec, s)
    ledger = _Ledger(s, pipeline, src)
    if resend:
        ledger.sent.clear()
    sent: list[_Sent] = []
    refused: list[_Refused] = []

    last_seen: dict[str, tuple[int, int]] = {}
    sent_before: list[int] = []  # at the first look: files an earlier run had already sent

    def batch_of_new() -> list[str]:
        files = src.files()
        new = [f for f in files if f not in ledger.sent]
        if not sent_before:
            sent_before.append(len(files) - len(new))
        if not watch:
            return new
        # Watching, a file may be caught while it is being written (empty or cut short): it would be
        # refused for good. Send a folder file only once its size and mtime held still for one poll.
        ready = []
        for name in new:
            try:
                sig = src.signature(name)
            except OSError:  # gone again
                last_seen.pop(name, None)
                continue
            if sig is None or last_seen.get(name) == sig:
                ready.append(name)
                last_seen.pop(name, None)
            else:
                last_seen[name] = sig
        return ready

    def send(files: list[str], progress: Progress | None) -> None:
        task = progress.add_task("ingesting", total=len(files)) if progress else None
        what = f"{len(files)} new file(s) from {source}"
        if plain is not None:
            plain(ProgressEvent("ingest", what, done=0, total=len(files)))
        for k, name in enumerate(files, 1):
            try:
                about = {**meta, "file": name}
                if spec.input.geo and src.size(name) > upload_limit:  # a mosaic: never read whole
                    with src.local(name) as path:
                        accepted = ingestor.accept(pipeline, path, about, source=src.kind)
                else:
                    accepted = ingestor.accept(pipeline, src.read(name), about, source=src.kind)
            except (InvalidInput, MessageTooLarge) as exc:
                reason = exc.reason if isinstance(exc, InvalidInput) else "too_large"
                refused.append({"file": name, "reason": reason, "error": exc.one_line()})
                ledger.add(name, "")  # refused for good: do not retry it on every poll
            except (IngestUnavailable, OSError) as exc:
                # Not sent: the next poll (or the next run) tries again.
                refused.append({"file": name, "reason": "unavailable", "error": str(exc)})
            else:
                ledger.add(name, accepted.id)
                sent.append({"file": name, "id": accepted.id, "published": accepted.published})
            if progress is not None and task is not None:
                progress.advance(task)
            if plain is not None:
                plain(ProgressEvent("ingest", what, done=k, total=len(files)))

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    # Not a terminal (nohup, a log file): timestamped lines instead of a bar that draws nothing there.
    show = not (json_out or state.quiet)
    plain = PlainProgress(err_console) if show and not err_console.is_terminal else None
    try:
        with Progress(*columns, console=err_console, disable=not show or plain is not None) as progress:
            send(batch_of_new(), progress)
            while watch:
                time.sleep(interval)
                new = batch_of_new()
                if new:
                    send(new, progress)
    except KeyboardInterrupt:
        pass
    finally:
        ingestor.close()
    if json_out:
        print_json({"pipeline": pipeline, "source": source, "accepted": sent, "refused": refused})
        return
    console.print(f"queued {len(sent)} image(s) for {pipeline!r}; {len(refused)} refused")
    if sent_before[0] and not sent:
        console.print(
            f"nothing new: {sent_before[0]} file(s) in {source} were sent before "
            f"(remembered in {ledger.path}); pass --resend to send them again",
            highlight=False,
        )
    for item in refused[:20]:
        err_console.print(f"  [red]refused[/] {item['file']}: {item['error']}", highlight=False)


def reconcile(
    pipeline: str = typer.Option(None, "--pipeline", "-p", help="Pipeline (default: every pipeline)."),
    stale_after: float = typer.Option(None, "--stale-after", help="Seconds untouched before re-publishing."),
    json_out: bool = typer.Option(False, "--json/--no-json", help="Print JSON."),
) -> None:
    """Re-publish observations stuck in queued/processing (one pass)."""
    from keeneye.stream import Reconciler

    s = settings()
    rec = Reconciler(s, pipeline, stale_after_seconds=stale_after)
    try:
        report = rec.run_once(limit=10_000)
    finally:
        rec.close()
    if json_out:
        print_json({"republished": report.republished, "failed": report.failed})
    else:
        console.print(
            f"re-published {report.republished} observation(s); {report.failed} failed (object missing)"
        )


def register(app: typer.Typer) -> None:
    app.command("worker", rich_help_panel=PANEL_SERVE)(worker)
    app.command("ingest", rich_help_panel=PANEL_DATA)(ingest)
    app.command("reconcile", rich_help_panel=PANEL_OPS)(reconcile)


__all__ = ["register"]
