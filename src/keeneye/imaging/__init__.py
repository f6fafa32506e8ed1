"""Images in, arrays out: decode + validate (JPEG / PNG / GeoTIFF, band maps), spectral indices,
renderings for a browser (true colour, colour infrared, NDVI false colour),
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
from keeneye.imaging.preprocess import (
    InputSpec,
    Transform,
    batch,
    default_scale,
    prepare_input,
    resize_pixels,
)
from keeneye.imaging.render import (
    VIEWS,
    Rendered,
    View,
    encode_png,
    fit_within,
    render_image,
)
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
    "VIEWS",
    "FileFormat",
    "GeoInfo",
    "Image",
    "ImageFormat",
    "ImageHeader",
    "InputSpec",
    "Rendered",
    "Transform",
    "View",
    "available_indices",
    "batch",
    "canonical_band_name",
    "content_hash",
    "decode_image",
    "default_scale",
    "embedding_projection",
    "encode_png",
    "fit_within",
    "gndvi",
    "index_stats",
    "ndre",
    "ndvi",
    "normalized_difference",
    "prepare_input",
    "probe_image",
    "quality_features",
    "render_image",
    "resize_pixels",
    "sniff_format",
    "spectral_index",
]
