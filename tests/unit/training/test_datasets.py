"""Dataset loading (COCO, ImageFolder), validation problems, RLE / polygon codecs, dataset version."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import tifffile

from keeneye.domain import InvalidInput
from keeneye.geometry import decode_rle, encode_rle
from keeneye.training.datasets import (
    dataset_version,
    load_coco,
    load_imagefolder,
    mask_to_segmentation,
    segmentation_to_mask,
    to_imagefolder,
    validate,
)
from keeneye.training.synth import generate_line, generate_species


def _png(path: Path, value: int, size: tuple[int, int] = (32, 24)) -> None:
    """A small PNG of width × height = ``size`` with a distinct pixel pattern per ``value``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.full((size[1], size[0], 3), value, np.uint8)
    img[0, 0] = (value * 7) % 256
    cv2.imwrite(str(path), img)


def _write_coco(root: Path, images: list[dict[str, Any]], annotations: list[dict[str, Any]]) -> Path:
    coco = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "fox"}],
    }
    (root / "annotations.json").write_text(json.dumps(coco))
    return root


def _ann(ann_id: int, image_id: int, cat: int, bbox: list[float]) -> dict[str, Any]:
    return {"id": ann_id, "image_id": image_id, "category_id": cat, "bbox": bbox, "area": bbox[2] * bbox[3]}


@pytest.fixture
def broken_coco(tmp_path: Path) -> Path:
    for name, value in [
        ("a.png", 10),
        ("b.png", 10),
        ("c.png", 30),
        ("d.png", 40),
        ("e.png", 50),
        ("f.png", 60),
    ]:
        _png(tmp_path / "images" / name, value)
    images = [
        {"id": i + 1, "file_name": f"images/{n}", "width": 32, "height": 24}
        for i, n in enumerate(["a.png", "b.png", "c.png", "d.png", "e.png", "f.png", "missing.png"])
    ]
    annotations = [
        _ann(1, 1, 1, [2, 2, 10, 10]),  # a: cat
        _ann(2, 2, 1, [2, 2, 10, 10]),  # b: the same bytes as a, also cat → duplicate warning
        _ann(3, 3, 1, [20, 10, 20, 10]),  # c: x2 = 40 > 32 → box outside the image
        _ann(4, 4, 9, [1, 1, 5, 5]),  # d: category 9 does not exist
        _ann(5, 5, 2, [1, 1, 5, 5]),  # e: the only dog → rare class
        _ann(6, 6, 1, [1, 1, 0, 5]),  # f: zero width
        _ann(7, 7, 1, [1, 1, 5, 5]),  # missing.png
        _ann(8, 99, 1, [1, 1, 5, 5]),  # no image 99
    ]
    return _write_coco(tmp_path, images, annotations)


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "severity", "file"),
    [
        ("missing_file", "error", "images/missing.png"),
        ("box_outside_image", "error", "images/c.png"),
        ("unknown_category", "error", "images/d.png"),
        ("empty_box", "error", "images/f.png"),
        ("duplicate", "warning", "images/b.png"),
        ("rare_class", "warning", "dog"),
        ("rare_class", "warning", "fox"),
        ("orphan_annotation", "warning", "annotations.json"),
    ],
)
def test_each_problem_is_reported_with_file_and_severity(
    broken_coco: Path, code: str, severity: str, file: str
) -> None:
    report = validate(load_coco(broken_coco))
    matches = [p for p in report.problems if p.code == code and p.file == file]
    assert len(matches) == 1, report.problems
    assert matches[0].severity == severity
    assert matches[0].message and matches[0].fix


def test_report_summary_and_skip_invalid(broken_coco: Path) -> None:
    ds = load_coco(broken_coco)
    report = validate(ds)
    assert not report.ok
    assert report.n_images == 7 and report.n_annotations == 7
    assert report.class_counts == {"cat": 5, "dog": 1, "fox": 0}
    assert sorted(report.invalid_files) == [
        "images/c.png",
        "images/d.png",
        "images/f.png",
        "images/missing.png",
    ]
    summary = report.to_dict()
    assert (summary["errors"], summary["warnings"]) == (4, 4)
    cleaned = ds.without(report.invalid_files)
    assert [im.file_name for im in cleaned.images] == ["images/a.png", "images/b.png", "images/e.png"]
    again = validate(cleaned)
    assert again.ok and {p.code for p in again.warnings} == {"duplicate", "rare_class", "orphan_annotation"}
    assert len(ds) == 7  # without() returns a copy


def test_conflicting_duplicate_is_an_error(tmp_path: Path) -> None:
    _png(tmp_path / "x.png", 5)
    _png(tmp_path / "y.png", 5)
    images = [{"id": 1, "file_name": "x.png"}, {"id": 2, "file_name": "y.png"}]
    _write_coco(tmp_path, images, [_ann(1, 1, 1, [0, 0, 4, 4]), _ann(2, 2, 2, [0, 0, 4, 4])])
    report = validate(load_coco(tmp_path))
    assert [(p.code, p.severity, p.file) for p in report.errors] == [
        ("conflicting_duplicate", "error", "y.png")
    ]


