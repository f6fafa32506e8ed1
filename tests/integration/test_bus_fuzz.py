"""Fuzzing every bus consumer: random and mutated messages end in a dead-letter topic with a reason (or,
for a well-formed observation whose bytes are no image, ``rejected`` with one), and the consumer takes
the next good message — never an exception out of its loop, which would be a crash loop (the message
is never acked, so it comes back to kill the next process too).

Consumers: the stream :class:`~keeneye.stream.PipelineWorker` (``keeneye.<pipeline>.in`` →
``.dlq``), a smartcut plugin process (``{plugin}-new-files`` → ``smartcut.dlq``), and the smartcut
backend's collector (``processed-files`` → ``smartcut.dlq``) and plugin directory
(``started-plugins`` / ``stopped-plugins``: bad announcements are skipped, as every backend process
reads the whole history in its own group and would otherwise dead-letter them again at each start).

Messages: random bytes and headers, valid JSON of the wrong shape, a valid envelope with one absurd
field (ids, names, paths leaving the root or naming no request, NaN / negative / reversed timestamps,
JSON nested past the stack, NUL bytes, header values longer than their column), truncated values,
and values at the bus's size limit (their dead letter no longer fits with the reason added: it goes
without its bytes). Hypothesis runs with a fixed seed and a bounded number of examples; each example
publishes one to four bad messages and then a good one. The worker runs on the embedded SQLite bus
and on Kafka (tansu, marked integration); the smartcut consumers on SQLite (their topic names are
fixed by the seed's protocol, shared by every test on one broker).
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from keeneye.domain import ObservationStatus
from keeneye.settings import Settings
from keeneye.store import ResultsDB, open_results_db
from keeneye.stream import Ingestor, PipelineWorker, dlq_topic, input_topic, open_bus
from keeneye.stream.bus import Bus, Consumer, Message
from keeneye.video.backend import BackendLimits, SmartcutBackend
from keeneye.video.chunks import video_folder, write_chunks
from keeneye.video.messages import PROCESSED_FILES, STARTED_PLUGINS, STOPPED_PLUGINS, new_files_topic
from keeneye.video.protocol import DLQ_TOPIC, MalformedMessage, encode, parse_new_files
from keeneye.video.sampling import SampledFrame
from tests.fuzz_support import FUZZ, examples
from tests.serving_support import jpeg, register_species_model
from tests.unit.stream.stream_support import bus_url, run_until, stream_settings
from tests.unit.video.bus_support import plugin_thread

__all__ = ["bus_url"]  # the fixture

LIMIT = 256 * 1024  # the bus's message size limit in these tests: "huge" values sit right under it
FRESH = "<fresh>"  # stands for a new observation id / request uid, filled in at publish time
STREAM_DLQ_REASONS = frozenset(
    {
        "missing_headers",
        "bad_header",
        "bad_metadata",
        "no_image",
        "unknown_pipeline",
        "wrong_topic",
        "missing_object",
    }
)
DEEP = b"[" * 100_000 + b"]" * 100_000  # valid JSON nested past Python's stack
HUGE = b"<huge>"  # stands for zero bytes filling a message up to 20 bytes under LIMIT


def fuzz_settings(tmp_path: Path, bus_url: str) -> tuple[Settings, str]:
    config, name = stream_settings(tmp_path, bus_url)
    bus = config.bus.model_copy(update={"max_message_bytes": LIMIT})
    return config.model_copy(update={"bus": bus}), name


def poll_all(consumer: Consumer) -> list[Message]:
    got = consumer.poll(max_messages=100, timeout=0.05)
    if got:
        consumer.ack_many(got)
    return got


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
json_bytes = json_values.map(lambda v: json.dumps(v).encode())
absurd_text = st.one_of(
    st.sampled_from(["", " ", "x" * 300, "../../etc/passwd", "/abs", "a\x00b", "\u202e", "☃" * 40]),
    st.text(max_size=40),
)


# --------------------------------------------------------------------------------------------------
# The stream worker
# --------------------------------------------------------------------------------------------------

Headers = dict[str, str | bytes]


def _envelope(pipeline: str) -> Headers:
    return {
        "observation_id": FRESH,
        "pipeline": pipeline,
        "content_hash": "0" * 64,
        "content_type": "image/jpeg",
        "metadata": "{}",
        "source": "fuzz",
    }


ABSURD_FIELDS: dict[str, list[str | bytes]] = {
    "observation_id": ["", "x" * 33, "a/b", "../x", "id with space", b"\xff\xfe"],
    "pipeline": ["", "UPPER", "no-such-pipeline", "species-id", "x" * 200, b"\xc3"],
    "content_hash": ["z" * 65, "h" * 5000],
    "content_type": ["t" * 129],
    "metadata": ["[", "[]", "null", "1", '{"a": ', DEEP.decode(), b"\xff{}", '"' + "m" * 1000 + '"'],
    "source": ["s" * 33],
    "object_key": ["../etc/passwd", "/abs/key", "a//b", "a/./b", "obs/none-such.jpg", "k" * 1100],
}


@st.composite
def bad_observations(draw: st.DrawFn, pipeline: str) -> tuple[bytes, Headers, bool]:
    """(value, headers, dead_letter): ``dead_letter`` False for a well-formed message whose bytes are
    no image (then the observation ends ``rejected``)."""
    kind = draw(st.sampled_from(["random", "json", "absurd", "no-image", "huge", "truncated"]))
    if kind == "random":
        names = st.sampled_from([*_envelope(pipeline), "object_key"]) | st.text(min_size=1, max_size=12)
        headers: Headers = draw(st.dictionaries(names, st.binary(max_size=40), max_size=6))
        headers.pop("observation_id", None)  # random bytes in every required header: some may parse
        return draw(st.binary(max_size=2000)), headers, True
    if kind == "json":
        headers = draw(
            st.dictionaries(
                st.sampled_from(list(_envelope(pipeline))), json_values.map(json.dumps), max_size=3
            )
        )
        headers.pop("content_type", None)  # at least one required header missing
        return draw(json_bytes), headers, True
    headers = _envelope(pipeline)
    value = draw(
        st.binary(min_size=1, max_size=500).filter(
            lambda b: not b.startswith((b"\xff\xd8", b"\x89P", b"II", b"MM"))
        )
    )
    if kind == "absurd":
        field = draw(st.sampled_from(sorted(ABSURD_FIELDS)))
        headers[field] = draw(st.sampled_from(ABSURD_FIELDS[field]))
        if field == "object_key":
            value = b""  # by reference: the key is what the worker reads
        return value, headers, True
    if kind == "no-image":
        return (
            draw(st.sampled_from([value, jpeg()[:200], jpeg()[: len(jpeg()) // 2], b"\x89PNG\r\n\x1a\n"])),
            headers,
            False,
        )
    if kind == "huge":  # HUGE: filled up to the size limit at publish time
        if draw(st.booleans()):
            headers.pop("content_hash")  # malformed: its dead letter cannot keep the bytes
            return HUGE, headers, True
        return HUGE, headers, False
    # truncated: a good message cut short
    headers["metadata"] = '{"site": "north", "n": [1, 2, 3]}'[: draw(st.integers(1, 30))]
    return jpeg()[: draw(st.integers(1, 400))], headers, True


def _raw(value: str | bytes | None) -> bytes:
    return value.encode() if isinstance(value, str) else value or b""


def _status(db: ResultsDB, obs_id: str) -> ObservationStatus | None:
    record = db.get_observation(obs_id)
    return None if record is None else record.status


@contextmanager
def started_worker(config: Settings, name: str) -> Iterator[PipelineWorker]:
    worker = PipelineWorker(config, name, batch_size=8)
    worker.setup()
    try:
        yield worker
    finally:
        worker.teardown()


def _fuzz_worker(tmp_path: Path, bus_url: str, n: int) -> None:
    config, name = fuzz_settings(tmp_path, bus_url)
    register_species_model(config, tmp_path)
    bus = open_bus(config)
    db = open_results_db(config)
    ingestor = Ingestor(config)
    counts = {"dead_lettered": 0, "rejected": 0, "good": 0}
    bus.ensure_topics([dlq_topic(name)])  # Kafka: the DLQ consumer is assigned at once
    with started_worker(config, name) as worker, bus.subscribe([dlq_topic(name)], "fuzz-dlq") as dlq:

        @settings(FUZZ, max_examples=n)
        @given(st.lists(bad_observations(name), min_size=1, max_size=4))
        def run(bad: list[tuple[bytes, Headers, bool]]) -> None:
            expected: dict[str, tuple[str | None, bool]] = {}  # fuzz_id → (observation id, dead letter)
            for value, headers, dead_letter in bad:
                tag = uuid.uuid4().hex
                obs_id = uuid.uuid4().hex if headers.get("observation_id") == FRESH else None
                sent = {k: (obs_id if v == FRESH else v) for k, v in headers.items()} | {"fuzz_id": tag}
                if value == HUGE:
                    size = len(obs_id or "") + sum(len(k.encode()) + len(_raw(v)) for k, v in sent.items())
                    value = bytes(LIMIT - size - 20)
                bus.publish(input_topic(name), value, key=obs_id, headers=sent)
                expected[tag] = (obs_id, dead_letter)
            bus.flush()
            good = ingestor.accept(name, jpeg(seed=counts["good"] % 7)).id
            letters: dict[str, list[Message]] = {}

            def settled() -> bool:
                for m in poll_all(dlq):
                    letters.setdefault(m.header("fuzz_id") or "", []).append(m)
                return _status(db, good) is ObservationStatus.done and all(
                    tag in letters or (obs and _status(db, obs) is ObservationStatus.rejected)
                    for tag, (obs, _) in expected.items()
                )

            run_until(worker, settled, timeout=60)
            for tag, (obs_id, dead_letter) in expected.items():
                if dead_letter:
                    assert len(letters.get(tag, [])) == 1, (tag, letters.get(tag))
                    reason = letters[tag][0].header("reason") or ""
                    assert reason.split(":")[0] in STREAM_DLQ_REASONS, reason
                    counts["dead_lettered"] += 1
                else:
                    assert tag not in letters and obs_id is not None
                    record = db.get_observation(obs_id)
                    assert record is not None and record.status is ObservationStatus.rejected
                    assert record.reason and record.reason.split(":")[0] in {
                        "unsupported_format",
                        "corrupt_image",
                        "empty",
                    }
                    counts["rejected"] += 1
            counts["good"] += 1

        run()
    bus.close()
    # Bad input is never mistaken for a transient failure (retried, then failed as max_attempts).
    assert (worker.counts["retried"], worker.counts["done"]) == (0, counts["good"])
    assert counts["good"] == n and counts["dead_lettered"] > n // 2 and counts["rejected"] > 0
    print(f"stream worker on {bus_url.split(':')[0]}: {n} examples, {counts}")


@pytest.mark.slow
def test_the_stream_worker_dead_letters_bad_messages_and_carries_on(tmp_path: Path, bus_url: str) -> None:
    _fuzz_worker(tmp_path, bus_url, examples(40 if bus_url.startswith("sqlite") else 12))


# --------------------------------------------------------------------------------------------------
# A smartcut plugin process
# --------------------------------------------------------------------------------------------------

RNG = np.random.default_rng(18)


def _new_files(status: Any, user_id: Any, path: Any, **extra: Any) -> bytes:
    key = "last_zipped_chunk_path" if status == "in-progress" else "zipped_chunks_path"
    return encode({"status": status, "user_id": user_id, key: path, **extra})


@st.composite
def bad_new_files(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["random", "json", "absurd", "missing", "truncated", "huge", "deep"]))
    if kind == "random":
        return draw(st.binary(max_size=2000))
    if kind == "json":
        return draw(json_bytes)
    if kind == "absurd":
        status = draw(st.sampled_from(["in-progress", "uploaded", "done", 1, None]))
        path = draw(st.one_of(absurd_text, absurd_text.map(lambda t: f"{FRESH}/{t}/chunk_000000.zip")))
        user = draw(st.sampled_from(["u", "", "u" * 129, 5]))
        extra = draw(
            st.sampled_from(
                [
                    {},
                    {"options": "nope"},
                    {"options": {"classes": [1]}},
                    {"options": {"classes": ["x" * 101]}},
                ]
            )
        )
        return _new_files(status, user, path, **extra)
    if kind == "missing":  # well-formed, naming a chunk or a folder that is not there
        if draw(st.booleans()):
            return _new_files("in-progress", "u", f"{FRESH}/cam/chunk_000000.zip")
        return _new_files("uploaded", "u", f"{FRESH}/cam")
    if kind == "truncated":
        whole = _new_files("uploaded", "u", f"{FRESH}/cam")
        return whole[: draw(st.integers(0, len(whole) - 1))]
    if kind == "huge":
        return _new_files("uploaded", "u" * (LIMIT - 150), f"{FRESH}/cam")
    return DEEP


def _request_key(value: bytes) -> str | None:
    """What the plugin remembers a refusal by: the request uid of a parsed path (a later message of a
    refused request is dropped, by design); None for a value that does not parse."""
    try:
        parsed = parse_new_files(value)
    except MalformedMessage:
        return None
    path = (
        parsed["last_zipped_chunk_path"]
        if parsed["status"] == "in-progress"
        else parsed["zipped_chunks_path"]
    )
    return path.split("/")[0]


def _good_request(bus: Bus, root: Path, plugin: str) -> str:
    """Six frames a second apart in one chunk, announced as the seed's producer does."""
    uid = str(uuid.uuid4())
    folder = video_folder(uid, "cam")
    frames = [SampledFrame(i, float(i), RNG.integers(0, 256, (24, 32, 3), dtype=np.uint8)) for i in range(6)]
    list(write_chunks(frames, root, folder))
    bus.publish(new_files_topic(plugin), _new_files("uploaded", "fuzz", folder.as_posix()))
    bus.flush()
    return uid


