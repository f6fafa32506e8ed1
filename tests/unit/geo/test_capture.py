"""Multi-file captures (one TIFF per band, as DJI P4M and MicaSense write them) stacked in band order,
and a real Sentinel-2 sample (shipped in the spyndex package) whose NDVI matches plain numpy."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio

from keeneye.domain import InvalidInput
from keeneye.geo import BandMap, analyse_field, open_raster, read_raster, resolve_band_map
from keeneye.geo.capture import band_order, capture_files, stack_capture, stack_zip
from keeneye.imaging.archive import pack_files

from .rasters import UTM33, UTM_TRANSFORM, write_tif

S2 = Path(__file__).parents[2] / "data" / "sentinel2-spyndex" / "s2_10m_b02_b03_b04_b08.tif"
MICA = resolve_band_map("micasense-rededge-mx")  # blue, green, red, nir, red_edge
P4M = resolve_band_map("dji-p4m")  # blue, green, red, red_edge, nir
BIG = 10_000_000


def _band(value: int, shape: tuple[int, int] = (20, 30), dtype: str = "uint16") -> np.ndarray:
    return np.full((1, *shape), value, dtype=dtype)


def _tif(value: int, shape: tuple[int, int] = (20, 30), dtype: str = "uint16", crs: bool = True) -> bytes:
    profile = {"driver": "GTiff", "height": shape[0], "width": shape[1], "count": 1, "dtype": dtype}
    if crs:
        profile.update(crs=UTM33, transform=UTM_TRANSFORM)
    with rasterio.MemoryFile() as mem:
        with mem.open(**profile) as ds:
            ds.write(_band(value, shape, dtype))
        return bytes(mem.read())


def _band_values(stacked: bytes) -> list[int]:
    with open_raster(stacked) as ds:
        return [int(ds.read(i)[0, 0]) for i in range(1, ds.count + 1)]


@pytest.mark.parametrize(
    ("names", "band_map", "expected"),
    [
        # MicaSense: IMG_0001_1 … _5, sent in any order
        (
            ["IMG_0001_3.tif", "IMG_0001_1.tif", "IMG_0001_5.tif", "IMG_0001_2.tif", "IMG_0001_4.tif"],
            MICA,
            [1, 3, 0, 4, 2],
        ),
        # DJI P4M: the last digit of the counter is the band (DJI_0010.JPG is the RGB preview)
        (
            ["DJI_0015.TIF", "DJI_0011.TIF", "DJI_0013.TIF", "DJI_0012.TIF", "DJI_0014.TIF"],
            P4M,
            [1, 3, 2, 4, 0],
        ),
        # band names, in the band map's order
        (["f_nir.tif", "f_Red.tif", "f_RedEdge.tif", "f_green.tif", "f_blue.tif"], MICA, [4, 3, 1, 0, 2]),
        (
            ["field-red_edge.tif", "field-nir.tif", "field-red.tif"],
            resolve_band_map("red,nir,red_edge"),
            [2, 1, 0],
        ),
    ],
)
def test_band_order_from_file_names(names: list[str], band_map: BandMap, expected: list[int]) -> None:
    assert band_order(names, band_map) == expected


def test_names_that_say_nothing_about_the_band_are_refused() -> None:
    with pytest.raises(InvalidInput) as err:
        band_order(["north.tif", "south.tif"], MICA)
    assert err.value.reason == "ambiguous_band_order"
    assert err.value.message.startswith("cannot tell the band order of north.tif, south.tif")


def test_a_capture_is_stacked_in_band_order_with_its_georeference() -> None:
    files = [(f"IMG_0001_{k}.tif", _tif(100 * k)) for k in (4, 2, 5, 1, 3)]
    stacked = stack_capture(files, MICA, max_pixels=BIG)
    assert _band_values(stacked) == [100, 200, 300, 400, 500]
    raster = read_raster(stacked, MICA)
    assert raster.bands == MICA.bands and raster.shape == (20, 30)
    assert raster.georef.crs_name == "EPSG:32633"
    np.testing.assert_allclose(raster.band("nir"), 400 / 32768, rtol=1e-6)  # the preset's scaling


def test_a_band_of_another_size_or_type_is_refused_naming_the_file() -> None:
    files = [(f"IMG_0001_{k}.tif", _tif(100 * k)) for k in (1, 2, 3, 4, 5)]
    thermal = [*files[:5], ("IMG_0001_6.tif", _tif(600, shape=(12, 16)))]
    with pytest.raises(InvalidInput) as err:
        stack_capture(thermal, resolve_band_map("micasense-altum"), max_pixels=BIG)
    assert (err.value.reason, err.value.status) == ("capture_mismatch", 422)
    assert err.value.message.startswith(
        "IMG_0001_6.tif is 16×12 px uint16; IMG_0001_1.tif is 30×20 px uint16"
    )
    floats = [*files[:4], ("IMG_0001_5.tif", _tif(1, dtype="float32"))]
    with pytest.raises(InvalidInput, match=r"IMG_0001_5\.tif is 30×20 px float32"):
        stack_capture(floats, MICA, max_pixels=BIG)
    with pytest.raises(InvalidInput) as big:
        stack_capture(files, MICA, max_pixels=500)
    assert (big.value.reason, big.value.status) == ("image_too_large", 413)


def test_a_zip_and_a_folder_give_the_same_stack(tmp_path: Path) -> None:
    files = [(f"IMG_0001_{k}.tif", _tif(100 * k)) for k in (1, 2, 3, 4, 5)]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for name, data in files:
            zf.writestr(f"capture/{name}", data)
        zf.writestr("capture/IMG_0001.json", b"{}")  # not a band: skipped
    from_zip = stack_zip(out.getvalue(), MICA, max_pixels=BIG)
    folder = tmp_path / "capture"
    folder.mkdir()
    for name, data in files:
        (folder / name).write_bytes(data)
    (folder / "DJI_0010.JPG").write_bytes(b"\xff\xd8\xff preview")
    listed = capture_files(folder)
    assert [n for n, _ in listed] == [n for n, _ in files]
    from_folder = stack_zip(pack_files([(n, p.read_bytes()) for n, p in listed]), MICA, max_pixels=BIG)
    assert _band_values(from_zip) == _band_values(from_folder) == [100, 200, 300, 400, 500]
    with pytest.raises(InvalidInput) as err:
        stack_zip(pack_files([("notes.txt", b"x")]), MICA, max_pixels=BIG)
    assert err.value.reason == "empty_capture"


def test_a_pixel_masked_in_any_band_is_masked_in_the_stack(tmp_path: Path) -> None:
    files = []
    for k in (1, 2, 3, 4, 5):
        band = _band(100 * k)
        if k == 3:
            band[0, 5, 7] = 0
        files.append((f"IMG_0001_{k}.tif", write_tif(tmp_path / f"IMG_0001_{k}.tif", band, nodata=0)))
    raster = read_raster(stack_capture(files, MICA, max_pixels=BIG), MICA)
    assert int((~raster.valid).sum()) == 1 and not raster.valid[5, 7]


def _s2() -> np.ndarray:
    with open_raster(S2) as ds:  # no georeference: the source has none
        return ds.read().astype(np.float64)


def test_a_real_sentinel2_sample_answers_ndvi_as_plain_numpy() -> None:
    """Real satellite pixels (Sentinel-2 L2A B02, B03, B04, B08 from the spyndex wheel, see the
    README beside the file): NDVI statistics against numpy on the raw numbers."""
    dn = _s2()
    assert dn.shape == (4, 300, 300) and S2.stat().st_size < 2_000_000
    red, nir = dn[2], dn[3]
    ndvi = (nir - red) / (nir + red)
    geo = analyse_field(S2, resolve_band_map("blue,green,red,nir"), gsd_m=10.0)
    stats = geo.indices["ndvi"]
    assert stats["valid_px"] == 90_000
    assert stats["mean"] == pytest.approx(float(ndvi.mean()), abs=1e-6)
    assert stats["mean"] == pytest.approx(0.46998, abs=1e-4)
    for q, key in ((10, "p10"), (50, "p50"), (90, "p90")):
        assert stats[key] == pytest.approx(float(np.percentile(ndvi, q)), abs=1e-5)
    gndvi = (nir - dn[1]) / (nir + dn[1])
    assert geo.indices["gndvi"]["mean"] == pytest.approx(float(gndvi.mean()), abs=1e-6)
    assert geo.notes == ["ndre: needs bands nir, red_edge", "not georeferenced: zones in pixel coordinates"]
    # vigour zones cover the scene: 300 × 300 px of 10 m = 3 km × 3 km = 900 ha, in 3 classes
    vigour = [f["properties"] for f in geo.zones["features"]]
    assert {p["class"] for p in vigour} == {"low", "medium", "high"}
    assert sum(p["area_px"] for p in vigour) == 90_000
    assert sum(p["area_ha"] for p in vigour) == pytest.approx(900.0, rel=0.02)
    low = min(vigour, key=lambda p: p["index_mean"])
    high = max(vigour, key=lambda p: p["index_mean"])
    assert (
        low["index_mean"]
        < float(np.percentile(ndvi, 33))
        < float(np.percentile(ndvi, 67))
        < high["index_mean"]
    )


def test_the_real_sample_split_into_one_file_per_band_stacks_back(tmp_path: Path) -> None:
    dn = _s2().astype(np.uint16)
    files = [
        (f"S2_{k + 1}.tif", write_tif(tmp_path / f"S2_{k + 1}.tif", dn[k : k + 1], crs=None))
        for k in (3, 0, 2, 1)
    ]
    stacked = stack_capture(files, resolve_band_map("blue,green,red,nir"), max_pixels=BIG)
    with open_raster(stacked) as ds:
        np.testing.assert_array_equal(ds.read(), dn)
    assert (
        analyse_field(stacked, resolve_band_map("blue,green,red,nir")).indices
        == analyse_field(S2, resolve_band_map("blue,green,red,nir")).indices
    )
