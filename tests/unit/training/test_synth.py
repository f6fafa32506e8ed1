"""Synthetic generators: reproducibility, content, metadata, spectral signatures and drift."""

from __future__ import annotations

import hashlib
import itertools
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import tifffile

from keeneye.domain import InvalidInput
from keeneye.training.datasets import load_coco, validate
from keeneye.training.synth import DRIFT_KINDS, generate, generate_crop, generate_line, generate_species
from keeneye.training.synth.crop import BANDS, DISEASES, SIGNATURES, ndre, ndvi, render_crop_tile
from keeneye.training.synth.line import DEFECTS
from keeneye.training.synth.species import SPECIES


def _imread(path: Path, flags: int = cv2.IMREAD_COLOR) -> np.ndarray[Any, Any]:
    img = cv2.imread(str(path), flags)
    assert img is not None, path
    return img


def _hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _coco(root: Path) -> dict[str, Any]:
    coco: dict[str, Any] = json.loads((root / "annotations.json").read_text())
    return coco


@pytest.fixture(scope="module")
def species_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("species")
    generate_species(out, 30, seed=3)
    return out


@pytest.fixture(scope="module")
def line_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("line")
    generate_line(out, 400, seed=4, defect_rate=0.25)
    return out


@pytest.fixture(scope="module")
def crop_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("crop")
    generate_crop(out, 24, seed=5, tiles_per_field=8)
    return out


# --------------------------------------------------------------------------------------------------
# Reproducibility
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["species-id", "line-inspection", "crop-health"])
def test_same_seed_same_bytes_different_seed_different_bytes(tmp_path: Path, name: str) -> None:
    params: dict[str, Any] = {"defect_rate": 0.5} if name == "line-inspection" else {}
    generate(name, tmp_path / "a", 6, seed=11, **params)
    generate(name, tmp_path / "b", 6, seed=11, **params)
    generate(name, tmp_path / "c", 6, seed=12, **params)
    a, b, c = (_hashes(tmp_path / d) for d in "abc")
    assert len(a) == 6 + 3  # images + annotations.json, metadata.jsonl, dataset.json
    assert a == b
    images_a = {k: v for k, v in a.items() if k.startswith("images/")}
    images_c = {k: v for k, v in c.items() if k.startswith("images/")}
    assert images_a.keys() == images_c.keys()
    assert all(images_a[k] != images_c[k] for k in images_a)


def test_refuses_existing_dataset_unless_overwrite(tmp_path: Path) -> None:
    generate_species(tmp_path, 2, seed=0)
    with pytest.raises(InvalidInput) as err:
        generate_species(tmp_path, 2, seed=0)
    assert err.value.reason == "output_exists"
    assert generate_species(tmp_path, 3, seed=0, overwrite=True).n_images == 3
    assert len(list((tmp_path / "images").iterdir())) == 3


def test_unknown_generator_and_bad_params(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput) as err:
        generate("fish", tmp_path, 1)
    assert err.value.reason == "unknown_generator"
    with pytest.raises(InvalidInput) as err:
        generate_line(tmp_path, 1, defect_rate=1.5)
    assert err.value.reason == "bad_synth"
    with pytest.raises(InvalidInput) as err:
        generate_species(tmp_path, 1, size=8)
    assert err.value.reason == "bad_synth"


# --------------------------------------------------------------------------------------------------
# species-id
# --------------------------------------------------------------------------------------------------


