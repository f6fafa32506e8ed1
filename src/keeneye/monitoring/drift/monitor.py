"""The drift monitors: :class:`DriftMonitor` (one per pipeline and model version) collects samples in
a :class:`~keeneye.monitoring.drift.window.Window`, shares it with the other processes of the
pipeline through ``drift_partials``, closes the pipeline-wide window after ``drift_window_size``
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
import uuid
import weakref
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, Final, cast

import numpy as np
import numpy.typing as npt

from keeneye.domain import Answer, JsonObject
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
    merge_windows,
    prewarm,
    rounded,
    utc_datetime,
)
from keeneye.pipelines import LoadedModel
from keeneye.settings import MonitoringSettings, Settings
from keeneye.store import CloseRule, DriftPartialRecord, DriftReportRecord, ResultsDB

log = logging.getLogger(__name__)

Clock = Callable[[], float]

_MERGE_STREAM: Final = 0x5EED  # the merge generator's stream, apart from the comparisons'
_STALE_S: Final = 24 * 3600.0  # a share of another model version untouched this long is dropped

_PUBLISHER_LOCK = threading.Lock()
_PUBLISHER: list[ThreadPoolExecutor] = []


def _publisher() -> ThreadPoolExecutor:
    """The process's one drift-publishing thread (first use starts it): publishes run in order, one
    at a time, off the threads that serve requests."""
    with _PUBLISHER_LOCK:
        if not _PUBLISHER:
            _PUBLISHER.append(ThreadPoolExecutor(max_workers=1, thread_name_prefix="keeneye-drift-publish"))
        return _PUBLISHER[0]


def default_source() -> str:
    """Which process closed a window: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"[:128]


