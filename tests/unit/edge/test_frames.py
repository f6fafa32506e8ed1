"""Frame sources: folder order and pacing, watching a folder, video files through PyAV, refusals."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from keeneye.domain import ConfigError
from keeneye.edge import FolderSource, Pacer, SourceFrame, VideoSource, open_source
from keeneye.imaging import decode_image


class Clock:
    def __init__(self) -> None:
        self.t = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 6))
        self.t += seconds


def test_the_pacer_releases_at_fps_without_drift() -> None:
    clock = Clock()
    pacer = Pacer(10, clock=clock, sleep=clock.sleep)
    pacer.wait()  # the first frame goes at once
    clock.t += 0.03  # deciding took 30 ms
    pacer.wait()
    clock.t += 0.25  # a slow frame: the next two are already due (a line does not wait either) …
    pacer.wait()
    pacer.wait()
    pacer.wait()  # … and the schedule holds: due at 100.4, now 100.35
    assert clock.slept == [0.07, 0.05]
    with pytest.raises(ValueError, match="fps must be positive"):
        Pacer(0)


def test_a_folder_plays_its_images_in_name_order(tmp_path: Path) -> None:
    for name in ("b.png", "a.jpg", "c.txt", "A.PNG"):
        (tmp_path / name).write_bytes(name.encode())
    (tmp_path / "sub").mkdir()
    got = list(FolderSource(tmp_path).frames())
    assert got == [
        SourceFrame(b"A.PNG", "A.PNG"),
        SourceFrame(b"a.jpg", "a.jpg"),
        SourceFrame(b"b.png", "b.png"),
    ]


def test_a_watched_folder_plays_files_added_later_and_idles_in_between(tmp_path: Path) -> None:
    (tmp_path / "1.png").write_bytes(b"one")
    source = FolderSource(tmp_path, watch=True, poll_seconds=0.001)
    frames = source.frames()
    assert next(frames) == SourceFrame(b"one", "1.png")
    assert next(frames) is None  # nothing new: an idle tick, the runner may stop here
    (tmp_path / "2.png").write_bytes(b"two")
    assert next(frames) == SourceFrame(b"two", "2.png")
    source.close()
    assert list(frames) == []


def _video(path: Path, frames: int) -> None:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 24, "yuv420p"
        for i in range(frames):
            rgb = np.full((24, 32, 3), i * 20, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def test_a_video_file_is_decoded_frame_by_frame_into_images(tmp_path: Path) -> None:
    _video(tmp_path / "line.mp4", 5)
    source = open_source(str(tmp_path / "line.mp4"))
    assert isinstance(source, VideoSource) and source.description.startswith("video ")
    got = [f for f in source.frames() if f is not None]
    source.close()
    assert [f.name for f in got] == [f"line.mp4#{i}" for i in range(5)]
    image = decode_image(got[3].data, max_pixels=10_000)
    assert (image.width, image.height, image.format) == (32, 24, "png")
    assert abs(float(np.asarray(image.pixels).mean()) - 60) < 8  # the 4th frame's grey level


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: str(p / "missing"), "neither a folder, a file nor a stream URL"),
        (lambda p: (p / "x.mp4").write_bytes(b"not a video") and str(p / "x.mp4"), "cannot open"),
    ],
)
def test_sources_that_cannot_be_read_are_refused(tmp_path: Path, make: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        open_source(make(tmp_path))  # type: ignore[operator]
