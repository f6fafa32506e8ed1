"""Line-camera frames of ``synth line-inspection --size WxH``: JPEG at the asked size and of a camera's
weight (≈150 KB at 1024×768), defects of absolute pixel sizes with full-size masks, the same bytes from
the same seed; ``--size N`` still makes the small square PNG tiles the fast tests use."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from keeneye.cli import app
from keeneye.domain import InvalidInput
from keeneye.training import load_coco
from keeneye.training.synth.line import generate_line, parse_frame_size


def test_parse_frame_size() -> None:
    assert parse_frame_size("1024x768") == (1024, 768)
    assert parse_frame_size(" 640×480 ") == (640, 480)
    assert parse_frame_size("128") == 128
    for bad, words in (("12x9", "width 12 is not in 128…4096"), ("1024x", "neither"), ("big", "neither")):
        with pytest.raises(InvalidInput) as err:
            parse_frame_size(bad)
        assert words in str(err.value)
        assert err.value.fix is not None and "1024x768" in err.value.fix


def test_camera_frames_are_jpegs_of_a_camera_weight_with_small_defects(tmp_path: Path) -> None:
    result = generate_line(tmp_path / "a", 6, seed=3, frame_size=(1024, 768), defect_rate=1.0, batch_size=3)
    assert result.n_images == 6
    info = json.loads((tmp_path / "a" / "dataset.json").read_text())
    assert info["frame_size"] == [1024, 768] and info["format"].startswith(
        "COCO instance masks; images/*.jpg"
    )
    dataset = load_coco(tmp_path / "a")
    sizes = []
    for image in dataset.images:
        data = image.path.read_bytes()
        assert data[:3] == b"\xff\xd8\xff" and image.path.suffix == ".jpg"
        sizes.append(len(data))
        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert decoded is not None and decoded.shape == (768, 1024, 3)
        assert (image.width, image.height) == (1024, 768)
        truth = image.instances(with_masks=True)
        assert len(truth) >= 1  # defect_rate 1.0: every frame has a defect
        assert truth.masks is not None and truth.masks.shape[1:] == (768, 1024)
        for (x1, y1, x2, y2), area in zip(truth.boxes, truth.masks.sum(axis=(1, 2)), strict=True):
            # small defects: a few pixels across (a 2 px scratch) to tens of pixels (a 30 px dent)
            assert min(x2 - x1, y2 - y1) >= 2 and max(x2 - x1, y2 - y1) <= 400
            assert 8 <= area <= 4000
    # a line camera's frame weight: ≈150 KB each (seed 001: ~160 KB)
    assert min(sizes) >= 100_000 and max(sizes) <= 260_000
    again = generate_line(tmp_path / "b", 2, seed=3, frame_size=(1024, 768), defect_rate=1.0, batch_size=3)
    assert again.n_images == 2
    first = sorted((tmp_path / "a" / "images").iterdir())[:2]
    assert [p.read_bytes() for p in first] == [
        p.read_bytes() for p in sorted((tmp_path / "b" / "images").iterdir())
    ]


def test_cli_size_picks_frames_or_tiles(tmp_path: Path) -> None:
    runner = CliRunner()
    env = {"KEENEYE_HOME": str(tmp_path / "home")}
    made = runner.invoke(
        app,
        ["synth", "line-inspection", "--out", str(tmp_path / "f"), "--n", "2", "--size", "256x192", "--json"],
        env=env,
    )
    assert made.exit_code == 0, made.output
    [frame] = sorted((tmp_path / "f" / "images").iterdir())[:1]
    assert frame.suffix == ".jpg"
    decoded = cv2.imdecode(np.frombuffer(frame.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
    assert decoded is not None and decoded.shape == (192, 256, 3)
    tiles = runner.invoke(
        app, ["synth", "line-inspection", "--out", str(tmp_path / "t"), "--n", "2", "--size", "64"], env=env
    )
    assert tiles.exit_code == 0, tiles.output
    names = sorted(p.name for p in (tmp_path / "t" / "images").iterdir())
    assert names == ["frame_00000.png", "frame_00001.png"]
    refused = runner.invoke(
        app, ["synth", "line-inspection", "--out", str(tmp_path / "x"), "--size", "12x9"], env=env
    )
    assert refused.exit_code == 2
    assert "width 12 is not in 128…4096" in refused.output
