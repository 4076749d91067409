"""What one server's connections share, kept where each connection can find it.

uvicorn hands every connection of a server the same ``ServerState`` and
nothing else per server, so the keep-alive sweeper, the write batch and the
checked header lines ride on it as one attribute, made by the server's first
connection (uvicorn_internals.py checks the attribute can be set).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from agentcore.http_server.keepalive import KeepAliveSweeper
from agentcore.http_server.writes import WriteBatch

if TYPE_CHECKING:
    from uvicorn.server import ServerState

#: The ``ServerState`` attribute holding a server's :class:`ServerShared`.
ATTRIBUTE = "agentcore_shared"


class ServerShared:
    """What one server's connections share: the keep-alive sweeper, the write
    batch and the checked header lines (see headers.response_head)."""

    __slots__ = ("batch", "lines", "loop", "sweeper")

    def __init__(self, loop: asyncio.AbstractEventLoop, sweeper: KeepAliveSweeper):
        self.loop = loop
        self.sweeper = sweeper
        self.batch = WriteBatch(loop)
        #: Checked header lines by ``(name, value)``.
        self.lines: dict[tuple[bytes, bytes], bytes] = {}

    @classmethod
    def of(
        cls,
        loop: asyncio.AbstractEventLoop,
        state: ServerState,
        timeout_s: float,
        head_timeout_s: float,
    ) -> ServerShared:
        """The server's holder, made on first use (or again on another loop)."""
        shared: ServerShared | None = getattr(state, ATTRIBUTE, None)
        if shared is None or shared.loop is not loop:
            shared = cls(loop, KeepAliveSweeper(loop, state, timeout_s, head_timeout_s))
            setattr(state, ATTRIBUTE, shared)
        return shared
