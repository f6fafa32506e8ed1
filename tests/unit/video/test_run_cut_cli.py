"""The in-process run (chunks and all), lossless and exact cuts, and the CLI on top."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from keeneye.cli import app
from keeneye.video import GroundTruth, Segment, SmartcutRequest, VideoRejected, probe, read_folder, run_local
from keeneye.video.cut import cut

UID = "40b1fea2-4a91-11ee-be56-0242ac120002"


def test_run_local_answers_in_the_seeds_processed_files_shape(
    short_video: tuple[Path, GroundTruth], tmp_path: Path
) -> None:
    video, truth = short_video
    run = run_local(SmartcutRequest(video, "motion", 1.0, user_id="user_id1", request_uid=UID), tmp_path)
    msg = run.message
    assert list(msg) == ["user_id", "user_request_uid", "video_name", "plugin_name", "timestamps"]
    assert (msg["user_id"], msg["user_request_uid"], msg["video_name"], msg["plugin_name"]) == (
        "user_id1",
        UID,
        "smartcut",
        "motion",
    )
    assert len(msg["timestamps"]) == len(truth.events)
    assert all(set(t) == {"start", "stop"} and t["stop"] - t["start"] >= 15 for t in msg["timestamps"])
    assert (run.n_frames, run.n_chunks, run.keyframes_only) == (180, 4, False)
    assert list(tmp_path.iterdir()) == []  # processed chunks are deleted, as in the seed


def test_kept_chunks_hold_every_sampled_timestamp(
    short_video: tuple[Path, GroundTruth], tmp_path: Path
) -> None:
    run = run_local(
        SmartcutRequest(short_video[0], "scene", 2.0, request_uid=UID), tmp_path, keep_chunks=True
    )
    assert run.chunk_folder == Path(UID) / "smartcut"
    assert sorted(p.name for p in (tmp_path / run.chunk_folder).iterdir()) == [
        "chunk_000000.zip",
        "chunk_000001.zip",
    ]
    frames = list(read_folder(tmp_path, run.chunk_folder))
    assert [f.timestamp for f in frames] == pytest.approx([2.0 * k for k in range(90)])
    assert max(frames[0].image.shape) == 320


def test_lossless_cut_starts_at_the_keyframe_before_and_copies_packets(
    short_video: tuple[Path, GroundTruth], tmp_path: Path
) -> None:
    info = probe(short_video[0])
    [clip] = cut(info, [Segment(21.3, 40.0)], tmp_path)
    assert clip.path.name == "smartcut_000_21300-40000.mp4"
    assert (clip.start, clip.stop) == (20.0, 40.0)
    out = probe(clip.path)
    assert (out.codec, out.n_packets, out.duration) == ("h264", 100, pytest.approx(20.0))


def test_reencoded_cut_has_exact_boundaries(short_video: tuple[Path, GroundTruth], tmp_path: Path) -> None:
    info = probe(short_video[0])
    [clip] = cut(info, [Segment(21.4, 40.0)], tmp_path, reencode=True)
    assert clip.start == pytest.approx(21.4)
    assert probe(clip.path).n_packets == 93  # 21.4 … 39.8 s at 5 fps


def test_cli_run_json_then_cut(short_video: tuple[Path, GroundTruth], tmp_path: Path) -> None:
    runner = CliRunner()
    env = {"KEENEYE_HOME": str(tmp_path / "home")}
    result = runner.invoke(
        app, ["smartcut", "run", str(short_video[0]), "-p", "motion", "-s", "1", "--json"], env=env
    )
    assert result.exit_code == 0, result.output
    message = json.loads(result.stdout)
    assert message["video_name"] == "smartcut" and len(message["timestamps"]) == 3
    (tmp_path / "seg.json").write_text(result.stdout)
    clips = runner.invoke(
        app,
        [
            "smartcut",
            "cut",
            str(short_video[0]),
            str(tmp_path / "seg.json"),
            "--out",
            str(tmp_path / "c"),
            "--json",
        ],
        env=env,
    )
    assert clips.exit_code == 0, clips.output
    assert len(json.loads(clips.stdout)) == 3 and len(list((tmp_path / "c").glob("*.mp4"))) == 3


def test_cli_evaluate_checks_the_seeds_bar(short_video: tuple[Path, GroundTruth], tmp_path: Path) -> None:
    env = {"KEENEYE_HOME": str(tmp_path / "home")}
    ok = CliRunner().invoke(app, ["smartcut", "evaluate", str(short_video[0]), "--check", "--json"], env=env)
    assert ok.exit_code == 0, ok.output
    figures = json.loads(ok.stdout)
    assert figures["meets_seed"] and figures["tpr"] > 0.9 and figures["fpr"] < 0.2
    (tmp_path / "none.json").write_text('{"timestamps": []}')
    empty = CliRunner().invoke(
        app,
        ["smartcut", "evaluate", str(short_video[0]), "--segments", str(tmp_path / "none.json"), "--check"],
        env=env,
    )
    assert empty.exit_code == 1
    assert "TPR 0.000" in empty.stdout


def test_cli_synth_smartcut_writes_video_and_truth(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["synth", "smartcut", "--out", str(tmp_path), "--hours", "0.03", "--events", "2", "--json"]
    )
    assert result.exit_code == 0, result.output
    truth = json.loads(result.stdout)
    assert truth["duration"] == pytest.approx(108.0) and len(truth["events"]) == 2
    assert (tmp_path / "smartcut.mp4").stat().st_size > 0 and (tmp_path / "smartcut.events.json").is_file()
    crowded = CliRunner().invoke(
        app, ["synth", "smartcut", "--out", str(tmp_path / "x"), "--hours", "0.02", "--events", "2"]
    )
    assert crowded.exit_code == 2
    assert "2 events of at least 15 s do not fit in 72 s" in crowded.output


def test_cli_refuses_a_file_that_is_not_a_video_with_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "holiday.mp4"
    bad.write_text("not a video")
    env = {**os.environ, "KEENEYE_HOME": str(tmp_path / "home")}
    done = subprocess.run(
        [sys.executable, "-m", "keeneye", "smartcut", "run", str(bad)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 2
    assert "holiday.mp4: not a video file" in done.stderr


@pytest.mark.parametrize(
    "content", [None, "not json", '{"video": "x"}', '{"video": "x", "duration": 1, "fps": 5, "events": 3}']
)
def test_evaluate_refuses_a_missing_or_malformed_ground_truth(
    short_video: tuple[Path, GroundTruth], tmp_path: Path, content: str | None
) -> None:
    truth = tmp_path / "truth.json"
    if content is not None:
        truth.write_text(content)
    result = CliRunner().invoke(
        app,
        ["smartcut", "evaluate", str(short_video[0]), "--truth", str(truth)],
        env={"KEENEYE_HOME": str(tmp_path)},
    )
    assert isinstance(result.exception, VideoRejected)
    assert result.exception.reason == "bad_ground_truth"
    assert str(truth) in result.exception.message


def test_ahead_keeps_the_order_raises_in_place_and_stops_with_the_consumer() -> None:
    from collections.abc import Iterator

    from keeneye.video.local import ahead

    assert list(ahead(iter(range(100)), 2)) == list(range(100))

    def failing() -> Iterator[int]:
        yield 1
        yield 2
        raise ValueError("damaged after 2")

    got: list[int] = []
    with pytest.raises(ValueError, match="damaged after 2"):
        for item in ahead(failing(), 2):
            got.append(item)
    assert got == [1, 2]  # the error comes where the third item would have

    produced: list[int] = []
    closed: list[bool] = []

    def endless() -> Iterator[int]:
        try:
            n = 0
            while True:
                produced.append(n)
                yield n
                n += 1
        finally:
            closed.append(True)

    consumer = ahead(endless(), 2)
    assert [next(consumer) for _ in range(3)] == [0, 1, 2]
    consumer.close()  # the producer stops at its next item, and its generator is closed
    assert closed == [True]
    assert len(produced) <= 3 + 2 + 1


def test_a_recommender_failing_mid_video_leaves_no_chunk_behind(
    short_video: tuple[Path, GroundTruth], tmp_path: Path
) -> None:
    from keeneye.video import make_recommender

    recommender = make_recommender("motion")
    real = recommender.recommend
    calls = {"frames": 0}

    def recommend(frames, *args):  # type: ignore[no-untyped-def]
        def counted():  # type: ignore[no-untyped-def]
            for frame in frames:
                calls["frames"] += 1
                if calls["frames"] == 60:  # in the second chunk, while the next ones are written
                    raise RuntimeError("scorer crashed")
                yield frame

        return real(counted(), *args)

    recommender.recommend = recommend  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="scorer crashed"):
        run_local(
            SmartcutRequest(short_video[0], "motion", 1.0, request_uid=UID), tmp_path, recommender=recommender
        )
    assert list(tmp_path.iterdir()) == []
