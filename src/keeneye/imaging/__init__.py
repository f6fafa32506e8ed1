"""Images in, arrays out: decode + validate (JPEG / PNG / GeoTIFF, band maps), spectral indices,
model-input preprocessing with the inverse geometry, and image-quality features for drift.

Other packages import these names only; see ``docs/imaging.md`` for formats and refusal reasons.
"""

from keeneye.imaging.decode import (
    MAX_BANDS,
    FileFormat,
    GeoInfo,
    Image,
    ImageFormat,
    ImageHeader,
    canonical_band_name,
    content_hash,
    decode_image,
    probe_image,
    sniff_format,
)
from keeneye.imaging.features import embedding_projection, quality_features
from keeneye.imaging.preprocess import Transform, batch, default_scale, prepare_input, resize_pixels
from keeneye.imaging.spectral import (
    SPECTRAL_INDICES,
    available_indices,
    gndvi,
    index_stats,
    ndre,
    ndvi,
    normalized_difference,
    spectral_index,
)

__all__ = [
    "MAX_BANDS",
    "SPECTRAL_INDICES",
    "FileFormat",
    "GeoInfo",
    "Image",
    "ImageFormat",
    "ImageHeader",
    "Transform",
    "available_indices",
    "batch",
    "canonical_band_name",
    "content_hash",
    "decode_image",
    "default_scale",
    "embedding_projection",
    "gndvi",
    "index_stats",
    "ndre",
    "ndvi",
    "normalized_difference",
    "prepare_input",
    "probe_image",
    "quality_features",
    "resize_pixels",
    "sniff_format",
    "spectral_index",
]
