"""Splits: sizes, disjointness, determinism, grouping, time order, stratification, bad input."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from keeneye.domain import InvalidInput
from keeneye.training.datasets import load_coco
from keeneye.training.splits import Split, SplitItem, split
from keeneye.training.synth import generate_line


def _items(n: int, labels: int = 0) -> list[SplitItem]:
    return [
        SplitItem(
            id=i,
            label=f"c{i % labels}" if labels else None,
            metadata={"batch": f"b{i // 7}", "t": f"2024-01-01T00:{i // 60:02d}:{i % 60:02d}Z"},
        )
        for i in range(n)
    ]


def _check_partition(s: Split, n: int) -> None:
    train, val, test = set(s.train), set(s.val), set(s.test)
    assert not (train & test) and not (val & test) and not (train & val)
    assert len(train | val | test) == n == sum(s.sizes)


@pytest.mark.parametrize("labels", [0, 1, 4])
@pytest.mark.parametrize("strategy", ["random", "time"])
def test_sizes_for_100_items(strategy: str, labels: int) -> None:
    s = split(_items(100, labels), strategy, seed=3, time_key="t")
    assert s.sizes == (70, 15, 15)
    _check_partition(s, 100)


@pytest.mark.parametrize(
    ("n", "fractions", "sizes"),
    [
        (10, (0.8, 0.1, 0.1), (8, 1, 1)),
        (10, (0.7, 0.15, 0.15), (7, 2, 1)),
        (7, (1.0, 0.0, 0.0), (7, 0, 0)),
        (3, (0.0, 0.5, 0.5), (0, 2, 1)),
        (0, (0.7, 0.15, 0.15), (0, 0, 0)),
    ],
)
def test_other_sizes(n: int, fractions: tuple[float, float, float], sizes: tuple[int, int, int]) -> None:
    assert split(_items(n), fractions=fractions).sizes == sizes


def test_random_is_deterministic_for_a_seed() -> None:
    items = _items(50, 3)
    assert split(items, seed=1) == split(items, seed=1)
    assert split(items, seed=1).test != split(items, seed=2).test


@pytest.mark.parametrize("seed", range(10))
def test_stratified_every_class_in_train(seed: int) -> None:
    # 7 classes of 3 items + one big class: a class with ≥ 3 items always has a training example.
    items = [SplitItem(i, f"small{i // 3}") for i in range(21)] + [
        SplitItem(100 + i, "big") for i in range(40)
    ]
    s = split(items, seed=seed)
    labels = {it.id: it.label for it in items}
    assert {labels[i] for i in s.train} == {it.label for it in items}
    _check_partition(s, 61)


def test_stratified_keeps_class_proportions() -> None:
    items = [SplitItem(i, "a" if i < 80 else "b") for i in range(100)]
    s = split(items, seed=0)
    assert sum(1 for i in s.test if int(i) >= 80) == 3  # 20 % of 15


@pytest.mark.parametrize("seed", range(5))
def test_grouped_no_group_in_two_splits(seed: int) -> None:
    items = _items(100)
    s = split(items, "grouped", seed=seed, group_by="batch")
    group = {it.id: it.metadata["batch"] for it in items}
    parts = [{group[i] for i in part} for part in (s.train, s.val, s.test)]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    assert all(parts)  # 15 groups: every split gets some
    _check_partition(s, 100)
    assert abs(len(s.train) - 70) <= 7  # sizes stay near target (groups of 7)


def test_time_test_holds_the_newest() -> None:
    items = list(reversed(_items(60)))  # input order must not matter
    s = split(items, "time", time_key="t")
    stamp = {it.id: it.metadata["t"] for it in items}
    assert min(stamp[i] for i in s.test) > max(stamp[i] for i in s.train + s.val)
    assert min(stamp[i] for i in s.val) > max(stamp[i] for i in s.train)


def test_time_accepts_numbers() -> None:
    items = [SplitItem(i, metadata={"ts": float(100 - i)}) for i in range(20)]
    assert split(items, "time", time_key="ts", fractions=(0.5, 0.25, 0.25)).test == [4, 3, 2, 1, 0]


@pytest.mark.parametrize(
    "fractions",
    [(0.5, 0.5, 0.5), (1.2, -0.1, -0.1), (0.7, 0.3), (0.7, 0.15, 0.1500011), (math.nan, 0.5, 0.5)],
)
def test_bad_fractions(fractions: tuple[float, ...]) -> None:
    with pytest.raises(InvalidInput) as err:
        split(_items(10), fractions=fractions)
    assert err.value.reason == "bad_split"


def test_fractions_within_tolerance_are_accepted() -> None:
    assert sum(split(_items(10), fractions=(0.7, 0.15, 0.1500001)).sizes) == 10


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"strategy": "grouped"}, "needs group_by"),
        ({"strategy": "time"}, "needs time_key"),
        ({"strategy": "grouped", "group_by": "field_id"}, "has no metadata 'field_id'"),
        ({"strategy": "time", "time_key": "batch"}, "is not a time"),
        ({"strategy": "alphabetical"}, "unknown split strategy"),
    ],
)
def test_bad_strategy_arguments(kwargs: dict[str, str], fragment: str) -> None:
    with pytest.raises(InvalidInput) as err:
        split(_items(10), **kwargs)  # type: ignore[arg-type]
    assert err.value.reason == "bad_split" and fragment in err.value.message


def test_duplicate_ids_are_refused() -> None:
    with pytest.raises(InvalidInput) as err:
        split([SplitItem(1), SplitItem(1)])
    assert err.value.reason == "bad_split"


def test_dataset_items_split_by_batch(tmp_path: Path) -> None:
    generate_line(tmp_path, 200, seed=0, defect_rate=0.3)
    ds = load_coco(tmp_path)
    items = ds.split_items()
    s = split(items, "grouped", group_by="batch", seed=0)
    batch: dict[int | str, str] = {im.id: im.metadata["batch"] for im in ds.images}
    assert {batch[i] for i in s.test}.isdisjoint({batch[i] for i in s.train})
    assert s.sizes == (100, 50, 50)  # four batches of 50
    labels = {it.label for it in items}
    assert "none" in labels and labels <= {"none", "mixed", "scratch", "dent", "crack", "contamination"}