class DriftMonitor:
    """Windows of one pipeline and model version, compared with that version's reference profile.

    The window is shared by every process monitoring the same pipeline and model version, through
    the results database (``drift_partials``, :mod:`keeneye.store.drift_partials`): each process
    keeps what it saw since its last publish in a local window and, every ``drift_publish_every``
    samples or ``drift_publish_seconds``, merges it into its published share. When the shares of all
    processes together reach ``drift_window_size`` (or the time rule holds), the process that notices
    first claims them in one atomic transaction, merges their reservoirs into a uniform sample of the
    union and stores one report whose ``n`` is the pipeline-wide count; everyone else's next publish
    starts the next window. A single process behaves exactly as before sharing existed.

    Thread-safe: :meth:`add` takes a lock only to update the local reservoirs (O(features)). Database
    exchanges run one at a time per monitor under a second lock: with ``background`` on the process's
    one drift thread (the window's close too, so :meth:`add` then never returns a report), otherwise in
    the calling thread, where a publish is skipped when another exchange is under way (the next sample
    retries) and a close waits for it.
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
        background: bool = False,
        on_error: Callable[[], None] | None = None,
    ) -> None:
        self.db = db
        # Publish and close from the process's drift thread instead of the thread of the observation
        # (what DriftMonitors does: a request never waits for a share or a report to be written).
        self.background = background
        self.on_error = on_error  # called inside the except block of a failed background publish
        self._queued = False  # a background publish is waiting to run (under _lock)
        self.settings = settings
        self.pipeline = pipeline
        self.model_version = model_version
        self.metrics = metrics
        self.clock = clock
        self.source = source or default_source()
        self.token = uuid.uuid4().hex  # this monitor's row in drift_partials (host:pid may be reused)
        self._rng = random.Random(seed)  # noqa: S311  # reservoir sampling, not secrets: seeded on purpose
        self._merge_rng = np.random.default_rng((seed, _MERGE_STREAM))
        self._seed = seed
        self._windows = 0  # windows this monitor closed: seeds each comparison
        self._lock = threading.Lock()  # the local window and the counters below
        self._sync = threading.Lock()  # one database exchange at a time; guards _published
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
        self._window = self._new_window()  # seen since the last publish
        self._published = self._new_window()  # what our drift_partials row holds
        # The pipeline-wide view as of the last exchange (under _lock): our published share, the
        # other processes' shares and the earliest start among all of them.
        self._published_n = 0
        self._in_flight = 0  # taken from the local window by an exchange under way
        self._others_n = 0
        self._shared_start: float | None = None
        self._last_publish = clock()
        self._retry_after = -math.inf  # after a failed exchange, wait drift_publish_seconds

    @property
    def active(self) -> bool:
        """False without a reference profile: nothing is collected, no report is ever written."""
        return self.reference is not None

    def _new_window(self) -> Window:
        s = self.settings
        return Window(s.drift_reservoir, s.drift_embedding_reservoir, self._rng)

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
        s = self.settings
        with self._lock:
            window = self._window
            if window.start is None:
                window.start = now
            window.add(features, sample.classes, embedding)
            total = self._total()
            halfway = total >= min(s.drift_min_samples, s.drift_window_size) // 2  # shares jump: ≥
            due = self._due(total, now)
            publish = self._publish_due(now)
        if halfway:
            prewarm()  # a close is coming: load SciPy now, in the background
        if self.background and (due or publish):
            self._exchange_later()
        elif due:
            return self._exchange(now, self._rule(now), wait=True)
        elif publish:
            self._exchange(now, None, wait=False)
        return None

    def _exchange_later(self) -> None:
        with self._lock:
            if self._queued:
                return
            self._queued = True
        _publisher().submit(self._background_exchange)

    def _background_exchange(self) -> None:
        """On the drift thread: close the window if it is due by then (the comparison and the report
        write take a while — no request waits for them), else publish the local share."""
        now = self.clock()
        with self._lock:
            self._queued = False
            due = self._total() > 0 and self._due(self._total(), now)
        try:
            self._exchange(now, self._rule(now) if due else None, wait=True)
        except Exception:
            if self.on_error is None:
                log.exception("drift share of pipeline %s not published", self.pipeline)
            else:
                self.on_error()

    def drain(self, timeout: float | None = None) -> None:
        """Wait until the background publishes queued so far have run (tests, shutdown)."""
        if self.background:
            _publisher().submit(lambda: None).result(timeout)

    def _total(self) -> int:
        """Observations in the pipeline-wide window as this process knows it (under _lock)."""
        return self._others_n + self._published_n + self._in_flight + self._window.n

    def _start(self) -> float | None:
        starts = [t for t in (self._shared_start, self._window.start) if t is not None]
        return min(starts) if starts else None

    def _due(self, total: int, now: float) -> bool:
        """Whether the window looks complete (under _lock); the claim re-checks it in the database."""
        s = self.settings
        if now < self._retry_after:
            return False
        if total >= s.drift_window_size:
            return True
        start = self._start()
        return start is not None and now - start >= s.drift_window_seconds and total >= s.drift_min_samples

    def _publish_due(self, now: float) -> bool:
        s = self.settings
        n = self._window.n
        if n == 0 or now < self._retry_after:
            return False
        return n >= s.drift_publish_every or now - self._last_publish >= s.drift_publish_seconds

    def _rule(self, now: float) -> CloseRule:
        s = self.settings
        return CloseRule(s.drift_window_size, s.drift_min_samples, utc_datetime(now - s.drift_window_seconds))

    def tick(self) -> DriftReportRecord | None:
        """Close the window if its time is up, else publish what waits (for a periodic caller: no
        observation needed, so an idle process's samples still reach the shared window)."""
        if self.reference is None:
            return None
        now = self.clock()
        with self._lock:
            due = self._total() > 0 and self._due(self._total(), now)
            publish = self._publish_due(now)
        if due:
            return self._exchange(now, self._rule(now), wait=True)
        if publish:
            self._exchange(now, None, wait=False)
        return None

    def flush(self) -> DriftReportRecord | None:
        """Close the pipeline-wide window now if it holds ``drift_min_samples`` (shutdown, a model
        swap); otherwise publish what this process saw, so the next window includes it."""
        if self.reference is None:
            return None
        s = self.settings
        now = self.clock()
        with self._lock:
            if self._window.n == 0 and self._total() < s.drift_min_samples:
                return None
        return self._exchange(now, CloseRule(s.drift_min_samples, s.drift_min_samples), wait=True)

    def _exchange(self, now: float, rule: CloseRule | None, *, wait: bool) -> DriftReportRecord | None:
        """Claim the window when ``rule`` holds (closing it), else publish the local window.

        On a database error the local samples go back into the local window (nothing is lost) and
        the monitor waits ``drift_publish_seconds`` before trying again; the error propagates to
        :class:`DriftMonitors`, which counts it.
        """
        if not self._sync.acquire(blocking=wait):
            return None
        try:
            with self._lock:
                delta = self._window
                if delta.n == 0 and rule is None:
                    return None
                self._window = self._new_window()
                self._in_flight = delta.n
                self._last_publish = now
            taken = None
            try:
                if rule is not None:
                    taken = self.db.claim_drift_window(
                        pipeline=self.pipeline,
                        model_version=self.model_version,
                        rule=rule,
                        extra_n=delta.n,
                        extra_started=utc_datetime(delta.start) if delta.start is not None else None,
                        stale_before=utc_datetime(now - max(self.settings.drift_window_seconds, _STALE_S)),
                    )
                if taken is None and delta.n:
                    self._publish_share(delta, now)
            except BaseException:
                with self._lock:
                    self._window = self._merged([delta, self._window], self._rng)
                    self._in_flight = 0
                    self._retry_after = now + self.settings.drift_publish_seconds
                raise
            # The shares are ours now (deleted from the table): a failure from here on loses this
            # one window, as a failed report write always did.
            return None if taken is None else self._close(self._merge_taken(taken, delta), now)
        finally:
            self._sync.release()

    def _merged(self, parts: Sequence[Window], window_rng: random.Random | None = None) -> Window:
        s = self.settings
        return merge_windows(
            parts,
            capacity=s.drift_reservoir,
            embedding_capacity=s.drift_embedding_reservoir,
            rng=self._merge_rng,
            window_rng=window_rng or self._rng,
        )

    def _publish_share(self, delta: Window, now: float) -> None:
        """Merge ``delta`` into our published share and write it (under _sync)."""
        merged = self._merged([self._published, delta])
        assert merged.start is not None  # delta holds observations
        share = self.db.update_drift_partial(
            token=self.token,
            n=merged.n,
            started_at=utc_datetime(merged.start),
            payload=cast(JsonObject, merged.to_json()),
            now=utc_datetime(now),
        )
        if share is None:  # our row was consumed by a close (or never written): start afresh
            merged = delta
            assert merged.start is not None
            share = self.db.insert_drift_partial(
                token=self.token,
                pipeline=self.pipeline,
                model_version=self.model_version,
                source=self.source,
                n=merged.n,
                started_at=utc_datetime(merged.start),
                payload=cast(JsonObject, merged.to_json()),
                now=utc_datetime(now),
            )
        self._published = merged
        with self._lock:
            self._published_n = merged.n
            self._in_flight = 0
            self._others_n = max(0, share.n - merged.n)
            self._shared_start = share.started_at.timestamp() if share.started_at is not None else None

    def _merge_taken(self, taken: Sequence[DriftPartialRecord], delta: Window) -> Window:
        """One window of the claimed shares (ours among them, if not consumed earlier) and ``delta``."""
        ref = self.reference
        assert ref is not None
        shape = (int(ref.embedding.shape[1]),) if ref.embedding is not None else None
        parts = [delta]
        # A fixed order (not the random tokens'): the merge draws the same samples for the same shares.
        for share in sorted(taken, key=lambda t: (t.started_at, t.source, t.n, t.token)):
            try:
                parts.append(
                    Window.from_json(
                        share.payload,
                        capacity=self.settings.drift_reservoir,
                        embedding_capacity=self.settings.drift_embedding_reservoir,
                        rng=self._rng,
                        embedding_shape=shape,
                        features=ref.distributions.keys(),
                    )
                )
            except ValueError as exc:
                log.warning(
                    "pipeline %s: dropped the drift share of %s (%s): %s",
                    self.pipeline,
                    share.source,
                    share.token,
                    exc,
                )
        self._published = self._new_window()
        with self._lock:
            self._published_n = self._others_n = self._in_flight = 0
            self._shared_start = None
        self._windows += 1
        merged = self._merged(parts)
        merged.index = self._windows
        return merged

    def pending(self) -> int:
        """Observations this process holds in the open window (published or not)."""
        with self._lock:
            return self._published_n + self._in_flight + self._window.n

    def shared(self) -> int:
        """Observations in the pipeline-wide open window, as of this process's last exchange."""
        with self._lock:
            return self._total()

    def footprint(self) -> dict[str, int]:
        """What this monitor holds (the local window and the published share): values kept,
        embeddings kept, bytes of buffers — bounded by twice the reservoirs' capacities."""
        with self._sync, self._lock:
            windows = (self._window, self._published)
            reservoirs = [r for w in windows for r in w.values.values()]
            embeddings = [w.embeddings for w in windows if w.embeddings is not None]
            return {
                "values": sum(r.kept for r in reservoirs),
                "embeddings": sum(e.kept for e in embeddings),
                "bytes": sum(r.buffer.nbytes for r in reservoirs) + sum(e.buffer.nbytes for e in embeddings),
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
        background: bool = True,
    ) -> None:
        self.db = db
        self.settings = settings
        self.metrics = metrics
        self.clock = clock
        self.source = source or default_source()
        self.background = background  # monitors publish their shares off the request thread
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
                background=self.background,
                on_error=lambda: self._count_error(pipeline),
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

    def drain(self, timeout: float | None = None) -> None:
        """Wait (at most ``timeout`` seconds) until the publishes and closes queued on the process's
        drift thread so far have run: a reader then sees the windows its own predictions closed."""
        if not self.background:
            return
        try:
            _publisher().submit(lambda: None).result(timeout)
        except TimeoutError:
            log.info("drift thread still busy after %.1f s; reading what is stored", timeout or 0.0)

    def tick(self) -> list[DriftReportRecord]:
        """Close every window whose time is up (call periodically; idle pipelines get their report)."""
        return self._each("tick")

    def flush_all(self) -> list[DriftReportRecord]:
        """Close every window holding ``drift_min_samples`` (at shutdown)."""
        return self._each("flush")
