"""Fuzzing the video opener and the chunk reader: mutated containers and chunk zips end in frames or a
stable refusal reason (``VideoRejected``), never another exception, and in bounded memory.

Seed videos are tiny (64 × 48, 2 s at 5 fps) in four containers with four codecs, so one example
(probe, then sampling every frame that survives) takes milliseconds. Mutations and the fixed-seed
settings are ``tests.fuzz_support``'s.
"""

from __future__ import annotations

import io
import struct
import tracemalloc
import zipfile
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from hypothesis import given, settings

from keeneye.video import VideoInfo, VideoLimits, VideoRejected, probe, read_chunk, sample_frames
from keeneye.video.chunks import CHUNK_FRAMES, frame_name, write_chunks
from keeneye.video.sampling import SampledFrame
from tests.fuzz_support import FUZZ, examples, fuzzed

VIDEO_REASONS = frozenset(
    {
        "video_not_found",
        "not_a_video",
        "corrupt_video",
        "no_video_stream",
        "empty_video",
        "video_too_long",
        "video_too_large",
    }
)
IMG_SIZE = 32
LIMITS = VideoLimits(max_duration_seconds=3600.0, max_bytes=10_000_000)
CODECS = {"mp4": "mpeg4", "mkv": "mjpeg", "avi": "mpeg4", "ts": "mpeg2video"}
if "libx264" in av.codecs_available:
    CODECS["h264.mp4"] = "libx264"


def _video(path: Path, codec: str, frames: int = 10, fps: int = 5, size: tuple[int, int] = (64, 48)) -> bytes:
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        stream.codec_context.gop_size = 5
        for i in range(frames):
            pixels = np.full((size[1], size[0], 3), (i * 23) % 256, np.uint8)
            pixels[: size[1] // 2, : i * 6] = 255  # something moves
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path.read_bytes()


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("seeds")
    return {ext: _video(folder / f"seed.{ext}", codec) for ext, codec in CODECS.items()}


def open_or_refuse(path: Path) -> VideoInfo | str:
    """Probe, then sample every frame; the info, or the refusal's reason. Anything else fails."""
    try:
        info = probe(path, LIMITS)
        frames = list(sample_frames(info, 0.2, IMG_SIZE))
    except VideoRejected as exc:
        assert exc.reason in VIDEO_REASONS, f"unexpected reason {exc.reason!r}: {exc.message}"
        assert exc.message and 400 <= exc.status < 500
        return exc.reason
    assert info.n_packets > 0 and info.duration > 0
    for frame in frames:
        assert frame.image.dtype == np.uint8 and frame.image.ndim == 3 and frame.image.shape[2] == 3
        assert max(frame.image.shape[:2]) <= IMG_SIZE
    return info


def test_seed_videos_open(seeds: dict[str, bytes], tmp_path: Path) -> None:
    for ext, data in seeds.items():
        path = tmp_path / f"v.{ext.rsplit('.', 1)[-1]}"
        path.write_bytes(data)
        info = open_or_refuse(path)
        assert isinstance(info, VideoInfo), (ext, info)
        assert (info.width, info.height, round(info.duration, 1)) == (64, 48, 2.0)


def test_mutated_containers_open_or_are_refused(seeds: dict[str, bytes], tmp_path: Path) -> None:
    @settings(FUZZ, max_examples=examples(400))
    @given(fuzzed(seeds))
    def run(data: bytes) -> None:
        path = tmp_path / "fuzz.bin"  # no extension: the container is sniffed, never named
        path.write_bytes(data)
        open_or_refuse(path)

    run()


def _patch_mp4_size(data: bytes, width: int, height: int) -> bytes:
    """An MP4 whose sample description (``mp4v``) and track header claim ``width × height``."""
    out = bytearray(data)
    entry = out.index(b"mp4v")
    struct.pack_into(">HH", out, entry + 4 + 24, width, height)  # VisualSampleEntry width, height
    tkhd = out.index(b"tkhd")
    struct.pack_into(">II", out, tkhd + 4 + 76, width << 16, height << 16)  # 16.16 fixed point
    return bytes(out)


@pytest.mark.parametrize(("width", "height"), [(65535, 65535), (1, 65535), (0, 0)])
def test_an_absurd_frame_size_in_the_header_is_bounded(
    seeds: dict[str, bytes], tmp_path: Path, width: int, height: int
) -> None:
    path = tmp_path / "absurd.mp4"
    path.write_bytes(_patch_mp4_size(seeds["mp4"], width, height))
    tracemalloc.start()
    try:
        outcome = open_or_refuse(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The codec's own header (the MPEG-4 VOL) says 64 × 48: frames come out at their real size.
    assert isinstance(outcome, VideoInfo) or outcome == "corrupt_video", outcome
    assert peak < 16 * 1024 * 1024, f"{peak:,} bytes"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        pytest.param(b"", "empty_video", id="empty"),
        pytest.param(b"\x00\x00\x00\x18ftypisom" + bytes(16), "corrupt_video", id="ftyp-only"),
        pytest.param(b"\x1a\x45\xdf\xa3" + bytes(60), "corrupt_video", id="ebml-magic-only"),
        pytest.param(b"GIF89a" + bytes(30), "not_a_video", id="gif-header"),
        pytest.param(b"hello world\n" * 40, "not_a_video", id="text"),
    ],
)
def test_tiny_and_foreign_files_give_their_reason(tmp_path: Path, data: bytes, reason: str) -> None:
    path = tmp_path / "v.mp4"
    path.write_bytes(data)
    assert open_or_refuse(path) == reason


