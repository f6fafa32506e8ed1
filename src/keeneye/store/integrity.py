"""``keeneye doctor --deep``: does every stored object still hold the bytes the records say it holds?

Where object hashes are recorded:

- An observation's input: ``observations.content_hash`` is the SHA-256 of exactly the bytes stored
  under ``observations.object_key`` (API, ingest, stream workers and the edge recorder all hash the
  bytes they store), and ``size_bytes`` their length. Every observation that still has an object is
  read back and checked against both; it counts as "with a prediction" when one is stored for it.
- Every other object (index maps, exports, label files…) has no hash in the results database. The
  object store records an MD5 for each: the file store in its sidecar (``etag``), S3 as the ETag of a
  single-part upload. Those are checked against the bytes; an object with neither (a multipart S3
  upload, a file written by hand) is counted as unverifiable, not as a problem.

Nothing is changed: a problem is reported, never repaired.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import exists, func, select

from keeneye.domain import NotFound
from keeneye.store.engine import Database
from keeneye.store.objects import ObjectStore
from keeneye.store.schema import ObservationRow, PredictionRow

Progress = Callable[[int, int], None]

MISSING = "missing"
HASH_MISMATCH = "hash_mismatch"
SIZE_MISMATCH = "size_mismatch"
ETAG_MISMATCH = "etag_mismatch"
UNREADABLE = "unreadable"

_PAGE = 1000
_PLAIN_MD5 = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class ObjectProblem:
    """One object that does not hold what was recorded (``kind`` is one of the constants above)."""

    kind: str
    key: str
    detail: str
    observation_id: str | None = None


@dataclass
class IntegrityReport:
    """What ``doctor --deep`` found; ``problems`` keeps the first ``max_problems``, the counts all."""

    max_problems: int
    observations: int = 0  # observations whose object was checked
    with_predictions: int = 0  # of those, the ones with a stored prediction
    keys_checked: int = 0  # distinct object keys read and hashed for observations
    other_objects: int = 0  # objects no observation names, checked against their recorded MD5
    unverifiable: int = 0  # objects with no recorded hash at all
    problem_count: int = 0
    problems_by_kind: Counter[str] = field(default_factory=Counter)
    problems: list[ObjectProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.problem_count == 0

    def add(self, problem: ObjectProblem) -> None:
        self.problem_count += 1
        self.problems_by_kind[problem.kind] += 1
        if len(self.problems) < self.max_problems:
            self.problems.append(problem)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "observations": self.observations,
            "with_predictions": self.with_predictions,
            "keys_checked": self.keys_checked,
            "other_objects": self.other_objects,
            "unverifiable": self.unverifiable,
            "problem_count": self.problem_count,
            "problems_by_kind": dict(sorted(self.problems_by_kind.items())),
            "problems": [p.__dict__ for p in self.problems],
        }


@dataclass(frozen=True)
class _Read:
    """An object as read back: its SHA-256, MD5 and size, or why it could not be read."""

    sha256: str = ""
    md5: str = ""
    size: int = 0
    kind: str = ""  # MISSING or UNREADABLE when it could not be read
    detail: str = ""


def _read(objects: ObjectStore, key: str) -> _Read:
    sha, md5, size = hashlib.sha256(), hashlib.md5(usedforsecurity=False), 0
    try:
        for chunk in objects.stream(key):
            sha.update(chunk)
            md5.update(chunk)
            size += len(chunk)
    except NotFound:
        return _Read(kind=MISSING, detail="the object is not in the object store")
    except Exception as exc:  # a doctor reports, it does not crash (permissions, S3 errors …)
        return _Read(kind=UNREADABLE, detail=f"{type(exc).__name__}: {exc}")
    return _Read(sha.hexdigest(), md5.hexdigest(), size)


def _observation_pages(db: Database) -> Iterator[Sequence[Any]]:
    """(id, object_key, content_hash, size_bytes, has_prediction) of every observation with an
    object, by id, one page of rows at a time (keyset paging)."""
    has_prediction = exists().where(PredictionRow.observation_id == ObservationRow.id)
    after = ""
    while True:
        stmt = (
            select(
                ObservationRow.id,
                ObservationRow.object_key,
                ObservationRow.content_hash,
                ObservationRow.size_bytes,
                has_prediction,
            )
            .where(ObservationRow.object_key.is_not(None), ObservationRow.id > after)
            .order_by(ObservationRow.id)
            .limit(_PAGE)
        )
        with db.session() as s:
            rows = s.execute(stmt).all()
        if not rows:
            return
        yield rows
        after = rows[-1][0]


def _check_observations(
    db: Database, objects: ObjectStore, report: IntegrityReport, progress: Progress
) -> set[str]:
    with db.session() as s:
        total = int(
            s.scalar(
                select(func.count()).select_from(ObservationRow).where(ObservationRow.object_key.is_not(None))
            )
            or 0
        )
    read: dict[str, _Read] = {}
    progress(0, total)
    for rows in _observation_pages(db):
        for obs_id, key, recorded_hash, recorded_size, predicted in rows:
            report.observations += 1
            report.with_predictions += bool(predicted)
            if key not in read:
                read[key] = _read(objects, key)
                report.keys_checked += 1
            got = read[key]
            if got.kind:
                report.add(ObjectProblem(got.kind, key, got.detail, obs_id))
            elif got.sha256 != recorded_hash:
                report.add(
                    ObjectProblem(
                        HASH_MISMATCH,
                        key,
                        f"sha256 {got.sha256[:12]}…, recorded {recorded_hash[:12]}…",
                        obs_id,
                    )
                )
            elif got.size != recorded_size:
                report.add(
                    ObjectProblem(SIZE_MISMATCH, key, f"{got.size} bytes, recorded {recorded_size}", obs_id)
                )
        progress(report.observations, max(total, report.observations))
    return set(read)


def _check_others(
    objects: ObjectStore, checked: set[str], report: IntegrityReport, progress: Progress, done: int
) -> None:
    others = [info for info in objects.list() if info.key not in checked]
    for i, info in enumerate(others, start=1):
        etag = info.etag.strip('"').lower()
        if not _PLAIN_MD5.match(etag):
            report.unverifiable += 1
        else:
            report.other_objects += 1
            got = _read(objects, info.key)
            if got.kind:
                report.add(ObjectProblem(got.kind, info.key, got.detail))
            elif got.md5 != etag:
                report.add(
                    ObjectProblem(ETAG_MISMATCH, info.key, f"md5 {got.md5[:12]}…, recorded {etag[:12]}…")
                )
        progress(done + i, done + len(others))


def check_integrity(
    db: Database, objects: ObjectStore, *, max_problems: int = 20, progress: Progress | None = None
) -> IntegrityReport:
    """Read back every observation's object (SHA-256 and size against the row) and every other object
    (MD5 against the store's recorded ETag); see the module docstring. Never raises for a bad object."""
    report = IntegrityReport(max_problems=max_problems)
    update = progress or (lambda _done, _total: None)
    checked = _check_observations(db, objects, report, update)
    _check_others(objects, checked, report, update, report.observations)
    return report


__all__ = [
    "ETAG_MISMATCH",
    "HASH_MISMATCH",
    "MISSING",
    "SIZE_MISMATCH",
    "UNREADABLE",
    "IntegrityReport",
    "ObjectProblem",
    "check_integrity",
]
