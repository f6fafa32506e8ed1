"""Helpers of the smartcut bus tests: a plugin process in a thread, and draining a topic."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from keeneye.stream.bus import Bus, Message
from keeneye.video import make_recommender
from keeneye.video.chunks import video_folder, write_chunks
from keeneye.video.messages import new_files_topic
from keeneye.video.plugins import PluginProcess
from keeneye.video.probe import probe
from keeneye.video.protocol import encode
from keeneye.video.sampling import sample_frames


@contextmanager
def plugin_thread(bus: Bus, root: Path, name: str = "motion") -> Iterator[PluginProcess]:
    process = PluginProcess(make_recommender(name), bus, root)
    thread = threading.Thread(target=process.run, kwargs={"poll_timeout": 0.1}, daemon=True)
    thread.start()
    assert process.ready.wait(30), "plugin process did not start"
    try:
        yield process
    finally:
        process.stop()
        thread.join(timeout=30)
        assert not thread.is_alive(), "plugin process did not stop"


def drain(bus: Bus, topic: str, group: str, want: int, limit: float = 60.0) -> list[Message]:
    """The first ``want`` messages of ``topic`` for a fresh group (bounded wait, not a timing test)."""
    got: list[Message] = []
    deadline = time.monotonic() + limit
    with bus.subscribe([topic], group) as consumer:
        while len(got) < want and time.monotonic() < deadline:
            for m in consumer.poll(max_messages=10, timeout=0.2):
                got.append(m)
                consumer.ack(m)
    return got


def values(messages: list[Message]) -> list[object]:
    return [json.loads(m.value) for m in messages]


def announce_chunks(bus: Bus, root: Path, video: Path, plugin: str, user: str) -> tuple[str, int]:
    """What a producer does: chunks on disk, in-progress for all but the last, then uploaded."""
    uid = str(uuid.uuid4())
    info = probe(video)
    folder = video_folder(uid, info.basename)
    chunks = list(write_chunks(sample_frames(info, 1.0, make_recommender(plugin).img_size), root, folder))
    topic = new_files_topic(plugin)
    for chunk in chunks[:-1]:
        bus.publish(
            topic,
            encode({"status": "in-progress", "user_id": user, "last_zipped_chunk_path": chunk.as_posix()}),
        )
    bus.publish(
        topic, encode({"status": "uploaded", "user_id": user, "zipped_chunks_path": folder.as_posix()})
    )
    bus.flush()
    return uid, len(chunks)
