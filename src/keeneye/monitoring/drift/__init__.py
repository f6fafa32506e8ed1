"""Drift monitoring: live traffic in windows, compared with the served model's reference profile.

Every successful prediction becomes a :class:`DriftSample` — its image-quality features (brightness,
contrast, per-band means, sharpness, NDVI …, already in the answer's ``image.quality``), its output
features (confidence, instance count, mean instance area, predicted classes) and an embedding.
A :class:`DriftMonitor` (one per pipeline and model version) collects them in a *window*: reservoir
samples (Algorithm R, seeded) of at most ``drift_reservoir`` values per feature and
``drift_embedding_reservoir`` embeddings, so memory stays bounded whatever the traffic, and each
observation costs O(features).

Windows are shared by every process monitoring the same pipeline and model version (the API, each
stream worker): each process publishes its share of the open window to the results database
(``drift_partials``) every ``drift_publish_every`` observations or ``drift_publish_seconds``, and the
first process to see the pipeline-wide window complete claims all shares atomically, merges their
reservoirs (a uniform sample of the union) and stores one report. A window closes after
``drift_window_size`` observations in all, or after ``drift_window_seconds`` once it holds
``drift_min_samples`` (a quiet window keeps accumulating). Closing compares it with the
reference profile that training stored in the model manifest (``reference_profile``, see
:func:`keeneye.training.export.reference_profile`): PSI on the reference's quantile bins and a KS test
per feature, PSI over the class mix, MMD with a permutation test on embeddings
(:mod:`keeneye.monitoring.stats`). The result is one ``drift_reports`` row and the
``keeneye_drift_score`` / ``keeneye_drift_alarm`` / ``keeneye_drift_windows`` metrics, which the
``DriftDetected`` alert rule watches.

Embeddings must be of the same kind on both sides: the model's pooled-feature output when the
profile says ``source: "model:<output>"`` and the served bundle exposes that output, or
:func:`keeneye.imaging.embedding_projection` of the image when the profile says
:data:`PROJECTION_SOURCE`. Both are reduced to at most :data:`MAX_EMBEDDING_DIM` dimensions by one
fixed seeded random projection, applied identically to the reference and to live embeddings.

:class:`DriftMonitors` is the per-process registry the API and the stream workers call once per
prediction (:meth:`DriftMonitors.observe`); it follows model-version changes and never raises into
the request path.
"""

from keeneye.monitoring.drift.monitor import (
    DriftMonitor,
    DriftMonitors,
    default_source,
)
from keeneye.monitoring.drift.reports import (
    MAX_REPORTS,
    latest_reports,
    no_report_note,
)
from keeneye.monitoring.drift.samples import (
    EMBEDDING,
    MAX_EMBEDDING_DIM,
    MODEL_SOURCE_PREFIX,
    PROJECTION_SOURCE,
    REDUCTION_SEED,
    DriftSample,
    drift_sample,
    embedding_of,
    profile_embedding,
    reduce_embedding,
)
from keeneye.monitoring.drift.window import (
    CLASS_MIX,
    REPORT_SAMPLE,
    Reference,
    compare_class_mix,
    compare_feature,
    prewarm,
)

__all__ = [
    "CLASS_MIX",
    "EMBEDDING",
    "MAX_EMBEDDING_DIM",
    "MAX_REPORTS",
    "MODEL_SOURCE_PREFIX",
    "PROJECTION_SOURCE",
    "REDUCTION_SEED",
    "REPORT_SAMPLE",
    "DriftMonitor",
    "DriftMonitors",
    "DriftSample",
    "Reference",
    "compare_class_mix",
    "compare_feature",
    "default_source",
    "drift_sample",
    "embedding_of",
    "latest_reports",
    "no_report_note",
    "prewarm",
    "profile_embedding",
    "reduce_embedding",
]
