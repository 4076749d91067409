"""Any OpenAI-compatible server (OpenAI, vLLM, Ollama, LiteLLM, ``agentcore fake-llm``).

The body is passed through as it came, with the provider's model name; the
answer comes back untouched. Streams ask for the final usage chunk
(``stream_options.include_usage``) so streamed calls are accounted exactly.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from typing import Any

import msgspec

from agentcore.errors import ProviderError
from agentcore.llm.providers.base import (
    ChatRequest,
    Chunk,
    Completion,
    HttpProvider,
    error_message,
    sse_data,
)

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


class OpenAIProvider(HttpProvider):
    def _headers(self, api_key: str) -> dict[str, str]:
        return {"authorization": f"Bearer {api_key}"} if api_key else {}

    async def complete(self, request: ChatRequest, model: str, deadline: float) -> Completion:
        body = {**request.body, "model": model}
        body.pop("stream", None)
        body.pop("stream_options", None)
        reply = await self._transport.post("chat/completions", _encode(body), deadline)
        if reply.status != 200:
            raise self._refused(reply.status, reply.body)
        return parse_completion(self.name, reply.body)

    async def stream(
        self, request: ChatRequest, model: str, deadline: float
    ) -> AsyncGenerator[Chunk, None]:
        body = {
            **request.body,
            "model": model,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        async with self._transport.stream("chat/completions", _encode(body), deadline) as reply:
            if reply.status != 200:
                raise self._refused(reply.status, await reply.read())
            async for data in sse_data(reply.lines()):
                if data == "[DONE]":
                    return
                try:
                    chunk = _decode(data)
                except msgspec.DecodeError as exc:
                    raise ProviderError(
                        f"provider {self.name} sent a chunk that is not JSON"
                    ) from exc
                if not isinstance(chunk, dict):
                    raise ProviderError(f"provider {self.name} sent a chunk that is not an object")
                if "error" in chunk:
                    raise ProviderError(
                        f"provider {self.name} failed mid-stream: {error_message(data.encode())}"
                    )
                yield chunk
        raise ProviderError(f"provider {self.name} ended the stream without [DONE]")


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
