"""Which addresses a webhook may reach: the SSRF policy.

A webhook URL is a request the gateway makes on a caller's behalf from inside
the network, so by default it may only reach public addresses: loopback,
private (RFC 1918, unique-local), link-local, shared (CGNAT), multicast,
reserved, unspecified and site-local addresses and the cloud metadata
endpoints are refused, unless one of ``webhooks.allowed_networks`` contains
the address.

An IPv6 address that carries an IPv4 address reaches that IPv4 host through
a translator or tunnel, so it is judged by the IPv4 address it carries, with
the same rules: IPv4-mapped (``::ffff:0:0/96``), IPv4-translated
(``::ffff:0:0:0/96``), IPv4-compatible (``::/96``), NAT64 (``64:ff9b::/96``,
and the local-use ``64:ff9b:1::/48``, where the operator's prefix length and
so the IPv4's position is unknown: every RFC 6052 position must be public),
6to4 (``2002::/16``) and Teredo (``2001::/32``: its server and its
de-obfuscated client must both be public). ``[64:ff9b::a9fe:a9fe]`` is
169.254.169.254 on a NAT64 network.

The host is resolved and *every* address it resolves to is checked, at
registration and again before each attempt (the answer may have changed:
DNS rebinding). The attempt then connects to the checked address itself
(``sender.py``), so no second lookup can swap it. A name that does not
resolve at registration is accepted; each attempt checks it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from agentcore.errors import UnsafeUrl

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_URL_LENGTH = 2048
#: Seconds a DNS lookup may take before the name counts as unresolvable.
RESOLVE_TIMEOUT_S = 5.0
#: Seconds a registration-time lookup of a host is reused, and how many are kept.
REGISTRATION_CACHE_S = 60.0
REGISTRATION_CACHE_SIZE = 10_000
#: Metadata services reachable at addresses ``is_global`` calls public (Azure's wire server).
METADATA = tuple(ipaddress.ip_network(n) for n in ("168.63.129.16/32",))
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")
_COMPATIBLE = ipaddress.IPv6Network("::/96")
_TEREDO = ipaddress.IPv6Network("2001::/32")


class Unresolvable(Exception):
    """The host name has no address right now."""


@dataclass(frozen=True, slots=True)
class Target:
    """A parsed webhook URL."""

    url: str
    scheme: str
    host: str
    port: int


@functools.lru_cache(maxsize=4096)
def parse_url(url: str) -> Target:
    """Check the shape of ``url``: http(s), a host, no credentials; :class:`UnsafeUrl` if not.

    Remembered (a pure function of the string): registrations and attempts
    of the same URL parse it once.
    """
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeUrl(f"url longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeUrl(f"malformed url: {exc}") from exc
    if parts.scheme not in ("http", "https"):
        raise UnsafeUrl("url scheme must be http or https")
    if not parts.hostname:
        raise UnsafeUrl("url has no host")
    if parts.username is not None or parts.password is not None:
        raise UnsafeUrl("url must not carry credentials; use the webhook's headers")
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise UnsafeUrl("url contains whitespace or control characters")
    default = 443 if parts.scheme == "https" else 80
    return Target(url, parts.scheme, parts.hostname, port or default)


class AddressPolicy:
    def __init__(self, allowed_networks: Sequence[str] = ()) -> None:
        self._allowed = tuple(ipaddress.ip_network(n, strict=False) for n in allowed_networks)
        #: Registration-time lookups by host, shared while in flight and kept for
        #: REGISTRATION_CACHE_S: a burst of registrations of one host name (the
        #: seed's load test registers the same unresolvable name again and
        #: again) costs one lookup, not one resolver timeout each. Delivery
        #: always resolves afresh (DNS rebinding).
        self._registration: dict[str, tuple[float, asyncio.Future[None]]] = {}
        #: Verdicts by address: the policy never changes, and the checks are
        #: not free (``is_global`` walks a dozen networks).
        self._verdicts: dict[IPAddress, bool] = {}

    def permits(self, address: IPAddress) -> bool:
        verdict = self._verdicts.get(address)
        if verdict is None:
            verdict = self._permits(address)
            if len(self._verdicts) >= REGISTRATION_CACHE_SIZE:
                self._verdicts.clear()
            self._verdicts[address] = verdict
        return verdict

    def _permits(self, address: IPAddress) -> bool:
        if any(address in network for network in self._allowed):
            return True
        if isinstance(address, ipaddress.IPv6Address):
            carried = embedded_ipv4(address)
            if carried is not None:
                return all(self._permits(v4) for v4 in carried)
            if address.is_site_local:  # fec0::/10: deprecated, but still routed inside sites
                return False
        if any(address in network for network in METADATA):
            return False
        return address.is_global and not address.is_multicast

    def check_address(self, address: IPAddress) -> None:
        if not self.permits(address):
            raise UnsafeUrl(
                f"url resolves to {address}, a non-public address "
                "(allow it with webhooks.allowed_networks)"
            )

    async def resolve(self, target: Target) -> list[IPAddress]:
        """Every address of the target's host, each one permitted; the order of the resolver.

        :class:`UnsafeUrl` when any is refused, :class:`Unresolvable` when there is none.
        """
        literal = _literal(target.host)
        if literal is not None:
            self.check_address(literal)
            return [literal]
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(RESOLVE_TIMEOUT_S):
                infos = await loop.getaddrinfo(
                    target.host, target.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
                )
        except (OSError, UnicodeError, TimeoutError) as exc:
            raise Unresolvable(f"cannot resolve {target.host}: {exc}") from exc
        addresses: list[IPAddress] = []
        for *_, sockaddr in infos:
            address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
            self.check_address(address)
            if address not in addresses:
                addresses.append(address)
        if not addresses:
            raise Unresolvable(f"cannot resolve {target.host}: no address")
        return addresses

    async def check_registration(self, url: str) -> Target:
        """Shape and addresses of a URL being registered; an unresolvable name passes."""
        target = parse_url(url)
        literal = _literal(target.host)
        if literal is not None:  # nothing to resolve: checked here, without a task or a cache entry
            self.check_address(literal)
            return target
        key = f"{target.host}:{target.port}"
        now = time.monotonic()
        cached = self._registration.get(key)
        if cached is None or cached[0] < now:
            future = asyncio.ensure_future(self._check_host(target))
            self._registration[key] = (now + REGISTRATION_CACHE_S, future)
            if len(self._registration) > REGISTRATION_CACHE_SIZE:
                self._registration = {k: v for k, v in self._registration.items() if v[0] >= now}
            cached = self._registration[key]
        if cached[1].done():
            cached[1].result()  # raises UnsafeUrl again for a refused host
        else:
            await asyncio.shield(cached[1])
        return target

    async def _check_host(self, target: Target) -> None:
        with contextlib.suppress(Unresolvable):
            await self.resolve(target)


def embedded_ipv4(address: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, ...] | None:
    """The IPv4 addresses ``address`` reaches through, or None when it carries none.

    Several for Teredo (server and client) and local-use NAT64 (each possible position).
    """
    if address.ipv4_mapped is not None:
        return (address.ipv4_mapped,)
    value = int(address)
    if address in _TRANSLATED or address in _NAT64 or address in _COMPATIBLE:
        return (ipaddress.IPv4Address(value & 0xFFFFFFFF),)
    if address.sixtofour is not None:
        return (address.sixtofour,)
    if address in _TEREDO:
        assert address.teredo is not None  # 2001::/32 is Teredo
        return address.teredo
    if address in _NAT64_LOCAL:
        # RFC 6052: bits 64-71 (the "u" octet) are skipped; the IPv4 ends where the prefix
        # (48, 56, 64 or 96 bits) and the octets after it put it.
        bits = f"{value:0128b}"
        spots = (
            bits[48:64] + bits[72:88],
            bits[56:64] + bits[72:96],
            bits[72:104],
            bits[96:128],
        )
        return tuple(ipaddress.IPv4Address(int(s, 2)) for s in spots)
    return None


@functools.lru_cache(maxsize=4096)
def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None
