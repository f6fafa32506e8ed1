"""Orthomosaics of any size, streamed block by block: the same answer as a synchronous request, zones
on a grid for big ones, full-resolution index maps on disk, bounded memory, and ``keeneye predict``
on a mosaic path and a capture folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio

from keeneye.domain import InvalidInput
from keeneye.models import OnnxModel
from keeneye.pipelines import PipelineCatalog, PipelineSpec
from keeneye.pipelines.crophealth import geo_request
from keeneye.pipelines.mosaic import MosaicAnswer, analyse_mosaic
from keeneye.settings import Settings

from .crop_support import MICASENSE_SCALE, crop_bundle, register_crop_model
from .mosaic_support import write_mosaic
from .test_crop_health import MICA, answer, geo_of

W, H = 1200, 1000
BLIGHT = (400, 600, 200, 160)  # row, col, h, w: 32,000 px, on a 4 px grid


@pytest.fixture(scope="module")
def spec() -> PipelineSpec:
    return PipelineCatalog(Settings()).get("crop-health")


@pytest.fixture(scope="module")
def mosaic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("mosaic")
    return write_mosaic(tmp / "ortho.tif", W, H, blight=BLIGHT, nodata_cols=40)


def _run(
    spec: PipelineSpec, path: Path, tmp: Path, channels: tuple[str, ...] = ("red", "nir"), **kw: Any
) -> MosaicAnswer:
    bundle = crop_bundle(tmp / "bundle", channels)
    model = OnnxModel(bundle, Settings(home=tmp / "home").inference)
    return analyse_mosaic(path, spec, bundle.manifest, model.run, geo_request(spec, MICA), **kw)


def _zones(geo: Any, kind: str) -> list[Any]:
    return [f["properties"] for f in geo["zones"]["features"] if f["properties"]["kind"] == kind]


def test_a_mosaic_streamed_in_blocks_answers_as_one_synchronous_request(
    spec: PipelineSpec, mosaic: Path, tmp_path: Path
) -> None:
    done: list[tuple[int, int]] = []
    streamed = _run(spec, mosaic, tmp_path, block=512, progress=lambda d, n: done.append((d, n)))
    assert streamed.blocks == 6 and done[-1] == (6, 6) and len(done) == 6  # 3 × 2 blocks of 512
    assert streamed.zone_factor == 1
    whole, _ = answer(spec, tmp_path, mosaic.read_bytes(), MICA)
    sync = geo_of(whole).to_json()
    geo = streamed.geo.to_json()
    assert geo["model"]["ran"] and geo["model"]["tile_size"] == 128 and geo["model"]["tiles"] >= 130
    for name in ("ndvi", "ndre", "gndvi"):
        a, b = geo["indices"][name], sync["indices"][name]
        assert a["valid_px"] == b["valid_px"] == (W - 40) * H  # the nodata columns are out
        assert a["mean"] == pytest.approx(b["mean"], abs=1e-6)
        for q in ("p10", "p50", "p90"):
            assert a[q] == pytest.approx(b[q], abs=5e-4)  # histogram bins of 0.0005
    (blight,) = _zones(geo, "disease")
    (sync_blight,) = _zones(sync, "disease")
    assert blight["area_px"] == sync_blight["area_px"] == 32_000
    assert blight["area_ha"] == pytest.approx(32_000 * 0.05**2 / 10_000, rel=1e-3)
    assert blight["severity"] == pytest.approx(sync_blight["severity"], abs=1e-3)
    vigour, sync_vigour = _zones(geo, "vigour"), _zones(sync, "vigour")
    assert sorted(z["area_px"] for z in vigour) == sorted(z["area_px"] for z in sync_vigour)
    assert geo["zones_crs"] == "EPSG:4326" and geo["crs"] == "EPSG:32633"


def test_a_big_mosaic_cuts_its_zones_on_a_grid_and_writes_full_resolution_index_maps(
    spec: PipelineSpec, mosaic: Path, tmp_path: Path
) -> None:
    out = _run(spec, mosaic, tmp_path, block=512, zone_max_side=300, index_dir=tmp_path / "maps")
    assert out.zone_factor == 4  # 1200 px → 300 cells
    geo = out.geo.to_json()
    assert "mosaic: zones cut on a grid of 4×4 px cells (300×250)" in geo["notes"]
    (blight,) = _zones(geo, "disease")
    assert blight["area_px"] == 32_000  # 2,000 cells × 16 px, the rectangle lies on the grid
    vigour = _zones(geo, "vigour")
    assert sum(z["area_px"] for z in vigour) == (W - 40) * H
    assert sum(z["area_ha"] for z in vigour) == pytest.approx((W - 40) * H * 0.05**2 / 10_000, rel=0.01)
    with rasterio.open(out.index_maps["ndvi"]) as ds:
        assert (ds.width, ds.height, ds.crs.to_epsg()) == (W, H, 32633)
        assert ds.block_shapes[0] == (512, 512)
        ndvi = ds.read(1)
    assert np.isnan(ndvi[:, :40]).all()
    red = np.round((0.15 - 0.1 * np.linspace(0, 1, W, dtype=np.float32)) * MICASENSE_SCALE)
    nir = np.round((0.3 + 0.3 * np.linspace(0, 1, W, dtype=np.float32)) * MICASENSE_SCALE)
    expected = (nir - red) / (nir + red)
    np.testing.assert_allclose(ndvi[0, 40:], expected[40:], atol=1e-5)
    assert ndvi[500, 700] == pytest.approx(
        (nir[700] - 0.8 * MICASENSE_SCALE) / (nir[700] + 0.8 * MICASENSE_SCALE), abs=1e-4
    )


def test_a_mosaic_the_model_cannot_read_still_answers_indices_and_vigour_zones(
    spec: PipelineSpec, mosaic: Path, tmp_path: Path
) -> None:
    out = _run(spec, mosaic, tmp_path, channels=("red", "swir1"), block=512)
    geo = out.geo.to_json()
    assert geo["model"]["ran"] is False and geo["model"]["missing_bands"] == ["swir1"]
    assert _zones(geo, "disease") == [] and len(_zones(geo, "vigour")) >= 3
    with pytest.raises(InvalidInput) as err:
        analyse_mosaic(mosaic, spec, None, None, geo_request(spec, {"band_map": "blue,green,red,nir"}))
    assert err.value.reason == "wrong_band_count"
    assert err.value.message == "the image has 5 data bands; band map blue,green,red,nir names 4"


@pytest.mark.slow
def test_peak_memory_of_a_6000_squared_mosaic_stays_far_below_its_pixels(tmp_path: Path) -> None:
    """6000² × 5 bands: 360 MB of uint16, 720 MB as float32 reflectance, 144 MB per index map. In a
    child process (its own high-water mark), reading it in blocks grows the peak RSS by less than
    half the reflectance of all bands."""
    path = write_mosaic(tmp_path / "big.tif", 6000, 6000, nodata_cols=100)
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        from keeneye.pipelines import PipelineCatalog
        from keeneye.pipelines.crophealth import geo_request
        from keeneye.pipelines.mosaic import MosaicAnswer, analyse_mosaic
        from keeneye.settings import Settings

        def hwm():
            for line in open("/proc/self/status"):
                if line.startswith("VmHWM"):
                    return int(line.split()[1]) * 1024
        spec = PipelineCatalog(Settings()).get("crop-health")
        request = geo_request(spec, {{"band_map": "micasense-rededge-mx"}})
        before = hwm()
        out = analyse_mosaic(Path({str(path)!r}), spec, None, None, request)
        print(before, hwm(), out.geo.indices["ndvi"]["valid_px"], out.zone_factor)
        """
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    before, after, valid_px, factor = (int(v) for v in run.stdout.split())
    assert valid_px == 5900 * 6000 and factor == 3
    assert after - before < 360_000_000, f"peak RSS grew by {(after - before) / 1e6:.0f} MB"


