"""The field book on a real results DB (SQLite; PostgreSQL for real): images join fields by metadata
or by the largest overlap, one row per flight, history in time order, the feature-store mirror
(memory; Redis for real) and the per-field gauges."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

from keeneye.domain import InvalidInput, NotFound
from keeneye.fields import FieldBook, history_json
from keeneye.metrics import Metrics
from keeneye.settings import CacheSettings, Settings
from keeneye.store import ResultsDB, open_cache
from keeneye.store.memory_cache import MemoryCache

from .support import FIELD_A, FIELD_B, flight_geo, write_flight

RECEIVED = datetime(2026, 6, 12, 9, 30, tzinfo=UTC)
BLIGHT_HA = 0.35  # 50 × 70 px of 1 m
INSIDE_A_HA = 200 * 256 / 10_000  # the raster's west 200 m × 256 m


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ResultsDB]:
    url = (
        f"sqlite:///{tmp_path / 'results.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    database = ResultsDB(str(url))
    database.ensure_schema()
    yield database
    database.close()


@pytest.fixture
def book(db: ResultsDB) -> FieldBook:
    b = FieldBook(db, MemoryCache(max_entries=10, ttl_seconds=60), Metrics())
    b.add(name="Field A", boundary=FIELD_A, crop="winter wheat", sowing_date="2025-10-05", field_id="a")
    b.add(name="Field B", boundary=FIELD_B, field_id="b")
    return b


def test_fields_are_registered_with_area_and_refused_twice(book: FieldBook) -> None:
    a, b = book.fields()
    assert (a.id, a.name, a.crop, str(a.sowing_date)) == ("a", "Field A", "winter wheat", "2025-10-05")
    assert a.area_ha == pytest.approx(250 * 320 / 10_000 / 0.9996**2, rel=1e-3)  # 8 ha on the ground
    assert (a.flights, a.last_flight, b.flights) == (0, None, 0)
    with pytest.raises(InvalidInput) as caught:
        book.add(name="Field A", boundary=FIELD_A, field_id="a")
    assert (caught.value.reason, caught.value.status) == ("field_exists", 409)
    with pytest.raises(NotFound):
        book.get("nope")


def test_an_image_joins_the_field_it_overlaps_most_and_is_clipped_to_it(
    book: FieldBook, tmp_path: Path
) -> None:
    geo = flight_geo(write_flight(tmp_path / "f.tif"))
    record = book.record_answer("obs1", geo, {}, RECEIVED)
    assert record is not None
    assert (record.field_id, record.joined_by, record.flight) == ("a", "overlap", "2026-06-12")
    assert record.observed_at == RECEIVED and record.observation_id == "obs1"
    assert record.disease_ha == {"blight": pytest.approx(BLIGHT_HA / 0.9996**2, rel=2e-3)}
    # the vigour zones cover the whole image; inside A only its west 200 m count
    assert sum(record.vigour_ha.values()) == pytest.approx(INSIDE_A_HA, rel=5e-3)  # type: ignore[arg-type]
    assert set(record.vigour_ha) == {"low", "medium"}  # NDVI rises eastward: the high third is in B
    assert record.indices["ndvi"] == {k: geo.indices["ndvi"][k] for k in ("mean", "p10", "p50", "p90")}  # type: ignore[literal-required]
    kinds = sorted(f["properties"]["kind"] for f in record.zones["features"])  # type: ignore[index,union-attr]
    assert kinds.count("disease") == 1 and "vigour" in kinds


def test_metadata_names_the_field_and_the_flight(book: FieldBook, tmp_path: Path) -> None:
    geo = flight_geo(write_flight(tmp_path / "f.tif"))
    meta = {"field": "b", "flight": "june-2", "observed_at": "2026-06-20T07:00:00Z"}
    record = book.record_answer("obs2", geo, meta, RECEIVED)
    assert record is not None
    assert (record.field_id, record.joined_by, record.flight) == ("b", "metadata", "june-2")
    assert record.observed_at == datetime(2026, 6, 20, 7, tzinfo=UTC)
    assert record.disease_ha == {}  # the blight lies in A, not in B
    assert sum(record.vigour_ha.values()) == pytest.approx(120 * 256 / 10_000, rel=5e-3)  # type: ignore[arg-type]
    # an unknown field in metadata joins nothing (the answer is stored anyway)
    assert book.record_answer("obs3", geo, {"field": "nope"}, RECEIVED) is None


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_an_image_elsewhere_or_without_georeference_joins_nothing(book: FieldBook, tmp_path: Path) -> None:
    from affine import Affine

    from tests.unit.geo.rasters import UTM33, write_tif
    from tests.unit.pipelines.crop_support import micasense_field

    far = write_tif(
        tmp_path / "far.tif",
        micasense_field(64, 64),
        crs=UTM33,
        transform=Affine(1, 0, 600_000, 0, -1, 5_600_000),
    )
    assert book.record_answer("o", flight_geo(far, blight=None), {}, RECEIVED) is None
    bare = write_tif(tmp_path / "bare.tif", micasense_field(64, 64), crs=None, transform=None)
    assert book.record_answer("o", flight_geo(bare, blight=None), {}, RECEIVED) is None


def test_history_after_two_flights_is_in_time_order_and_a_resent_flight_replaces(
    book: FieldBook, tmp_path: Path
) -> None:
    sick = flight_geo(write_flight(tmp_path / "sick.tif"))
    healthy = flight_geo(write_flight(tmp_path / "healthy.tif", blight=None), blight=None, crs="native")
    # the later flight first: history sorts by observed_at, not by arrival
    book.record_answer("o2", sick, {"observed_at": "2026-06-20T08:00:00+00:00"}, RECEIVED)
    book.record_answer("o1", healthy, {"observed_at": "2026-06-05T08:00:00+00:00"}, RECEIVED)
    book.record_answer("o3", sick, {"observed_at": "2026-06-20T08:00:00+00:00"}, RECEIVED)  # re-sent
    flights = book.history("a")
    assert [(f.flight, f.observation_id) for f in flights] == [("2026-06-05", "o1"), ("2026-06-20", "o3")]
    assert flights[0].disease_ha == {} and flights[1].disease_ha["blight"] == pytest.approx(0.35, rel=2e-3)
    # native-CRS answers (zones in EPSG:32633) are put in WGS84 the same way
    assert sum(flights[0].vigour_ha.values()) == pytest.approx(INSIDE_A_HA, rel=5e-3)  # type: ignore[arg-type]
    a = book.get("a")
    assert (a.flights, a.last_flight) == (2, "2026-06-20")
    doc = history_json("a", flights)
    assert list(doc) == ["field_id", "flights"]
    assert list(doc["flights"][0]) == [
        "flight", "observed_at", "observation_id", "indices", "disease_ha", "vigour_ha", "zones",
    ]  # fmt: skip
    assert set(doc["flights"][0]["indices"]["ndvi"]) == {"mean", "p10", "p50", "p90"}  # type: ignore[call-overload]
    rx = book.prescription("a")
    assert rx.flight == "2026-06-20" and len(rx.zones) == 1 and rx.zones[0].severity == 1.0
    with pytest.raises(NotFound) as caught:
        book.prescription("a", "2027-01-01")
    assert "2026-06-05, 2026-06-20" in (caught.value.fix or "")


def test_the_latest_flight_is_mirrored_as_features_and_gauges(book: FieldBook, tmp_path: Path) -> None:
    geo = flight_geo(write_flight(tmp_path / "f.tif"))
    book.record_answer("o1", geo, {"flight": "late", "observed_at": "2026-06-20T08:00:00Z"}, RECEIVED)
    book.record_answer("o0", geo, {"flight": "early", "observed_at": "2026-06-01T08:00:00Z"}, RECEIVED)
    features = book.features("a")
    assert features["flight"] == "late"  # the latest by time, though recorded first
    assert float(features["ndvi_mean"]) == pytest.approx(geo.indices["ndvi"]["mean"])  # type: ignore[arg-type]
    assert float(features["disease_ha"]) == pytest.approx(0.35, rel=2e-3)
    assert float(features["disease_ha:blight"]) == pytest.approx(0.35, rel=2e-3)
    assert book.metrics is not None
    registry = book.metrics.registry
    assert registry.get_sample_value("keeneye_field_ndvi_mean", {"field": "a"}) == pytest.approx(
        geo.indices["ndvi"]["mean"]
    )
    assert registry.get_sample_value("keeneye_field_diseased_hectares", {"field": "a"}) == pytest.approx(
        0.35, rel=2e-3
    )


@pytest.mark.integration
def test_the_mirror_is_a_redis_hash_per_field(redis_url: str, tmp_path: Path) -> None:
    db = ResultsDB(f"sqlite:///{tmp_path / 'results.db'}")
    db.ensure_schema()
    cache = open_cache(Settings(home=tmp_path, cache_url=redis_url, cache=CacheSettings(ttl_seconds=60)))
    book = FieldBook(db, cache)
    book.add(name="Field A", boundary=FIELD_A, field_id="a")
    geo = flight_geo(write_flight(tmp_path / "f.tif"))
    book.record_answer("o1", geo, {"flight": "f1"}, RECEIVED)
    raw = redis.Redis.from_url(redis_url)
    try:
        stored = {k.decode(): v.decode() for k, v in raw.hgetall("keeneye:field:a").items()}
        assert raw.ttl("keeneye:field:a") == -1  # a feature store entry, no expiry
    finally:
        raw.close()
        cache.close()
        db.close()
    assert stored["flight"] == "f1" and stored["observation_id"] == "o1" and stored["field_id"] == "a"
    assert float(stored["ndvi_mean"]) == pytest.approx(geo.indices["ndvi"]["mean"])  # type: ignore[arg-type]
    assert float(stored["disease_ha:blight"]) == pytest.approx(0.35, rel=2e-3)
    assert set(stored) >= {"vigour_ha:low", "vigour_ha:medium", "indices", "area_ha", "observed_at"}
