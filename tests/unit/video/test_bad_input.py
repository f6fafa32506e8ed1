"""Every refusal of a video: precise reason and status, before any frame is decoded."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from keeneye.video import GroundTruth, VideoLimits, VideoRejected, probe


def _reason(path: Path, limits: VideoLimits | None = None) -> tuple[str, int]:
    with pytest.raises(VideoRejected) as err:
        probe(path, limits)
    return err.value.reason, err.value.status


def test_missing_file(tmp_path: Path) -> None:
    assert _reason(tmp_path / "nope.mp4") == ("video_not_found", 404)


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.mp4").write_bytes(b"")
    assert _reason(tmp_path / "empty.mp4") == ("empty_video", 422)


def test_text_file_is_not_a_video(tmp_path: Path) -> None:
    (tmp_path / "notes.mp4").write_text("hello, this is not a video\n" * 20)
    assert _reason(tmp_path / "notes.mp4") == ("not_a_video", 415)


def test_still_image_is_not_a_video(tmp_path: Path) -> None:
    import cv2

    cv2.imwrite(str(tmp_path / "photo.jpg"), np.full((32, 32, 3), 128, np.uint8))
    assert _reason(tmp_path / "photo.jpg") == ("not_a_video", 415)


@pytest.mark.parametrize("keep", [3000, 0.5])
def test_cut_off_mp4_is_a_damaged_container(
    short_video: tuple[Path, GroundTruth], tmp_path: Path, keep: float
) -> None:
    data = short_video[0].read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(keep if keep > 1 else len(data) * keep)])
    reason, status = _reason(cut)
    assert (reason, status) == ("corrupt_video", 422)


def test_audio_only_file_has_no_video_stream(tmp_path: Path) -> None:
    path = tmp_path / "sound.mkv"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mp2", rate=16000)
        assert isinstance(stream, av.AudioStream)
        stream.layout = "mono"
        for i in range(5):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1152), np.int16), format="s16", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = 16000, i * 1152, Fraction(1, 16000)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    assert _reason(path) == ("no_video_stream", 422)


def test_video_stream_without_frames_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "zero.mkv"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=5)
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        out.start_encoding()  # writes the header with no frame after it
    assert path.stat().st_size > 0
    assert _reason(path) == ("empty_video", 422)


def test_over_the_duration_limit(short_video: tuple[Path, GroundTruth]) -> None:
    assert _reason(short_video[0], VideoLimits(max_duration_seconds=60)) == ("video_too_long", 413)


def test_over_the_size_limit(short_video: tuple[Path, GroundTruth]) -> None:
    with pytest.raises(VideoRejected) as err:
        probe(short_video[0], VideoLimits(max_bytes=1000))
    assert (err.value.reason, err.value.status) == ("video_too_large", 413)
    assert "over the limit of 1000 bytes" in err.value.message


def test_default_limits_are_the_seeds() -> None:
    assert VideoLimits() == VideoLimits(max_duration_seconds=24 * 3600, max_bytes=25 * 1000**3)
