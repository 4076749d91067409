"""The protection chain: every HTTP request and WebSocket handshake takes the same
checks, in one order, through one object, before it reaches its endpoint.

The order: security (``security.py``: ``Host``, CORS, forged writes) ->
authentication (``auth.py``: the identity, in the scope) -> rate limit
(``ratelimit/check.py``) -> load shedding (``limits.py``). Each check is
an ``admit(scope)`` giving an :data:`~agentcore.http.Admission`: None goes on,
an ASGI app is the answer that refuses the request, a coroutine is a decision
that had to wait (an API key this process has not verified yet, the Redis rate
limiter) and gives one of the two. Only a coroutine is awaited, so a request
whose checks all decide at once crosses the chain without an await per check
(docs/performance.md).

What applies, by scope type:

- ``http``: all four. A long-lived stream (the SSE path,
  :attr:`LoadShedder.streams`) is not shed or counted in flight: it
  would hold its slot for its whole life.
- ``websocket``: security (the page's ``Origin``; ``Host`` with
  authentication off) and authentication (bad credential headers refuse the
  handshake; none at all pass, and the endpoint asks for an ``auth`` message
  first, docs/realtime.md). A refused handshake is closed before accept (the
  server answers 403). No rate limit and no shedding: a socket is long-lived,
  and its messages have their own limits (realtime/websocket.py).
"""

from __future__ import annotations

from collections.abc import Coroutine

from agentcore.auth import AuthCheck
from agentcore.limits import LoadShedder
from agentcore.ratelimit.check import RateLimitCheck
from agentcore.security import SecurityCheck
from agentcore.types import ASGIApp, Receive, Scope, Send


class ProtectionChain:
    """The checks in front of the endpoints, as one ASGI app for ``http`` and
    ``websocket`` scopes (the module docstring says which apply to which)."""

    def __init__(
        self,
        security: SecurityCheck,
        auth: AuthCheck,
        ratelimit: RateLimitCheck | None,
        shedder: LoadShedder,
        *,
        http: ASGIApp,
        stream: ASGIApp,
        websocket: ASGIApp,
    ) -> None:
        self.security = security
        self.auth = auth
        #: None: rate limiting is off.
        self.ratelimit = ratelimit
        self.shedder = shedder
        #: Where an admitted request goes: an HTTP request (counted in flight)...
        self.http = http
        #: ...one on a long-lived stream path (not counted)...
        self.stream = stream
        #: ...and a WebSocket handshake.
        self.websocket = websocket

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._websocket(scope, receive, send)
            return
        # The hot path: every check inline, awaited only when it had to wait.
        answer: ASGIApp | None = self.security.admit(scope)
        if answer is None:
            admitted = self.auth.admit(scope)
            if admitted is not None:
                answer = await admitted if isinstance(admitted, Coroutine) else admitted
            if answer is None and self.ratelimit is not None:
                admitted = self.ratelimit.admit(scope)
                if admitted is not None:
                    answer = await admitted if isinstance(admitted, Coroutine) else admitted
            if answer is None:
                shedder = self.shedder
                if scope["path"] in shedder.streams:
                    await self.stream(scope, receive, send)
                    return
                answer = shedder.enter(scope)
                if answer is None:
                    try:
                        await self.http(scope, receive, send)
                    finally:
                        shedder.leave()
                    return
        await answer(scope, receive, send)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        answer: ASGIApp | None = self.security.admit_websocket(scope)
        if answer is None:
            admitted = self.auth.admit(scope)
            answer = await admitted if isinstance(admitted, Coroutine) else admitted
        await (answer or self.websocket)(scope, receive, send)