def _bus_and_root(tmp_path: Path) -> tuple[Settings, Bus, Path]:
    config, _ = fuzz_settings(tmp_path, f"sqlite:///{tmp_path / 'home' / 'bus.db'}")
    assert config.smartcut.root is not None
    config.smartcut.root.mkdir(parents=True, exist_ok=True)
    return config, open_bus(config), config.smartcut.root


def test_a_plugin_process_dead_letters_bad_messages_and_carries_on(tmp_path: Path) -> None:
    _, bus, root = _bus_and_root(tmp_path)
    keep = root / "not-a-request" / "keep.txt"  # a folder a mutated path may name: never deleted
    keep.parent.mkdir()
    keep.write_text("x")
    topic = new_files_topic("motion")
    used: set[str] = set()
    totals = {"examples": 0, "dead_lettered": 0, "dropped_bytes": 0}
    with (
        plugin_thread(bus, root) as plugin,
        bus.subscribe([DLQ_TOPIC], "fuzz-dlq") as dlq,
        bus.subscribe([PROCESSED_FILES], "fuzz-answers") as answers,
    ):

        @settings(FUZZ, max_examples=examples(40))
        @given(
            st.lists(
                bad_new_files() | st.just(_new_files("in-progress", "u", "not-a-request/x/c.zip")),
                min_size=1,
                max_size=4,
            )
        )
        def run(templates: list[bytes]) -> None:
            bad = [t.replace(FRESH.encode(), str(uuid.uuid4()).encode()) for t in templates]
            keys = [k for k in map(_request_key, bad) if k is not None]
            assume(len(set(keys)) == len(keys) and not used.intersection(keys))
            used.update(keys)
            for value in bad:
                bus.publish(topic, value)
            good = _good_request(bus, root, "motion")
            got: list[Message] = []
            deadline = time.monotonic() + 60
            while not any(json.loads(m.value).get("user_request_uid") == good for m in got):
                assert time.monotonic() < deadline, "the plugin did not answer the good request"
                got += poll_all(answers)
            letters = [m for m in poll_all(dlq) if m.header("topic") == topic]
            deadline = time.monotonic() + 10
            while len(letters) < len(bad) and time.monotonic() < deadline:
                letters += [m for m in poll_all(dlq) if m.header("topic") == topic]
            # One dead letter per bad value, each with its reason; a value at the size limit without
            # its bytes (the reason and the topic alone still fit).
            assert len(letters) == len(bad), [m.header("reason") for m in letters]
            kept = sorted(m.value for m in letters if m.header("value_dropped") is None)
            dropped = [m for m in letters if m.header("value_dropped") == "true"]
            assert all(m.value == b"" for m in dropped)
            assert kept == sorted(v for v in bad if len(v) < LIMIT - 1000)
            for m in letters:
                # plugin_error would be an exception the plugin did not expect: a bug found
                assert (m.header("reason") or "").split(":")[0] in {"malformed_message", "bad_chunk"}, (
                    m.header("reason")
                )
            totals["examples"] += 1
            totals["dead_lettered"] += len(letters)
            totals["dropped_bytes"] += len(dropped)

        run()
        assert plugin.answered == totals["examples"]
    assert keep.read_text() == "x"
    bus.close()
    assert totals["examples"] >= examples(30) and totals["dropped_bytes"] > 0
    print(f"plugin process: {totals}")


