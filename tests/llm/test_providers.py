"""Both provider kinds over the in-memory transport: answers, streams, and how each
failure maps onto the error tree (no sockets: the fake provider is called in-process)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

import pytest

from agentcore.errors import ProviderError, ProviderRejected
from agentcore.llm.fake import FakeBehavior, FakeLlm
from agentcore.llm.providers.anthropic import AnthropicProvider
from agentcore.llm.providers.base import ChatRequest, Chunk, Provider
from agentcore.llm.providers.openai import OpenAIProvider
from agentcore.llm.transport.memory import MemoryTransport
from agentcore.types import ASGIApp, Receive, Scope, Send

KEY = "sk-memory-KEY-0042"
Connect = Callable[[ASGIApp], Provider]


@pytest.fixture(params=["openai", "anthropic"])
async def connect(request: pytest.FixtureRequest) -> AsyncIterator[Connect]:
    """``connect(app)`` -> a provider of the parametrised kind in front of ``app``."""
    opened: list[Provider] = []

    def make(app: ASGIApp) -> Provider:
        kind = OpenAIProvider if request.param == "openai" else AnthropicProvider
        provider = kind("p", "http://fake.test/v1", KEY, connector=MemoryTransport.connector(app))
        opened.append(provider)
        return provider

    yield make
    for provider in opened:
        await provider.close()


def ask(prompt: str) -> ChatRequest:
    return ChatRequest({"messages": [{"role": "user", "content": prompt}], "max_tokens": 20})


def later() -> float:
    return time.monotonic() + 10


async def collect(provider: Provider, prompt: str) -> list[Chunk]:
    return [chunk async for chunk in provider.stream(ask(prompt), "fake-small", later())]


async def test_complete(connect: Connect) -> None:
    completion = await connect(FakeLlm()).complete(ask("hi there"), "fake-small", later())
    assert completion.text == "echo: hi there"
    assert (completion.prompt_tokens, completion.completion_tokens) == (2, 3)


async def test_stream(connect: Connect) -> None:
    chunks = await collect(connect(FakeLlm()), "hi there")
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "echo: hi there"
    assert chunks[-1]["usage"]["completion_tokens"] == 3


@pytest.mark.parametrize("status", [400, 404, 422])
async def test_the_callers_fault_is_rejected(connect: Connect, status: int) -> None:
    with pytest.raises(ProviderRejected, match=f"refused the request \\({status}\\)"):
        await connect(FakeLlm()).complete(ask(f"[status:{status}]"), "fake-small", later())


@pytest.mark.parametrize("status", [429, 500, 503])
async def test_the_providers_fault_falls_back(connect: Connect, status: int) -> None:
    with pytest.raises(ProviderError) as caught:
        await connect(FakeLlm()).complete(ask(f"[status:{status}]"), "fake-small", later())
    assert not isinstance(caught.value, ProviderRejected)
    assert f"failed with {status}" in caught.value.message


async def test_a_refused_key_is_not_quoted(connect: Connect) -> None:
    fake = FakeLlm(FakeBehavior(api_key="another"))  # answers 401 quoting the key it got
    with pytest.raises(ProviderError) as caught:
        await connect(fake).complete(ask("x"), "fake-small", later())
    assert caught.value.message == "provider p failed with 401"
    with pytest.raises(ProviderError) as streamed:
        await collect(connect(fake), "x")
    assert KEY not in streamed.value.message


async def test_a_stream_cut_off_mid_way(connect: Connect) -> None:
    chunks: list[Chunk] = []
    provider = connect(FakeLlm(FakeBehavior(cut_stream_after=3)))
    with pytest.raises(ProviderError, match="provider p connection failed: CutStream"):
        async for chunk in provider.stream(ask("a b c d e"), "fake-small", later()):
            chunks.append(chunk)
    assert chunks


async def test_a_stream_without_its_end_marker(connect: Connect) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"event: ping\ndata: {}\n\n"})

    with pytest.raises(ProviderError, match="ended the stream without"):
        await collect(connect(app), "x")


@pytest.mark.parametrize("key", [KEY, ""])
@pytest.mark.parametrize("kind", [OpenAIProvider, AnthropicProvider])
async def test_each_kind_sends_the_key_in_its_own_header_and_none_without_one(
    kind: type[OpenAIProvider] | type[AnthropicProvider], key: str
) -> None:
    fake = FakeLlm()
    provider = kind("p", "http://fake.test/v1", key, connector=MemoryTransport.connector(fake))
    try:
        await provider.complete(ask("x"), "fake-small", later())
    finally:
        await provider.close()
    sent = fake.headers[-1]
    assert sent["content-type"] == "application/json"
    name, value = (
        ("authorization", f"Bearer {key}") if kind is OpenAIProvider else ("x-api-key", key)
    )
    assert sent.get(name) == (value if key else None)
    assert "authorization" not in sent or kind is OpenAIProvider
    assert "x-api-key" not in sent or kind is AnthropicProvider
