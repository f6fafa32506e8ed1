"""``find_observations``: the observations page's query, on SQLite and a real PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from keeneye.domain import Decision, ObservationStatus, Variant
from keeneye.store import ObservationFilter, ResultsDB
from keeneye.store.schema import ObservationRow

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ResultsDB]:
    url = (
        f"sqlite:///{tmp_path / 'results.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    results = ResultsDB(url)
    results.upgrade()
    yield results
    results.close()


def _observation(db: ResultsDB, pipeline: str, minute: float, status: str = "done") -> str:
    obs_id = db.create_observation(
        pipeline, f"{int(minute * 60):064d}", "o/x.jpg", "image/jpeg", 10, {}, "http"
    )
    at = T0 + timedelta(minutes=minute)
    with db.session() as s:
        s.execute(
            update(ObservationRow).where(ObservationRow.id == obs_id).values(status=status, updated_at=at)
        )
    return obs_id


def _answer(
    db: ResultsDB, obs_id: str, pipeline: str, variant: Variant = Variant.champion, **fields: Any
) -> None:
    db.save_prediction(
        obs_id,
        pipeline,
        pipeline,
        "2" if variant is Variant.champion else "3",
        variant,
        fields.pop("task", "classify"),
        fields.pop("result", {}),
        fields.pop("decision", None),
        0.9,
        12.5,
        {"decode_ms": 1.0},
    )


@pytest.fixture
def seeded(db: ResultsDB) -> dict[str, str]:
    """species-id: minutes 0…4 done (salmon, trout alternating), a shadow answer at minute 3, one
    rejected at minute 5; line-inspection: DEFECT at minute 1.5, OK at minute 2.5."""
    ids: dict[str, str] = {}
    for minute in range(5):
        name = f"s{minute}"
        ids[name] = _observation(db, "species-id", minute)
        cls = "salmon" if minute % 2 == 0 else "trout"
        _answer(db, ids[name], "species-id", result={"task": "classify", "predicted_class": cls})
    _answer(
        db, ids["s3"], "species-id", Variant.shadow, result={"task": "classify", "predicted_class": "salmon"}
    )
    ids["bad"] = _observation(db, "species-id", 5, status="rejected")
    for minute, decision in ((1.5, Decision.defect), (2.5, Decision.ok)):
        name = f"l{int(minute)}"
        ids[name] = _observation(db, "line-inspection", minute)
        _answer(
            db, ids[name], "line-inspection", task="segment", result={"task": "segment"}, decision=decision
        )
    return ids


def _names(ids: dict[str, str], found: list[Any]) -> list[str]:
    by_id = {v: k for k, v in ids.items()}
    return [by_id[o.id] for o in found]


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        (ObservationFilter(), ["bad", "s4", "s3", "l2", "s2", "l1", "s1", "s0"]),
        (ObservationFilter(pipeline="species-id"), ["bad", "s4", "s3", "s2", "s1", "s0"]),
        (ObservationFilter(pipeline="species-id", status=ObservationStatus.rejected), ["bad"]),
        (ObservationFilter(pipeline="species-id", predicted_class="trout"), ["s3", "s1"]),
        (ObservationFilter(decision=Decision.defect), ["l1"]),
        (ObservationFilter(variant=Variant.shadow), ["s3"]),
        (ObservationFilter(variant=Variant.shadow, predicted_class="trout"), []),
        (ObservationFilter(variant=Variant.canary), []),
        (
            ObservationFilter(since=T0 + timedelta(minutes=2), until=T0 + timedelta(minutes=4)),
            ["s3", "l2", "s2"],
        ),
    ],
)
def test_filters_keep_exactly_the_matching_observations_newest_first(
    db: ResultsDB, seeded: dict[str, str], where: ObservationFilter, expected: list[str]
) -> None:
    page = db.find_observations(where)
    assert _names(seeded, page.observations) == expected
    assert page.next_after is None


def test_each_row_shows_the_answer_the_client_got_or_the_asked_variant(
    db: ResultsDB, seeded: dict[str, str]
) -> None:
    page = db.find_observations(ObservationFilter(pipeline="species-id"))
    assert seeded["bad"] not in page.answers  # rejected: no answer
    s3 = page.answers[seeded["s3"]]
    assert (s3.variant, s3.result["predicted_class"], s3.timings) == (
        Variant.champion,
        "trout",
        {"decode_ms": 1.0},
    )
    shadow = db.find_observations(ObservationFilter(variant=Variant.shadow)).answers[seeded["s3"]]
    assert (shadow.variant, shadow.model_version, shadow.result["predicted_class"]) == (
        Variant.shadow,
        "3",
        "salmon",
    )


def test_keyset_pages_walk_every_row_once_in_order(db: ResultsDB, seeded: dict[str, str]) -> None:
    everything = [o.id for o in db.find_observations(ObservationFilter(), limit=100).observations]
    walked: list[str] = []
    after = None
    for _ in range(10):
        page = db.find_observations(ObservationFilter(), limit=3, after=after)
        walked += [o.id for o in page.observations]
        after = page.next_after
        if after is None:
            break
    assert walked == everything and len(walked) == 8
    last = db.find_observations(ObservationFilter(), limit=3, after=(T0 - timedelta(days=1), "0"))
    assert last.observations == [] and last.next_after is None


def test_rows_changed_at_the_same_instant_are_paged_by_id(db: ResultsDB) -> None:
    ids = sorted(_observation(db, "species-id", 7) for _ in range(5))
    first = db.find_observations(ObservationFilter(), limit=2)
    rest = db.find_observations(ObservationFilter(), limit=10, after=first.next_after)
    assert [o.id for o in first.observations + rest.observations] == ids[::-1]
