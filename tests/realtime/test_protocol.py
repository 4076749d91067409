"""The stream protocol in-process: message parsing, subscription rules, feeds, the sweeper.

A WebSocket here is the ASGI side only (:class:`Socket` feeds ``receive`` and
records ``send``); the gateway runs with an in-memory store, and keepalive,
idle and rate-limit time is a manual clock moved by the test, never slept.
Real sockets are in test_websocket.py and test_sse.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from agentcore import apikeys
from agentcore.app import Gateway
from agentcore.clock import ManualClock
from agentcore.errors import Forbidden, InvalidRequest, ParseError
from agentcore.events.base import Event
from agentcore.identity import ANONYMOUS, Identity
from agentcore.models import AgentCard
from agentcore.realtime.connections import close_reason
from agentcore.realtime.feed import Feed, Subscribe, subscription_filter
from agentcore.realtime.sse import parse_query
from agentcore.realtime.websocket import (
    WS_PATH,
    Auth,
    Ping,
    Rpc,
    Unsubscribe,
    parse,
    request_id,
)
from agentcore.types import Message
from tests.support import agent_card, gateway_client, make_config

WAIT_S = 2.0


class Socket:
    """One in-process WebSocket: the test plays the client, uvicorn's part included."""

    def __init__(
        self, app: Gateway, headers: list[tuple[bytes, bytes]] | None = None, path: str = WS_PATH
    ) -> None:
        self.incoming: asyncio.Queue[Message] = asyncio.Queue()
        self.outgoing: asyncio.Queue[Message] = asyncio.Queue()
        #: While cleared, event messages wait (a client that does not read).
        self.reading = asyncio.Event()
        self.reading.set()
        scope = {
            "type": "websocket",
            "path": path,
            "headers": headers or [],
            "client": ("127.0.0.1", 50000),
            "query_string": b"",
        }
        self.incoming.put_nowait({"type": "websocket.connect"})
        self.task = asyncio.create_task(app(scope, self.incoming.get, self._send))

    async def _send(self, message: Message) -> None:
        if message["type"] == "websocket.send":
            await self.reading.wait()
        if message["type"] == "websocket.close":
            # As uvicorn does: the app's own receive() learns of the close at once.
            self.incoming.put_nowait({"type": "websocket.disconnect", "code": message["code"]})
        await self.outgoing.put(message)

    def send(self, **message: Any) -> None:
        self.incoming.put_nowait({"type": "websocket.receive", "text": json.dumps(message)})

    def send_text(self, text: str) -> None:
        self.incoming.put_nowait({"type": "websocket.receive", "text": text})

    async def message(self) -> Message:
        return await asyncio.wait_for(self.outgoing.get(), WAIT_S)

    async def json(self) -> dict[str, Any]:
        message = await self.message()
        assert message["type"] == "websocket.send", message
        data: dict[str, Any] = json.loads(message["text"])
        return data

    async def expect(self, kind: str) -> dict[str, Any]:
        data = await self.json()
        assert data["type"] == kind, data
        return data

    async def closed(self) -> Message:
        """The close message, after any messages still being sent."""
        while True:
            message = await self.message()
            if message["type"] == "websocket.close":
                return message

    async def accepted(self) -> Socket:
        assert (await self.message())["type"] == "websocket.accept"
        return self

    async def end(self) -> None:
        self.incoming.put_nowait({"type": "websocket.disconnect", "code": 1000})
        await asyncio.wait_for(self.task, WAIT_S)


@pytest.fixture
async def mono() -> ManualClock:
    """The streams' monotonic clock (keepalive, idle timeout, message rate)."""
    return ManualClock(1000.0)


@pytest.fixture
async def app(gateway: Gateway, mono: ManualClock) -> Gateway:
    gateway.streams.now = mono
    return gateway


@pytest.fixture
async def ws(app: Gateway) -> AsyncIterator[Socket]:
    socket = await Socket(app).accepted()
    yield socket
    if not socket.task.done():
        await socket.end()


# -- parsing ---------------------------------------------------------------------------