# --------------------------------------------------------------------------------------------------
# The smartcut backend: answers, dead letters, plugin announcements
# --------------------------------------------------------------------------------------------------


@st.composite
def bad_answers(draw: st.DrawFn) -> bytes:
    kind = draw(
        st.sampled_from(["random", "json", "absurd", "truncated", "huge", "deep", "nan", "surrogate"])
    )
    base = {
        "user_id": "u",
        "user_request_uid": FRESH,
        "video_name": "cam",
        "plugin_name": "motion",
        "timestamps": [{"start": 0, "stop": 1}],
    }
    if kind == "random":
        return draw(st.binary(max_size=2000))
    if kind == "json":
        return draw(json_bytes)
    if kind == "absurd":
        field, value = draw(
            st.sampled_from(
                [
                    ("timestamps", "x"),
                    ("timestamps", [1]),
                    ("timestamps", [{"start": -1, "stop": 1}]),
                    ("timestamps", [{"start": 5, "stop": 1}]),
                    ("timestamps", [{"start": True, "stop": 1}]),
                    ("user_request_uid", "r" * 65),
                    ("user_id", ""),
                    ("video_name", 7),
                    ("plugin_name", None),
                ]
            )
        )
        return encode({**base, field: value})
    if kind == "truncated":
        whole = encode(base)
        return whole[: draw(st.integers(0, len(whole) - 1))]
    if kind == "huge":
        return encode({**base, "user_id": "u" * (LIMIT - 200)})
    if kind == "deep":
        return DEEP
    if kind == "surrogate":  # "\ud800" is valid JSON, but no UTF-8 encoder takes the string it makes
        return json.dumps({**base, "user_id": "\ud800"}).encode()
    return b'{"timestamps": [{"start": NaN, "stop": Infinity}]}'


