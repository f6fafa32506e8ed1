"""Frame sources of the edge runner: where a line camera's frames come from.

Every source follows :class:`FrameSource`: it yields :class:`SourceFrame` (encoded image bytes and a
name) in capture order, and the runner stamps each with what the decision carries — trigger time,
sequence, line, camera, SKU and batch (:class:`Frame`). Three sources ship:

* :class:`FolderSource` — the image files of a folder, sorted by name, played at ``fps`` (or as fast as
  the runner decides when ``fps`` is None): replaying a recorded shift, tests, demos;
* :class:`VideoSource` — a video file or a live ``rtsp://`` / ``http(s)://`` stream, decoded by PyAV;
  each frame is handed on as PNG bytes so the decision path is the same one an uploaded photo takes.

A GenICam / GigE Vision camera plugs in as one more class with the same two methods: open the device
(e.g. with Harvester and the vendor's GenTL producer) in ``__init__``, arm a hardware trigger, and in
``frames()`` wait for each buffer, encode it (or pass PNG bytes) and yield it; ``close()`` stops
acquisition. The trigger time is stamped by the runner when the frame arrives, so a camera with its own
timestamp should use it instead (see docs/line-inspection.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from keeneye.domain import ConfigError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff"})
STREAM_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://")


@dataclass(frozen=True)
class SourceFrame:
    """One captured frame as a source delivers it: encoded bytes (JPEG, PNG, TIFF) and a name for logs
    (the file name, or ``video.mp4#120`` for a decoded frame)."""

    data: bytes
    name: str


@dataclass(frozen=True)
class Frame:
    """A frame as the runner decides on it.

    ``sequence`` is the runner's part counter (what the PLC receives); ``triggered_at`` is wall-clock
    (Unix seconds) for records and the PLC, ``trigger_monotonic`` the same instant on the monotonic
    clock, from which the deadline is measured.
    """

    data: bytes
    name: str
    sequence: int
    triggered_at: float
    trigger_monotonic: float
    line: str
    camera: str
    sku: str
    batch: str


class FrameSource(Protocol):
    """Frames in capture order. ``frames()`` ends when a finite source (a folder, a file) is exhausted;
    a live stream ends only when it breaks or ``close()`` is called. A source that is waiting for the
    next frame may yield ``None`` (an idle tick) so the runner can honour a stop request."""

    @property
    def description(self) -> str:
        """What the source reads, for the summary and logs."""
        ...

    def frames(self) -> Iterator[SourceFrame | None]: ...

    def close(self) -> None: ...


class Pacer:
    """Releases frames at ``fps``: the n-th frame no earlier than start + n / fps (no drift from sleep
    overshoot). ``fps`` None releases at once."""

    def __init__(
        self,
        fps: float | None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if fps is not None and fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.fps = fps
        self._clock = clock
        self._sleep = sleep
        self._start: float | None = None
        self._count = 0

    def wait(self) -> None:
        if self.fps is None:
            return
        now = self._clock()
        if self._start is None:
            self._start = now
        due = self._start + self._count / self.fps
        self._count += 1
        if due > now:
            self._sleep(due - now)


class FolderSource:
    """The image files of a folder (not its subfolders), sorted by name, played at ``fps``.

    With ``watch`` the source does not end: files that appear later are played too, in name order
    (cameras that drop images over FTP / SMB into a folder), checked every ``poll_seconds``.
    ``start_after``: skip the files named up to and including it (a restarted runner resumes after
    the last part it journaled).
    """

    def __init__(
        self,
        folder: Path,
        *,
        fps: float | None = None,
        watch: bool = False,
        poll_seconds: float = 0.2,
        start_after: str | None = None,
    ) -> None:
        if not folder.is_dir():
            raise ConfigError("--source", f"{folder} is not a folder", fix="give a folder of image files")
        self.folder = folder
        self.watch = watch
        self.poll_seconds = poll_seconds
        self._pacer = Pacer(fps)
        self._closed = False
        self.start_after = start_after

    def _listing(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)

    @property
    def description(self) -> str:
        return f"folder {self.folder}" + (" (watching for new frames)" if self.watch else "")

    def frames(self) -> Iterator[SourceFrame | None]:
        seen: set[str] = set()
        if self.start_after is not None:
            seen.update(p.name for p in self._listing() if p.name <= self.start_after)
        while not self._closed:
            new = [p for p in self._listing() if p.name not in seen]
            for path in new:
                if self._closed:
                    return
                seen.add(path.name)
                self._pacer.wait()
                try:
                    data = path.read_bytes()
                except OSError:
                    data = b""  # an unreadable file is an unreadable frame: the decision is fail-safe
                yield SourceFrame(data, path.name)
            if not self.watch:
                return
            if not new:
                time.sleep(self.poll_seconds)
                yield None

    def close(self) -> None:
        self._closed = True


class VideoSource:
    """A video file or a live stream (``rtsp://``, ``http(s)://``) decoded with PyAV.

    A file is played at ``fps`` when given (else as fast as the runner decides); a live stream arrives
    at the camera's rate, so ``fps`` does not slow it. Decoded frames go on as PNG bytes.
    """

    def __init__(self, url: str, *, fps: float | None = None, open_timeout_seconds: float = 5.0) -> None:
        import av  # the video extra; imported only when a video source is opened

        self.url = url
        self.live = url.startswith(STREAM_SCHEMES)
        options = {"rtsp_transport": "tcp"} if url.startswith(("rtsp://", "rtsps://")) else {}
        try:
            self._container = av.open(url, options=options, timeout=open_timeout_seconds)
        except (OSError, av.FFmpegError) as exc:
            raise ConfigError("--source", f"cannot open {url}: {exc}", fix="check the path or URL") from exc
        if not self._container.streams.video:
            self._container.close()
            raise ConfigError("--source", f"{url} has no video stream", fix="give a video file or camera URL")
        self._pacer = Pacer(None if self.live else fps)
        self._closed = False

    @property
    def description(self) -> str:
        return f"{'stream' if self.live else 'video'} {self.url}"

    def frames(self) -> Iterator[SourceFrame | None]:
        import av
        import cv2

        stream = self._container.streams.video[0]
        index = 0
        try:
            for frame in self._container.decode(stream):
                if self._closed:
                    return
                self._pacer.wait()
                bgr = frame.to_ndarray(format="bgr24")
                ok, png = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 1])
                yield SourceFrame(png.tobytes() if ok else b"", f"{Path(self.url).name}#{index}")
                index += 1
        except av.FFmpegError:
            if not self.live:
                raise
            # A broken live stream ends the source; the runner reports it and exits non-zero.

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._container.close()


def open_source(
    source: str, *, fps: float | None = None, watch: bool = False, start_after: str | None = None
) -> FrameSource:
    """The source ``--source`` names: a folder (``watch``: and the files added later; ``start_after``:
    from the file after that name), a video file, or an ``rtsp://`` / ``http(s)://`` URL."""
    if source.startswith(STREAM_SCHEMES):
        return VideoSource(source, fps=fps)
    path = Path(source)
    if path.is_dir():
        return FolderSource(path, fps=fps, watch=watch, start_after=start_after)
    if path.is_file():
        return VideoSource(str(path), fps=fps)
    raise ConfigError(
        "--source", f"{source!r} is neither a folder, a file nor a stream URL", fix="check the path"
    )
