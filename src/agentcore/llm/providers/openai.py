"""Any OpenAI-compatible server (OpenAI, vLLM, Ollama, LiteLLM, ``agentcore fake-llm``).

The body is passed through as it came, with the provider's model name; the
answer comes back untouched. Streams ask for the final usage chunk
(``stream_options.include_usage``) so streamed calls are accounted exactly.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import httpx
import msgspec

from agentcore.errors import ProviderError, ProviderTimeout
from agentcore.llm.providers.base import (
    ChatRequest,
    Chunk,
    Completion,
    error_message,
    http_failure,
    remaining_s,
)

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


def http_client(
    base_url: str,
    headers: dict[str, str],
    *,
    timeout_s: float,
    connect_timeout_s: float,
    max_connections: int,
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    """The one pooled client of a provider. ``trust_env=False``: proxies and
    certificates come from configuration, never from the environment."""
    return httpx.AsyncClient(
        base_url=base_url.rstrip("/") + "/",
        headers=headers,
        timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
        limits=httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        ),
        transport=transport,
        trust_env=False,
    )


def timeout(deadline: float, read_s: float, connect_s: float) -> httpx.Timeout:
    """Per-call timeouts: never past the deadline."""
    left = remaining_s(deadline)
    return httpx.Timeout(min(read_s, left), connect=min(connect_s, left))


class OpenAIProvider:
    def __init__(
        self,
        name: str,
        base_url: str,
        api_key: str = "",
        *,
        timeout_s: float = 30.0,
        connect_timeout_s: float = 5.0,
        max_connections: int = 100,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.name = name
        self._key = api_key
        self._read_s = timeout_s
        self._connect_s = connect_timeout_s
        headers = {"content-type": "application/json"}
        if api_key:
            headers["authorization"] = f"Bearer {api_key}"
        self._client = http_client(
            base_url,
            headers,
            timeout_s=timeout_s,
            connect_timeout_s=connect_timeout_s,
            max_connections=max_connections,
            transport=transport,
        )

    async def complete(self, request: ChatRequest, model: str, deadline: float) -> Completion:
        body = {**request.body, "model": model}
        body.pop("stream", None)
        body.pop("stream_options", None)
        try:
            response = await self._client.post(
                "chat/completions",
                content=_encode(body),
                timeout=timeout(deadline, self._read_s, self._connect_s),
            )
        except httpx.TimeoutException as exc:
            raise ProviderTimeout(f"provider {self.name} did not answer in time") from exc
        except httpx.HTTPError as exc:
            raise ProviderError(f"provider {self.name} unreachable: {type(exc).__name__}") from exc
        if response.status_code != 200:
            raise http_failure(
                self.name, response.status_code, error_message(response.content), self._key
            )
        return parse_completion(self.name, response.content)

    async def stream(
        self, request: ChatRequest, model: str, deadline: float
    ) -> AsyncGenerator[Chunk, None]:
        body = {
            **request.body,
            "model": model,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        try:
            async with self._client.stream(
                "POST",
                "chat/completions",
                content=_encode(body),
                timeout=timeout(deadline, self._read_s, self._connect_s),
            ) as response:
                if response.status_code != 200:
                    raise http_failure(
                        self.name,
                        response.status_code,
                        error_message(await response.aread()),
                        self._key,
                    )
                async for data in sse_data(response):
                    if data == "[DONE]":
                        return
                    chunk = _decode(data)
                    if not isinstance(chunk, dict):
                        raise ProviderError(
                            f"provider {self.name} sent a chunk that is not an object"
                        )
                    if "error" in chunk:
                        raise ProviderError(
                            f"provider {self.name} failed mid-stream: "
                            f"{error_message(data.encode())}"
                        )
                    yield chunk
        except httpx.TimeoutException as exc:
            raise ProviderTimeout(f"provider {self.name} stopped sending in time") from exc
        except httpx.HTTPError as exc:
            raise ProviderError(
                f"provider {self.name} connection failed: {type(exc).__name__}"
            ) from exc
        except msgspec.DecodeError as exc:
            raise ProviderError(f"provider {self.name} sent a chunk that is not JSON") from exc
        raise ProviderError(f"provider {self.name} ended the stream without [DONE]")

    async def close(self) -> None:
        await self._client.aclose()


async def sse_data(response: httpx.Response) -> AsyncIterator[str]:
    """The ``data:`` payloads of a server-sent event stream, as they arrive
    (multi-line data joined with newlines; comments and other fields skipped)."""
    lines: list[str] = []
    async for line in response.aiter_lines():
        if not line:
            if lines:
                yield "\n".join(lines)
                lines = []
        elif line.startswith("data:"):
            lines.append(line[6:] if line.startswith("data: ") else line[5:])
    if lines:
        yield "\n".join(lines)


def parse_completion(provider: str, content: bytes) -> Completion:
    try:
        data: Any = _decode(content)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise ProviderError(
            f"provider {provider} answered with something that is not JSON"
        ) from exc
    if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
        raise ProviderError(f"provider {provider} answered without choices")
    usage = data.get("usage") or {}
    data.setdefault("created", int(time.time()))
    return Completion(
        data,
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
    )