def test_every_client_message_type_parses() -> None:
    assert parse('{"type":"ping","id":3}') == Ping(id=3)
    assert parse('{"type":"auth","token":"ak_x"}') == Auth(token="ak_x")
    assert parse('{"type":"unsubscribe"}') == Unsubscribe(subscription=None)
    sub = parse('{"type":"subscribe","topics":["task.*"],"since":7,"task_id":"t1","id":"a"}')
    assert sub == Subscribe(id="a", topics=["task.*"], since=7, task_id="t1")
    call = parse('{"type":"rpc","id":1,"method":"task.get","params":{"task_id":"t"}}')
    assert isinstance(call, Rpc) and call.method == "task.get"
    assert parse('{"type":"subscribe"}') == Subscribe(topics=["*"])


@pytest.mark.parametrize(
    ("text", "error", "words"),
    [
        ("nope", ParseError, "one JSON object"),
        ("[1]", InvalidRequest, "Expected `object`"),
        ('{"type":"shout"}', InvalidRequest, "expected one of"),
        ('{"id":1}', InvalidRequest, "expected one of"),
        ('{"type":"subscribe","topic":["x"]}', InvalidRequest, "topic"),
        ('{"type":"subscribe","since":-1}', InvalidRequest, "since"),
        ('{"type":"subscribe","topics":[]}', InvalidRequest, "topics"),
        ('{"type":"subscribe","topics":["a b"]}', InvalidRequest, "topics"),
        ('{"type":"rpc","id":1}', InvalidRequest, "method"),
    ],
)
def test_bad_messages_are_named_errors(text: str, error: type[Exception], words: str) -> None:
    with pytest.raises(error) as info:
        parse(text)
    assert words in str(info.value)


def test_the_id_of_a_bad_message_is_still_echoed() -> None:
    assert request_id('{"type":"shout","id":42}') == 42
    assert request_id('{"type":"shout","id":"x"}') == "x"
    assert request_id('{"type":"shout","id":[1]}') is None
    assert request_id('{"type":"shout","id":true}') is None
    assert request_id("not json") is None


def test_sse_query_is_the_same_subscription() -> None:
    request = parse_query(b"topics=task.*,agent.*&task_id=t1&since=5", None)
    assert request == Subscribe(topics=["task.*", "agent.*"], task_id="t1", since=5)
    assert parse_query(b"topics=a.b&topics=c.*", b"9").since == 9  # Last-Event-ID wins
    assert parse_query(b"since=3", b"12").since == 12
    assert parse_query(b"", None) == Subscribe()
    for bad in (b"since=x", b"since=-2", b"colour=red", b"topics=a%20b", b"since=1&since=2"):
        with pytest.raises(InvalidRequest):
            parse_query(bad, None)


def test_close_reasons_fit_a_close_frame() -> None:
    assert close_reason("short") == "short"
    assert len(close_reason("é" * 100).encode()) <= 123
    assert len(close_reason("x" * 500).encode()) == 123


# -- who may subscribe to what ---------------------------------------------------------


def test_a_subscription_is_always_bound_to_the_tenant() -> None:
    acme = Identity("api_key", "k1", "acme", frozenset({"events:read"}))
    found = subscription_filter(acme, Subscribe(topics=["task.*", "task.*"], agent_id="a9"))
    assert (found.tenant, found.patterns, found.agent_id) == ("acme", ("task.*",), "a9")
    assert subscription_filter(ANONYMOUS, Subscribe()).tenant == "default"


def test_an_agent_credential_subscribes_only_to_its_own_agent() -> None:
    bot = Identity("api_key", "k1", "acme", frozenset({"tasks:read"}), agent_id="bot")
    assert subscription_filter(bot, Subscribe()).agent_id == "bot"  # pinned
    assert subscription_filter(bot, Subscribe(agent_id="bot")).agent_id == "bot"
    with pytest.raises(Forbidden, match="cannot subscribe to agent 'other'"):
        subscription_filter(bot, Subscribe(agent_id="other"))


def test_reading_events_needs_the_events_scope_except_for_dispatch() -> None:
    tasks_only = Identity("api_key", "k1", "acme", frozenset({"tasks:read"}))
    with pytest.raises(Forbidden, match="events:read"):
        subscription_filter(tasks_only, Subscribe(agent_id="bot"))
    nothing = Identity("api_key", "k2", "acme", frozenset(), agent_id="bot")
    with pytest.raises(Forbidden, match="events:read"):
        subscription_filter(nothing, Subscribe())


