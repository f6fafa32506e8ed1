"""schemathesis over keeneye's own OpenAPI spec, in process: every operation, every phase, no 5xx.

The app is served with a champion for every built-in pipeline (species-id, line-inspection,
crop-health), keys required, and the fuzzer authenticated as an admin, so no route is cut short at
401 / 403 and the predict routes reach the models. schemathesis' engine (what ``schemathesis run``
drives) sends every operation through the examples, coverage and fuzzing phases, then the stateful
phase chains operations along the links of the spec (predict → the observation, its trace, image and
feedback) and those it infers. Checks: no 5xx (``not_a_server_error``) and every response matching
its declared schema (``response_schema_conformance``); then the same app must still answer
``/health`` and ``/ready``. (The engine, not ``schema.parametrize()``: schemathesis' lazy pytest
fixture mode renames pytest nodes through an attribute pytest 9 no longer has.)

Image bodies (``image/jpeg``, ``image/png``, ``image/tiff``) are real images of 1–64 px a side, 1, 3
or 4 bands, 8 or 16 bit, half of them then truncated or bit-flipped, so fuzzing gets past the
decoders into the models, post-processing and storage instead of stopping at ``corrupt_image``.

A fixed seed and a bounded budget (``KEENEYE_TEST_FUZZ_EXAMPLES`` fuzzed cases per operation,
default 12): the same run every time, about 2 000 requests. A longer pass (docs/development.md,
"API fuzzing")::

    KEENEYE_TEST_FUZZ_EXAMPLES=400 KEENEYE_TEST_FUZZ_REPORT=fuzz.json \\
        pytest -m slow tests/unit/serving/test_api_fuzz.py --timeout 3600

``KEENEYE_TEST_FUZZ_REPORT`` names a JSON file that gets the requests sent per phase, per status and
the 5xx count (``KEENEYE_TEST_*``: the test conftest clears every other ``KEENEYE_`` variable).
"""

from __future__ import annotations

import io
import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import schemathesis
import tifffile
from hypothesis import strategies as st
from schemathesis import engine
from schemathesis.engine import Status, events
from schemathesis.python import asgi

from keeneye.domain import Role
from keeneye.serving import create_app
from keeneye.settings import Settings
from keeneye.store import open_results_db
from tests.e2e.test_predict_page import register_line_and_crop
from tests.serving_support import register_species_model

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning"),
]

SEED = 18  # issue 18
EXAMPLES = int(os.environ.get("KEENEYE_TEST_FUZZ_EXAMPLES", "12"))
REPORT = os.environ.get("KEENEYE_TEST_FUZZ_REPORT")


# --------------------------------------------------------------------------------------------------
# Image bodies
# --------------------------------------------------------------------------------------------------


@st.composite
def _pixels(draw: st.DrawFn) -> np.ndarray:
    height, width = draw(st.integers(1, 64)), draw(st.integers(1, 64))
    bands = draw(st.sampled_from([1, 3, 4]))
    dtype = draw(st.sampled_from([np.uint8, np.uint16]))
    top = np.iinfo(dtype).max
    seed = draw(st.integers(0, 2**16))
    array = np.random.default_rng(seed).integers(0, top, (height, width, bands), endpoint=True)
    return array.astype(dtype)[:, :, 0] if bands == 1 else array.astype(dtype)


def _encode(array: np.ndarray, kind: str) -> bytes:
    if kind == "tiff":
        out = io.BytesIO()
        tifffile.imwrite(out, array, photometric="minisblack" if array.ndim == 2 else None)
        return out.getvalue()
    if kind == "jpeg":
        array = (array >> 8).astype(np.uint8) if array.dtype == np.uint16 else array
        array = array[:, :, :3] if array.ndim == 3 else array
    ok, buf = cv2.imencode(f".{'jpg' if kind == 'jpeg' else kind}", array)
    assert ok
    return bytes(buf)


@st.composite
def _damaged(draw: st.DrawFn, data: bytes) -> bytes:
    """The bytes truncated or with a few bits flipped (the headers most often: they come first)."""
    buf = bytearray(data)
    if draw(st.booleans()):
        return bytes(buf[: draw(st.integers(0, len(buf) - 1))])
    for _ in range(draw(st.integers(1, 4))):
        pos = min(len(buf) - 1, int(draw(st.floats(0, 1)) ** 3 * len(buf)))
        buf[pos] ^= 1 << draw(st.integers(0, 7))
    return bytes(buf)