def test_the_backend_dead_letters_bad_answers_and_stores_the_good_one(tmp_path: Path) -> None:
    config, bus, root = _bus_and_root(tmp_path)
    backend = SmartcutBackend(bus, open_results_db(config), root, BackendLimits())
    totals = {"examples": 0, "dead_lettered": 0}
    with bus.subscribe([DLQ_TOPIC], "fuzz-dlq") as dlq:

        @settings(FUZZ, max_examples=examples(40))
        @given(
            st.lists(bad_answers(), min_size=1, max_size=4),
            st.dictionaries(
                st.sampled_from(["reason", "topic", "request_uid"]) | st.text(max_size=8),
                st.binary(max_size=60),
                max_size=4,
            ),
        )
        def run(templates: list[bytes], letter_headers: dict[str, bytes]) -> None:
            bad = [t.replace(FRESH.encode(), str(uuid.uuid4()).encode()) for t in templates]
            for value in bad:
                bus.publish(PROCESSED_FILES, value)
            bus.publish(DLQ_TOPIC, b"anything", headers=letter_headers)  # anyone may write there
            uid = str(uuid.uuid4())
            backend.db.create_smartcut_request(
                uid, user_id="u", plugin="motion", video_name="v.mp4", sensitivity=1.0
            )
            answer = {
                "user_id": "u",
                "user_request_uid": uid,
                "video_name": "v",
                "plugin_name": "motion",
                "timestamps": [{"start": 1.5, "stop": 4.0}],
            }
            bus.publish(PROCESSED_FILES, encode(answer))
            bus.flush()
            deadline = time.monotonic() + 60
            while backend.db.smartcut_request(uid).status != "done":
                assert time.monotonic() < deadline, "the good answer was not stored"
                backend.collect(timeout=0.05)  # raising here would be the collector's crash loop
            assert backend.db.smartcut_request(uid).segments == {"timestamps": [{"start": 1.5, "stop": 4.0}]}
            letters: list[Message] = []
            deadline = time.monotonic() + 10
            while len(letters) < len(bad) and time.monotonic() < deadline:
                letters += [m for m in poll_all(dlq) if m.header("topic") == PROCESSED_FILES]
            assert len(letters) == len(bad)
            assert all((m.header("reason") or "").startswith("malformed_message: ") for m in letters)
            totals["examples"] += 1
            totals["dead_lettered"] += len(letters)

        run()
    backend.close()
    bus.close()
    assert totals["examples"] == examples(40)
    print(f"smartcut backend: {totals}")


