"""A fake LLM provider to test and demo with: ``agentcore fake-llm``.

A real HTTP server (a raw-ASGI app under uvicorn) speaking the OpenAI chat
API (``POST /v1/chat/completions``, streaming included, ``GET /v1/models``)
and Anthropic's Messages API (``POST /v1/messages``, streaming included).
It answers ``echo: <last user message>``, counts tokens as words, and can be
told to be slow (``latency_ms``), to fail (``failure_rate`` with
``failure_status``), to drip its stream (``stream_chunk_delay_ms``) or to
cut its stream off after some chunks (``cut_stream_after``). A message
containing ``[status:NNN]`` gets that status back, whatever the settings.

:class:`ThreadedServer` runs it on a free loopback port in a background
thread (tests, benchmarks).
"""

from __future__ import annotations

import asyncio
import random
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

import msgspec

from agentcore.types import Receive, Scope, Send

_encode = msgspec.json.Encoder().encode
_STATUS = re.compile(r"\[status:(\d{3})\]")


@dataclass
class FakeBehavior:
    """How the fake provider behaves; mutable, read on every request."""

    latency_ms: float = 0.0
    #: Share of requests answered with ``failure_status`` (0-1).
    failure_rate: float = 0.0
    failure_status: int = 500
    stream_chunk_delay_ms: float = 0.0
    #: Cut the connection after this many chunks of a stream (None: never).
    cut_stream_after: int | None = None
    models: tuple[str, ...] = ("fake-small", "fake-large")
    #: When set, requests without this key get 401.
    api_key: str = ""
    seed: int | None = None


class CutStream(Exception):
    """Raised inside the app to drop a stream's connection mid-way (as a crash would)."""


