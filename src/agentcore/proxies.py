"""The client address, and when a proxy's X-Forwarded-* headers may be believed.

The address is the socket peer. Only when that peer is a configured trusted
proxy (``server.trusted_proxies``) is ``X-Forwarded-For`` read, right to left,
skipping trusted hops: the first untrusted address is the client. A forged
header from anyone else changes nothing. The same holds for the scheme and
host the client addressed (``X-Forwarded-Proto``, ``X-Forwarded-Host``), used
for the WebSocket ``Origin`` check (``security.py``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from functools import lru_cache

from agentcore.types import Scope

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedProxies:
    def __init__(self, cidrs: Sequence[str] = ()) -> None:
        self._networks: tuple[Network, ...] = tuple(
            ipaddress.ip_network(c, strict=False) for c in cidrs
        )
        self._is_trusted = lru_cache(maxsize=4096)(self._check)

    def _check(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self._networks)

    def client_ip(self, scope: Scope) -> str:
        client = scope.get("client")
        peer = str(client[0]) if client else ""
        if not self._networks or not self._is_trusted(peer):
            return peer
        forwarded = b",".join(v for k, v in scope["headers"] if k == b"x-forwarded-for")
        hops = [h.strip() for h in forwarded.decode("latin-1").split(",") if h.strip()]
        for hop in reversed(hops):
            if not self._is_trusted(hop):
                return hop
        return peer

    def forwarded(self, scope: Scope, name: bytes) -> str | None:
        """The first value of header ``name`` (e.g. ``x-forwarded-proto``) when the socket
        peer is a trusted proxy, else None: what the proxy nearest the client saw."""
        client = scope.get("client")
        if not self._networks or not client or not self._is_trusted(str(client[0])):
            return None
        for key, value in scope["headers"]:
            if key == name:
                return value.decode("latin-1").split(",")[0].strip() or None
        return None
