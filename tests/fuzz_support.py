"""Shared by the fuzz tests: hypothesis settings with a fixed seed, and byte mutations of seed files.

``FUZZ`` runs derandomized (the same examples on every run and machine) without an example database
(nothing written under the checkout) and without a per-example deadline (CI machines are slow; each
test bounds its work with ``max_examples=examples(n)`` instead, which ``KEENEYE_TEST_FUZZ_SCALE``
multiplies for a longer run). :func:`fuzzed` takes a seed file and applies up
to four edits — truncation, a bit flip, a byte set to 0x00 / 0xFF / anything, a run deleted or
inserted, a 16- or 32-bit field pushed to its maximum (a size, a length, an offset) — half of them in
the first :data:`HEAD` bytes, where the headers are.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# A longer run: KEENEYE_TEST_FUZZ_SCALE=50 multiplies every test's examples (the KEENEYE_TEST_ prefix
# survives tests/conftest.py's scrub of KEENEYE_* variables).
SCALE = max(1, int(os.environ.get("KEENEYE_TEST_FUZZ_SCALE", "1")))
HEAD = 512
OPS = ("truncate", "flip", "byte", "delete", "insert", "max16", "max32")


def examples(n: int) -> int:
    """``n`` examples, times :data:`SCALE`."""
    return n * SCALE


@st.composite
def mutated(draw: st.DrawFn, seed: bytes) -> bytes:
    """``seed`` with one to four edits (module docstring)."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 4))):
        n = len(data)
        if n == 0:
            break
        pos = draw(st.one_of(st.integers(0, min(n, HEAD) - 1), st.integers(0, n - 1)))
        op = draw(st.sampled_from(OPS))
        if op == "truncate":
            del data[pos:]
        elif op == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte":
            data[pos] = draw(st.one_of(st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0xFF]), st.integers(0, 255)))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 16))]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "max16":
            data[pos : pos + 2] = b"\xff\xff"
        else:
            data[pos : pos + 4] = b"\xff\xff\xff\x7f"
    return bytes(data)


def fuzzed(corpus: Mapping[str, bytes]) -> st.SearchStrategy[bytes]:
    """A seed file of ``corpus``, mutated."""
    return st.sampled_from(sorted(corpus)).flatmap(lambda name: mutated(corpus[name]))