# -- feeds -------------------------------------------------------------------------------


class Sink:
    def __init__(self, limit: int = 10) -> None:
        self.queue_limit = limit
        self.got: list[int] = []
        self.overflowed = False

    def enqueue(self, feed: Feed, event: Event) -> None:
        self.got.append(event.id)

    def overflow(self) -> None:
        self.overflowed = True


def ev(event_id: int) -> Event:
    return Event(id=event_id, type="task.created", timestamp=1.0)


def test_a_feed_holds_live_events_during_the_replay_and_skips_the_overlap() -> None:
    sink = Sink()
    feed = Feed("s1", subscription_filter(ANONYMOUS, Subscribe()), sink)
    for i in (5, 6, 7):
        feed.offer(ev(i))
    assert sink.got == []
    feed.replayed_to = 6  # the replay already sent 5 and 6
    feed.go_live()
    feed.offer(ev(8))
    feed.offer(ev(6))  # a late duplicate
    assert sink.got == [7, 8]


def test_a_feed_that_cannot_hold_more_during_the_replay_overflows() -> None:
    sink = Sink(limit=2)
    feed = Feed("s1", subscription_filter(ANONYMOUS, Subscribe()), sink)
    for i in (1, 2, 3):
        feed.offer(ev(i))
    assert sink.overflowed


TOPIC_SETS: list[list[str]] = [
    ["task.created"],
    ["task.created", "agent.registered"],
    ["task.*"],
    ["*"],
    ["agent.registered", "task.c?eated"],  # one glob: the whole feed is scanned
    ["load.abc"],
    ["*.registered"],
]
EVENT_TYPES = ["task.created", "agent.registered", "load.abc", "load.abd", "task.completed"]


def test_indexed_dispatch_offers_exactly_what_a_scan_of_every_feed_would(gateway: Gateway) -> None:
    streams = gateway.streams
    identity = Identity("api_key", "k", "acme", None)
    feeds: list[tuple[Feed, Sink]] = []
    for number, topics in enumerate(TOPIC_SETS * 2):
        sink = Sink(limit=100)
        feed = Feed(f"s{number}", subscription_filter(identity, Subscribe(topics=topics)), sink)
        feed.go_live()
        streams.attach(feed)
        feeds.append((feed, sink))
    other = Sink(limit=100)  # another tenant's feed never sees acme's events
    zeta = Identity("api_key", "k2", "zeta")
    other_feed = Feed("o", subscription_filter(zeta, Subscribe()), other)
    other_feed.go_live()
    streams.attach(other_feed)
    events = [
        Event(id=i + 1, type=t, timestamp=1.0, tenant="acme") for i, t in enumerate(EVENT_TYPES)
    ]

    for event in events:
        streams.dispatch(event)

    for feed, sink in feeds:
        assert sink.got == [e.id for e in events if feed.filter.matches(e)], feed.filter.patterns
    assert other.got == []
    assert any(sink.got for _, sink in feeds)

    for feed, _ in feeds:
        streams.detach(feed)
    streams.detach(other_feed)
    assert streams.subscriptions == 0
    assert not streams._by_type and not streams._scanned  # nothing left behind


# -- the WebSocket protocol in-process ---------------------------------------------------


async def test_subscribe_then_events_then_unsubscribe(app: Gateway, ws: Socket) -> None:
    ws.send(type="subscribe", topics=["agent.*"], id=1)
    subscribed = await ws.expect("subscribed")
    assert subscribed["id"] == 1 and subscribed["subscription"] == "s1"
    await app.registry.register(card("a1"))
    event = await ws.expect("event")
    assert (event["subscription"], event["event_type"]) == ("s1", "agent.registered")
    assert event["data"]["agent_id"] == "a1" and event["id"] == subscribed["head"] + 1

    ws.send(type="unsubscribe", subscription="s1", id=2)
    assert await ws.expect("unsubscribed") == {
        "type": "unsubscribed",
        "id": 2,
        "subscriptions": ["s1"],
    }
    await app.registry.register(card("a2"))
    ws.send(type="ping", id=3)
    assert await ws.expect("pong") == {"type": "pong", "id": 3}  # and no event before it