def test_empty_dataset_is_an_error(tmp_path: Path) -> None:
    _write_coco(tmp_path, [], [])
    report = validate(load_coco(tmp_path))
    assert not report.ok
    assert [(p.code, p.severity) for p in report.problems if p.code == "empty_dataset"] == [
        ("empty_dataset", "error")
    ]


def test_unreadable_image_and_size_mismatch(tmp_path: Path) -> None:
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    _png(tmp_path / "ok.png", 3, size=(16, 16))
    images = [
        {"id": 1, "file_name": "bad.jpg", "width": 8, "height": 8},
        {"id": 2, "file_name": "ok.png", "width": 20, "height": 16},
    ]
    _write_coco(tmp_path, images, [])
    codes = validate(load_coco(tmp_path)).codes()
    assert codes["unreadable_image"] == ["bad.jpg"]
    assert codes["size_mismatch"] == ["ok.png"]


def test_wrong_band_count_for_multispectral(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "three.tif", np.zeros((3, 8, 8), np.float32), planarconfig="separate")
    tifffile.imwrite(tmp_path / "four.tif", np.zeros((4, 8, 8), np.float32), planarconfig="separate")
    images = [
        {"id": 1, "file_name": "three.tif", "width": 8, "height": 8},
        {"id": 2, "file_name": "four.tif", "width": 8, "height": 8},
    ]
    _write_coco(tmp_path, images, [])
    report = validate(load_coco(tmp_path), expected_bands=4)
    assert [(p.code, p.file, p.severity) for p in report.errors] == [
        ("wrong_band_count", "three.tif", "error")
    ]


def test_classification_warns_about_unlabelled_images(tmp_path: Path) -> None:
    _png(tmp_path / "a.png", 1)
    _write_coco(tmp_path, [{"id": 1, "file_name": "a.png", "width": 32, "height": 24}], [])
    assert "unlabelled" not in validate(load_coco(tmp_path)).codes()
    assert validate(load_coco(tmp_path), task="classify").codes()["unlabelled"] == ["a.png"]


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def test_load_coco_paths_boxes_metadata_and_lazy_masks(tmp_path: Path) -> None:
    generate_line(tmp_path, 20, seed=3, defect_rate=1.0)
    ds = load_coco(tmp_path / "annotations.json")  # the JSON file works as well as the folder
    assert ds.root == tmp_path.absolute() and ds.info["generator"] == "line-inspection"
    im = ds.images[0]
    assert im.path.is_absolute() and im.path.is_file() and (im.width, im.height) == (128, 128)
    assert im.metadata["batch"] == "B00001"
    ann = im.annotations[0]
    x1, y1, x2, y2 = ann.box
    mask = ann.mask(im.height, im.width)
    ys, xs = np.nonzero(mask)
    assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == pytest.approx((x1, y1, x2, y2), abs=1)
    inst = im.instances()
    assert inst.boxes.shape == (len(im.annotations), 4) and inst.masks is not None
    assert inst.masks.shape == (len(im.annotations), 128, 128)


def test_load_coco_resolves_cvat_style_file_names(tmp_path: Path) -> None:
    _png(tmp_path / "images" / "a.png", 1)
    _write_coco(tmp_path, [{"id": 1, "file_name": "a.png", "width": 32, "height": 24}], [])
    ds = load_coco(tmp_path)
    assert ds.images[0].file_name == "images/a.png" and validate(ds).ok


@pytest.mark.parametrize(
    ("content", "fragment"),
    [(None, "does not exist"), ("{not json", "not valid JSON"), ('{"annotations": []}', "no 'images' list")],
)
def test_load_coco_refuses_broken_files(tmp_path: Path, content: str | None, fragment: str) -> None:
    if content is not None:
        (tmp_path / "annotations.json").write_text(content)
    with pytest.raises(InvalidInput) as err:
        load_coco(tmp_path)
    assert err.value.reason == "bad_dataset"
    assert fragment in err.value.message


def test_load_imagefolder_sorted_classes(tmp_path: Path) -> None:
    _png(tmp_path / "zander" / "1.png", 1, size=(20, 10))
    _png(tmp_path / "perch" / "2.png", 2)
    _png(tmp_path / "perch" / "3.jpg", 3)
    (tmp_path / "perch" / "notes.txt").write_text("not an image")
    ds = load_imagefolder(tmp_path)
    assert ds.class_names == ["perch", "zander"]
    assert [(im.file_name, ds.label_of(im)) for im in ds.images] == [
        ("perch/2.png", "perch"),
        ("perch/3.jpg", "perch"),
        ("zander/1.png", "zander"),
    ]
    assert (ds.images[2].width, ds.images[2].height) == (20, 10)
    report = validate(ds)
    assert report.class_counts == {"perch": 2, "zander": 1}
    assert [p.file for p in report.warnings] == ["zander"]  # one image: cannot split


