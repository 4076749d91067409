"""Security headers on every HTTP response, CORS with an explicit allow-list, and
which web pages may open a WebSocket.

Headers: ``X-Content-Type-Options: nosniff``, ``X-Frame-Options: DENY``,
``Referrer-Policy: no-referrer``, and ``Strict-Transport-Security`` when
``server.hsts`` says TLS terminates in front of the gateway. CORS answers only
origins listed in ``server.cors_allow_origins`` (none by default): a preflight
from any other origin gets 403 and no CORS headers.

WebSockets are not covered by CORS: a browser opens one to any address and
only tells the server the page's ``Origin``. A handshake that carries one is
accepted only from the gateway's own origin (:meth:`SecurityMiddleware.own_origin`)
or an origin listed in ``server.cors_allow_origins``; any other is refused
before accept (HTTP 403), so a page the operator visits cannot use the
socket with the operator's network position or credentials. A handshake
without ``Origin`` comes from a program, not a page, and passes.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit

from agentcore.auth import WebSocketClose
from agentcore.errors import Forbidden
from agentcore.http import RESPONSE_HEADERS, Response, proceed, refusal
from agentcore.proxies import TrustedProxies
from agentcore.types import ASGIApp, Receive, Scope, Send

BASE_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]
HSTS = (b"strict-transport-security", b"max-age=63072000; includeSubDomains")
CORS_METHODS = b"GET, POST, PUT, PATCH, DELETE, OPTIONS"
CORS_HEADERS = b"authorization, content-type, x-api-key, last-event-id"
#: The web scheme of a request's own origin, by ASGI (or X-Forwarded-Proto) scheme.
WEB_SCHEMES = {"http": "http", "ws": "http", "https": "https", "wss": "https"}
DEFAULT_PORTS = {"http": 80, "https": 443}


def canonical_origin(origin: str) -> str | None:
    """``scheme://host:port``, lowercase with the port explicit, so that equal origins
    compare equal; None for anything but an http(s) origin (``null``, paths, userinfo)."""
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError:  # a port out of range, a bad IPv6 literal
        return None
    default = DEFAULT_PORTS.get(parts.scheme)
    host = parts.hostname
    if default is None or not host or "@" in parts.netloc:
        return None
    if parts.path or parts.query or parts.fragment:
        return None
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}:{port or default}"


class SecurityMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        cors_origins: Sequence[str] = (),
        hsts: bool = False,
        proxies: TrustedProxies | None = None,
    ) -> None:
        self.app = app
        self.headers = [*BASE_HEADERS, *([HSTS] if hsts else [])]
        self.origins = frozenset(o.encode("latin-1") for o in cors_origins)
        self.proxies = proxies or TrustedProxies()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            origin = next((v for k, v in scope["headers"] if k == b"origin"), None)
            if origin is not None and not self.origin_allowed(scope, origin):
                # A close before accept: the server answers the handshake with 403.
                await WebSocketClose(1008, "origin not allowed")(scope, receive, send)
                return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await proceed(self.app, self.admit(scope), scope, receive, send)

    def origin_allowed(self, scope: Scope, origin: bytes) -> bool:
        """Whether a page at ``origin`` may use this request: a configured origin
        (compared exactly, as CORS does), or the request's own origin."""
        if origin in self.origins:
            return True
        own = self.own_origin(scope)
        return own is not None and canonical_origin(origin.decode("latin-1")) == own

    def own_origin(self, scope: Scope) -> str | None:
        """The origin the client addressed (canonical): the request's scheme and
        ``Host``, or what a trusted proxy forwarded of them (the client may have
        spoken TLS to the proxy, and the proxy may have changed ``Host``)."""
        proxies = self.proxies
        scheme = WEB_SCHEMES.get(
            (proxies.forwarded(scope, b"x-forwarded-proto") or scope.get("scheme", "")).lower()
        )
        host = proxies.forwarded(scope, b"x-forwarded-host")
        if host is None:
            host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), None)
        if host is None and scope.get("server"):
            address, port = scope["server"][:2]
            host = f"[{address}]:{port}" if ":" in str(address) else f"{address}:{port}"
        if scheme is None or not host:
            return None
        return canonical_origin(f"{scheme}://{host}")

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