async def test_errors_keep_the_connection_open(ws: Socket) -> None:
    ws.send_text("{")
    assert (await ws.expect("error"))["error"]["code"] == -32700
    ws.send(type="unsubscribe", subscription="s9", id="u")
    error = await ws.expect("error")
    assert error["id"] == "u" and error["error"]["code"] == -32602
    ws.send(type="auth", token="x", id=4)
    assert "already authenticated" in (await ws.expect("error"))["error"]["message"]
    ws.incoming.put_nowait({"type": "websocket.receive", "bytes": b"{}"})
    assert "binary" in (await ws.expect("error"))["error"]["message"]
    ws.send(type="ping")
    assert (await ws.expect("pong"))["id"] is None


async def test_rpc_goes_through_the_dispatcher(ws: Socket) -> None:
    card = agent_card("a1", "x")
    ws.send(type="rpc", id=5, method="agent.register", params={"agent_card": card})
    result = await ws.expect("rpc_result")
    assert result["id"] == 5 and result["result"]["agent_id"] == "a1"
    ws.send(type="rpc", id=6, method="task.get", params={"task_id": "missing"})
    error = await ws.expect("rpc_error")
    assert error["id"] == 6 and error["error"]["code"] == -32002
    ws.send(type="rpc", id=7, method="no.such")
    assert (await ws.expect("rpc_error"))["error"]["code"] == -32601


async def test_too_many_subscriptions_are_refused(ws: Socket) -> None:
    for _ in range(16):
        ws.send(type="subscribe")
        await ws.expect("subscribed")
    ws.send(type="subscribe", id="17th")
    error = await ws.expect("error")
    assert error["id"] == "17th" and "at most 16" in error["error"]["message"]


async def test_resume_replays_exactly_what_came_after_the_cursor(app: Gateway, ws: Socket) -> None:
    published = [await app.events.publish("task.created", {"task_id": f"t{i}"}) for i in range(5)]
    ws.send(type="subscribe", topics=["task.*"], since=published[1].id)
    subscribed = await ws.expect("subscribed")
    assert subscribed["truncated"] is False and subscribed["head"] == published[-1].id
    replayed = [(await ws.expect("event"))["id"] for _ in range(3)]
    assert replayed == [e.id for e in published[2:]]
    live = await app.events.publish("task.created", {"task_id": "t5"})
    assert (await ws.expect("event"))["id"] == live.id


async def test_a_cursor_older_than_retention_is_reported(app: Gateway, ws: Socket) -> None:
    for i in range(6):
        await app.events.publish("task.created", {"task_id": f"t{i}"})
    await app.repos.events.trim(2, 0.0)  # keep the newest two
    ws.send(type="subscribe", since=1)
    subscribed = await ws.expect("subscribed")
    assert subscribed["truncated"] is True
    assert [(await ws.expect("event"))["id"] for _ in range(2)] == [5, 6]


async def test_idle_connections_are_pinged_then_closed(
    app: Gateway, ws: Socket, mono: ManualClock
) -> None:
    config = app.config.realtime
    mono.advance(config.ping_interval_s)
    await app.streams.sweep()
    assert await ws.json() == {"type": "ping"}
    await app.streams.sweep()  # pinged already: not again
    mono.advance(config.ping_interval_s / 2)
    ws.send(type="pong")
    await asyncio.sleep(0.05)
    mono.advance(config.idle_timeout_s - 1)  # quiet for less than the timeout since the pong
    await app.streams.sweep()
    assert await ws.json() == {"type": "ping"}
    mono.advance(2)
    await app.streams.sweep()
    closed = await ws.closed()
    assert closed["code"] == 1000 and "idle timeout" in closed["reason"]
    await asyncio.wait_for(ws.task, WAIT_S)
    assert len(app.streams) == 0


async def test_a_flooding_client_gets_errors_then_1008(app: Gateway, ws: Socket) -> None:
    burst = app.config.realtime.client_messages_burst
    for _ in range(burst):
        ws.send(type="ping")
    for _ in range(burst):
        assert (await ws.json())["type"] == "pong"
    ws.send(type="ping", id="over")
    refused = await ws.expect("error")
    assert refused["error"]["code"] == -32029 and "retry_after_s" in refused["error"]["data"]
    for _ in range(burst):
        ws.send(type="ping")
    closed = await ws.closed()
    assert closed["code"] == 1008 and "rate limit" in closed["reason"]


