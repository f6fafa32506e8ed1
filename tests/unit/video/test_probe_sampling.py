"""Probe figures and sampling timestamps on generated videos, both decoding strategies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from keeneye.video import GroundTruth, VideoRejected, probe, sample_frames, scaled_size, uses_keyframes


def test_probe_reads_duration_fps_codec_and_keyframes(short_video: tuple[Path, GroundTruth]) -> None:
    info = probe(short_video[0])
    assert (info.codec, info.width, info.height, info.fps) == ("h264", 320, 180, 5.0)
    assert info.duration == pytest.approx(180.0)
    assert info.n_packets == 900
    assert info.keyframes == pytest.approx([2.0 * k for k in range(90)])
    assert info.max_gop_seconds == pytest.approx(2.0)
    assert info.basename == "smartcut"


@pytest.mark.parametrize(
    ("width", "height", "img_size", "expected"),
    [
        (1920, 1080, 640, (640, 360)),
        (1080, 1920, 640, (360, 640)),
        (320, 180, 640, (320, 180)),
        (7, 3, 2, (2, 1)),
    ],
)
def test_scaled_size_keeps_the_aspect_and_never_upscales(
    width: int, height: int, img_size: int, expected: tuple[int, int]
) -> None:
    assert scaled_size(width, height, img_size) == expected


def test_step_of_one_second_with_two_second_gops_seeks_and_decodes(
    short_video: tuple[Path, GroundTruth],
) -> None:
    info = probe(short_video[0])
    assert not uses_keyframes(info, 1.0)
    frames = list(sample_frames(info, 1.0, 160))
    assert [f.timestamp for f in frames] == pytest.approx([float(t) for t in range(180)])
    assert [f.index for f in frames] == list(range(180))
    assert frames[0].image.shape == (90, 160, 3) and frames[0].image.dtype == np.uint8


def test_step_as_long_as_the_gop_decodes_keyframes_only(short_video: tuple[Path, GroundTruth]) -> None:
    info = probe(short_video[0])
    assert uses_keyframes(info, 2.0)
    assert [f.timestamp for f in sample_frames(info, 2.0, 320)] == pytest.approx([2.0 * k for k in range(90)])
    # 5 s steps, keyframes every 2 s: the first keyframe at or after each multiple of 5.
    got = [f.timestamp for f in sample_frames(info, 5.0, 320)][:6]
    assert got == pytest.approx([0.0, 6.0, 10.0, 16.0, 20.0, 26.0])


def test_both_strategies_give_the_same_pixels_at_a_keyframe(short_video: tuple[Path, GroundTruth]) -> None:
    info = probe(short_video[0])
    seek = {f.timestamp: f.image for f in sample_frames(info, 1.0, 160)}
    key = {f.timestamp: f.image for f in sample_frames(info, 2.0, 160)}
    for t in (0.0, 40.0, 100.0):
        assert np.array_equal(seek[t], key[t])


def test_long_gops_are_sampled_by_seeking(long_gop_video: tuple[Path, GroundTruth]) -> None:
    info = probe(long_gop_video[0])
    assert info.max_gop_seconds == pytest.approx(10.0)
    assert not uses_keyframes(info, 3.0)
    got = [f.timestamp for f in sample_frames(info, 3.0, 64)]
    assert got == pytest.approx([3.0 * k for k in range(20)])


@pytest.mark.parametrize("sensitivity", [0.0, -1.0, 0.01, float("nan"), 1e9])
def test_sensitivity_outside_the_range_is_refused(
    short_video: tuple[Path, GroundTruth], sensitivity: float
) -> None:
    info = probe(short_video[0])
    with pytest.raises(VideoRejected) as err:
        next(sample_frames(info, sensitivity, 160))
    assert err.value.reason == "bad_sensitivity"


@pytest.fixture(scope="module")
def bframe_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 s at 25 fps with B-frames (packets out of presentation order), a keyframe every 2 s; the
    red level of frame i is 5·i mod 256, so a pixel tells which frame was decoded."""
    import av

    path = tmp_path_factory.mktemp("bframes") / "bframes.mp4"
    with av.open(str(path), "w") as out:
        options = {"g": "50", "bf": "2", "keyint_min": "50", "sc_threshold": "0", "crf": "0"}
        stream = out.add_stream("libx264", rate=25, options=options)
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(500):
            image = np.full((48, 64, 3), (i * 5) % 256, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


@pytest.mark.parametrize(
    ("step", "first", "count"),
    [
        (0.5, [0.0, 0.52, 1.0, 1.52, 2.0], 40),  # 25 fps: the first frame at or after each target
        (1.0, [0.0, 1.0, 2.0, 3.0, 4.0], 20),
        (2.0, [0.0, 2.0, 4.0, 6.0, 8.0], 10),  # keyframes only
        (3.0, [0.0, 4.0, 6.0, 10.0, 12.0], 7),  # keyframes only: the first keyframe at or after 3, 6, 9 …
    ],
)
def test_sampling_with_b_frames(bframe_video: Path, step: float, first: list[float], count: int) -> None:
    info = probe(bframe_video)
    assert (info.n_packets, info.duration, info.fps) == (500, pytest.approx(20.0), 25.0)
    frames = list(sample_frames(info, step, 64))
    assert len(frames) == count
    assert [f.timestamp for f in frames[:5]] == pytest.approx(first)
    for f in frames:  # the pixels are those of the frame the timestamp names
        assert abs(int(f.image[24, 32, 0]) - round(f.timestamp * 25) * 5 % 256) <= 3
