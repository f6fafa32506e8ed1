"""Multi-file captures: one TIFF per band (as DJI P4 Multispectral and MicaSense write them) → one stack.

A MicaSense RedEdge-MX capture is ``IMG_0001_1.tif`` … ``IMG_0001_5.tif`` (blue, green, red, NIR,
red edge); a DJI P4 Multispectral one is ``DJI_0011.TIF`` … ``DJI_0015.TIF`` (blue, green, red, red
edge, NIR; ``DJI_0010.JPG`` is the RGB preview and is not a band). The band order comes from the file
names, then the band map names the bands in that order:

1. **band names**: every file name ends in a band of the band map (``field_red.tif``,
   ``field_nir.tif``, ``…_RedEdge.tif``): the files are put in the band map's order;
2. **numbers**: the names differ only in a trailing number (``_1`` … ``_5``, or the last digit of
   DJI's counter): ascending, so file ``_1`` is the band map's first band;
3. anything else is refused (``ambiguous_band_order``) naming the files.

Every file must hold one data band of the same width, height and type as the others; a file that
differs (the 160 × 120 thermal band of an Altum next to 2064 × 1544 multispectral bands) is refused
with ``capture_mismatch`` naming it. The stack is written as one multi-band GeoTIFF (in memory: a
capture is a few MB a band; the size limit is checked on the headers before any pixel is read) with
the georeference of the first georeferenced file and a mask where any band is masked, so the rest of
:mod:`keeneye.geo` reads it like any stacked raster. Zips go through the shared
:func:`keeneye.imaging.archive.open_safe_zip` checks before a member is inflated.
"""

from __future__ import annotations

import functools
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Final

import numpy as np
from rasterio.errors import NotGeoreferencedWarning
from rasterio.io import MemoryFile

from keeneye.domain import InvalidInput
from keeneye.geo.bands import BandMap
from keeneye.geo.raster import data_band_indexes, open_raster
from keeneye.imaging import canonical_band_name
from keeneye.imaging.archive import ZipLimits, member_filter, open_safe_zip

TIFF_SUFFIXES: Final = (".tif", ".tiff")
# A capture is at most a dozen bands; a zip of one holds little else.
CAPTURE_ZIP_LIMITS: Final = ZipLimits(max_members=32, max_member_bytes=256 * 1024 * 1024)
_SEPARATORS: Final = re.compile(r"[_\-. ]+")

CaptureFile = tuple[str, bytes | Path]  # (file name, its bytes or path)


def band_order(names: Sequence[str], band_map: BandMap) -> list[int]:
    """Indexes into ``names`` in band order (module docstring, rules 1–2); refuses otherwise."""
    stems = [PurePosixPath(n).stem for n in names]
    by_band = [_band_suffix(s, band_map) for s in stems]
    if all(b is not None for b in by_band) and len(set(by_band)) == len(by_band):
        return sorted(range(len(names)), key=lambda i: band_map.bands.index(by_band[i] or ""))
    prefix = os.path.commonprefix(stems)  # noqa: RUF071 (characters, not path parts)
    rests = [s[len(prefix) :] for s in stems]
    if len(names) == 1:
        return [0]
    if all(r.isdigit() for r in rests) and len({int(r) for r in rests}) == len(rests):
        return sorted(range(len(names)), key=lambda i: int(rests[i]))
    raise InvalidInput(
        "ambiguous_band_order",
        f"cannot tell the band order of {', '.join(sorted(names))}: the names differ in more than a "
        "trailing band number or band name",
        fix="name the files as the camera does (IMG_0001_1.tif … _5.tif) or end each name with its "
        f"band ({', '.join(band_map.bands)}), or send one stacked GeoTIFF",
    )


def _band_suffix(stem: str, band_map: BandMap) -> str | None:
    """The band of ``band_map`` the stem ends with (``field_red_edge`` → ``red_edge``), else None."""
    parts = [p for p in _SEPARATORS.split(stem.lower()) if p]
    for take in (2, 1):  # longest first: red_edge before edge
        if len(parts) >= take:
            tail = canonical_band_name("_".join(parts[-take:]))
            if tail in band_map.bands:
                return tail
    return None


