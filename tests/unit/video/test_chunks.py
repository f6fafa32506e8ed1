"""The seed's chunks: ≤ 50 JPEGs per zip under {request_uid}/{video_basename}/, timestamps in names."""

from __future__ import annotations

import io
import uuid
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from keeneye.video import (
    SampledFrame,
    VideoRejected,
    frame_name,
    read_chunk,
    read_folder,
    video_folder,
    write_chunks,
)
from keeneye.video.chunks import resolve

UID = "40b1fea2-4a91-11ee-be56-0242ac120002"


def _frames(n: int) -> list[SampledFrame]:
    rng = np.random.default_rng(0)
    return [
        SampledFrame(i, round(i * 1.25, 6), rng.integers(0, 255, size=(24, 32, 3), dtype=np.uint8))
        for i in range(n)
    ]


def test_frame_name_holds_index_and_milliseconds() -> None:
    assert frame_name(51, 51.0) == "0000051_00000051000.jpg"
    assert frame_name(3, 86399.9995) == "0000003_00086400000.jpg"


def test_120_frames_make_three_chunks_with_recoverable_timestamps(tmp_path: Path) -> None:
    folder = video_folder(UID, "video_name1")
    assert folder == Path(UID) / "video_name1"
    paths = list(write_chunks(_frames(120), tmp_path, folder))
    assert [str(p) for p in paths] == [f"{UID}/video_name1/chunk_00000{i}.zip" for i in range(3)]
    with zipfile.ZipFile(tmp_path / paths[2]) as zf:
        assert len(zf.namelist()) == 20
    frames = list(read_folder(tmp_path, folder))
    assert [f.index for f in frames] == list(range(120))
    assert [f.timestamp for f in frames] == pytest.approx([i * 1.25 for i in range(120)])
    assert frames[0].image.shape == (24, 32, 3)
    assert not list(tmp_path.rglob("*.part"))


def test_video_folder_refuses_a_request_uid_that_is_not_a_uuid() -> None:
    with pytest.raises(VideoRejected) as err:
        video_folder("../../etc", "x")
    assert err.value.reason == "bad_chunk"


def test_video_basename_is_made_safe() -> None:
    assert video_folder(UID, "../../evil name") == Path(UID) / "evil_name"


@pytest.mark.parametrize("relative", ["../outside", "/etc/passwd", f"{UID}/../../x", "."])
def test_message_paths_must_stay_inside_the_root(tmp_path: Path, relative: str) -> None:
    with pytest.raises(VideoRejected) as err:
        resolve(tmp_path / "root", relative)
    assert err.value.status == 400


def _jpeg() -> bytes:
    ok, buf = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))
    assert ok
    return bytes(buf.tobytes())


def _zip(tmp_path: Path, entries: dict[str, bytes]) -> Path:
    path = tmp_path / "chunk.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ({f"{i:07d}_{i:011d}.jpg": b"" for i in range(51)}, "51 entries, at most 50"),
        ({"../0000001_00000001000.jpg": b"x"}, "is not a frame named"),
        ({"frame.jpg": b"x"}, "is not a frame named"),
        ({"0000001_00000001000.jpg": b"GIF89a not a jpeg"}, "is not a JPEG"),
        ({"0000001_00000001000.jpg": b"\xff\xd8\xff\xe0 truncated"}, "does not decode"),
    ],
)
def test_bad_chunks_are_refused(tmp_path: Path, entries: dict[str, bytes], message: str) -> None:
    with pytest.raises(VideoRejected) as err:
        read_chunk(_zip(tmp_path, entries))
    assert err.value.reason == "bad_chunk"
    assert message in err.value.message


def test_not_a_zip(tmp_path: Path) -> None:
    (tmp_path / "c.zip").write_bytes(b"PK\x03\x04 but broken")
    with pytest.raises(VideoRejected, match="not a readable zip"):
        read_chunk(tmp_path / "c.zip")


def test_a_zip_bomb_entry_is_refused_before_it_is_inflated(tmp_path: Path) -> None:
    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("0000000_00000000000.jpg", b"\xff\xd8" + b"\0" * (9 * 1024 * 1024))
    assert path.stat().st_size < 100_000
    with pytest.raises(VideoRejected) as err:
        read_chunk(path)
    assert err.value.status == 413


def test_a_browser_made_chunk_reads_the_same(tmp_path: Path) -> None:
    """Only the name pattern matters: a zip written by any client is read the same way."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("0000001_00000002500.jpg", _jpeg())
        zf.writestr("0000000_00000000000.jpg", _jpeg())
    folder = tmp_path / str(uuid.UUID(UID)) / "cam"
    folder.mkdir(parents=True)
    (folder / "folder1.zip").write_bytes(buf.getvalue())
    assert [(f.index, f.timestamp) for f in read_folder(tmp_path, f"{UID}/cam")] == [(0, 0.0), (1, 2.5)]
