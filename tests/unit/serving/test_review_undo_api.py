"""A reviewer's undo over HTTP: the feedback is withdrawn for good and the item is back in review."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from keeneye.lifecycle import enqueue, review_queue, review_reasons
from keeneye.pipelines import PipelineCatalog
from keeneye.settings import Settings
from keeneye.store import open_object_store, open_results_db
from tests.serving_support import LiveServer, live_server, register_species_model
from tests.unit.lifecycle.support import Stored, as_answer, species_jpeg, species_result, store_answer

pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")


@pytest.fixture
def stored(settings: Settings, tmp_path: Path) -> Stored:
    register_species_model(settings, tmp_path)
    db, objects = open_results_db(settings), open_object_store(settings)
    spec = PipelineCatalog(settings).get("species-id")
    s = store_answer(
        db, objects, spec.name, species_result([0.4, 0.3, 0.1, 0.1, 0.1]), species_jpeg(1), fmt="jpeg"
    )
    enqueue(
        db, s.observation_id, spec.name, review_reasons(spec, as_answer(s.result), audit_share=0, rng_key="k")
    )
    return s


@pytest.fixture
def server(settings: Settings, stored: Stored) -> Iterator[LiveServer]:
    with live_server(settings, poll_aliases=False) as live:
        yield live


def test_withdrawing_the_only_answer_puts_the_item_back_in_the_queue(
    server: LiveServer, stored: Stored, settings: Settings
) -> None:
    db = open_results_db(settings)
    oid = stored.observation_id
    feedback = f"{server.url}/v1/observations/{oid}/feedback"
    first = httpx.post(feedback, json={"class": "esox_lucius", "source": "review", "author": "ana"})
    second = httpx.post(feedback, json={"class": "perca_fluviatilis", "source": "review"})
    assert first.status_code == second.status_code == 201
    assert review_queue(db, "species-id") == []

    undo = httpx.delete(f"{feedback}/{second.json()['id']}")
    assert undo.status_code == 200, undo.text
    assert undo.json() == {
        "id": second.json()["id"],
        "observation_id": oid,
        "source": "review",
        "author": "local",  # no name given, on loopback: the audit names the local user
        "label": {"class": "perca_fluviatilis"},
        "queued_again": False,  # ana's answer still stands
    }
    assert [f.label for f in db.feedback_for(oid)] == [{"class": "esox_lucius"}]
    assert review_queue(db, "species-id") == []

    undo = httpx.delete(f"{feedback}/{first.json()['id']}")
    assert undo.status_code == 200 and undo.json()["queued_again"] is True
    assert db.feedback_for(oid) == []
    assert [e.observation_id for e in review_queue(db, "species-id")] == [oid]

    again = httpx.delete(f"{feedback}/{first.json()['id']}")
    assert again.status_code == 404
    assert again.json()["detail"] == f"observation {oid} has no feedback {first.json()['id']}"
    other = httpx.delete(f"{server.url}/v1/observations/{'0' * 32}/feedback/{second.json()['id']}")
    assert other.status_code == 404  # a feedback id is only withdrawn through its own observation