# --------------------------------------------------------------------------------------------------
# Chunks: zips of JPEG frames from clients
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chunk_seeds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    root = tmp_path_factory.mktemp("chunks")
    rng = np.random.default_rng(4)
    frames = [SampledFrame(i, i * 0.5, rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)) for i in range(7)]
    folder = Path("00000000-0000-4000-8000-000000000000") / "cam"
    paths = list(write_chunks(frames, root, folder, per_chunk=4))
    deflated = io.BytesIO()
    with zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as zf:
        ok, enc = cv2.imencode(".jpg", frames[0].image)
        assert ok
        zf.writestr(frame_name(0, 0.0), enc.tobytes())
    return {p.name: (root / p).read_bytes() for p in paths} | {"deflated": deflated.getvalue()}


def chunk_or_refuse(path: Path) -> int | str:
    try:
        frames = read_chunk(path)
    except VideoRejected as exc:
        assert exc.reason == "bad_chunk", f"unexpected reason {exc.reason!r}: {exc.message}"
        assert exc.message and 400 <= exc.status < 500
        return exc.reason
    assert len(frames) <= CHUNK_FRAMES
    assert [f.index for f in frames] == sorted(f.index for f in frames)
    for frame in frames:
        assert frame.image.dtype == np.uint8 and frame.image.shape[2] == 3
    return len(frames)


def test_mutated_chunks_are_read_or_refused(chunk_seeds: dict[str, bytes], tmp_path: Path) -> None:
    @settings(FUZZ, max_examples=examples(400))
    @given(fuzzed(chunk_seeds))
    def run(data: bytes) -> None:
        path = tmp_path / "chunk_000000.zip"
        path.write_bytes(data)
        chunk_or_refuse(path)

    run()


def _chunk(entries: list[tuple[str | zipfile.ZipInfo, bytes]]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return out.getvalue()


def _jpeg(width: int = 32, height: int = 24) -> bytes:
    ok, enc = cv2.imencode(".jpg", np.zeros((24, 32, 3), np.uint8))
    assert ok
    data = bytearray(enc.tobytes())
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def _png() -> bytes:
    ok, enc = cv2.imencode(".png", np.zeros((24, 32, 3), np.uint8))
    assert ok
    return enc.tobytes()


def _link(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system, info.external_attr = 3, 0o120777 << 16
    return info


@pytest.mark.parametrize(
    ("entries", "status"),
    [
        pytest.param([(frame_name(0, 0), _jpeg(32768, 32768))], 413, id="jpeg-claiming-32768-square"),
        pytest.param([(frame_name(0, 0), _jpeg(65535, 65535))], 413, id="jpeg-claiming-65535-square"),
        pytest.param([(frame_name(0, 0), _png())], 422, id="png-named-jpg"),
        pytest.param([(frame_name(0, 0), b"\xff\xd8\xff" + bytes(20))], 422, id="jpeg-magic-only"),
        pytest.param([("../" + frame_name(0, 0), _jpeg())], 422, id="traversal"),
        pytest.param([(_link(frame_name(0, 0)), b"/etc/passwd")], 422, id="symlink"),
        pytest.param([(frame_name(i, i), _jpeg()) for i in range(CHUNK_FRAMES + 1)], 422, id="51-frames"),
    ],
)
def test_crafted_chunks_are_bad_chunks_without_decoding(
    tmp_path: Path, entries: list[tuple[str | zipfile.ZipInfo, bytes]], status: int
) -> None:
    path = tmp_path / "chunk_000000.zip"
    path.write_bytes(_chunk(entries))
    tracemalloc.start()
    try:
        with pytest.raises(VideoRejected) as err:
            read_chunk(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (err.value.reason, err.value.status) == ("bad_chunk", status)
    assert peak < 8 * 1024 * 1024, f"{peak:,} bytes"
