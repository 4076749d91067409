"""The LLM provider seam: one small async interface, the OpenAI chat format inside.

The gateway speaks one request format, an OpenAI chat-completions body, and
gets back OpenAI ``chat.completion`` objects and ``chat.completion.chunk``
chunks; a provider with another wire format (Anthropic) translates both ways
inside its own module. A provider moves bytes through a
:class:`~agentcore.llm.transport.base.Transport`, which translates the HTTP
library's errors (timeouts, connection failures); the provider turns the
answers into the rest of the error tree:

- :class:`~agentcore.errors.ProviderTimeout`: no answer in time (falls back);
- :class:`~agentcore.errors.ProviderError`: 5xx, 429, 408, 401/403 (the
  gateway's own key is refused: not the caller's fault), connection errors,
  an answer that is not a completion (falls back);
- :class:`~agentcore.errors.ProviderRejected`: other 4xx, the caller's
  request is at fault (returned, not retried).

Both wire formats (``openai.py``, ``anthropic.py``) are an
:class:`HttpProvider`: a name, a key and one transport to the base URL;
each says only how its key goes in the headers and what it sends.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

from agentcore.errors import AgentCoreError, ProviderError, ProviderRejected
from agentcore.llm.transport.base import Connector, Endpoint
from agentcore.llm.transport.http import HttpTransport

#: An OpenAI ``chat.completion.chunk`` object.
Chunk = dict[str, Any]

#: Provider statuses that mean "this request is wrong", not "this provider is down".
CALLER_FAULT = frozenset({400, 404, 413, 422})
#: Characters of a provider's error message passed on to the caller.
MESSAGE_CHARS = 500


@dataclass(slots=True)
class ChatRequest:
    """An OpenAI chat-completions body without ``model`` and ``stream``."""

    body: dict[str, Any]
    #: Capabilities the body itself needs (tools, json_mode, vision), added
    #: to whatever the caller asked for.
    needs: frozenset[str] = frozenset()
    #: The caller wants the final usage chunk of a stream.
    include_usage: bool = False

    def prompt_estimate(self) -> int:
        """Prompt tokens, estimated at four characters a token (before the provider counts)."""
        chars = sum(len(str(m.get("content") or "")) for m in self.body.get("messages", ()))
        return (chars + 3) // 4

    def estimated_tokens(self) -> int:
        """Prompt estimate plus the completion limit (256 when none): for ``tokens_per_minute``."""
        limit = self.body.get("max_tokens") or self.body.get("max_completion_tokens") or 256
        return self.prompt_estimate() + int(limit)


@dataclass(slots=True)
class Completion:
    """One finished completion; ``response`` is an OpenAI ``chat.completion`` object."""

    response: dict[str, Any]
    prompt_tokens: int
    completion_tokens: int

    @property
    def text(self) -> str:
        choices = self.response.get("choices") or [{}]
        content = (choices[0].get("message") or {}).get("content")
        return content if isinstance(content, str) else ""

    @property
    def finish_reason(self) -> str | None:
        choices = self.response.get("choices") or [{}]
        reason = choices[0].get("finish_reason")
        return reason if isinstance(reason, str) else None


class Provider(Protocol):
    name: str

    async def complete(self, request: ChatRequest, model: str, deadline: float) -> Completion:
        """One completion; ``deadline`` is a ``time.monotonic()`` instant."""

    def stream(
        self, request: ChatRequest, model: str, deadline: float
    ) -> AsyncGenerator[Chunk, None]:
        """The chunks as they arrive, a final usage-only chunk (``choices`` empty)
        included. Ends normally only on the provider's end-of-stream marker;
        a cut-off stream raises :class:`~agentcore.errors.ProviderError`."""

    async def close(self) -> None: ...


class HttpProvider:
    """A provider reached over HTTP: its name, its key and one transport to ``base_url``.

    The key goes only into the headers :meth:`_headers` makes and is
    scrubbed from every error message (:meth:`_refused`).
    """

    def __init__(
        self,
        name: str,
        base_url: str,
        api_key: str = "",
        *,
        timeout_s: float = 30.0,
        connect_timeout_s: float = 5.0,
        max_connections: int = 100,
        connector: Connector = HttpTransport,
    ) -> None:
        self.name = name
        self._key = api_key
        headers = {"content-type": "application/json", **self._headers(api_key)}
        self._transport = connector(
            Endpoint(name, base_url, headers, timeout_s, connect_timeout_s, max_connections)
        )

    def _headers(self, api_key: str) -> dict[str, str]:
        """The headers every request carries besides the content type (the key, when given)."""
        return {}

    def _refused(self, status: int, body: bytes) -> AgentCoreError:
        """The error for a non-2xx answer with ``body``: see :func:`http_failure`."""
        return http_failure(self.name, status, error_message(body), self._key)

    async def close(self) -> None:
        await self._transport.close()


def http_failure(provider: str, status: int, message: str, secret: str) -> AgentCoreError:
    """The error for a provider's non-2xx answer; ``secret`` is scrubbed from the message."""
    text = (message or "").replace(secret, "***") if secret else (message or "")
    text = text[:MESSAGE_CHARS]
    if status in CALLER_FAULT:
        return ProviderRejected(
            f"provider {provider} refused the request ({status}): {text}",
            data={"provider": provider, "provider_status": status},
        )
    # 401/403: the gateway's key; its text may quote part of the key, so say nothing more.
    detail = "" if status in (401, 403) else f": {text}"
    return ProviderError(
        f"provider {provider} failed with {status}{detail}",
        data={"provider": provider, "provider_status": status},
    )


def error_message(body: bytes) -> str:
    """The ``error.message`` of an OpenAI- or Anthropic-style error body, else the text."""
    try:
        data = msgspec.json.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return body[:MESSAGE_CHARS].decode("utf-8", "replace")
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(error, str):
            return error
    return body[:MESSAGE_CHARS].decode("utf-8", "replace")


async def sse_data(lines: AsyncIterable[str]) -> AsyncIterator[str]:
    """The ``data:`` payloads of a server-sent event stream, as they arrive
    (multi-line data joined with newlines; comments and other fields skipped)."""
    data: list[str] = []
    async for line in lines:
        if not line:
            if data:
                yield "\n".join(data)
                data = []
        elif line.startswith("data:"):
            data.append(line[6:] if line.startswith("data: ") else line[5:])
    if data:
        yield "\n".join(data)
