"""The ``objects`` recommender (docs/smartcut.md → Recommenders): a keeneye detector with the classes
chosen per request, OpenCV's HOG people detector without a model, and the classes travelling from
the request to the plugin process as the ``options`` of the ``objects-new-files`` messages."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from keeneye.cli import app
from keeneye.models import ModelBundle, OnnxModel
from keeneye.models.testing import IR_VERSION, OPSET, write_bundle
from keeneye.settings import Settings
from keeneye.store import open_results_db
from keeneye.stream.bus import Bus, open_bus
from keeneye.video import (
    HogPeopleDetector,
    ObjectsRecommender,
    OnnxDetector,
    SmartcutRequest,
    VideoRejected,
    load_detector,
    run_local,
)
from keeneye.video.backend import BackendLimits, SmartcutBackend
from keeneye.video.messages import new_files_topic
from keeneye.video.plugins import PluginProcess
from keeneye.video.protocol import MalformedMessage, encode, parse_new_files, parse_started
from tests.unit.video.bus_support import drain, values

RED = (230, 20, 20)
BLUE = (20, 20, 230)
GREY = (60, 60, 60)


# ------------------------------------------------------------------------------------ test inputs


def _colour_detector_onnx(size: int = 32) -> bytes:
    """A YOLO-layout detector (``(N, 4 + 2, 2)``, classes car, person) that "sees" a car as much as
    the picture is red and a person as much as it is blue: anchor 0 scores car = mean red,
    anchor 1 scores person = mean blue (inputs scaled to 0…1)."""
    weights = np.zeros((3, 4), np.float32)
    weights[0, 0] = 1.0  # red → (car, anchor 0)
    weights[2, 3] = 1.0  # blue → (person, anchor 1)
    boxes = np.array([[[16, 16], [16, 16], [32, 32], [32, 32]]], np.float32)  # cx, cy, w, h × 2 anchors
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["means"], axes=[2, 3], keepdims=0),  # (N, 3)
        helper.make_node("MatMul", ["means", "w"], ["flat"]),  # (N, 4)
        helper.make_node("Reshape", ["flat", "cls_shape"], ["cls"]),  # (N, 2 classes, 2 anchors)
        helper.make_node("ReduceMean", ["means"], ["mean"], axes=[1], keepdims=0),  # (N,)
        helper.make_node("Mul", ["mean", "zero"], ["zeros"]),
        helper.make_node("Reshape", ["zeros", "box_shape"], ["zeros3"]),  # (N, 1, 1)
        helper.make_node("Add", ["zeros3", "boxes"], ["box_rows"]),  # (N, 4, 2)
        helper.make_node("Concat", ["box_rows", "cls"], ["output0"], axis=1),  # (N, 6, 2)
    ]
    inits = [
        numpy_helper.from_array(weights, "w"),
        numpy_helper.from_array(np.array([-1, 2, 2], np.int64), "cls_shape"),
        numpy_helper.from_array(np.array([-1, 1, 1], np.int64), "box_shape"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        numpy_helper.from_array(boxes, "boxes"),
    ]
    graph = helper.make_graph(
        nodes,
        "colour_detector",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["N", 6, 2])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    data: bytes = model.SerializeToString()
    return data


@pytest.fixture(scope="module")
def detector_bundle(tmp_path_factory: pytest.TempPathFactory) -> ModelBundle:
    return write_bundle(
        tmp_path_factory.mktemp("det") / "colours",
        _colour_detector_onnx(),
        output_format="yolo-detect",
        input={"width": 32, "height": 32},
        classes=["car", "person"],
        thresholds={"score": 0.5},
    )


def _detector(bundle: ModelBundle) -> OnnxDetector:
    return OnnxDetector(bundle, OnnxModel(bundle), "colours")


def _person(height: int = 128) -> np.ndarray:
    """A dark standing figure on a light background, 64×128 at height 128 (HOG's window)."""
    figure = np.full((128, 64), 200, np.uint8)
    cv2.circle(figure, (32, 22), 9, 40, -1)
    cv2.rectangle(figure, (22, 32), (42, 75), 40, -1)
    cv2.line(figure, (27, 75), (22, 118), 40, 7)
    cv2.line(figure, (37, 75), (42, 118), 40, 7)
    cv2.line(figure, (22, 35), (15, 70), 40, 5)
    cv2.line(figure, (42, 35), (49, 70), 40, 5)
    if height != 128:
        figure = cv2.resize(figure, (height // 2, height), interpolation=cv2.INTER_AREA)
    return np.repeat(figure[..., None], 3, axis=2)


def _street(person_x: int | None) -> np.ndarray:
    """320×240, light background; the figure (160 px tall) with its left edge at ``person_x``."""
    frame = np.full((240, 320, 3), 200, np.uint8)
    if person_x is not None:
        frame[40:200, person_x : person_x + 80] = _person(160)
    return frame


def _write_video(path: Path, seconds: int, fps: int, frame_at: Callable[[float], np.ndarray]) -> Path:
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=fps)
        first = frame_at(0.0)
        stream.width, stream.height, stream.pix_fmt = first.shape[1], first.shape[0], "yuv420p"
        stream.options = {"g": str(fps), "bf": "0"}
        for i in range(seconds * fps):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame_at(i / fps), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def colour_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """100 s, 64×64: red (a "car") over [20, 40) s, blue (a "person") over [60, 80) s, grey otherwise."""

    def frame_at(t: float) -> np.ndarray:
        colour = RED if 20 <= t < 40 else BLUE if 60 <= t < 80 else GREY
        return np.full((64, 64, 3), colour, np.uint8)

    return _write_video(tmp_path_factory.mktemp("colours") / "colours.mp4", 100, 2, frame_at)


# ---------------------------------------------------------------------------------- the detectors


def test_hog_fires_on_a_standing_figure_and_not_on_the_empty_scene() -> None:
    hog = HogPeopleDetector()
    found = hog.detect(_street(120))
    assert found and all(cls == 0 for cls, _ in found)
    assert max(score for _, score in found) > 0.5  # margin > 1: a clear detection
    assert hog.detect(_street(None)) == []
    assert hog.detect(np.zeros((100, 60, 3), np.uint8)) == []  # smaller than the 64×128 window


def test_keeneye_detector_scores_only_the_requested_classes(detector_bundle: ModelBundle) -> None:
    recommender = ObjectsRecommender(detector=_detector(detector_bundle))
    red, blue, grey = (np.full((48, 48, 3), c, np.uint8) for c in (RED, BLUE, GREY))
    everything = recommender.scorer()
    persons = recommender.scorer_for({"classes": ["person"]})
    assert [round(everything(f), 2) for f in (red, blue, grey)] == [0.9, 0.9, 0.0]
    assert [round(persons(f), 2) for f in (red, blue, grey)] == [0.0, 0.9, 0.0]
    assert recommender.announcement() == {
        "plugin_name": "objects",
        "label": "Objects",
        "img_size": 640,
        "classes": ["car", "person"],
    }
    with pytest.raises(VideoRejected, match="does not detect 'bicycle'") as err:
        recommender.scorer_for({"classes": ["bicycle"]})
    assert err.value.reason == "unknown_class" and err.value.fix == "choose among: car, person"


def test_load_detector_takes_a_bundle_folder_and_refuses_a_classifier(
    detector_bundle: ModelBundle, tmp_path: Path
) -> None:
    from keeneye.models.testing import tiny_classifier

    settings = Settings(home=tmp_path / "home")
    assert isinstance(load_detector(settings, ""), HogPeopleDetector)
    loaded = load_detector(settings, str(detector_bundle.path))
    assert loaded.classes == ("car", "person")
    classifier = write_bundle(
        tmp_path / "cls",
        tiny_classifier(2, size=32),
        output_format="logits",
        input={"width": 32, "height": 32},
        classes=["ok", "bad"],
    )
    with pytest.raises(VideoRejected, match="is a logits model, not a detector") as err:
        load_detector(settings, str(classifier.path))
    assert err.value.reason == "not_a_detector"


# --------------------------------------------------------------------------- videos, in process


def test_objects_with_a_keeneye_detector_finds_only_the_requested_class(
    detector_bundle: ModelBundle, colour_video: Path, tmp_path: Path
) -> None:
    recommender = ObjectsRecommender(detector=_detector(detector_bundle))
    people = run_local(
        SmartcutRequest(colour_video, "objects", 1.0, options={"classes": ["person"]}),
        tmp_path,
        recommender=recommender,
    )
    # blue over [60, 80) s: samples 60…79 score, the segment ends at the next sample, padded 2 s
    assert people.message["timestamps"] == [{"start": 58.0, "stop": 82.0}]
    both = run_local(SmartcutRequest(colour_video, "objects", 1.0), tmp_path, recommender=recommender)
    assert both.message["timestamps"] == [{"start": 18.0, "stop": 42.0}, {"start": 58.0, "stop": 82.0}]


def test_objects_with_hog_finds_the_person_walking_through(tmp_path: Path) -> None:
    def frame_at(t: float) -> np.ndarray:  # the figure walks from left to right over [30, 60) s
        return _street(int(10 + (t - 30) * 7) if 30 <= t < 60 else None)

    video = _write_video(tmp_path / "street.mp4", 90, 2, frame_at)
    run = run_local(SmartcutRequest(video, "objects", 1.0), tmp_path / "root")
    (segment,) = run.message["timestamps"]
    assert 25.0 <= segment["start"] <= 30.0 and 60.0 <= segment["stop"] <= 65.0
    hits = [t for t, s in zip(run.recommendation.times, run.recommendation.scores, strict=True) if s >= 0.5]
    assert len(hits) >= 20 and min(hits) >= 30.0 and max(hits) < 60.0


def test_a_request_for_a_class_hog_does_not_know_is_refused_before_decoding(tmp_path: Path) -> None:
    with pytest.raises(VideoRejected, match="OpenCV HOG people detector does not detect 'car'"):
        run_local(
            SmartcutRequest(tmp_path / "never-read.mp4", "objects", 1.0, options={"classes": ["car"]}),
            tmp_path,
        )


# ------------------------------------------------------------------- the classes over the protocol


def test_options_parse_and_messages_without_them_stay_the_seeds() -> None:
    seed = {"status": "uploaded", "user_id": "u", "zipped_chunks_path": "uid/video"}
    assert parse_new_files(encode(seed)) == seed
    assert parse_new_files(encode({**seed, "options": {"classes": ["person"], "later": 1}})) == {
        **seed,
        "options": {"classes": ["person"]},
    }
    for bad in ({"classes": "person"}, {"classes": [""]}, "person"):
        with pytest.raises(MalformedMessage):
            parse_new_files(encode({**seed, "options": bad}))
    started = {"plugin_name": "objects", "label": "Objects", "img_size": 640}
    assert parse_started(encode(started)) == started
    assert parse_started(encode({**started, "classes": ["person", "person"]}))["classes"] == ["person"]


@contextmanager
def _objects_plugin(bus: Bus, root: Path, recommender: ObjectsRecommender) -> Iterator[PluginProcess]:
    process = PluginProcess(recommender, bus, root)
    thread = threading.Thread(target=process.run, kwargs={"poll_timeout": 0.1}, daemon=True)
    thread.start()
    assert process.ready.wait(30)
    try:
        yield process
    finally:
        process.stop()
        thread.join(timeout=30)


def _wait(backend: SmartcutBackend, uid: str, limit: float = 60.0) -> str:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        backend.collect(timeout=0.2)
        status = backend.db.smartcut_request(uid).status
        if status in ("done", "failed"):
            return status
    raise AssertionError(f"request {uid} still open")


def test_classes_travel_from_the_request_to_the_plugin_process(
    settings: Settings, detector_bundle: ModelBundle, colour_video: Path
) -> None:
    root = settings.smartcut.root
    assert root is not None
    root.mkdir(parents=True)
    bus = open_bus(settings)
    backend = SmartcutBackend(bus, open_results_db(settings), root, BackendLimits())
    try:
        with _objects_plugin(bus, root, ObjectsRecommender(detector=_detector(detector_bundle))):
            backend.directory.refresh(timeout=2.0)
            assert backend.plugins()["objects"]["classes"] == ["car", "person"]
            with pytest.raises(VideoRejected, match="does not detect 'bicycle'") as err:
                backend.admit("alice", "objects", 1.0, {"classes": ["bicycle"]})
            assert (err.value.status, err.value.reason) == (422, "unknown_class")
            uid = backend.submit_video(
                colour_video, user_id="alice", plugin="objects", sensitivity=1.0, options={"classes": ["car"]}
            )
            assert _wait(backend, uid) == "done"
        record = backend.db.smartcut_request(uid)
        assert record.segments == {"timestamps": [{"start": 18.0, "stop": 42.0}]}
        assert record.options == {"classes": ["car"]}
        sent = values(drain(bus, new_files_topic("objects"), "test-objects", 2))
        assert [m["options"] for m in sent] == [{"classes": ["car"]}] * 2  # type: ignore[index]
        assert [m["status"] for m in sent] == ["in-progress", "uploaded"]  # type: ignore[index]
    finally:
        backend.close()
        bus.close()


def test_classes_for_a_plugin_that_announces_none_are_refused(settings: Settings) -> None:
    root = settings.smartcut.root
    assert root is not None
    bus = open_bus(settings)
    bus.publish("started-plugins", encode({"plugin_name": "motion", "label": "Motion", "img_size": 320}))
    bus.flush()
    backend = SmartcutBackend(bus, open_results_db(settings), root, BackendLimits())
    try:
        backend.directory.refresh(timeout=1.0)
        with pytest.raises(VideoRejected, match="plugin 'motion' takes no classes") as err:
            backend.admit("alice", "motion", 1.0, {"classes": ["person"]})
        assert (err.value.status, err.value.reason) == (422, "bad_options")
        backend.admit("alice", "motion", 1.0, None)
    finally:
        backend.close()
        bus.close()


def test_cli_run_objects_with_a_detector_bundle_and_classes(
    detector_bundle: ModelBundle, colour_video: Path, tmp_path: Path
) -> None:
    runner = CliRunner()
    env = {"KEENEYE_HOME": str(tmp_path / "home")}
    base = ["smartcut", "run", str(colour_video), "-p", "objects", "-s", "1", "--json"]
    result = runner.invoke(
        app, [*base, "--detector", str(detector_bundle.path), "--classes", "person"], env=env
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["timestamps"] == [{"start": 58.0, "stop": 82.0}]
    unknown = runner.invoke(
        app, [*base, "--detector", str(detector_bundle.path), "--classes", "bus"], env=env
    )
    assert isinstance(unknown.exception, VideoRejected)  # `keeneye` prints it as one line, exit 2
    assert (unknown.exception.reason, unknown.exception.fix) == ("unknown_class", "choose among: car, person")
    wrong = runner.invoke(
        app, ["smartcut", "run", str(colour_video), "-p", "motion", "--detector", "x"], env=env
    )
    assert wrong.exit_code == 2 and "--detector is for the objects plugin only" in wrong.output
