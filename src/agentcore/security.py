"""Security headers on every HTTP response, CORS with an explicit allow-list, and
which web pages may open a WebSocket.

Headers: ``X-Content-Type-Options: nosniff``, ``X-Frame-Options: DENY``,
``Referrer-Policy: no-referrer``, and ``Strict-Transport-Security`` when
``server.hsts`` says TLS terminates in front of the gateway. CORS answers only
origins listed in ``server.cors_allow_origins`` (none by default): a preflight
from any other origin gets 403 and no CORS headers.

WebSockets are not covered by CORS: a browser opens one to any address and
only tells the server the page's ``Origin``. A handshake that carries one is
accepted only from the gateway's own origin (:meth:`SecurityCheck.own_origin`)
or an origin listed in ``server.cors_allow_origins``; any other is refused
before accept (HTTP 403), so a page the operator visits cannot use the
socket with the operator's network position or credentials. A handshake
without ``Origin`` comes from a program, not a page, and passes.

Writes (POST, PUT, PATCH, DELETE) a page could forge. A browser sends a
cross-origin POST without asking (no CORS preflight) when its body is
``text/plain``, ``multipart/form-data``, a form, or untyped; the answer is
hidden from the page but the write is done. So a write with a body must
declare JSON (``application/json`` or ``*/*+json``), which no page can send
cross-origin without a preflight, except where an upload takes other media
(``multipart/form-data`` on the upload path, any type on a raw ``PUT``, a
method that is preflighted anyway): anything else is 415. And a write that
carries ``Origin`` (browsers send it on every cross-origin write and on
same-origin POSTs) is refused with 403 unless that is the gateway's own
origin or a configured one, which also covers the bodiless and upload forms.
Programs send no ``Origin`` and are not affected.

DNS rebinding: a page on ``attacker.example`` whose name is made to resolve
to 127.0.0.1 is same-origin with the gateway in the browser's eyes. With
authentication off, the ``Host`` header must therefore name the gateway:
its bound address, a loopback name (``127.0.0.1``, ``localhost``, ``[::1]``),
any IP literal (a page cannot rebind a name it does not use), or a name in
``server.allowed_hosts``, with any port; else 421 (WebSocket handshakes: 403).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Sequence
from urllib.parse import urlsplit

from agentcore.auth import WebSocketClose
from agentcore.errors import (
    AgentCoreError,
    Forbidden,
    MisdirectedRequest,
    UnsupportedMediaType,
)
from agentcore.http import RESPONSE_HEADERS, Response, refusal
from agentcore.proxies import TrustedProxies
from agentcore.types import Scope

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
#: Methods that change state: checked for forgery (module docstring).
WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: Content-Type values taken as JSON without parsing them (the usual spellings).
JSON_TYPES = frozenset(
    {
        b"application/json",
        b"application/json; charset=utf-8",
        b"application/json;charset=utf-8",
        b"application/json; charset=UTF-8",
        b"application/json;charset=UTF-8",
    }
)
#: Host names always answered with authentication off (besides IP literals).
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")


def host_names(bound: str, port: int, allowed: Sequence[str] = ()) -> frozenset[bytes]:
    """``Host`` values answered with authentication off, each name with and
    without ``port`` (other ports are checked more slowly, :func:`host_allowed`)."""
    names = {*LOOPBACK_HOSTS, f"[{bound}]" if ":" in bound else bound, *allowed}
    return frozenset(
        form.lower().encode("latin-1") for name in names for form in (name, f"{name}:{port}")
    )


def host_allowed(host: bytes, names: Collection[bytes]) -> bool:
    """Whether ``host`` (a ``Host`` header) names one of ``names`` on any port,
    or is an IP literal; ``*`` in ``names`` allows any."""
    if b"*" in names:
        return True
    name = host.lower()
    if not name.endswith(b"]"):
        head, colon, port = name.rpartition(b":")
        if colon and port.isdigit():
            name = head
    if name in names:
        return True
    try:
        ipaddress.ip_address(name.decode("latin-1").removeprefix("[").removesuffix("]"))
    except ValueError:
        return False
    return True


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


class SecurityCheck:
    """The first check of the protection chain (protection.py): :meth:`admit` for
    HTTP requests, :meth:`admit_websocket` for WebSocket handshakes."""

    def __init__(
        self,
        *,
        cors_origins: Sequence[str] = (),
        hsts: bool = False,
        proxies: TrustedProxies | None = None,
        hosts: Collection[bytes] | None = None,
        raw_uploads: tuple[str, ...] = (),
        form_uploads: Collection[str] = (),
    ) -> None:
        self.headers = [*BASE_HEADERS, *([HSTS] if hsts else [])]
        self.origins = frozenset(o.encode("latin-1") for o in cors_origins)
        self.proxies = proxies or TrustedProxies()
        #: ``Host`` values answered (:func:`host_names`); None: any (authentication on).
        self.hosts = None if hosts is None else frozenset(hosts)
        #: Path prefixes under which a PUT body may be of any type (raw uploads)...
        self.raw_uploads = raw_uploads
        #: ...and paths whose POST may be multipart/form-data.
        self.form_uploads = frozenset(form_uploads)

    def admit_websocket(self, scope: Scope) -> WebSocketClose | None:
        """For a WebSocket handshake: the close that refuses it (a page's foreign
        ``Origin``, or a ``Host`` not ours with authentication off), else None.

        A close before accept: the server answers the handshake with 403."""
        if self.hosts is not None and self.misdirected(scope):
            return WebSocketClose(1008, "host not allowed")
        origin = next((v for k, v in scope["headers"] if k == b"origin"), None)
        if origin is not None and not self.origin_allowed(scope, origin):
            return WebSocketClose(1008, "origin not allowed")
        return None

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
        the answer itself for a CORS preflight or a refused one, else None (go on).

        One pass over the headers, and only for a write or with CORS origins
        configured: this runs on every request, agent.ping included."""
        extra = self.headers
        headers = scope["headers"]
        hosts = self.hosts
        if (
            hosts is not None
            # Clients send Host first, and it is one of ours: the common case inline.
            and not (headers and headers[0][0] == b"host" and headers[0][1] in hosts)
            and self.misdirected(scope)
        ):
            return refusal(
                scope,
                MisdirectedRequest(
                    "this gateway does not answer to that Host (with authentication off "
                    "only to its own address, loopback names and server.allowed_hosts)"
                ),
                extra,
            )
        write = scope["method"] in WRITES
        media = origin = None
        if write or self.origins:
            named = dict(headers)  # one C-level pass for both names, not a Python loop
            media, origin = named.get(b"content-type"), named.get(b"origin")
        if origin is not None and self.origins:
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
        if write and (origin is not None or media not in JSON_TYPES):
            forged = self.forged(scope, media, origin)
            if forged is not None:
                return refusal(scope, forged, extra)

        # Outermost: the list starts here; inner layers extend it, the response sends it.
        scope[RESPONSE_HEADERS] = [*extra]
        return None

    def misdirected(self, scope: Scope) -> bool:
        """Whether the request's ``Host`` names no one this gateway answers to."""
        headers = scope["headers"]
        # Clients send Host first: one comparison, not a scan, on the hot path.
        if headers and headers[0][0] == b"host":
            host: bytes | None = headers[0][1]
        else:
            host = next((v for k, v in headers if k == b"host"), None)
        hosts = self.hosts
        assert hosts is not None
        return host is not None and host not in hosts and not host_allowed(host, hosts)

    def forged(
        self, scope: Scope, media: bytes | None, origin: bytes | None
    ) -> AgentCoreError | None:
        """Why a write (its ``Content-Type`` and ``Origin``) could come from a page that
        may not write here, or None."""
        if media not in JSON_TYPES and not self._media_allowed(scope, media):
            return UnsupportedMediaType(
                "a request body must be JSON (Content-Type: application/json)"
                + (", or multipart/form-data here" if scope["path"] in self.form_uploads else "")
            )
        if origin is not None and not self.origin_allowed(scope, origin):
            return Forbidden("writes from this origin are not allowed (server.cors_allow_origins)")
        return None

    def _media_allowed(self, scope: Scope, media: bytes | None) -> bool:
        if scope["method"] == "PUT" and scope["path"].startswith(self.raw_uploads):
            return True  # raw bytes of any type; PUT is preflighted, Origin checked
        if media is None:  # no body, nothing to forge but the write itself: Origin decides
            headers = dict(scope["headers"])
            return b"transfer-encoding" not in headers and headers.get(b"content-length") in (
                None,
                b"0",
            )
        essence = media.partition(b";")[0].strip().lower()
        if essence == b"application/json" or essence.endswith(b"+json"):
            return True
        return essence == b"multipart/form-data" and scope["path"] in self.form_uploads
