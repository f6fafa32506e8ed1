"""Train / validation / test splits of dataset items.

Three strategies, all deterministic for a seed, and the test split never shares an item with train
or val:

* ``random`` — shuffled; stratified by label when ``stratify`` (every class spread across the splits
  in proportion; with train ≥ 0.5 a class with ≥ 3 items always has one in train).
* ``grouped`` — every item of a group (``metadata[group_by]``: batch, field_id, line_id …) lands in
  one split, so near-duplicates of one batch cannot leak from train into test.
* ``time`` — sorted by ``metadata[time_key]``: train the oldest, val next, test the newest (how a
  model meets the future in production).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import numpy as np

from keeneye.domain import InvalidInput

Strategy = Literal["random", "grouped", "time"]
STRATEGIES: tuple[str, ...] = ("random", "grouped", "time")
ItemId = int | str


@dataclass(frozen=True)
class SplitItem:
    """What a split needs to know about one item."""

    id: ItemId
    label: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Split:
    train: list[ItemId]
    val: list[ItemId]
    test: list[ItemId]

    @property
    def sizes(self) -> tuple[int, int, int]:
        return len(self.train), len(self.val), len(self.test)

    def to_dict(self) -> dict[str, list[ItemId]]:
        return {"train": list(self.train), "val": list(self.val), "test": list(self.test)}


def _bad(message: str, fix: str) -> InvalidInput:
    return InvalidInput("bad_split", message, fix=fix)


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """Three finite non-negative fractions summing to 1 (±1e-6), else ``InvalidInput("bad_split")``."""
    if len(fractions) != 3:
        raise _bad(f"need 3 fractions (train, val, test), got {len(fractions)}", "e.g. 0.7,0.15,0.15")
    fr = tuple(float(f) for f in fractions)
    if any(not math.isfinite(f) or f < 0 for f in fr):
        raise _bad(f"fractions must be ≥ 0, got {fr}", "e.g. 0.7,0.15,0.15")
    if abs(sum(fr) - 1.0) > 1e-6:
        raise _bad(f"fractions must sum to 1, got {fr} (sum {sum(fr):.6g})", "e.g. 0.7,0.15,0.15")
    return fr[0], fr[1], fr[2]


def _targets(n: int, fractions: tuple[float, float, float]) -> tuple[int, int, int]:
    """Item counts per split by largest remainder: they sum to ``n`` and each is within one of
    ``n × fraction`` (100 × 70/15/15 → 70/15/15; ties go to train, then val)."""
    raw = [n * f for f in fractions]
    counts = [math.floor(r + 1e-9) for r in raw]
    order = sorted(range(3), key=lambda k: (-(raw[k] - counts[k]), k))
    for k in order[: n - sum(counts)]:
        counts[k] += 1
    return counts[0], counts[1], counts[2]


def split(
    items: Sequence[SplitItem],
    strategy: Strategy | str = "random",
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    group_by: str | None = None,
    time_key: str | None = None,
    stratify: bool = True,
) -> Split:
    """Split items into train / val / test item ids. See the module docstring for the strategies."""
    fr = check_fractions(fractions)
    ids = [it.id for it in items]
    if len(set(ids)) != len(ids):
        raise _bad("item ids are not unique", "give every item a unique id")
    if strategy == "random":
        return _split_random(items, fr, seed, stratify)
    if strategy == "grouped":
        if not group_by:
            raise _bad("strategy 'grouped' needs group_by", "e.g. group_by='batch' or 'field_id'")
        return _split_grouped(items, fr, seed, group_by)
    if strategy == "time":
        if not time_key:
            raise _bad("strategy 'time' needs time_key", "e.g. time_key='captured_at'")
        return _split_time(items, fr, time_key)
    raise _bad(f"unknown split strategy {strategy!r}", "use one of: " + ", ".join(STRATEGIES))


def _cut(ordered: Sequence[ItemId], fr: tuple[float, float, float]) -> Split:
    n_train, n_val, _ = _targets(len(ordered), fr)
    return Split(
        train=list(ordered[:n_train]),
        val=list(ordered[n_train : n_train + n_val]),
        test=list(ordered[n_train + n_val :]),
    )


def _split_random(
    items: Sequence[SplitItem], fr: tuple[float, float, float], seed: int, stratify: bool
) -> Split:
    rng = np.random.default_rng(seed)
    n = len(items)
    if not stratify or all(it.label is None for it in items):
        order = rng.permutation(n)
        return _cut([items[i].id for i in order], fr)
    # Stratified: each item gets its rank quantile within its class (classes shuffled internally), the
    # whole list is sorted by it and cut once. Global sizes stay exact and every class is spread over
    # train → val → test in proportion; a class's first quantile (≤ 1/2 for ≥ 1 item) lands in train.
    by_label: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        by_label.setdefault(str(it.label), []).append(i)
    keys = np.empty(n, dtype=np.float64)
    for label in sorted(by_label):
        members = by_label[label]
        perm = rng.permutation(len(members))
        for rank, idx in enumerate(perm):
            keys[members[idx]] = (rank + 0.5) / len(members)
    tiebreak = rng.random(n)
    order = np.lexsort((tiebreak, keys))
    return _cut([items[i].id for i in order], fr)


def _split_grouped(items: Sequence[SplitItem], fr: tuple[float, float, float], seed: int, key: str) -> Split:
    groups: dict[str, list[ItemId]] = {}
    for it in items:
        if key not in it.metadata:
            raise _bad(
                f"item {it.id!r} has no metadata {key!r}", f"add {key!r} to every item or pick another key"
            )
        groups.setdefault(str(it.metadata[key]), []).append(it.id)
    rng = np.random.default_rng(seed)
    names = sorted(groups)
    shuffled = [names[i] for i in rng.permutation(len(names))]
    # Largest groups first (stable on the shuffled order) so the small ones can even out the sizes.
    shuffled.sort(key=lambda g: -len(groups[g]))
    targets = _targets(len(items), fr)
    filled = [0, 0, 0]
    parts: list[list[ItemId]] = [[], [], []]
    for g in shuffled:
        # Greedy: the split furthest below its target (relative) takes the group.
        deficits = [(targets[k] - filled[k]) / targets[k] if targets[k] else -math.inf for k in range(3)]
        k = int(np.argmax(deficits))
        parts[k].extend(groups[g])
        filled[k] += len(groups[g])
    return Split(train=parts[0], val=parts[1], test=parts[2])


def _time_value(value: Any, item_id: ItemId, key: str) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    raise _bad(f"item {item_id!r}: {key}={value!r} is not a time", "use ISO 8601 timestamps or numbers")


def _split_time(items: Sequence[SplitItem], fr: tuple[float, float, float], key: str) -> Split:
    stamped = []
    for pos, it in enumerate(items):
        if key not in it.metadata:
            raise _bad(
                f"item {it.id!r} has no metadata {key!r}", f"add {key!r} to every item or pick another key"
            )
        stamped.append((_time_value(it.metadata[key], it.id, key), pos, it.id))
    stamped.sort(key=lambda t: (t[0], t[1]))
    return _cut([t[2] for t in stamped], fr)
