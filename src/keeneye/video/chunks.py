"""Sampled frames ↔ the seed's chunks: zips of at most 50 JPEGs under ``{request_uid}/{video_basename}/``.

Layout under the smartcut root (``KEENEYE_SMARTCUT__ROOT``, the plugins' shared volume)::

    {request_uid}/{video_basename}/chunk_000000.zip   frames 0–49
    {request_uid}/{video_basename}/chunk_000001.zip   frames 50–99 …

Inside a zip every frame is ``{index:07d}_{milliseconds:011d}.jpg``: the frame's position in the
sampling order and its presentation time in integer milliseconds (``0000051_00000051000.jpg`` is the
52nd frame, 51.000 s). The name alone recovers the timestamp, so a chunk made by a browser needs no
other file; nothing else is read from a zip. Paths in bus messages are relative to the root.

Reading is defensive (chunks arrive from clients): at most :data:`CHUNK_FRAMES` entries, only flat
``*.jpg`` names of the pattern above (no directories, so no zip-slip), a bounded size per entry and
per chunk, and JPEGs that decode. Anything else is ``bad_chunk``. The zip checks themselves are the
shared :mod:`keeneye.imaging.archive` (crop-health captures use the same).
"""

from __future__ import annotations

import re
import uuid
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from keeneye.domain import InvalidInput
from keeneye.imaging import probe_image
from keeneye.imaging.archive import SafeZip, ZipLimits, open_safe_zip
from keeneye.video.errors import BAD_CHUNK, VideoRejected
from keeneye.video.sampling import SampledFrame

CHUNK_FRAMES = 50
JPEG_QUALITY = 90
MAX_FRAME_BYTES = 8 * 1024 * 1024
MAX_FRAME_PIXELS = 4096 * 4096
FRAME_NAME = re.compile(r"^(\d{7})_(\d{11})\.jpg$")
CHUNK_NAME = "chunk_{:06d}.zip"
CHUNK_LIMITS = ZipLimits(
    max_members=CHUNK_FRAMES,
    max_member_bytes=MAX_FRAME_BYTES,
    max_total_bytes=CHUNK_FRAMES * MAX_FRAME_BYTES,
)
_BASENAME_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def frame_name(index: int, timestamp: float) -> str:
    return f"{index:07d}_{round(timestamp * 1000):011d}.jpg"


def video_folder(request_uid: str, video_basename: str) -> Path:
    """``{request_uid}/{video_basename}``, relative, refusing anything that could leave the root."""
    try:
        uid = str(uuid.UUID(request_uid))
    except ValueError as exc:
        raise VideoRejected(
            BAD_CHUNK, f"request uid {request_uid!r} is not a UUID", fix="use a UUID such as uuid4()"
        ) from exc
    safe = _BASENAME_UNSAFE.sub("_", video_basename).strip("._") or "video"
    return Path(uid) / safe


@dataclass(frozen=True)
class ChunkFrame:
    """A frame read back from a chunk: its sampling index, timestamp (s) and RGB pixels."""

    index: int
    timestamp: float
    image: np.ndarray


def write_chunks(
    frames: Iterable[SampledFrame], root: Path, folder: Path, per_chunk: int = CHUNK_FRAMES
) -> Iterator[Path]:
    """Pack frames into zips under ``root / folder``; yields each chunk's path relative to ``root``
    as soon as it is complete (what the producer announces with an ``in-progress`` message)."""
    if not 1 <= per_chunk <= CHUNK_FRAMES:
        raise ValueError(f"per_chunk must be 1…{CHUNK_FRAMES}")
    (root / folder).mkdir(parents=True, exist_ok=True)
    batch: list[SampledFrame] = []
    n_chunks = 0
    for frame in frames:
        batch.append(frame)
        if len(batch) == per_chunk:
            yield _write_zip(root, folder / CHUNK_NAME.format(n_chunks), batch)
            n_chunks += 1
            batch = []
    if batch:
        yield _write_zip(root, folder / CHUNK_NAME.format(n_chunks), batch)


