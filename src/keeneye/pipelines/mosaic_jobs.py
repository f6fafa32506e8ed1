"""Orthomosaics as stored observations: shared by the stream worker and ``keeneye predict``.

A crop-health input over the synchronous limit (``input.max_pixels`` pixels or ``input.max_upload_bytes``
bytes) is answered by :func:`keeneye.pipelines.mosaic.analyse_mosaic` from a local file, block by
block, never whole. This module turns that into what any other answer is:

* :func:`is_mosaic_file` / :func:`is_mosaic_object`: whether an input takes the mosaic path (header or
  size only, no pixel read); :func:`check_mosaic`: the header checks before any block is read (a
  GeoTIFF GDAL reads, at most :data:`MAX_MOSAIC_PIXELS` — a header claiming 100,000² px is refused,
  not streamed for hours; the band map's band count is checked by ``analyse_mosaic``);
* :func:`local_object`: the stored object as a local path for rasterio — the file itself in a
  ``file://`` object store, else streamed into a temporary file (S3), never held in memory;
* :func:`answer_mosaic`: the typed :class:`~keeneye.domain.Answer` (geo part, image facts, no
  instances: a mosaic's disease zones are polygons of the geo part);
* :func:`store_index_maps`: each full-resolution index map as a Cloud-Optimized GeoTIFF at
  :func:`index_map_key`, and a map wider than :data:`PREVIEW_MAX_SIDE` also as a preview — where
  ``GET /v1/observations/{id}/index/{name}.tif|.png`` find them (a mosaic is never read again to
  draw a map; :func:`read_index_map` reads one at the size a view needs, from its overviews);
  retention deletes them with the mosaic (:data:`keeneye.store.retention.DERIVED_PREFIX`);
* :func:`file_digest`: the content hash of a file, read in chunks (equal to
  :func:`keeneye.imaging.content_hash` of its bytes).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import unquote, urlparse

import numpy as np
import numpy.typing as npt
import rasterio
from affine import Affine
from rasterio.enums import Resampling
from rio_cogeo.cogeo import cog_translate
from rio_cogeo.profiles import cog_profiles

from keeneye.domain import (
    Answer,
    AnswerParts,
    GeoPart,
    ImageFacts,
    Instances,
    InvalidInput,
    JsonObject,
    MessageTooLarge,
    Prediction,
)
from keeneye.geo import Georef, open_raster, write_index_cog
from keeneye.imaging import sniff_format
from keeneye.pipelines.crophealth import geo_request, require_geotiff
from keeneye.pipelines.loaded import LoadedModel
from keeneye.pipelines.mosaic import GDAL_CACHE_MB, MosaicAnswer, Progress, analyse_mosaic, is_mosaic
from keeneye.pipelines.runner import answer_of
from keeneye.pipelines.spec import PipelineSpec
from keeneye.settings import Settings
from keeneye.store import ObjectStore
from keeneye.store.retention import DERIVED_PREFIX

log = logging.getLogger(__name__)

INDEX_MAP_PREFIX: Final = DERIVED_PREFIX  # retention deletes them with the mosaic
COG_CONTENT_TYPE: Final = "image/tiff; application=geotiff; profile=cloud-optimized"
# An index map's preview: what ``GET /v1/observations/{id}/index/{name}.png?size=…`` draws up to this
# size (the fields page asks for 1024); a larger view reads the full map's overviews.
PREVIEW_MAX_SIDE: Final = 2048
MAX_MOSAIC_PIXELS: Final = 50_000 * 50_000  # per band; the largest drone mosaics are ~40,000 px a side
_CHUNK: Final = 1024 * 1024


def index_map_key(pipeline: str, observation_id: str, name: str, *, preview: bool = False) -> str:
    """Where a stored mosaic's index map ``name`` (``ndvi``, …) lives in the object store; ``preview``:
    its copy at most :data:`PREVIEW_MAX_SIDE` px a side (what a web map draws: a few MB to fetch from
    S3 instead of the whole map)."""
    return f"{INDEX_MAP_PREFIX}/{pipeline}/{observation_id}/{name}{'.preview' if preview else ''}.tif"


def file_digest(path: Path) -> str:
    """SHA-256 hex of the file's bytes, read 1 MiB at a time."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def max_pixels_of(spec: PipelineSpec, settings: Settings) -> int:
    return spec.input.max_pixels or settings.imaging.max_pixels


