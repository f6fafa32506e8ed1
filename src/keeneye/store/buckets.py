"""Counting rows per time bucket in SQL (the monitoring page's traffic series), on either backend."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import ColumnElement, case, func, literal, select
from sqlalchemy.orm import InstrumentedAttribute, Session


def bucket_of(column: InstrumentedAttribute[datetime], edges: Sequence[datetime]) -> ColumnElement[int]:
    """SQL for the bucket index of ``column`` among ``edges`` (``count + 1`` instants): portable, a
    ``CASE`` over the edges; bucket ``i`` holds ``[edges[i], edges[i + 1])``."""
    count = len(edges) - 1
    if count == 1:
        return literal(0)
    return case(*[(column < edges[i + 1], i) for i in range(count - 1)], else_=count - 1)


def bucket_counts(
    s: Session,
    column: InstrumentedAttribute[datetime],
    where: Sequence[ColumnElement[bool]],
    edges: Sequence[datetime],
    by: InstrumentedAttribute[str] | None = None,
) -> dict[str, list[int]]:
    """Rows per bucket in ``[edges[0], edges[-1])`` (per value of ``by`` when given; key ``""``
    otherwise); a key with no rows is absent."""
    count = len(edges) - 1
    bucket = bucket_of(column, edges).label("bucket")
    group = by.label("key") if by is not None else None
    columns = [bucket] if group is None else [bucket, group]
    inner = select(*columns).where(*where, column >= edges[0], column < edges[-1]).subquery()
    keys = [inner.c.bucket] if group is None else [inner.c.bucket, inner.c.key]
    out: dict[str, list[int]] = {}
    for row in s.execute(select(*keys, func.count()).group_by(*keys)):
        key = "" if group is None else str(row[1])
        out.setdefault(key, [0] * count)[int(row[0])] += int(row[-1])
    return out
