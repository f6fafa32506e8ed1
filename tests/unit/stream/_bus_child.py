"""Subprocess for the SIGKILL test: poll N messages without acking, report them, then wait to be killed.

Usage: python _bus_child.py BUS_URL HOME TOPIC GROUP N
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from keeneye.settings import BusSettings, Settings
from keeneye.stream import open_bus


def main() -> None:
    url, home, topic, group, n = sys.argv[1:6]
    settings = Settings(
        home=Path(home),
        bus_url=url,
        bus=BusSettings(lease_seconds=1.0, session_timeout_ms=3000, partitions=2),
    )
    bus = open_bus(settings)
    consumer = bus.subscribe([topic], group)
    got: list[int] = []
    deadline = time.monotonic() + 30
    while len(got) < int(n) and time.monotonic() < deadline:
        got.extend(m.offset for m in consumer.poll(max_messages=int(n), timeout=0.2))
    sys.stdout.write(f"polled {len(got)}\n")
    sys.stdout.flush()
    time.sleep(120)  # holding the messages unacked until SIGKILL


if __name__ == "__main__":
    main()
