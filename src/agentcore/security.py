"""Security headers on every HTTP response, and CORS with an explicit allow-list.

Headers: ``X-Content-Type-Options: nosniff``, ``X-Frame-Options: DENY``,
``Referrer-Policy: no-referrer``, and ``Strict-Transport-Security`` when
``server.hsts`` says TLS terminates in front of the gateway. CORS answers only
origins listed in ``server.cors_allow_origins`` (none by default): a preflight
from any other origin gets 403 and no CORS headers.
"""

from __future__ import annotations

from collections.abc import Sequence

from agentcore.errors import Forbidden
from agentcore.http import RESPONSE_HEADERS, Response, proceed, refusal
from agentcore.types import ASGIApp, Receive, Scope, Send

BASE_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]
HSTS = (b"strict-transport-security", b"max-age=63072000; includeSubDomains")
CORS_METHODS = b"GET, POST, PUT, PATCH, DELETE, OPTIONS"
CORS_HEADERS = b"authorization, content-type, x-api-key, last-event-id"


class SecurityMiddleware:
    def __init__(
        self, app: ASGIApp, *, cors_origins: Sequence[str] = (), hsts: bool = False
    ) -> None:
        self.app = app
        self.headers = [*BASE_HEADERS, *([HSTS] if hsts else [])]
        self.origins = frozenset(o.encode("latin-1") for o in cors_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await proceed(self.app, self.admit(scope), scope, receive, send)

    def admit(self, scope: Scope) -> Response | None:
        """For an HTTP request: the response headers to add (in the scope), and
        the answer itself for a CORS preflight, else None (go on)."""
        extra = self.headers
        origin = None
        if self.origins:
            origin = next((v for k, v in scope["headers"] if k == b"origin"), None)
        if origin is not None:
            if origin in self.origins:
                extra = [*extra, (b"access-control-allow-origin", origin), (b"vary", b"Origin")]
                if scope["method"] == "OPTIONS":
                    return Response(
                        204,
                        headers=[
                            *extra,
                            (b"access-control-allow-methods", CORS_METHODS),
                            (b"access-control-allow-headers", CORS_HEADERS),
                            (b"access-control-max-age", b"600"),
                        ],
                    )
            elif scope["method"] == "OPTIONS":
                return refusal(scope, Forbidden("origin not allowed by CORS"), extra)

        # Outermost: the list starts here; inner layers extend it, the response sends it.
        scope[RESPONSE_HEADERS] = [*extra]
        return None