def upload_limit_of(spec: PipelineSpec, settings: Settings) -> int:
    return spec.input.max_upload_bytes or settings.serving.max_upload_bytes


def is_mosaic_file(path: Path, spec: PipelineSpec, settings: Settings) -> bool:
    """A geo pipeline's TIFF over the synchronous limit: more bytes than one upload may carry, or a
    header claiming more pixels than one request may hold. Anything else (a zip, a small raster, a
    file GDAL cannot read) is not: the synchronous path answers it or says why."""
    if not spec.input.geo or not path.is_file():
        return False
    with path.open("rb") as f:
        if not _is_tiff(f.read(8)):
            return False
    if path.stat().st_size > upload_limit_of(spec, settings):
        return True
    try:
        return is_mosaic(path, max_pixels_of(spec, settings))
    except InvalidInput:  # not a raster GDAL reads: the synchronous path says why
        return False


def is_mosaic_object(data: bytes, spec: PipelineSpec, settings: Settings) -> bool:
    """:func:`is_mosaic_file` for bytes in hand (a stored object under the upload limit): a TIFF whose
    header claims more pixels than one request may hold."""
    if not spec.input.geo or not _is_tiff(data[:8]):
        return False
    try:
        with open_raster(data) as ds:
            return bool(ds.width * ds.height > max_pixels_of(spec, settings))
    except InvalidInput:  # not a raster GDAL reads: prepare() rejects it with the reason
        return False


def _is_tiff(head: bytes) -> bool:
    try:
        return sniff_format(head) == "tiff"
    except InvalidInput:
        return False


def check_mosaic(path: Path, spec: PipelineSpec, metadata: JsonObject | None) -> None:
    """What can be refused before a block is read (module docstring); raises InvalidInput."""
    geo_request(spec, metadata)  # the band map and CRS asked for exist
    with open_raster(path) as ds:
        require_geotiff(
            ds.driver, spec, fix="send the mosaic as a GeoTIFF (WebODM, Pix4D and Metashape export one)"
        )
        if ds.width * ds.height > MAX_MOSAIC_PIXELS:
            raise InvalidInput(
                "mosaic_too_large",
                f"{ds.width}×{ds.height} px is over the {MAX_MOSAIC_PIXELS:,} pixels a mosaic may hold",
                status=413,
                fix="cut it into tiles first (gdal_retile.py) and ingest those",
            )


@contextlib.contextmanager
def local_object(objects: ObjectStore, key: str) -> Iterator[Path]:
    """The object at ``key`` as a local file: the store's own file for ``file://`` stores (objects are
    written once, atomically, so reading it in place is safe), else a temporary copy streamed in
    1 MiB chunks and removed afterwards. Raises NotFound like ``objects.get``."""
    parts = urlparse(objects.uri(key))
    if parts.scheme == "file":
        path = Path(unquote(parts.path))
        if path.is_file():
            yield path
            return
    with tempfile.TemporaryDirectory(prefix="keeneye-mosaic-") as tmp:
        path = Path(tmp) / Path(key).name
        with path.open("wb") as f:
            for chunk in objects.stream(key, _CHUNK):
                f.write(chunk)
        yield path


@dataclass(frozen=True)
class MosaicResult:
    """A mosaic's answer (as stored) and how it was computed (blocks, index map files)."""

    answer: Answer
    mosaic: MosaicAnswer

    def summary(self) -> JsonObject:
        """The ``mosaic`` object ``keeneye predict --json`` prints beside the answer."""
        m = self.mosaic
        return {
            "width": m.width,
            "height": m.height,
            "blocks": m.blocks,
            "zone_factor": m.zone_factor,
            "megapixels_per_second": round(m.megapixels_per_second, 2),
        }


