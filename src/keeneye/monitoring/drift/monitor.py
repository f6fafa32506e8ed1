"""The drift monitors: :class:`DriftMonitor` (one per pipeline and model version) collects samples in
a :class:`~keeneye.monitoring.drift.window.Window`, closes it after ``drift_window_size``
observations or after ``drift_window_seconds`` once it holds ``drift_min_samples``, and stores one
``drift_reports`` row with the ``keeneye_drift_*`` metrics. :class:`DriftMonitors` is the per-process
registry the API and the stream workers call once per prediction; it follows model-version changes
and never raises into the request path.
"""

from __future__ import annotations

import logging
import math
import os
import random
import socket
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from keeneye.domain import Answer
from keeneye.imaging import Image
from keeneye.metrics import Metrics
from keeneye.monitoring import stats
from keeneye.monitoring.drift.samples import (
    EMBEDDING,
    DriftSample,
    FloatArray,
    drift_sample,
    embedding_of,
    reduce_embedding,
)
from keeneye.monitoring.drift.window import (
    CLASS_MIX,
    ClassMixDriftJson,
    EmbeddingDriftJson,
    FeatureDriftJson,
    Reference,
    Window,
    compare_class_mix,
    compare_feature,
    prewarm,
    rounded,
    utc_datetime,
)
from keeneye.pipelines import LoadedModel
from keeneye.settings import MonitoringSettings, Settings
from keeneye.store import DriftReportRecord, ResultsDB

log = logging.getLogger(__name__)

Clock = Callable[[], float]


