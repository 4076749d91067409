"""Outbound HTTP: the gateway's one client library (aiohttp) and how a pool is set up.

Both callers of outside services over HTTP, the LLM providers
(``llm/transport/http.py``) and webhook delivery (``webhooks/sender.py``),
open their pools here, so the settings that protect the gateway are the
same for both. aiohttp was chosen over httpx by measurement: it costs a
fraction of httpx's CPU per call (docs/performance.md, "Outbound HTTP
client (issue 15)").

What :func:`open_session` sets that is not aiohttp's default:

- at most ``max_connections`` connections (``limit``, no per-host limit); a
  call beyond waits for a free one, within its caller's timeout;
- proxies are never taken from the environment (``trust_env=False``), and
  certificates are checked against certifi's bundle (:func:`tls_context`),
  not against ``SSL_CERT_FILE``/``SSL_CERT_DIR``;
- no cookie jar: one peer's cookies are not sent back (calls of different
  tenants share the pool);
- no session-wide timeout: each caller bounds its own calls;
- idle connections are closed after :data:`KEEPALIVE_S`.

Redirects are each caller's to refuse (``allow_redirects=False`` per call).
A session binds to the running event loop, so callers open theirs on first
use, never at import or in ``create_app``.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Mapping

import aiohttp
import certifi

#: Seconds an idle pooled connection is kept. Below the 5 s after which uvicorn
#: (and Node) close idle keep-alive connections: a POST is not retried when the
#: server closed its connection at the moment it was reused.
KEEPALIVE_S = 4.0


@functools.cache
def tls_context() -> ssl.SSLContext:
    """Verification against certifi's bundle, hostnames checked; one per process
    (reading the bundle takes milliseconds), shared by every pool."""
    return ssl.create_default_context(cafile=certifi.where())


def open_session(
    max_connections: int,
    headers: Mapping[str, str] | None = None,
    *,
    decompress: bool = True,
) -> aiohttp.ClientSession:
    """A pooled session with the settings above; call it inside the running loop.

    ``decompress=False`` neither asks for nor decodes compressed bodies, so what
    a caller reads is what came over the wire (a small compressed body cannot
    expand past the caller's read limit).
    """
    connector = aiohttp.TCPConnector(
        limit=max_connections,
        limit_per_host=0,
        keepalive_timeout=KEEPALIVE_S,
        ssl=tls_context(),
    )
    return aiohttp.ClientSession(
        connector=connector,
        headers=dict(headers or {}),
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
        timeout=aiohttp.ClientTimeout(total=None),
        auto_decompress=decompress,
        skip_auto_headers=() if decompress else ("Accept-Encoding",),
    )