def test_the_plugin_directory_skips_bad_announcements_and_reads_on(tmp_path: Path) -> None:
    config, bus, root = _bus_and_root(tmp_path)
    backend = SmartcutBackend(bus, open_results_db(config), root, BackendLimits())

    @settings(FUZZ, max_examples=examples(40))
    @given(
        st.lists(
            st.tuples(
                st.sampled_from([STARTED_PLUGINS, STOPPED_PLUGINS]),
                st.binary(max_size=300)
                | json_bytes
                | st.just(DEEP)
                | st.sampled_from(
                    [
                        encode({"plugin_name": "BAD NAME", "label": "x", "img_size": 64}),
                        encode({"plugin_name": "p", "label": "x", "img_size": 10**30}),
                        encode({"plugin_name": "p" * 101, "label": "x", "img_size": 64}),
                    ]
                ),
            ),
            min_size=1,
            max_size=5,
        )
    )
    def run(bad: list[tuple[str, bytes]]) -> None:
        for topic, value in bad:
            bus.publish(topic, value)
        good = f"good-{uuid.uuid4().hex[:8]}"
        bus.publish(STARTED_PLUGINS, encode({"plugin_name": good, "label": "Good", "img_size": 64}))
        bus.flush()
        backend.directory.refresh(timeout=0.5)  # raising here would stop the registry's refreshes
        assert backend.plugins()[good] == {"plugin_name": good, "label": "Good", "img_size": 64}
        assert all(set(name) <= set("abcdefghijklmnopqrstuvwxyz0123456789-_.") for name in backend.plugins())

    run()
    backend.close()
    bus.close()
    shutil.rmtree(root, ignore_errors=True)
