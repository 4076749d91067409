"""Anthropic's Messages API, translated to and from the OpenAI chat format.

Request: ``system``/``developer`` messages become ``system``; ``tool``
messages become ``tool_result`` blocks of a user turn; assistant
``tool_calls`` become ``tool_use`` blocks; ``image_url`` parts become image
blocks (base64 from ``data:`` URLs, else by URL); consecutive turns of one
role are merged (the API wants them alternating); ``stop`` becomes
``stop_sequences``; tools and ``tool_choice`` are mapped; ``max_tokens`` is
required by Anthropic, so :data:`DEFAULT_MAX_TOKENS` fills it in.

Response: text blocks are joined into ``message.content``, ``tool_use``
blocks become ``tool_calls``, ``stop_reason`` maps to ``finish_reason``,
``usage.input_tokens``/``output_tokens`` to ``prompt_tokens``/``completion_tokens``.
Streams are translated event by event (text and tool-call deltas) and end
with a usage chunk; a stream without ``message_stop`` is a failure.
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

API_VERSION = "2023-06-01"
#: Anthropic requires ``max_tokens``; used when the caller gives none.
DEFAULT_MAX_TOKENS = 1024
FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "pause_turn": "stop",
    "refusal": "content_filter",
}

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


class AnthropicProvider(HttpProvider):
    def _headers(self, api_key: str) -> dict[str, str]:
        headers = {"anthropic-version": API_VERSION}
        if api_key:
            headers["x-api-key"] = api_key
        return headers

    async def complete(self, request: ChatRequest, model: str, deadline: float) -> Completion:
        body = _encode(to_messages(request.body, model))
        reply = await self._transport.post("messages", body, deadline)
        if reply.status != 200:
            raise self._refused(reply.status, reply.body)
        try:
            return from_message(_decode(reply.body), model)
        except (
            msgspec.DecodeError,
            UnicodeDecodeError,
            KeyError,
            TypeError,
            AttributeError,
        ) as exc:
            raise ProviderError(
                f"provider {self.name} answered with an unreadable message"
            ) from exc

    async def stream(
        self, request: ChatRequest, model: str, deadline: float
    ) -> AsyncGenerator[Chunk, None]:
        body = _encode({**to_messages(request.body, model), "stream": True})
        translator = StreamTranslator(model)
        async with self._transport.stream("messages", body, deadline) as reply:
            if reply.status != 200:
                raise self._refused(reply.status, await reply.read())
            async for data in sse_data(reply.lines()):
                try:
                    event = _decode(data)
                    if not isinstance(event, dict):
                        continue
                    if event.get("type") == "error":
                        raise ProviderError(
                            f"provider {self.name} failed mid-stream: "
                            f"{error_message(data.encode())}"
                        )
                    chunks = translator.feed(event)
                except (msgspec.DecodeError, KeyError, TypeError, AttributeError) as exc:
                    raise ProviderError(f"provider {self.name} sent an unreadable event") from exc
                for chunk in chunks:
                    yield chunk
                if translator.done:
                    return
        raise ProviderError(f"provider {self.name} ended the stream without message_stop")


# -- OpenAI -> Anthropic --------------------------------------------------------


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def _blocks(content: Any) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks: list[dict[str, Any]] = []
    for part in content:
        kind = part.get("type")
        if kind == "text":
            blocks.append({"type": "text", "text": part.get("text", "")})
        elif kind == "image_url":
            url = str((part.get("image_url") or {}).get("url", ""))
            if url.startswith("data:") and ";base64," in url:
                media, data = url[5:].split(";base64,", 1)
                source = {"type": "base64", "media_type": media, "data": data}
            else:
                source = {"type": "url", "url": url}
            blocks.append({"type": "image", "source": source})
    return blocks


def _tool_choice(choice: Any) -> dict[str, Any] | None:
    if choice == "auto":
        return {"type": "auto"}
    if choice == "required":
        return {"type": "any"}
    if choice == "none":
        return {"type": "none"}
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        return {"type": "tool", "name": choice["function"].get("name", "")}
    return None


def to_messages(body: dict[str, Any], model: str) -> dict[str, Any]:
    """An OpenAI chat body as an Anthropic Messages request."""
    system: list[str] = []
    turns: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})

    for message in body.get("messages", ()):
        role = message.get("role")
        if role in ("system", "developer"):
            system.append(_text(message.get("content")))
        elif role == "user":
            add("user", _blocks(message.get("content")))
        elif role == "assistant":
            blocks = _blocks(message.get("content"))
            for call in message.get("tool_calls") or ():
                function = call.get("function") or {}
                try:
                    arguments = msgspec.json.decode(function.get("arguments") or "{}")
                except msgspec.DecodeError:
                    arguments = {}
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": call.get("id", ""),
                        "name": function.get("name", ""),
                        "input": arguments,
                    }
                )
            add("assistant", blocks)
        elif role == "tool":
            add(
                "user",
                [
                    {
                        "type": "tool_result",
                        "tool_use_id": message.get("tool_call_id", ""),
                        "content": _text(message.get("content")),
                    }
                ],
            )
    out: dict[str, Any] = {
        "model": model,
        "messages": turns,
        "max_tokens": body.get("max_tokens")
        or body.get("max_completion_tokens")
        or DEFAULT_MAX_TOKENS,
    }
    if system:
        out["system"] = "\n\n".join(system)
    for key in ("temperature", "top_p"):
        if body.get(key) is not None:
            out[key] = body[key]
    stop = body.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    tools = body.get("tools")
    if tools:
        out["tools"] = [
            {
                "name": t["function"]["name"],
                "description": t["function"].get("description", ""),
                "input_schema": t["function"].get("parameters") or {"type": "object"},
            }
            for t in tools
            if isinstance(t, dict) and isinstance(t.get("function"), dict)
        ]
    choice = _tool_choice(body.get("tool_choice"))
    if choice is not None:
        out["tool_choice"] = choice
    if isinstance(body.get("user"), str):
        out["metadata"] = {"user_id": body["user"]}
    return out


# -- Anthropic -> OpenAI --------------------------------------------------------


def from_message(data: dict[str, Any], model: str) -> Completion:
    """An Anthropic message as an OpenAI chat completion."""
    text: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in data["content"]:
        if block["type"] == "text":
            text.append(block["text"])
        elif block["type"] == "tool_use":
            calls.append(
                {
                    "id": block["id"],
                    "type": "function",
                    "function": {
                        "name": block["name"],
                        "arguments": _encode(block.get("input", {})).decode(),
                    },
                }
            )
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(text) if text or not calls else None,
    }
    if calls:
        message["tool_calls"] = calls
    usage = data.get("usage") or {}
    prompt = int(usage.get("input_tokens") or 0)
    completion = int(usage.get("output_tokens") or 0)
    return Completion(
        {
            "id": data.get("id", ""),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": FINISH_REASONS.get(data.get("stop_reason") or "", "stop"),
                }
            ],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            },
        },
        prompt_tokens=prompt,
        completion_tokens=completion,
    )


class StreamTranslator:
    """Anthropic stream events in, OpenAI chunks out."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.id = ""
        self.created = int(time.time())
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.done = False
        #: Anthropic content block index -> OpenAI tool call index.
        self._tools: dict[int, int] = {}

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> Chunk:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    def feed(self, event: dict[str, Any]) -> list[Chunk]:
        kind = event.get("type")
        if kind == "message_start":
            message = event["message"]
            self.id = message.get("id", "")
            self.prompt_tokens = int((message.get("usage") or {}).get("input_tokens") or 0)
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "content_block_start":
            block = event["content_block"]
            if block.get("type") == "tool_use":
                index = self._tools.setdefault(event["index"], len(self._tools))
                call = {
                    "index": index,
                    "id": block.get("id", ""),
                    "type": "function",
                    "function": {"name": block.get("name", ""), "arguments": ""},
                }
                return [self._chunk({"tool_calls": [call]})]
            return []
        if kind == "content_block_delta":
            delta = event["delta"]
            if delta.get("type") == "text_delta":
                return [self._chunk({"content": delta.get("text", "")})]
            if delta.get("type") == "input_json_delta" and event["index"] in self._tools:
                call = {
                    "index": self._tools[event["index"]],
                    "function": {"arguments": delta.get("partial_json", "")},
                }
                return [self._chunk({"tool_calls": [call]})]
            return []
        if kind == "message_delta":
            usage = event.get("usage") or {}
            self.completion_tokens = int(usage.get("output_tokens") or self.completion_tokens)
            reason = (event.get("delta") or {}).get("stop_reason") or ""
            return [self._chunk({}, FINISH_REASONS.get(reason, "stop"))]
        if kind == "message_stop":
            self.done = True
            return [
                {
                    "id": self.id,
                    "object": "chat.completion.chunk",
                    "created": self.created,
                    "model": self.model,
                    "choices": [],
                    "usage": {
                        "prompt_tokens": self.prompt_tokens,
                        "completion_tokens": self.completion_tokens,
                        "total_tokens": self.prompt_tokens + self.completion_tokens,
                    },
                }
            ]
        return []  # ping, content_block_stop