@pytest.mark.slow
def test_predict_cli_streams_a_mosaic_and_stacks_a_capture_folder(tmp_path: Path) -> None:
    home = tmp_path / "home"
    register_crop_model(Settings(home=home), tmp_path)
    ortho = write_mosaic(tmp_path / "ortho.tif", 2100, 2100, blight=BLIGHT)  # over 2048²
    capture = tmp_path / "IMG_0001"
    capture.mkdir()
    with rasterio.open(ortho) as ds:
        for k in range(1, 6):
            profile = {**ds.profile, "count": 1, "width": 512, "height": 512, "tiled": False}
            profile.pop("blockxsize"), profile.pop("blockysize")
            with rasterio.open(capture / f"IMG_0001_{k}.tif", "w", **profile) as band:
                band.write(ds.read(k, window=((300, 812), (500, 1012))), 1)
    env = {**os.environ, "KEENEYE_HOME": str(home), "COLUMNS": "200"}
    maps = str(tmp_path / "maps")
    cmd = [sys.executable, "-m", "keeneye", "predict", "-p", "crop-health", "--json", "--band-map",
           "micasense-rededge-mx", "--index-dir", maps, str(ortho), str(capture)]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    streamed, stacked = json.loads(out.stdout)
    assert streamed["mosaic"]["width"] == 2100 and streamed["mosaic"]["blocks"] == 9
    assert streamed["geo"]["model"]["ran"] is True
    (blight,) = _zones(streamed["geo"], "disease")
    assert blight["area_px"] == 32_000
    assert Path(streamed["mosaic"]["index_maps"]["ndvi"]).is_file()
    # the folder: 5 band files → one stack, answered and stored like one upload
    assert stacked["image"]["bands"] == ["blue", "green", "red", "nir", "red_edge"]
    assert stacked["image"]["width"] == 512 and stacked["observation_id"]
    (piece,) = _zones(stacked["geo"], "disease")
    assert piece["area_px"] == 32_000  # the window (rows 300–812, cols 500–1012) holds the whole blight