def test_species_images_classes_and_annotations(species_dir: Path) -> None:
    coco = _coco(species_dir)
    assert len(coco["images"]) == 30
    assert [c["name"] for c in coco["categories"]] == [s.name for s in SPECIES]
    assert all(c["label"] for c in coco["categories"])
    assert len(coco["annotations"]) == 30  # one per image: the label
    per_class = {c["id"]: 0 for c in coco["categories"]}
    for a in coco["annotations"]:
        per_class[a["category_id"]] += 1
    assert set(per_class.values()) == {6}  # 30 images, 5 classes, balanced
    sizes = {im["id"]: (im["width"], im["height"]) for im in coco["images"]}
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        iw, ih = sizes[a["image_id"]]
        assert x >= 0 and y >= 0 and w > 0 and h > 0 and x + w <= iw and y + h <= ih
        assert a["area"] > 0 and a["iscrowd"] == 0
        assert isinstance(a["segmentation"], list) and len(a["segmentation"][0]) >= 6  # a polygon
    for im in coco["images"]:
        pixels = _imread(species_dir / im["file_name"])
        assert pixels.shape == (128, 128, 3)
        assert im["metadata"]["species"] in {s.name for s in SPECIES}
    info = json.loads((species_dir / "dataset.json").read_text())
    assert info["generator"] == "species-id" and info["seed"] == 3 and info["n"] == 30
    assert info["drift"] is None and info["classes"] == [s.name for s in SPECIES]


def test_species_polygon_matches_fish_and_dataset_validates(species_dir: Path) -> None:
    ds = load_coco(species_dir)
    report = validate(ds)
    assert report.ok, report.problems
    assert report.class_counts == {s.name: 6 for s in SPECIES}
    im = ds.images[0]
    mask = im.masks()[0]
    assert mask.shape == (128, 128)
    assert mask.sum() == pytest.approx(im.annotations[0].area, rel=0.15)


def test_species_size_parameter(tmp_path: Path) -> None:
    generate_species(tmp_path, 2, seed=1, size=96)
    for p in (tmp_path / "images").iterdir():
        assert _imread(p).shape == (96, 96, 3)


# --------------------------------------------------------------------------------------------------
# line-inspection
# --------------------------------------------------------------------------------------------------


def test_line_defect_rate_masks_and_categories(line_dir: Path) -> None:
    coco = _coco(line_dir)
    assert [c["name"] for c in coco["categories"]] == ["scratch", "dent", "crack", "contamination"]
    assert list(DEFECTS) == ["scratch", "dent", "crack", "contamination"]
    defective = {a["image_id"] for a in coco["annotations"]}
    assert 60 <= len(defective) <= 140
    flagged = {im["id"] for im in coco["images"] if im["metadata"]["defective"]}
    assert flagged == defective
    ds = load_coco(line_dir)
    for im in ds.images[:120]:
        for ann, mask in zip(im.annotations, im.masks(), strict=True):
            assert mask.sum() > 0
            # Polygons (faithful to ≥ 0.95 IoU, else RLE) reproduce the drawn pixels.
            assert mask.sum() == pytest.approx(ann.area, rel=0.05)
    assert validate(ds).ok


def test_line_metadata_batches_and_time(line_dir: Path) -> None:
    images = _coco(line_dir)["images"]
    keys = {"line_id", "camera_id", "sku", "batch", "lighting", "captured_at"}
    assert all(keys <= im["metadata"].keys() for im in images)
    batches: dict[str, list[dict[str, Any]]] = {}
    for im in images:
        batches.setdefault(im["metadata"]["batch"], []).append(im["metadata"])
    assert len(batches) == 8 and all(len(b) == 50 for b in batches.values())
    for members in batches.values():  # a batch runs on one line, one camera, one SKU, one lamp
        for key in ("line_id", "camera_id", "sku", "lighting"):
            assert len({m[key] for m in members}) == 1
    times = [datetime.fromisoformat(im["metadata"]["captured_at"].replace("Z", "+00:00")) for im in images]
    assert all(a < b for a, b in itertools.pairwise(times))


def test_line_default_rate_is_rare(tmp_path: Path) -> None:
    result = generate_line(tmp_path, 200, seed=0)
    defective = {a["image_id"] for a in _coco(tmp_path)["annotations"]}
    assert len(defective) <= 12  # 1.5 % of 200 = 3 expected
    assert result.n_images == 200


# --------------------------------------------------------------------------------------------------
# crop-health
# --------------------------------------------------------------------------------------------------


