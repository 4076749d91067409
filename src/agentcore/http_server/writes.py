"""A loop turn's responses, written to their sockets together after the turn.

Answering from inside ``data_received`` and writing there measured slower than
handling a turn's requests first and writing their answers in one later
callback (performance-history.md, "HTTP throughput", fourth session), so a
connection holds its response bytes until then, or until :data:`FLUSH_BYTES`
are waiting.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

#: Response bytes waiting for the write batch past which they go to the socket at once.
FLUSH_BYTES = 64 * 1024


class Flushing(Protocol):
    """A connection holding response bytes for the batch."""

    def flush(self) -> None:
        """Pass what waits to the socket now."""


class WriteBatch:
    """The responses of one loop turn, passed to their sockets in one callback after it.

    One batch per server (shared.py); a connection joins it with its first
    pending write of the turn.
    """

    __slots__ = ("_scheduled", "loop", "pending")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pending: list[Flushing] = []
        self._scheduled = False

    def add(self, connection: Flushing) -> None:
        self.pending.append(connection)
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        pending = self.pending
        self.pending = []
        for connection in pending:
            connection.flush()