async def test_an_oversize_message_closes_with_1009(app: Gateway, ws: Socket) -> None:
    ws.send(type="ping", padding="x" * app.config.realtime.max_message_bytes)
    assert (await ws.closed())["code"] == 1009


async def test_a_slow_consumer_is_closed_with_1013_and_others_are_not_delayed() -> None:
    config = make_config(realtime={"send_queue_size": 3})
    async with gateway_client(config) as (app, _):
        slow = await Socket(app).accepted()
        fast = await Socket(app).accepted()
        for socket in (slow, fast):
            socket.send(type="subscribe", topics=["task.*"])
            await socket.expect("subscribed")
        slow.reading.clear()  # its socket stops taking messages
        received = []
        for i in range(6):  # a publish never waits for subscribers: give fast its turn
            await app.events.publish("task.created", {"task_id": f"t{i}"})
            received.append((await fast.expect("event"))["data"]["task_id"])
        assert received == [f"t{i}" for i in range(6)]
        slow.reading.set()
        closed = await slow.closed()
        assert closed["code"] == 1013 and "slow consumer" in closed["reason"]
        await asyncio.wait_for(slow.task, WAIT_S)
        await fast.end()
        assert app.metrics is not None
        assert "agentcore_stream_slow_consumers_total 1.0" in app.metrics.render({}, {}).decode()


async def test_shutdown_closes_streams_with_1001_and_refuses_new_ones(
    app: Gateway, ws: Socket
) -> None:
    ws.send(type="subscribe")
    await ws.expect("subscribed")
    await app.close_streams()
    closed = await ws.closed()
    assert (closed["code"], closed["reason"]) == (1001, "server shutting down")
    late = await Socket(app).accepted()
    assert (await late.closed())["code"] == 1001


async def test_first_message_auth() -> None:
    config = make_config(auth={"mode": "api_key"}, realtime={"auth_timeout_s": 0.2})
    async with gateway_client(config) as (app, _):
        full, key = apikeys.generate(
            tenant="acme", scopes=["events:read"], now=app.clock(), agent_id=None
        )
        assert await app.repos.api_keys.put(key)

        ok = await Socket(app).accepted()
        ok.send(type="auth", token=full, id=1)
        assert await ok.expect("authenticated") == {
            "type": "authenticated",
            "id": 1,
            "tenant": "acme",
            "agent_id": None,
            "scopes": ["events:read"],
        }
        ok.send(type="subscribe")
        assert (await ok.expect("subscribed"))["topics"] == ["*"]
        await ok.end()

        wrong = await Socket(app).accepted()
        wrong.send(type="auth", token="ak_nope_nope")
        assert (await wrong.closed())["code"] == 1008
        first = await Socket(app).accepted()
        first.send(type="subscribe")
        closed = await first.closed()
        assert closed["code"] == 1008 and "authenticate first" in closed["reason"]
        silent = await Socket(app).accepted()
        closed = await silent.closed()
        assert closed["code"] == 1008 and "timeout" in closed["reason"]
        for socket in (wrong, first, silent):
            await asyncio.wait_for(socket.task, WAIT_S)


async def test_other_websocket_paths_are_closed(app: Gateway) -> None:
    socket = Socket(app, path="/ws")
    assert (await socket.message())["code"] == 1008


async def test_metrics_count_connections_and_subscriptions(app: Gateway, ws: Socket) -> None:
    ws.send(type="subscribe")
    await ws.expect("subscribed")
    assert len(app.streams) == 1 and app.streams.subscriptions == 1
    assert app.metrics is not None
    body = app.metrics.render({}, {}).decode()
    assert 'agentcore_stream_connections{transport="websocket"} 1.0' in body
    assert "agentcore_stream_subscriptions 1.0" in body
    await ws.end()
    body = app.metrics.render({}, {}).decode()
    assert 'agentcore_stream_connections{transport="websocket"} 0.0' in body
    assert "agentcore_stream_subscriptions 0.0" in body


def card(agent_id: str) -> AgentCard:
    return msgspec.convert(agent_card(agent_id, "x"), AgentCard)
