"""Query plans of what a piece of code reads: capture the SELECTs it sends, ask the database how it runs
each (``EXPLAIN QUERY PLAN`` on SQLite, ``EXPLAIN`` on PostgreSQL).

For checks of the indexes (tests, ``benchmarks/observation_indexes.py``), not for the serving path::

    with captured_selects(db) as sent:
        db.line_counts("line-inspection", since)
    plans = [query_plan(db, statement, parameters) for statement, parameters in sent]
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from sqlalchemy import event

from keeneye.store.engine import Database

Sent = tuple[str, Any]  # the statement as the driver got it, and its parameters


@contextlib.contextmanager
def captured_selects(db: Database) -> Iterator[list[Sent]]:
    """The SELECT statements ``db`` sends while inside (migrations' own reads left out), in order."""
    sent: list[Sent] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        if statement.lstrip().upper().startswith(("SELECT", "WITH")) and "alembic_version" not in statement:
            sent.append((statement, parameters))

    event.listen(db.engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(db.engine, "before_cursor_execute", record)


def query_plan(db: Database, statement: str, parameters: Any) -> list[str]:
    """How the database runs ``statement``: one line per plan node (SQLite's indented by depth)."""
    prefix = "EXPLAIN QUERY PLAN " if db.backend == "sqlite" else "EXPLAIN "
    with db.engine.connect() as conn:
        rows = conn.exec_driver_sql(prefix + statement, parameters).all()
    if db.backend != "sqlite":
        return [str(r[0]) for r in rows]
    depth: dict[int, int] = {0: -1}
    lines = []
    for node, parent, _, detail in rows:  # (id, parent, notused, detail)
        depth[node] = depth.get(parent, -1) + 1
        lines.append("  " * depth[node] + str(detail))
    return lines


__all__ = ["Sent", "captured_selects", "query_plan"]