def answer_mosaic(
    spec: PipelineSpec,
    model: LoadedModel,
    path: Path,
    metadata: JsonObject | None,
    *,
    index_dir: Path | None = None,
    progress: Progress | None = None,
) -> MosaicResult:
    """The answer of ``model`` to the mosaic at ``path`` (read with the band map and CRS ``metadata``
    asks for); raises InvalidInput for what cannot be read."""
    manifest = model.bundle.manifest
    check_mosaic(path, spec, metadata)
    out = analyse_mosaic(
        path,
        spec,
        manifest,
        model.model.run,
        geo_request(spec, metadata),
        index_dir=index_dir,
        progress=progress,
    )
    prediction = Prediction(instances=Instances.empty(), model=model.ref, task=manifest.task)
    bands = tuple(out.geo.bands)
    facts = ImageFacts(width=out.width, height=out.height, bands=bands, format="tiff", quality={})
    answer = answer_of(prediction, manifest, spec, image=facts, parts=AnswerParts(geo=out.geo))
    return MosaicResult(answer, out)


def store_index_maps(
    objects: ObjectStore, pipeline: str, observation_id: str, maps: Mapping[str, Path], answer: Answer
) -> list[str]:
    """Each index map (a tiled GeoTIFF ``analyse_mosaic`` wrote) as a COG at :func:`index_map_key`,
    and, for a map over :data:`PREVIEW_MAX_SIDE` px a side, its preview (averaged from the COG's
    overviews); returns the names whose full map is stored. A map over the object store's size limit
    is left out with a note in the answer's geo part; any other failure raises (the caller retries)."""
    stored: list[str] = []
    geo = answer.parts.geo
    for name, path in maps.items():
        cog = path.with_name(f"{path.stem}.cog.tif")
        preview = path.with_name(f"{path.stem}.preview.tif")
        try:
            with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):  # window by window, as the mosaic was read
                cog_translate(
                    str(path),
                    str(cog),
                    dict(cog_profiles["deflate"]),
                    overview_resampling="average",
                    in_memory=False,
                    quiet=True,
                )
            if max(_shape_of(cog)) > PREVIEW_MAX_SIDE:
                values, valid, georef = read_index_map(cog, PREVIEW_MAX_SIDE)  # from the overviews
                write_index_cog(values, valid, georef, preview, name=name)
                del values, valid  # ≤ 2048² floats, not held while the maps upload
                _put_map(objects, index_map_key(pipeline, observation_id, name, preview=True), preview, geo)
            if _put_map(objects, index_map_key(pipeline, observation_id, name), cog, geo):
                stored.append(name)
        finally:
            cog.unlink(missing_ok=True)
            preview.unlink(missing_ok=True)
    return stored


def _shape_of(path: Path) -> tuple[int, int]:
    with rasterio.open(path) as ds:
        return int(ds.height), int(ds.width)


def _put_map(objects: ObjectStore, key: str, path: Path, geo: GeoPart | None) -> bool:
    """Store one map file; False (and a note in ``geo``) when it is over the store's size limit."""
    try:
        with path.open("rb") as f:
            objects.put(key, f, content_type=COG_CONTENT_TYPE)
    except MessageTooLarge as exc:
        log.warning("index map %s not stored: %s", key, exc)
        if geo is not None:
            geo.notes.append(f"{Path(key).name} not stored: {exc.message} ({exc.fix})")
        return False
    return True


def read_index_map(
    path: Path, max_side: int | None = None
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_], Georef]:
    """A stored index map (values, valid where not NaN, georeference), averaged down to at most
    ``max_side`` px a side (None: full resolution); GDAL reads the COG's overviews for it."""
    with rasterio.open(path) as ds:
        scale = 1.0 if max_side is None else max(1.0, max(ds.width, ds.height) / max_side)
        height, width = max(1, round(ds.height / scale)), max(1, round(ds.width / scale))
        values = ds.read(1, out_shape=(height, width), resampling=Resampling.average).astype(np.float32)
        transform = ds.transform @ Affine.scale(ds.width / width, ds.height / height)
        georef = Georef(transform, ds.crs, None)
    return values, np.isfinite(values), georef


__all__ = [
    "COG_CONTENT_TYPE",
    "INDEX_MAP_PREFIX",
    "MAX_MOSAIC_PIXELS",
    "MosaicResult",
    "answer_mosaic",
    "check_mosaic",
    "file_digest",
    "index_map_key",
    "is_mosaic_file",
    "is_mosaic_object",
    "local_object",
    "read_index_map",
    "store_index_maps",
]
