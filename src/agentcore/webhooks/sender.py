"""One webhook attempt over HTTP: the seam between the outbox and the network.

:class:`HttpSender` shares one pooled aiohttp session (``outbound.py``)
between all attempts. Before each attempt it resolves the host and checks
every address against the SSRF policy (``ssrf.py``), then connects to the
checked address itself (the ``Host`` header and TLS SNI keep the name, so
certificates are still verified against it): a DNS answer that changes
between the check and the connection cannot redirect the request. Pooled
connections are kept by address *and* name (aiohttp's connection key holds
``server_hostname`` from 3.14.1 on, the release pyproject.toml asks for), so
a connection verified for one name never carries a request for another.
Redirects are never followed, proxies from the environment are ignored,
compressed bodies are neither asked for nor decoded, and the whole attempt
(resolve, connect, send, read the status and up to ``MAX_ERROR_BODY`` bytes
of the body) is bounded by one timeout.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import ipaddress
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import aiohttp
from yarl import URL

from agentcore.errors import UnsafeUrl
from agentcore.outbound import open_session
from agentcore.webhooks.ssrf import AddressPolicy, Unresolvable, parse_url

#: Response bytes kept in the attempt log when the endpoint refuses a delivery.
MAX_ERROR_BODY = 512


@dataclass(frozen=True, slots=True)
class SendResult:
    #: None when no response arrived (refused address, DNS, connect, timeout).
    status_code: int | None
    duration_ms: float
    error: str | None = None
    #: The endpoint's Retry-After, in seconds from now.
    retry_after_s: float | None = None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class Sender(Protocol):
    async def send(
        self, url: str, headers: Mapping[str, str], body: bytes, timeout_s: float
    ) -> SendResult:
        """POST ``body``; never raises for anything the endpoint or the network does."""

    async def close(self) -> None: ...


class HttpSender:
    def __init__(self, policy: AddressPolicy, max_connections: int = 64) -> None:
        self._policy = policy
        self._max_connections = max_connections
        #: Opened on the first attempt, inside the running loop (``outbound.py``).
        self._session: aiohttp.ClientSession | None = None

    async def send(
        self, url: str, headers: Mapping[str, str], body: bytes, timeout_s: float
    ) -> SendResult:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout_s):
                status, error, retry_after = await self._post(url, headers, body)
        except TimeoutError:
            status, error, retry_after = None, f"timed out after {timeout_s:g} s", None
        duration_ms = (time.perf_counter() - started) * 1000
        return SendResult(status, duration_ms, error, retry_after)

    async def _post(
        self, url: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[int | None, str | None, float | None]:
        try:
            target = parse_url(url)
            addresses = await self._policy.resolve(target)
        except (UnsafeUrl, Unresolvable) as exc:
            return None, str(exc), None
        request_headers = dict(headers)
        default_port = 443 if target.scheme == "https" else 80
        host = f"[{target.host}]" if ":" in target.host else target.host  # IPv6 literal
        request_headers["host"] = host if target.port == default_port else f"{host}:{target.port}"
        # TLS: SNI and the certificate check are for the name, whatever address is dialled.
        server_hostname = target.host if target.scheme == "https" else None
        session = self._session or self._open()
        last_error = "no address"
        for address in addresses[:3]:
            try:
                async with session.post(
                    _url(url).with_host(str(address)),
                    data=body,
                    headers=request_headers,
                    allow_redirects=False,
                    server_hostname=server_hostname,
                ) as response:
                    status = response.status
                    if 200 <= status < 300:
                        return status, None, None
                    snippet = await _read_some(response)
                    error = f"HTTP {status}"
                    if 300 <= status < 400:
                        location = response.headers.get("location", "")
                        error += f": redirect to {location[:200]!r} not followed"
                    elif snippet:
                        error += f": {snippet}"
                    return status, error, _retry_after(response.headers.get("retry-after"))
            except aiohttp.ClientConnectorError as exc:  # refused, unreachable, TLS handshake
                last_error = f"cannot connect to {_show(address)}: {exc.os_error}"
                continue
            except (aiohttp.ClientError, OSError) as exc:  # after connecting: reset, bad reply
                return None, f"{type(exc).__name__}: {exc}", None
        return None, last_error, None

    def _open(self) -> aiohttp.ClientSession:
        self._session = open_session(self._max_connections, decompress=False)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


@functools.lru_cache(maxsize=4096)
def _url(url: str) -> URL:
    """The parsed URL, remembered: attempts of one webhook parse it once."""
    return URL(url)


async def _read_some(response: aiohttp.ClientResponse) -> str:
    """Up to ``MAX_ERROR_BODY`` bytes of the body; the rest is never read (the
    connection is closed instead of drained)."""
    data = b""
    while len(data) < MAX_ERROR_BODY:
        chunk = await response.content.read(MAX_ERROR_BODY - len(data))
        if not chunk:
            break
        data += chunk
    return data.decode("utf-8", "replace")


def _retry_after(value: str | None) -> float | None:
    """Seconds from now of a Retry-After (delay-seconds or HTTP-date); None when absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _show(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    return f"[{address}]" if address.version == 6 else str(address)