def stack_capture(files: Sequence[CaptureFile], band_map: BandMap, *, max_pixels: int) -> bytes:
    """One multi-band GeoTIFF from one file per band (module docstring); raises InvalidInput."""
    if not files:
        raise InvalidInput(
            "empty_capture", "the capture holds no TIFF file", fix="send the band TIFFs (.tif) of one capture"
        )
    order = band_order([name for name, _ in files], band_map)
    ordered = [files[i] for i in order]
    first_name = ordered[0][0]
    bands: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    nodatas: set[float | None] = set()
    profile: dict[str, object] = {}
    first: dict[str, object] = {}
    for name, source in ordered:
        with open_raster(source) as ds:
            indexes = data_band_indexes(ds)
            if len(indexes) != 1:
                raise InvalidInput(
                    "capture_mismatch",
                    f"{name} holds {len(indexes)} data bands; a multi-file capture has one band per file",
                    fix="send either one stacked GeoTIFF or one single-band TIFF per band",
                )
            if not profile:
                if ds.width * ds.height > max_pixels:
                    raise InvalidInput(
                        "image_too_large",
                        f"{name} is {ds.width}×{ds.height} px, over the {max_pixels:,} pixels one "
                        "request may hold",
                        status=413,
                        fix="send a capture's band files (a mosaic streams from its path: keeneye "
                        "predict -p crop-health PATH), or raise the pipeline's input.max_pixels",
                    )
                first = {"width": ds.width, "height": ds.height, "dtype": ds.dtypes[0]}
                profile = dict(first)
            size = {"width": ds.width, "height": ds.height, "dtype": ds.dtypes[0]}
            if size != first:
                raise InvalidInput(
                    "capture_mismatch",
                    f"{name} is {ds.width}×{ds.height} px {ds.dtypes[0]}; {first_name} is "
                    f"{first['width']}×{first['height']} px {first['dtype']}: every band of a "
                    "capture must have the same size and type",
                    fix="leave that band out (e.g. a thermal band) or resample it to the others first",
                )
            if "crs" not in profile and ds.crs is not None:
                profile["crs"], profile["transform"] = ds.crs, ds.transform
            bands.append(ds.read(indexes[0]))
            masks.append(ds.read_masks(indexes[0]) > 0)
            nodatas.add(ds.nodatavals[indexes[0] - 1])
    nodata = nodatas.pop() if len(nodatas) == 1 else None
    valid = np.logical_and.reduce(masks)
    out_profile = {
        "driver": "GTiff",
        "count": len(bands),
        **profile,
        **({"nodata": nodata} if nodata is not None else {}),
    }
    with warnings.catch_warnings(), MemoryFile() as mem:
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # raw captures carry no CRS
        with mem.open(**out_profile) as out:
            out.write(np.stack(bands))
            if nodata is None and not valid.all():
                out.write_mask(valid.astype(np.uint8) * 255)
        return bytes(mem.read())


def stack_zip(data: bytes | Path, band_map: BandMap, *, max_pixels: int) -> bytes:
    """A zipped capture (its TIFFs, any folder) as one stack; a zip of one multi-band TIFF is that
    TIFF. The zip is checked (:func:`~keeneye.imaging.archive.open_safe_zip`) before anything inflates."""
    keep = member_filter(TIFF_SUFFIXES)
    with open_safe_zip(data, CAPTURE_ZIP_LIMITS, name="the capture zip") as zf:
        members = [m for m in zf.members if keep(m)]
        if not members:
            raise InvalidInput(
                "empty_capture",
                "the zip holds no TIFF file",
                fix="zip the band TIFFs (.tif) of one capture",
            )
        names = [PurePosixPath(m.filename).name for m in members]
        if len(set(names)) != len(names):
            raise InvalidInput(
                "ambiguous_band_order",
                "the zip holds two files of the same name in different folders",
                fix="zip one capture at a time",
            )
        if len(members) == 1:
            return zf.read(members[0])
        files: list[CaptureFile] = [(n, zf.read(m)) for n, m in zip(names, members, strict=True)]
    return stack_capture(files, band_map, max_pixels=max_pixels)


# A band file's name: MicaSense ``IMG_0001_3`` (capture IMG_0001, band 3 of up to 10), DJI P4M
# ``DJI_0013`` (capture DJI_001: the counter's last digit is the band, 0 being the RGB JPEG).
_MICASENSE_BAND: Final = re.compile(r"^(?P<capture>.+[_-])\d{1,2}$")
_DJI_BAND: Final = re.compile(r"^(?P<capture>.*\d)\d$")


def capture_key(path: Path) -> str | None:
    """Which capture a band file of a drone folder belongs to, by its name (the folder and the name
    without its band number, as :func:`band_order` reads it); None for a name that is not a band
    file's (an orthomosaic, a stacked GeoTIFF, a JPEG)."""
    if path.suffix.lower() not in TIFF_SUFFIXES:
        return None
    match = _MICASENSE_BAND.match(path.stem) or _DJI_BAND.match(path.stem)
    return None if match is None else f"{path.parent.as_posix()}/{match['capture']}"


def group_captures(paths: Sequence[Path]) -> tuple[dict[str, list[Path]], list[Path]]:
    """A drone folder's files as multi-file captures (key → its band files in name order: TIFFs of
    one data band whose names differ only in the band number, at least two) and the other files,
    each an input of its own. Reads TIFF headers only, each once while the file is unchanged (a
    watched folder is grouped again on every poll)."""
    candidates: dict[str, list[Path]] = {}
    others: list[Path] = []
    for path in sorted(paths):
        key = capture_key(path)
        st = path.stat() if key is not None else None
        if key is not None and st is not None and _one_band(str(path), st.st_size, st.st_mtime_ns):
            candidates.setdefault(key, []).append(path)
        else:
            others.append(path)
    captures = {k: v for k, v in candidates.items() if len(v) > 1}
    others += [v[0] for v in candidates.values() if len(v) == 1]
    return captures, sorted(others)


@functools.lru_cache(maxsize=65_536)
def _one_band(path: str, size: int, mtime_ns: int) -> bool:
    """Whether the TIFF at ``path`` holds one data band (cached by size and mtime)."""
    try:
        with open_raster(path) as ds:
            return len(data_band_indexes(ds)) == 1
    except InvalidInput:
        return False  # unreadable: sent alone, the worker says why


def capture_files(folder: Path) -> list[tuple[str, Path]]:
    """The band TIFFs of a capture folder (other files, e.g. DJI's RGB JPEG preview, are skipped)."""
    return [
        (p.name, p) for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in TIFF_SUFFIXES
    ]