@dataclass
class FakeLlm:
    behavior: FakeBehavior = field(default_factory=FakeBehavior)
    #: Requests received, and the last bodies (newest last).
    requests: int = 0
    received: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=100))
    headers: deque[dict[str, str]] = field(default_factory=lambda: deque(maxlen=100))
    #: ``time.monotonic()`` of each stream event handed to the server (newest last).
    sent_at: deque[float] = field(default_factory=lambda: deque(maxlen=1000))
    #: Completion requests being answered now, and the most there ever were at once.
    in_flight: int = 0
    peak_in_flight: int = 0

    def __post_init__(self) -> None:
        self._random = random.Random(self.behavior.seed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if path == "/v1/models" and method == "GET":
            data = [
                {"id": m, "object": "model", "created": 0, "owned_by": "fake"}
                for m in self.behavior.models
            ]
            await _json(send, 200, {"object": "list", "data": data})
            return
        if method != "POST" or path not in ("/v1/chat/completions", "/v1/messages"):
            await _json(send, 404, {"error": {"message": f"no route {path}", "type": "not_found"}})
            return
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            await self._complete(scope, receive, send, path)
        finally:
            self.in_flight -= 1

    async def _complete(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.requests += 1
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        self.headers.append(headers)
        anthropic = path == "/v1/messages"
        try:
            body = msgspec.json.decode(raw)
            assert isinstance(body, dict)
        except (msgspec.DecodeError, AssertionError):
            await _json(send, 400, _error("body is not a JSON object", anthropic))
            return
        self.received.append(body)
        b = self.behavior
        if b.api_key:
            given = (
                headers.get("x-api-key")
                if anthropic
                else headers.get("authorization", "").removeprefix("Bearer ")
            )
            if given != b.api_key:
                # Like real providers, quote the key given (the gateway must not pass it on).
                await _json(send, 401, _error(f"incorrect API key provided: {given}", anthropic))
                return
        if b.latency_ms:
            await asyncio.sleep(b.latency_ms / 1000)
        prompt = _last_user_text(body.get("messages") or [])
        forced = _STATUS.search(prompt)
        if forced:
            status = int(forced.group(1))
            await _json(send, status, _error(f"forced status {status}", anthropic))
            return
        if b.failure_rate and self._random.random() < b.failure_rate:
            await _json(send, b.failure_status, _error("simulated failure", anthropic))
            return
        model = str(body.get("model", "fake"))
        words = ["echo:", *prompt.split()][: int(body.get("max_tokens") or 256)]
        prompt_tokens = sum(
            len(_text(m.get("content")).split()) for m in body.get("messages") or []
        )
        prompt_tokens += len(_text(body.get("system")).split())
        if body.get("stream"):
            if anthropic:
                await self._anthropic_stream(send, model, words, prompt_tokens)
            else:
                usage = bool((body.get("stream_options") or {}).get("include_usage"))
                await self._openai_stream(send, model, words, prompt_tokens, usage)
            return
        text = " ".join(words)
        if anthropic:
            await _json(
                send,
                200,
                {
                    "id": f"msg_{self.requests}",
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [{"type": "text", "text": text}],
                    "stop_reason": "end_turn",
                    "usage": {"input_tokens": prompt_tokens, "output_tokens": len(words)},
                },
            )
            return
        await _json(
            send,
            200,
            {
                "id": f"chatcmpl-{self.requests}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": len(words),
                    "total_tokens": prompt_tokens + len(words),
                },
            },
        )

    async def _events(self, send: Send, events: list[bytes]) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        delay = self.behavior.stream_chunk_delay_ms / 1000
        cut = self.behavior.cut_stream_after
        for i, event in enumerate(events):
            if cut is not None and i >= cut:
                raise CutStream(f"stream cut after {cut} chunks")
            if delay and i:
                await asyncio.sleep(delay)
            await send({"type": "http.response.body", "body": event, "more_body": True})
            self.sent_at.append(time.monotonic())
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _openai_stream(
        self, send: Send, model: str, words: list[str], prompt_tokens: int, usage: bool
    ) -> None:
        base = {
            "id": f"chatcmpl-{self.requests}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
        }

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            data = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            return b"data: " + _encode(data) + b"\n\n"

        events = [chunk({"role": "assistant", "content": ""})]
        events += [chunk({"content": (" " if i else "") + w}) for i, w in enumerate(words)]
        events.append(chunk({}, "stop"))
        if usage:
            totals = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": len(words),
                "total_tokens": prompt_tokens + len(words),
            }
            events.append(b"data: " + _encode({**base, "choices": [], "usage": totals}) + b"\n\n")
        events.append(b"data: [DONE]\n\n")
        await self._events(send, events)

    async def _anthropic_stream(
        self, send: Send, model: str, words: list[str], prompt_tokens: int
    ) -> None:
        def event(kind: str, data: dict[str, Any]) -> bytes:
            return f"event: {kind}\ndata: ".encode() + _encode({"type": kind, **data}) + b"\n\n"

        events = [
            event(
                "message_start",
                {
                    "message": {
                        "id": f"msg_{self.requests}",
                        "type": "message",
                        "role": "assistant",
                        "model": model,
                        "content": [],
                        "usage": {"input_tokens": prompt_tokens, "output_tokens": 1},
                    }
                },
            ),
            event(
                "content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}
            ),
            event("ping", {}),
        ]
        events += [
            event(
                "content_block_delta",
                {"index": 0, "delta": {"type": "text_delta", "text": (" " if i else "") + w}},
            )
            for i, w in enumerate(words)
        ]
        events += [
            event("content_block_stop", {"index": 0}),
            event(
                "message_delta",
                {"delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": len(words)}},
            ),
            event("message_stop", {}),
        ]
        await self._events(send, events)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _last_user_text(messages: list[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return _text(message.get("content"))
    return ""


def _error(message: str, anthropic: bool) -> dict[str, Any]:
    if anthropic:
        return {"type": "error", "error": {"type": "api_error", "message": message}}
    return {"error": {"message": message, "type": "fake_error"}}


async def _json(send: Send, status: int, data: Any) -> None:
    body = _encode(data)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _uvicorn_config(app: Any, host: str, port: int, lifespan: Literal["on", "off"] = "off") -> Any:
    import uvicorn  # loaded only to serve on a socket: in-process the fake is a bare ASGI app

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="critical",
        log_config=None,  # leave the process's logging alone
        access_log=False,
        lifespan=lifespan,
        timeout_graceful_shutdown=1,  # do not wait out a slow fake's sleeping requests
        http="httptools",
        loop="asyncio",
    )


def run(host: str, port: int, behavior: FakeBehavior) -> None:
    """Serve the fake provider until interrupted (``agentcore fake-llm``)."""
    import uvicorn  # loaded only to serve on a socket, as in _uvicorn_config

    uvicorn.run(
        FakeLlm(behavior),
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="off",
    )


class ThreadedServer:
    """An ASGI app (the fake provider by default) on a free loopback port, in a
    daemon thread::

    with ThreadedServer(FakeLlm(FakeBehavior(latency_ms=50))) as fake:
        ... fake.url ...  # e.g. http://127.0.0.1:41234/v1
    """

    def __init__(
        self, app: Any = None, host: str = "127.0.0.1", *, lifespan: Literal["on", "off"] = "off"
    ) -> None:
        import uvicorn  # loaded only to serve on a socket, as in _uvicorn_config

        self.app = FakeLlm() if app is None else app
        self._server = uvicorn.Server(_uvicorn_config(self.app, host, 0, lifespan))
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self.host = host
        self.port = 0

    @property
    def url(self) -> str:
        """The base URL to configure (``.../v1``)."""
        return f"http://{self.host}:{self.port}/v1"

    def __enter__(self) -> ThreadedServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("fake LLM server did not start")
            time.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
