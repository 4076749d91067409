"""Which addresses a webhook may reach: the SSRF policy.

A webhook URL is a request the gateway makes on a caller's behalf from inside
the network, so by default it may only reach public addresses: loopback,
private (RFC 1918, unique-local), link-local, shared (CGNAT), multicast,
reserved and unspecified addresses and the cloud metadata endpoints are
refused, unless one of ``webhooks.allowed_networks`` contains the address.

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
        #: Verdicts by address: the policy never changes, and the checks cost
        #: microseconds each (``is_global`` walks a dozen networks).
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
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if any(address in network for network in self._allowed):
            return True
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


@functools.lru_cache(maxsize=4096)
def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None