def _write_zip(root: Path, relative: Path, frames: list[SampledFrame]) -> Path:
    tmp = root / relative.with_suffix(".zip.part")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:  # JPEG does not compress further
        for f in frames:
            ok, buf = cv2.imencode(
                ".jpg", cv2.cvtColor(f.image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
            )
            if not ok:
                raise RuntimeError(f"JPEG encoding failed for frame {f.index}")
            zf.writestr(frame_name(f.index, f.timestamp), buf.tobytes())
    tmp.replace(root / relative)  # a reader never sees a half-written chunk
    return relative


def resolve(root: Path, relative: str | Path) -> Path:
    """``root / relative`` when it stays inside ``root`` (message paths come from the bus)."""
    base = root.resolve()
    try:
        path = (base / relative).resolve()
    except (OSError, ValueError):  # a NUL byte, a loop of links
        path = base
    if not path.is_relative_to(base) or path == base:
        raise VideoRejected(
            BAD_CHUNK,
            f"path {str(relative)!r} leaves the smartcut root",
            status=400,
            fix="send paths relative to the smartcut root, {request_uid}/{video_basename}/…",
        )
    return path


def read_chunk(path: Path, max_bytes: int = CHUNK_FRAMES * MAX_FRAME_BYTES) -> list[ChunkFrame]:
    """The frames of one chunk, in index order; ``bad_chunk`` for anything but the documented layout.

    The zip checks (entry count, names, declared sizes, compression ratio) are the shared
    :func:`keeneye.imaging.archive.open_safe_zip`, run before any frame is inflated."""
    name = path.name
    try:
        if path.stat().st_size > max_bytes:
            raise VideoRejected(
                BAD_CHUNK, f"{name}: {path.stat().st_size} bytes, over {max_bytes}", status=413
            )
    except OSError as exc:
        raise VideoRejected(
            BAD_CHUNK, f"{name}: not a readable zip ({exc})", fix="send a zip of JPEG frames"
        ) from exc

    def frame_named(entry: zipfile.ZipInfo) -> None:
        if entry.is_dir() or not FRAME_NAME.match(entry.filename):
            raise VideoRejected(
                BAD_CHUNK,
                f"{name}: entry {entry.filename!r} is not a frame named "
                "{index:07d}_{milliseconds:011d}.jpg",
                fix="name frames as docs/smartcut.md says",
            )

    frames = []
    try:
        with open_safe_zip(path, CHUNK_LIMITS, name=name, check_name=frame_named) as zf:
            for entry in zf.members:
                match = FRAME_NAME.match(entry.filename)
                assert match is not None  # frame_named checked every entry
                frames.append(ChunkFrame(int(match[1]), int(match[2]) / 1000, _decode(zf, entry, name)))
    except VideoRejected:
        raise
    except InvalidInput as exc:  # the shared zip checks: same message, the chunk's reason
        raise VideoRejected(BAD_CHUNK, exc.message, status=exc.status, fix=exc.fix) from exc
    frames.sort(key=lambda f: f.index)
    return frames


def _decode(zf: SafeZip, entry: zipfile.ZipInfo, name: str) -> np.ndarray:
    data = zf.read(entry)  # refuses (zip_bomb, corrupt_zip) a member that lies about its size
    if not data.startswith(b"\xff\xd8"):
        raise VideoRejected(BAD_CHUNK, f"{name}: {entry.filename} is not a JPEG")
    try:
        header = probe_image(data)  # the size from the JPEG header, before any pixel is decoded
    except InvalidInput as exc:
        raise VideoRejected(
            BAD_CHUNK, f"{name}: {entry.filename} does not decode as a JPEG ({exc.message})"
        ) from exc
    if header.pixels > MAX_FRAME_PIXELS:
        raise VideoRejected(
            BAD_CHUNK,
            f"{name}: {entry.filename} is {header.width}×{header.height}, over {MAX_FRAME_PIXELS} pixels",
            status=413,
        )
    try:
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:  # OpenCV raises for some malformed streams instead of returning None
        bgr = None
    if bgr is None:
        raise VideoRejected(BAD_CHUNK, f"{name}: {entry.filename} does not decode as a JPEG")
    return np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


def read_folder(root: Path, folder: str | Path) -> Iterator[ChunkFrame]:
    """Every frame of ``{request_uid}/{video_basename}`` (the ``uploaded`` message's path), in time order."""
    path = resolve(root, folder)
    for chunk in sorted(path.glob("*.zip")):  # lexical order: name chunks so they sort
        yield from read_chunk(chunk)
