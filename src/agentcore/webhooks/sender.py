"""One webhook attempt over HTTP: the seam between the outbox and the network.

:class:`HttpSender` shares one pooled ``httpx.AsyncClient`` between all
attempts. Before each attempt it resolves the host and checks every address
against the SSRF policy (``ssrf.py``), then connects to the checked address
itself (the ``Host`` header and TLS SNI keep the name, so certificates are
still verified against it): a DNS answer that changes between the check and
the connection cannot redirect the request. Redirects are never followed,
proxies from the environment are ignored, and the whole attempt (resolve,
connect, send, read the status and up to ``MAX_ERROR_BODY`` bytes of the
body) is bounded by one timeout.
"""

from __future__ import annotations

import asyncio
import email.utils
import ipaddress
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import httpx

from agentcore.errors import UnsafeUrl
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
        self._client = httpx.AsyncClient(
            follow_redirects=False,
            trust_env=False,
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
        )

    async def send(
        self, url: str, headers: Mapping[str, str], body: bytes, timeout_s: float
    ) -> SendResult:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout_s):
                status, error, retry_after = await self._post(url, headers, body, timeout_s)
        except TimeoutError:
            status, error, retry_after = None, f"timed out after {timeout_s:g} s", None
        duration_ms = (time.perf_counter() - started) * 1000
        return SendResult(status, duration_ms, error, retry_after)

    async def _post(
        self, url: str, headers: Mapping[str, str], body: bytes, timeout_s: float
    ) -> tuple[int | None, str | None, float | None]:
        try:
            target = parse_url(url)
            addresses = await self._policy.resolve(target)
        except (UnsafeUrl, Unresolvable) as exc:
            return None, str(exc), None
        request_headers = dict(headers)
        default_port = 443 if target.scheme == "https" else 80
        request_headers["host"] = (
            target.host if target.port == default_port else f"{target.host}:{target.port}"
        )
        if ":" in target.host:  # an IPv6 literal keeps its brackets in Host
            request_headers["host"] = request_headers["host"].replace(
                target.host, f"[{target.host}]", 1
            )
        extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
        last_error = "no address"
        for address in addresses[:3]:
            pinned = httpx.URL(url).copy_with(host=str(address))
            try:
                async with self._client.stream(
                    "POST",
                    pinned,
                    content=body,
                    headers=request_headers,
                    timeout=timeout_s,
                    extensions=extensions,
                ) as response:
                    status = response.status_code
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
            except httpx.ConnectError as exc:
                last_error = f"cannot connect to {_show(address)}: {exc}"
                continue
            except httpx.HTTPError as exc:
                return None, f"{type(exc).__name__}: {exc}", None
        return None, last_error, None

    async def close(self) -> None:
        await self._client.aclose()


async def _read_some(response: httpx.Response) -> str:
    data = b""
    async for chunk in response.aiter_bytes():
        data += chunk
        if len(data) >= MAX_ERROR_BODY:
            break
    return data[:MAX_ERROR_BODY].decode("utf-8", "replace")


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
