"""Streaming through a real gateway socket (in-process ASGI clients buffer whole bodies)."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx

from agentcore.app import create_app
from agentcore.llm.fake import ThreadedServer
from tests.llm.conftest import FakeFactory, provider
from tests.support import make_config

CHAT = "/v1/chat/completions"


@contextlib.contextmanager
def gateway(*providers: dict[str, Any], **llm: Any) -> Iterator[str]:
    """A gateway on a loopback port in a thread; yields its base URL."""
    app = create_app(make_config(llm={"providers": list(providers), **llm}))
    with ThreadedServer(app, lifespan="on") as server:
        yield f"http://127.0.0.1:{server.port}"


def chat(prompt: str, **extra: Any) -> dict[str, Any]:
    return {"model": "fake-small", "messages": [{"role": "user", "content": prompt}], **extra}


async def read_events(
    url: str, body: dict[str, Any]
) -> tuple[httpx.Response, list[tuple[float, str, str]]]:
    """(response, [(monotonic time received, event name, data)]) of one streamed call."""
    events: list[tuple[float, str, str]] = []
    async with (
        httpx.AsyncClient(base_url=url, timeout=10) as client,
        client.stream("POST", CHAT, json=body) as response,
    ):
        name = ""
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((time.monotonic(), name or "message", line[6:]))
                name = ""
    return response, events


async def test_chunks_pass_through_as_they_arrive(fake: FakeFactory) -> None:
    app, url = fake(stream_chunk_delay_ms=150)
    with gateway(provider("p", url)) as gw:
        response, events = await read_events(gw, chat("one two three four", stream=True))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-agentcore-provider"] == "p"
    assert response.headers["x-content-type-options"] == "nosniff"  # middleware headers too
    assert "provider;dur=" in response.headers["server-timing"]
    assert events[-1][2] == "[DONE]"
    chunks = [json.loads(data) for _, _, data in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == "echo: one two three four"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all(c["choices"] for c in chunks)  # the gateway's usage chunk is not passed on
    # The first chunk reached the client before the provider produced the last one.
    first_received = events[0][0]
    last_produced = app.sent_at[-1]
    assert first_received < last_produced - 0.5
    assert events[-1][0] - first_received > 0.6


async def test_usage_chunk_when_the_caller_asks(fake: FakeFactory) -> None:
    _, url = fake()
    with gateway(provider("p", url)) as gw:
        body = chat("a b", stream=True, stream_options={"include_usage": True})
        _, events = await read_events(gw, body)
    usage = json.loads(events[-2][2])
    assert usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}


async def test_mid_stream_failure_ends_with_an_error_event(fake: FakeFactory) -> None:
    _, bad_url = fake(cut_stream_after=3)
    backup, backup_url = fake()
    with gateway(provider("bad", bad_url, price=1e-7), provider("backup", backup_url)) as gw:
        response, events = await read_events(gw, chat("one two three four five", stream=True))
    assert response.status_code == 200
    names = [name for _, name, _ in events]
    assert names == ["message"] * 3 + ["error"]
    error = json.loads(events[-1][2])["error"]
    assert error["type"] == "provider_error"
    assert "provider bad connection failed" in error["message"]
    assert all(data != "[DONE]" for _, _, data in events)  # never a clean finish
    assert backup.requests == 0  # part of an answer was sent: no fallback


async def test_failure_before_the_first_chunk_falls_back(fake: FakeFactory) -> None:
    broken, broken_url = fake(failure_rate=1.0, failure_status=503)
    _, cut_url = fake(cut_stream_after=0)
    _, ok_url = fake()
    providers = (
        provider("broken", broken_url, price=1e-8),
        provider("cut", cut_url, price=1e-7),
        provider("ok", ok_url, price=1e-6),
    )
    with gateway(*providers) as gw:
        response, events = await read_events(gw, chat("hi", stream=True))
    assert response.headers["x-agentcore-provider"] == "ok"
    assert events[-1][2] == "[DONE]"
    assert broken.requests == 1