def test_to_imagefolder_round_trip(tmp_path: Path) -> None:
    generate_species(tmp_path / "coco", 10, seed=0)
    folder = load_imagefolder(to_imagefolder(tmp_path / "coco", tmp_path / "folder"))
    assert len(folder) == 10
    assert validate(folder).class_counts == {name: 2 for name in sorted(folder.class_names)}


# --------------------------------------------------------------------------------------------------
# Codecs
# --------------------------------------------------------------------------------------------------


def _random_mask(seed: int, shape: tuple[int, int] = (37, 53)) -> np.ndarray[Any, Any]:
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.random(shape), (0, 0), 2.0) > 0.5


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rle_matches_pycocotools(seed: int) -> None:
    mask_utils = pytest.importorskip("pycocotools.mask")
    mask = _random_mask(seed)
    ours = encode_rle(mask)
    theirs = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    assert ours["counts"] == theirs["counts"].decode("ascii")
    assert ours["size"] == [37, 53]
    assert np.array_equal(decode_rle(ours), mask)
    assert np.array_equal(decode_rle({"size": [37, 53], "counts": theirs["counts"]}), mask)


@pytest.mark.parametrize(
    "mask",
    [np.zeros((5, 4), bool), np.ones((5, 4), bool), np.eye(6, dtype=bool), _random_mask(7, (64, 64))],
    ids=["empty", "full", "diagonal", "blobs"],
)
def test_rle_round_trip(mask: np.ndarray[Any, Any]) -> None:
    assert np.array_equal(decode_rle(encode_rle(mask)), mask)


def test_uncompressed_rle_decodes() -> None:
    # column-major: column 0 = [0, 1], column 1 = [1, 1]
    assert decode_rle({"size": [2, 2], "counts": [1, 3]}).tolist() == [[False, True], [True, True]]


def test_segmentation_polygons_for_blobs_rle_for_holes() -> None:
    disk = np.zeros((64, 64), np.uint8)
    cv2.circle(disk, (30, 30), 12, 1, -1)
    seg = mask_to_segmentation(disk)
    assert isinstance(seg, list)
    back = segmentation_to_mask(seg, 64, 64)
    assert (back & disk.astype(bool)).sum() / (back | disk.astype(bool)).sum() > 0.97
    line = np.zeros((64, 64), np.uint8)
    cv2.line(line, (5, 5), (60, 40), 1, 1)
    back = segmentation_to_mask(mask_to_segmentation(line), 64, 64)
    assert (back & line.astype(bool)).sum() / (back | line.astype(bool)).sum() > 0.95
    ring = np.zeros((64, 64), np.uint8)
    cv2.circle(ring, (30, 30), 20, 1, 3)  # outer contour would fill the hole: RLE instead
    seg = mask_to_segmentation(ring)
    assert isinstance(seg, dict)
    assert np.array_equal(segmentation_to_mask(seg, 64, 64), ring.astype(bool))


# --------------------------------------------------------------------------------------------------
# Version
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def species_copy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("version")
    generate_species(base / "a", 10, seed=9)
    shutil.copytree(base / "a", base / "elsewhere" / "b")
    return base / "a", base / "elsewhere" / "b"


def test_version_is_stable_across_a_copy(species_copy: tuple[Path, Path]) -> None:
    a, b = species_copy
    version = dataset_version(load_coco(a))
    assert len(version) == 64 and int(version, 16) >= 0
    assert dataset_version(load_coco(b)) == version
    assert dataset_version(load_coco(a)) == version  # and across runs


def test_version_changes_with_one_label(tmp_path: Path, species_copy: tuple[Path, Path]) -> None:
    a, _ = species_copy
    shutil.copytree(a, tmp_path / "c")
    coco = json.loads((tmp_path / "c" / "annotations.json").read_text())
    first = coco["annotations"][0]
    first["category_id"] = 1 if first["category_id"] != 1 else 2
    (tmp_path / "c" / "annotations.json").write_text(json.dumps(coco))
    assert dataset_version(load_coco(tmp_path / "c")) != dataset_version(load_coco(a))


def test_version_changes_with_one_pixel(tmp_path: Path) -> None:
    generate_line(tmp_path / "d", 4, seed=1)
    before = dataset_version(load_coco(tmp_path / "d"))
    path = tmp_path / "d" / "images" / "frame_00002.png"
    img = cv2.imread(str(path))
    assert img is not None
    img[5, 5, 0] ^= 1
    cv2.imwrite(str(path), img)
    assert dataset_version(load_coco(tmp_path / "d")) != before
