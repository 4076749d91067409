"""Request limits: load shedding and JSON nesting depth.

Load shedding bounds the requests one worker handles at once. Past
``limits.max_in_flight`` a request is answered 503 with ``Retry-After: 1``
immediately, instead of queueing into latency collapse. Per-client rate limits
sit in front of it, so one client's burst meets 429s first; shedding is the
last line for overload that no single client causes. WebSockets and SSE
streams are not counted (they are long-lived by design).
"""

from __future__ import annotations

from agentcore.errors import InvalidRequest, Overloaded
from agentcore.http import reject
from agentcore.metrics import Metrics
from agentcore.types import ASGIApp, Receive, Scope, Send

RETRY_AFTER = [(b"retry-after", b"1")]


class LoadShedMiddleware:
    def __init__(self, app: ASGIApp, max_in_flight: int, metrics: Metrics | None = None) -> None:
        self.app = app
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.max_in_flight:
            if self._metrics is not None:
                self._metrics.shed.inc()
            await reject(
                scope,
                send,
                Overloaded(
                    f"the gateway is at its limit of {self.max_in_flight} requests in flight; "
                    "retry after 1 s"
                ),
                RETRY_AFTER,
            )
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


def check_json_depth(body: bytes, max_depth: int) -> None:
    """Raise InvalidRequest when arrays/objects nest deeper than ``max_depth``.

    Counting brackets first (in C) makes the common case free: a body with
    fewer opening brackets than the limit cannot be too deep.
    """
    if body.count(b"[") + body.count(b"{") <= max_depth:
        return
    depth = 0
    in_string = False
    escaped = False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > max_depth:
                raise InvalidRequest(f"invalid request: JSON nested deeper than {max_depth} levels")
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
