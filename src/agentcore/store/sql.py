"""Pieces every SQL repository builds its statements from.

Parameters are collected by :class:`Args` while a statement is built (each
call returns its ``$N`` placeholder); ``LIMIT`` and ``OFFSET`` are literals
(:func:`page`); a multi-statement write outside a unit of work gets a
transaction of its own (:func:`atomic`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

import msgspec

from agentcore.store.database import Driver

#: Glob (``*``, ``?``) to LIKE with ``\`` as the escape character.
GLOB_TO_LIKE = str.maketrans({"\\": "\\\\", "%": "\\%", "_": "\\_", "*": "%", "?": "_"})

#: Ids per ``IN (...)`` list, well below both databases' parameter limits.
CHUNK = 500


def json_text(value: object) -> str:
    return msgspec.json.encode(value).decode()


class Args(list[Any]):
    """Collects parameters while a query is built; calling it returns the placeholder."""

    def __call__(self, value: Any) -> str:
        self.append(value)
        return f"${len(self)}"

    def many(self, values: Iterable[Any]) -> str:
        return ", ".join(self(value) for value in values)


def where(conditions: list[str]) -> str:
    return f" WHERE {' AND '.join(conditions)}" if conditions else ""


def page(limit: int, offset: int = 0) -> str:
    """``LIMIT`` and ``OFFSET`` as literals (validated integers): with parameters there,
    PostgreSQL's generic plan assumes a tenth of the table is wanted and chose a
    parallel scan, far slower than the index walk (performance-history.md, "The
    workload", commits d39ae63 to 3cacfe8)."""
    return f"LIMIT {int(limit)} OFFSET {int(offset)}"


def counts(rows: list[Any]) -> dict[str, int]:
    """``(key, count)`` rows as a dict."""
    return {row[0]: int(row[1]) for row in rows}


@asynccontextmanager
async def atomic(db: Driver, in_transaction: bool) -> AsyncIterator[Driver]:
    """A transaction for statements that must commit together; inside a unit of work
    already, that one (a nested block would cost a savepoint, and on PostgreSQL
    round trips)."""
    if in_transaction:
        yield db
    else:
        async with db.transaction() as tx:
            yield tx
