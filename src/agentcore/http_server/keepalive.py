"""Idle keep-alive connections closed, and overdue request heads refused, by one
sweep per server instead of a timer per response.

uvicorn arms a keep-alive timer after each response that the next request
cancels, a timer started and stopped per request (docs/performance.md). Here
one timer per server visits every connection each quarter timeout: a
connection is closed after between one and one and a quarter timeouts without
a request, and, unlike uvicorn, a connection that never sends one is closed
too.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from uvicorn.server import ServerState

#: Sweeps per keep-alive timeout (or head timeout, the shorter); an idle connection
#: closes after this many.
SWEEPS_PER_TIMEOUT = 4


class SweptConnection:
    """A connection the sweeper visits (others in the server, WebSockets, are skipped)."""

    __slots__ = ()

    def idle_tick(self) -> None:
        """One sweep: act on an idle connection or an overdue head."""
        raise NotImplementedError


class KeepAliveSweeper:
    """Closes a server's idle keep-alive connections and refuses its overdue request
    heads: one timer per server, not one per response or connection."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        state: ServerState,
        timeout_s: float,
        head_timeout_s: float,
    ):
        self.loop = loop
        self.state = state
        self.interval_s = min(timeout_s, head_timeout_s) / SWEEPS_PER_TIMEOUT
        #: Sweeps without a request before an idle connection is closed...
        self.idle_sweeps = max(round(timeout_s / self.interval_s), 1)
        #: ...and sweeps a head may stay incomplete (refused at the one after).
        self.head_sweeps = max(round(head_timeout_s / self.interval_s), 1)
        self._handle: asyncio.TimerHandle | None = None

    def ensure(self) -> None:
        """Sweep from now on (until a sweep finds no connection)."""
        if self._handle is None:
            self._handle = self.loop.call_later(self.interval_s, self.sweep)

    def sweep(self) -> None:
        self._handle = None
        found = False
        for connection in list(self.state.connections):
            if isinstance(connection, SweptConnection):
                found = True
                connection.idle_tick()
        if found:
            self.ensure()