def test_crop_geotiff_bands_and_tags(crop_dir: Path) -> None:
    coco = _coco(crop_dir)
    im = coco["images"][3]
    with tifffile.TiffFile(crop_dir / im["file_name"]) as tif:
        page = tif.pages.first
        data = page.asarray()
        assert data.shape == (4, 128, 128) and data.dtype == np.float32
        assert page.tags[33550].value == (0.05, 0.05, 0.0)
        tiepoint = page.tags[33922].value
        geo = tif.geotiff_metadata
    assert data.min() >= 0.0 and data.max() <= 1.0
    assert geo is not None and int(geo["ProjectedCSTypeGeoKey"]) == 32637
    gt = im["metadata"]["geotransform"]
    assert tiepoint[3:5] == (gt[0], gt[3]) and gt[1] == 0.05 and gt[5] == -0.05
    assert im["metadata"]["band_order"] == list(BANDS) == ["nir", "red_edge", "red", "green"]
    assert {"field_id", "crop", "region", "flight_time"} <= im["metadata"].keys()
    fields = {m["metadata"]["field_id"] for m in coco["images"]}
    assert fields == {"F001", "F002", "F003"}


def test_crop_zones_have_lower_ndvi_than_healthy_crop(crop_dir: Path) -> None:
    ds = load_coco(crop_dir)
    checked = 0
    for im in ds.images:
        if not im.annotations:
            continue
        bands = tifffile.imread(im.path)
        v = ndvi(bands)
        masks = im.masks()
        crop = v > 0.3  # canopy (soil between the rows is ≈ 0.1)
        healthy = v[crop & ~masks.any(axis=0)].mean()
        for m in masks:
            assert v[crop & m].mean() < healthy - 0.03
            checked += 1
    assert checked >= 5


def _drops(disease: str) -> tuple[float, float, float]:
    """Mean (NDVI drop, NDRE drop, NIR ratio) of canopy pixels inside vs outside the zone."""
    dv, de, nir = [], [], []
    for seed in range(8):
        tile = render_crop_tile(np.random.default_rng(seed), [disease], 96)
        zone = tile.zones[0][1]
        canopy = tile.canopy > 0.8
        inside, outside = canopy & zone, canopy & ~zone
        v, e = ndvi(tile.bands), ndre(tile.bands)
        dv.append(v[outside].mean() - v[inside].mean())
        de.append(e[outside].mean() - e[inside].mean())
        nir.append(tile.bands[0][inside].mean() / tile.bands[0][outside].mean())
    return float(np.mean(dv)), float(np.mean(de)), float(np.mean(nir))


def test_crop_disease_signatures_separate_by_ndvi_and_ndre() -> None:
    drops = {d: _drops(d) for d in DISEASES}
    rust, blight, water = drops["rust"], drops["blight"], drops["water_stress"]
    assert rust[0] > 0.25  # rust: strong NDVI drop
    assert rust[0] > water[0] > 0.05  # water stress: mild NDVI drop
    assert blight[1] > blight[0]  # blight: the red edge moves more than NDVI
    assert blight[1] / blight[0] > 2 * (rust[1] / rust[0])
    assert blight[1] / blight[0] > 2 * (water[1] / water[0])
    assert water[2] < 0.8  # water stress: lower NIR overall
    assert SIGNATURES["rust"][2] > SIGNATURES["healthy"][2]  # rust raises red


# --------------------------------------------------------------------------------------------------
# Drift
# --------------------------------------------------------------------------------------------------


def _mean_pixel(root: Path) -> float:
    return float(np.mean([_imread(p).mean() for p in sorted((root / "images").iterdir())]))


@pytest.mark.parametrize("name", ["species-id", "line-inspection"])
def test_lighting_drift_shifts_brightness(tmp_path: Path, name: str) -> None:
    generate(name, tmp_path / "base", 12, seed=7)
    generate(name, tmp_path / "drift", 12, seed=7, drift="lighting")
    assert _mean_pixel(tmp_path / "base") - _mean_pixel(tmp_path / "drift") > 20
    assert json.loads((tmp_path / "drift" / "dataset.json").read_text())["drift"] == "lighting"


