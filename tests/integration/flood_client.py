"""A flooding client for tests/integration/test_flood_guard.py, run as its own process (a script: it
imports nothing but httpx, so it starts in a moment).

    python flood_client.py URL IMAGE LOCAL_ADDRESS CONNECTIONS

``CONNECTIONS`` connections from ``LOCAL_ADDRESS`` post ``IMAGE`` to ``URL`` again as soon as each has
an answer, never waiting. Prints ``flooding`` once every connection has had an answer, then on
SIGTERM (or after 120 s) one JSON line: the answers by ``"<status> <reason>"``.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections import Counter
from pathlib import Path

import httpx

LIMIT_SECONDS = 120.0  # stops by itself should nobody stop it


async def flood(url: str, image: bytes, address: str, connections: int) -> Counter[str]:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    codes: Counter[str] = Counter()
    answered: set[int] = set()
    deadline = time.monotonic() + LIMIT_SECONDS
    transport = httpx.AsyncHTTPTransport(
        local_address=address,
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
    )
    async with httpx.AsyncClient(transport=transport, timeout=60) as client:

        async def connection(i: int) -> None:
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    r = await client.post(url, files={"file": ("flood.jpg", image, "image/jpeg")})
                    reason = r.json().get("reason", "") if r.status_code != 200 else ""
                    codes[f"{r.status_code} {reason}".strip()] += 1
                except httpx.HTTPError as exc:
                    codes[type(exc).__name__] += 1
                if i not in answered:
                    answered.add(i)
                    if len(answered) == connections:
                        print("flooding", flush=True)

        await asyncio.gather(*(connection(i) for i in range(connections)))
    return codes


def main() -> None:
    url, image, address, connections = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    codes = asyncio.run(flood(url, image.read_bytes(), address, connections))
    print(json.dumps(dict(codes)), flush=True)


if __name__ == "__main__":
    main()