def image_bodies(kind: str) -> st.SearchStrategy[bytes]:
    """Real ``kind`` images of 1–64 px a side, 1/3/4 bands, 8/16 bit; half of them damaged."""
    whole = _pixels().map(lambda a: _encode(a, kind))
    return st.one_of(whole, whole.flatmap(_damaged), st.binary(max_size=64))


schemathesis.openapi.media_type("image/jpeg", image_bodies("jpeg"))
schemathesis.openapi.media_type("image/png", image_bodies("png"))
schemathesis.openapi.media_type("image/tiff", image_bodies("tiff"))


# --------------------------------------------------------------------------------------------------
# The served app
# --------------------------------------------------------------------------------------------------


def _config(key: str) -> schemathesis.Config:
    generation = {"max-examples": EXAMPLES, "database": "none", "mode": "all"}
    return schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "headers": {"X-API-Key": key},
            "generation": generation,
            "phases": {
                "examples": {"enabled": True},
                "coverage": {"enabled": True},
                "fuzzing": {"enabled": True},
                "stateful": {"enabled": True, "max-steps": 6},
            },
            "checks": {
                "enabled": False,
                "not_a_server_error": {"enabled": True},
                "response_schema_conformance": {"enabled": True},
            },
            "suppress-health-check": ["too_slow", "filter_too_much", "data_too_large", "large_base_example"],
        }
    )


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The app with a champion for every built-in pipeline, keys required, limits out of the way (the
    fuzzer is one client sending thousands of requests), and its spec loaded as schemathesis sees it."""
    tmp = tmp_path_factory.mktemp("fuzz")
    settings = Settings(home=tmp / "home")
    serving = settings.serving.model_copy(
        update={"require_api_key": True, "rate_limit_per_second": 1e6, "rate_limit_burst": 10**6}
    )
    settings = settings.model_copy(update={"serving": serving})
    register_species_model(settings, tmp)
    register_line_and_crop(settings, tmp)
    _, key = open_results_db(settings).create_api_key("fuzzer", Role.admin)
    app = create_app(settings, poll_aliases=False)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=_config(key))
    try:
        yield schema
    finally:
        asgi.shutdown_lifespans()  # the app's lifespan (opened on the first request) ends here


def _report(counts: dict[str, int]) -> None:
    if REPORT:
        Path(REPORT).write_text(json.dumps({"examples_per_operation": EXAMPLES, **counts}, indent=2))


def _failure_line(check: Any) -> str:
    info = check.failure_info
    return f"{check.name}: {info.failure.title}\n{info.failure.message}\n{info.code_sample}"


def run_fuzzer(schema: Any) -> tuple[Counter[str], list[str]]:
    """Every phase over every operation (the engine ``schemathesis run`` drives): the cases sent per
    phase, the 5xx answered, and one line per failed check or error."""
    sent: Counter[str] = Counter()
    problems: list[str] = []
    for event in engine.from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            recorder = event.recorder
            sent[str(event.phase.value)] += len(recorder.cases)
            sent["cases"] += len(recorder.cases)
            for interaction in recorder.interactions.values():
                if interaction.response is not None:
                    status = interaction.response.status_code
                    sent[f"status {status}"] += 1
                    sent["5xx"] += status >= 500
                    if status < 300:
                        sent[
                            f"2xx {interaction.request.method} {event.recorder.label.split(' ', 1)[-1]}"
                        ] += 1
            for checks in recorder.checks.values():
                problems += [_failure_line(c) for c in checks if c.status == Status.FAILURE]
        elif isinstance(event, events.NonFatalError | events.FatalError):
            problems.append(f"{type(event).__name__}: {getattr(event, 'info', event)}")
    return sent, problems


def test_every_operation_every_phase_no_5xx(api_schema: Any) -> None:
    """Examples, coverage, fuzzing and stateful phases; then the same app still answers its probes."""
    sent, problems = run_fuzzer(api_schema)
    _report(dict(sorted(sent.items())))
    assert not problems, "\n\n".join(dict.fromkeys(problems))  # each distinct failure once
    assert sent["5xx"] == 0
    for phase in ("examples", "coverage", "fuzzing", "stateful"):
        assert sent[phase] > 0, f"the {phase} phase sent nothing: {dict(sent)}"

    health = api_schema["/health"]["GET"].Case().call()
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    ready = api_schema["/ready"]["GET"].Case().call()
    assert ready.status_code == 200 and ready.json()["ready"] is True, ready.text
    assert set(ready.json()["models"]) == {"species-id", "line-inspection", "crop-health"}