def test_crop_lighting_drift_lowers_reflectance(tmp_path: Path) -> None:
    generate_crop(tmp_path / "base", 4, seed=7)
    generate_crop(tmp_path / "drift", 4, seed=7, drift="lighting")
    base = np.mean([tifffile.imread(p).mean() for p in sorted((tmp_path / "base" / "images").iterdir())])
    drift = np.mean([tifffile.imread(p).mean() for p in sorted((tmp_path / "drift" / "images").iterdir())])
    assert drift < 0.9 * base


def test_sensor_drift_changes_colour_response_and_sharpness(tmp_path: Path) -> None:
    generate_species(tmp_path / "base", 10, seed=2)
    generate_species(tmp_path / "drift", 10, seed=2, drift="sensor")

    def stats(root: Path) -> tuple[float, float]:
        ratio, diff = [], []
        for p in sorted((root / "images").iterdir()):
            img = _imread(p).astype(np.float32)
            ratio.append(img[..., 0].mean() / img[..., 2].mean())  # blue / red response
            diff.append(np.abs(np.diff(img, axis=1)).mean())  # neighbour differences: detail + noise
        return float(np.mean(ratio)), float(np.mean(diff))

    (base_ratio, base_diff), (drift_ratio, drift_diff) = stats(tmp_path / "base"), stats(tmp_path / "drift")
    assert drift_ratio > 1.15 * base_ratio
    assert abs(drift_diff - base_diff) > 0.1 * base_diff


@pytest.mark.parametrize(
    ("name", "novel"),
    [("species-id", "silurus_glanis"), ("line-inspection", "burn"), ("crop-health", "nitrogen_deficiency")],
)
def test_new_class_drift_is_labelled_novel(tmp_path: Path, name: str, novel: str) -> None:
    params: dict[str, Any] = {"defect_rate": 1.0} if name == "line-inspection" else {}
    generate(name, tmp_path, 30, seed=1, drift="new-class", **params)
    coco = _coco(tmp_path)
    novel_cat = [c for c in coco["categories"] if c.get("novel")]
    assert [c["name"] for c in novel_cat] == [novel]
    novel_images = {a["image_id"] for a in coco["annotations"] if a["category_id"] == novel_cat[0]["id"]}
    assert novel_images
    assert all(im["metadata"]["novel"] == (im["id"] in novel_images) for im in coco["images"])
    info = json.loads((tmp_path / "dataset.json").read_text())
    assert info["novel_classes"] == [novel] and novel not in info["classes"]


def test_unknown_drift_kind_names_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput) as err:
        generate_species(tmp_path, 1, drift="fog")
    assert err.value.reason == "unknown_drift"
    assert "'fog'" in err.value.message
    assert err.value.fix == "use one of: lighting, sensor, new-class"
    assert DRIFT_KINDS == ("lighting", "sensor", "new-class")


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


def test_cli_species_id(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from keeneye.cli import app

    out = tmp_path / "fish"
    result = CliRunner().invoke(app, ["synth", "species-id", "--n", "20", "--out", str(out), "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert "wrote 20 images" in result.output
    assert len(list((out / "images").glob("*.jpg"))) == 20
    ds = load_coco(out)
    assert len(ds) == 20 and validate(ds).ok


def test_cli_json_and_line_flags(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from keeneye.cli import app

    out = tmp_path / "line"
    args = [
        "synth",
        "line-inspection",
        "--n",
        "10",
        "--out",
        str(out),
        "--defect-rate",
        "1.0",
        "--size",
        "64",
    ]
    result = CliRunner().invoke(app, [*args, "--drift", "sensor", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (
        summary["n_images"] == 10
        and summary["drift"] == "sensor"
        and summary["generator"] == "line-inspection"
    )
    assert _coco(out)["images"][0]["width"] == 64


def test_cli_unknown_drift_is_a_user_error(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from keeneye.cli import app

    result = CliRunner().invoke(
        app, ["synth", "crop-health", "--n", "2", "--out", str(tmp_path), "--drift", "fog"]
    )
    assert isinstance(result.exception, InvalidInput)
    assert result.exception.reason == "unknown_drift"
