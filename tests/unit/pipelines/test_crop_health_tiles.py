"""Crop-health tiles: the model input is computed once per raster and cut into batches that are
exactly what each zero-padded tile used to become; one model call per batch; stitched logits."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from keeneye.geo import read_raster, resolve_band_map
from keeneye.imaging import Image, prepare_input
from keeneye.models import MicroBatcher, OnnxModel
from keeneye.models.manifest import ModelManifest
from keeneye.pipelines.crophealth import GeoInput, GeoRequest, run_tiles, run_tiles_sync, tile_input
from keeneye.settings import Settings

from .crop_support import SIZE, crop_bundle, geotiff_bytes, micasense_field

MICA = resolve_band_map("micasense-rededge-mx")
REQUEST = GeoRequest(MICA, "preset micasense-rededge-mx")


def _manifest(layout: str, normalised: bool, size: int = 64) -> ModelManifest:
    channels = ["red", "nir", "ndvi", "ndre"]
    extra = {"mean": [0.1, 0.4, 0.3, 0.2], "std": [0.05, 0.2, 0.4, 0.3]} if normalised else {}
    return ModelManifest.parse(
        {
            "name": "crop-health",
            "task": "segment",
            "output_format": "seg-logits",
            "input": {"width": size, "height": size, "channels": channels, "layout": layout, **extra},
            "classes": ["healthy", "blight"],
            "background_class": 0,
        }
    )


def _raster_with_nodata(height: int = 150, width: int = 170) -> bytes:
    stack = micasense_field(height, width, blight=(30, 40, 20, 25))
    stack[:, :, 120:] = 0  # the east is outside the flight: whole tiles there never run
    stack[:, 70:90, 10:30] = 0  # a hole inside tiles that run
    return geotiff_bytes(stack, nodata=0)


def _reference_tensor(geo: GeoInput, manifest: ModelManifest, k: int) -> npt.NDArray[np.generic]:
    """What a tile was before the input was computed once: its read window zero-padded to the model's
    size (no-data pixels 0), through prepare_input."""
    tile = geo.tiles[k]
    r, c = int(tile.read.row_off), int(tile.read.col_off)
    h, w = int(tile.read.height), int(tile.read.width)
    raster = geo.raster
    padded = np.zeros((geo.tile_size, geo.tile_size, len(raster.bands)), dtype=np.float32)
    padded[:h, :w] = np.moveaxis(raster.data[:, r : r + h, c : c + w], 0, -1)
    padded[:h, :w][~raster.valid[r : r + h, c : c + w]] = 0.0
    tensor, _ = prepare_input(Image(padded, raster.bands, "tiff", ""), manifest.input)
    return tensor


@pytest.mark.parametrize(("layout", "normalised"), [("NCHW", False), ("NCHW", True), ("NHWC", True)])
def test_tile_batches_equal_each_zero_padded_tile_through_prepare_input(
    layout: str, normalised: bool
) -> None:
    manifest = _manifest(layout, normalised)
    raster = read_raster(_raster_with_nodata(), MICA)
    geo = tile_input(raster, manifest, REQUEST)
    # 64 px tiles, 8 px overlap: 48 px cores; tiles whose read window is all no-data are left out
    cores = [(int(t.core.row_off), int(t.core.col_off)) for t in geo.tiles]
    assert (0, 144) not in cores and (0, 96) in cores and len(cores) == 4 * 3
    assert geo.planes is not None and geo.planes.dtype == np.float32
    batch = geo.batch(0, 5)
    assert batch.shape == ((5, 4, 64, 64) if layout == "NCHW" else (5, 64, 64, 4))
    everything = geo.batch()
    assert len(everything) == len(geo.tiles)
    for k in range(len(geo.tiles)):
        assert np.array_equal(everything[k], _reference_tensor(geo, manifest, k)), k  # bit for bit
    assert np.array_equal(batch, everything[:5])


def test_a_raster_smaller_than_the_model_is_one_padded_tile() -> None:
    manifest = _manifest("NCHW", True)
    raster = read_raster(geotiff_bytes(micasense_field(40, 50)), MICA)
    geo = tile_input(raster, manifest, REQUEST)
    assert len(geo.tiles) == 1
    assert np.array_equal(geo.batch()[0], _reference_tensor(geo, manifest, 0))


def test_a_model_that_cannot_run_has_no_batches() -> None:
    manifest = _manifest("NCHW", False)
    four = read_raster(
        geotiff_bytes(micasense_field(40, 50, bands=4)), resolve_band_map("blue,green,red,nir")
    )
    ok = tile_input(four, manifest, REQUEST)  # red, nir, ndvi: there; ndre needs red_edge
    assert ok.reason is not None and ok.tiles == () and ok.missing_bands == ("red_edge",)
    assert ok.pixels.shape == (40, 50, 4)  # the image facts still have the pixels
    with pytest.raises(ValueError, match="does not run"):
        ok.batch()


class Recording:
    def __init__(self, model: OnnxModel) -> None:
        self.model = model
        self.batches: list[npt.NDArray[np.generic]] = []

    def run(self, batch: npt.NDArray[np.generic]) -> list[npt.NDArray[np.generic]]:
        self.batches.append(batch)
        return self.model.run(batch)


def test_run_tiles_makes_one_model_call_per_batch_and_stitches_as_the_sync_path(tmp_path: Path) -> None:
    bundle = crop_bundle(tmp_path / "bundle")
    model = OnnxModel(bundle, Settings(home=tmp_path).inference)
    data = micasense_field(300, 420, blight=(100, 200, 60, 80))
    geo = tile_input(read_raster(geotiff_bytes(data), MICA), bundle.manifest, REQUEST)
    assert len(geo.tiles) == 4 * 5  # 96 px cores

    recording = Recording(model)

    async def infer() -> list[npt.NDArray[np.float32]]:
        batcher = MicroBatcher(recording.run, max_batch=6, max_wait_ms=1.0)
        try:
            return await run_tiles(batcher, geo)
        finally:
            await batcher.aclose()

    (logits,) = asyncio.run(infer())
    # 20 tiles in batches of 6: four model calls of (n, 2, 128, 128), nothing else
    assert [b.shape for b in recording.batches] == [(n, 2, SIZE, SIZE) for n in (6, 6, 6, 2)]
    (again,) = run_tiles_sync(model.run, geo, max_batch=7)
    assert logits.shape == (2, 300, 420) and np.array_equal(logits, again)
    # the tiny model flags red > 0.5: exactly the blight rectangle, tile edges included
    flagged = logits[1] > logits[0]
    assert flagged.sum() == 60 * 80 and flagged[100:160, 200:280].all()


def test_run_tiles_on_nothing_runs_nothing(tmp_path: Path) -> None:
    bundle = crop_bundle(tmp_path / "bundle")
    stack = micasense_field(64, 64)
    stack[:] = 0
    geo = tile_input(read_raster(geotiff_bytes(stack, nodata=0), MICA), bundle.manifest, REQUEST)
    assert geo.tiles == ()
    assert run_tiles_sync(OnnxModel(bundle, Settings(home=tmp_path).inference).run, geo) == []


def test_a_failing_batch_fails_the_request_and_leaves_nothing_queued(tmp_path: Path) -> None:
    bundle = crop_bundle(tmp_path / "bundle")
    model = OnnxModel(bundle, Settings(home=tmp_path).inference)
    geo = tile_input(read_raster(geotiff_bytes(micasense_field(300, 420)), MICA), bundle.manifest, REQUEST)
    calls: list[int] = []

    def flaky(batch: npt.NDArray[np.generic]) -> list[npt.NDArray[np.generic]]:
        calls.append(len(batch))
        if len(calls) == 2:
            raise RuntimeError("the model fell over")
        return model.run(batch)

    async def infer() -> tuple[str, int]:
        batcher = MicroBatcher(flaky, max_batch=4, max_wait_ms=1.0)
        try:
            with pytest.raises(RuntimeError, match="fell over"):
                await run_tiles(batcher, geo)
            await asyncio.sleep(0.05)
            return "done", batcher.pending
        finally:
            await batcher.aclose()

    assert asyncio.run(infer()) == ("done", 0)
    assert len(calls) <= 3  # the batch queued behind the failure may have run; no more were built