def default_source() -> str:
    """Which process closed a window: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"[:128]


class DriftMonitor:
    """Windows of one pipeline and model version, compared with that version's reference profile.

    Thread-safe: :meth:`add` takes a lock only to update the reservoirs (O(features)); a closing window
    is swapped for a fresh one under the lock and compared/stored outside it, in the calling thread.
    """

    def __init__(
        self,
        db: ResultsDB,
        settings: MonitoringSettings,
        pipeline: str,
        model_version: str,
        profile: Mapping[str, Any] | None,
        metrics: Metrics | None = None,
        clock: Clock = time.time,
        source: str | None = None,
        *,
        seed: int = 0,
    ) -> None:
        self.db = db
        self.settings = settings
        self.pipeline = pipeline
        self.model_version = model_version
        self.metrics = metrics
        self.clock = clock
        self.source = source or default_source()
        self._rng = random.Random(seed)  # noqa: S311  # reservoir sampling, not secrets: seeded on purpose
        self._seed = seed
        self._windows = 0
        self._lock = threading.Lock()
        self._warned: set[str] = set()
        self.reference: Reference | None = None
        if profile is None:
            log.info(
                "pipeline %s, model version %s: no reference profile in the manifest, so no drift "
                "reports (models trained with `keeneye train` carry one)",
                pipeline,
                model_version,
            )
        else:
            self.reference = Reference.from_profile(profile)
        self._window = self._new_window()

    @property
    def active(self) -> bool:
        """False without a reference profile: nothing is collected, no report is ever written."""
        return self.reference is not None

    def _new_window(self) -> Window:
        """A fresh window (called under the lock, or from ``__init__``)."""
        s = self.settings
        self._windows += 1
        return Window(s.drift_reservoir, s.drift_embedding_reservoir, self._rng, self._windows)

    def _warn_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, *args)

    def _embedding(self, sample: DriftSample) -> FloatArray | None:
        ref = self.reference
        if sample.embedding is None or ref is None or ref.embedding is None:
            return None
        vector = np.asarray(sample.embedding, dtype=np.float32).reshape(-1)
        if vector.size != ref.embedding_dim:
            self._warn_once(
                "embedding_dim",
                "pipeline %s: live embeddings have %d dimensions, the reference %s: no MMD test",
                self.pipeline,
                vector.size,
                ref.embedding_dim,
            )
            return None
        return reduce_embedding(vector)

    def add(self, sample: DriftSample) -> DriftReportRecord | None:
        """Count one prediction; returns the report when this observation closed the window."""
        if self.reference is None:
            return None
        embedding = self._embedding(sample)
        known = self.reference.distributions  # a feature without a reference is not worth keeping
        features = {k: v for k, v in sample.features.items() if k in known}
        now = self.clock()
        with self._lock:
            window = self._window
            if window.start is None:
                window.start = now
            window.add(features, sample.classes, embedding)
            halfway = window.n == min(self.settings.drift_min_samples, self.settings.drift_window_size) // 2
            due = self._due(window, now)
            if due:
                self._window = self._new_window()
        if halfway:
            prewarm()  # a close is coming: load SciPy now, in the background
        return self._close(window, now) if due else None

    def _due(self, window: Window, now: float) -> bool:
        s = self.settings
        if window.n >= s.drift_window_size:
            return True
        return (
            window.start is not None
            and now - window.start >= s.drift_window_seconds
            and (window.n >= s.drift_min_samples)
        )

    def tick(self) -> DriftReportRecord | None:
        """Close the window if its time is up (for a periodic caller: no observation needed)."""
        return self._close_if(lambda w, now: self._due(w, now))

    def flush(self) -> DriftReportRecord | None:
        """Close the window now if it holds ``drift_min_samples`` (shutdown, a model swap)."""
        return self._close_if(lambda w, _now: w.n >= self.settings.drift_min_samples)

    def _close_if(self, ready: Callable[[Window, float], bool]) -> DriftReportRecord | None:
        if self.reference is None:
            return None
        now = self.clock()
        with self._lock:
            window = self._window
            if window.n == 0 or not ready(window, now):
                return None
            self._window = self._new_window()
        return self._close(window, now)

    def pending(self) -> int:
        """Observations in the open window."""
        with self._lock:
            return self._window.n

    def footprint(self) -> dict[str, int]:
        """What the open window holds: values kept, embeddings kept, bytes of buffers (bounded)."""
        with self._lock:
            w = self._window
            emb = w.embeddings
            return {
                "values": sum(r.kept for r in w.values.values()),
                "embeddings": emb.kept if emb else 0,
                "bytes": sum(r.buffer.nbytes for r in w.values.values()) + (emb.buffer.nbytes if emb else 0),
            }

    # -- closing --------------------------------------------------------------------------------------

    def compare(
        self, window: Window
    ) -> tuple[dict[str, FeatureDriftJson | ClassMixDriftJson], EmbeddingDriftJson]:
        """``(features, embedding)`` report parts of a window (pure: no I/O, reproducible per window)."""
        ref = self.reference
        assert ref is not None
        rng = np.random.default_rng((self._seed, window.index))  # own generator: closes may overlap
        features: dict[str, FeatureDriftJson | ClassMixDriftJson] = {}
        tested = {
            name: dist
            for name, dist in ref.distributions.items()
            if (r := window.values.get(name)) is not None and r.kept > 0
        }
        # Bonferroni over every test of one window (each feature's KS and the embedding's MMD), so a
        # window of unchanged data alarms about 5% of the time in all, not 5% per test.
        n_tests = len(tested) + (1 if ref.embedding is not None else 0)
        ks_alpha = stats.KS_P_ALARM / max(1, n_tests)
        for name, dist in tested.items():
            reservoir = window.values[name]
            feature = compare_feature(dist, reservoir.values(), rng, ks_alpha=ks_alpha)
            feature["n"] = reservoir.seen
            features[name] = feature
        if ref.class_mix is not None and window.classes:
            features[CLASS_MIX] = compare_class_mix(ref.class_mix, window.classes)
        return features, self._compare_embeddings(window, alpha=stats.MMD_P_ALARM / max(1, n_tests))

    def _compare_embeddings(self, window: Window, *, alpha: float = stats.MMD_P_ALARM) -> EmbeddingDriftJson:
        ref = self.reference
        assert ref is not None
        current = window.embeddings
        if ref.embedding is None or current is None or current.kept < 2:
            return {}
        # The smallest p-value B permutations can give is 1/(B+1): enough of them that the corrected
        # level is reachable (twice over), whatever drift_permutations says.
        permutations = max(self.settings.drift_permutations, math.ceil(2 / alpha))
        mmd, p_value = stats.mmd_rbf(
            ref.embedding,
            current.values(),
            permutations=permutations,
            rng=np.random.default_rng((self._seed, window.index, 1)),
        )
        return {
            "source": ref.embedding_source,
            "dim": ref.embedding_dim,
            "reduced_dim": int(ref.embedding.shape[1]),
            "n_reference": len(ref.embedding),
            "n_current": current.kept,
            "mmd": rounded(mmd),
            "p_value": float(f"{p_value:.6g}"),
            "permutations": permutations,
            "alpha": float(f"{alpha:.6g}"),
            "alarm": stats.mmd_alarm(p_value, alpha=alpha),
        }

    def _close(self, window: Window, end: float) -> DriftReportRecord:
        features, embedding = self.compare(window)
        alarm = any(f["alarm"] for f in features.values()) or bool(embedding.get("alarm"))
        start = window.start if window.start is not None else end
        record = self.db.add_drift_report(
            pipeline=self.pipeline,
            model_version=self.model_version,
            window_start=utc_datetime(start),
            window_end=utc_datetime(end),
            n=window.n,
            alarm=alarm,
            features=features,
            embedding=embedding,
            source=self.source,
            created_at=datetime.now(tz=UTC),
        )
        self._publish(record)
        log.info(
            "drift window closed",
            extra={
                "pipeline": self.pipeline,
                "model_version": self.model_version,
                "n": window.n,
                "alarm": alarm,
                "alarms": record.alarms,
            },
        )
        return record

    def _publish(self, record: DriftReportRecord) -> None:
        m = self.metrics
        if m is None:
            return
        p = self.pipeline
        for name, f in record.features.items():
            m.drift_score.labels(p, name, "psi").set(f["psi"])
            if f.get("ks") is not None:
                m.drift_score.labels(p, name, "ks").set(f["ks"])
        if record.embedding:
            m.drift_score.labels(p, EMBEDDING, "mmd_p").set(record.embedding["p_value"])
        m.drift_alarm.labels(p).set(1 if record.alarm else 0)
        m.drift_windows.labels(p, "true" if record.alarm else "false").inc()


# --------------------------------------------------------------------------------------------------
# Per-process registry
# --------------------------------------------------------------------------------------------------


class DriftMonitors:
    """The drift monitors of one process, one per pipeline, following the served model version.

    Call :meth:`observe` after every successful, non-cached prediction. A new model version (an alias
    move) flushes the old version's window and starts a new one with the new version's reference
    profile; late predictions of a version already replaced are ignored (they would otherwise flap
    the monitor back). Errors are logged and counted in :attr:`errors`, never raised.
    """

    _RETIRED_KEPT: Final = 16

    def __init__(
        self,
        db: ResultsDB,
        settings: Settings,
        metrics: Metrics | None = None,
        *,
        clock: Clock = time.time,
        source: str | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.metrics = metrics
        self.clock = clock
        self.source = source or default_source()
        self.errors = 0
        self._lock = threading.Lock()
        self._monitors: dict[str, tuple[DriftMonitor, weakref.ref[LoadedModel]]] = {}
        self._retired: dict[int, weakref.ref[LoadedModel]] = {}

    def get(self, pipeline: str) -> DriftMonitor | None:
        entry = self._monitors.get(pipeline)
        return entry[0] if entry else None

    def monitor_for(self, pipeline: str, loaded: LoadedModel) -> DriftMonitor | None:
        """The monitor for ``loaded``'s version (created or replaced as needed); None for a stale one."""
        version = str(loaded.ref.version)
        with self._lock:
            entry = self._monitors.get(pipeline)
            if entry is not None and entry[0].model_version == version:
                return entry[0]
            retired = self._retired.get(id(loaded))
            if retired is not None and retired() is loaded:
                return None
            monitor = DriftMonitor(
                self.db,
                self.settings.monitoring,
                pipeline,
                version,
                loaded.bundle.manifest.reference_profile,
                self.metrics,
                self.clock,
                self.source,
            )
            self._monitors[pipeline] = (monitor, weakref.ref(loaded))
            old = entry
            if old is not None:
                owner = old[1]()
                if owner is not None:
                    self._retired[id(owner)] = old[1]
                    while len(self._retired) > self._RETIRED_KEPT:
                        self._retired.pop(next(iter(self._retired)))
        if old is not None:
            self._safely(old[0].flush, pipeline)
        return monitor

    def observe(
        self,
        pipeline: str,
        loaded: LoadedModel,
        answer: Answer,
        outputs: Sequence[npt.NDArray[Any]],
        image: Image | None = None,
    ) -> DriftReportRecord | None:
        """Count one prediction of ``loaded`` (its per-item ``outputs``, the pipeline's ``answer`` and the
        decoded ``image``); returns the report when this closed a window. Never raises."""
        try:
            monitor = self.monitor_for(pipeline, loaded)
            if monitor is None or not monitor.active:
                return None
            manifest = loaded.bundle.manifest
            embedding = embedding_of(loaded.model, manifest, outputs, image=image)
            return monitor.add(drift_sample(answer, embedding=embedding))
        except Exception:
            self._count_error(pipeline)
            return None

    def _count_error(self, pipeline: str) -> None:
        with self._lock:
            self.errors += 1
        log.exception("drift monitoring failed for pipeline %s (the prediction is unaffected)", pipeline)

    def _safely(self, fn: Callable[[], DriftReportRecord | None], pipeline: str) -> DriftReportRecord | None:
        try:
            return fn()
        except Exception:
            self._count_error(pipeline)
            return None

    def _each(self, method: str) -> list[DriftReportRecord]:
        with self._lock:
            monitors = [(p, m) for p, (m, _) in self._monitors.items()]
        out = [self._safely(getattr(m, method), p) for p, m in monitors]
        return [r for r in out if r is not None]

    def tick(self) -> list[DriftReportRecord]:
        """Close every window whose time is up (call periodically; idle pipelines get their report)."""
        return self._each("tick")

    def flush_all(self) -> list[DriftReportRecord]:
        """Close every window holding ``drift_min_samples`` (at shutdown)."""
        return self._each("flush")
