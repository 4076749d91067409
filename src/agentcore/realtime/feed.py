"""One subscription of one stream: what it asks for, and replay-then-live with no gap or double.

A :class:`Feed` is attached to the worker's router (``connections.py``)
*before* its replay is read, so an event committed while the replay runs is
both in the replay and held in the feed's ``pending`` buffer; when the replay
is done, :meth:`Feed.go_live` hands the held events on, skipping every id at
or below the last one replayed. Ids are gap-free and committed in id order,
so "at or below the last replayed id" is exactly the overlap. Events of
other workers and instances reach the router in id order too, gaps filled
from the log (events/sequence.py).

``pending`` is bounded like the connection's send queue: a replay that
cannot keep up with live events ends the stream as a slow consumer (1013),
and the client resumes from its cursor.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from typing import Annotated, Protocol

import msgspec
from msgspec import Meta

from agentcore.errors import Forbidden
from agentcore.events.base import Event, EventFilter
from agentcore.events.log import EventLog
from agentcore.identity import Identity
from agentcore.models import Id

#: A glob on event types: ``task.*``, ``agent.registered``, ``*``.
Topic = Annotated[str, Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.*?\[\]!-]+$")]
#: Events one replay query returns; the replay pages through the log in steps of this size.
REPLAY_PAGE = 500
#: Largest cursor: event ids are signed 64-bit integers in every store, and a larger
#: one would fail in the store's query after the stream had opened.
MAX_CURSOR = 2**63 - 1


class Subscribe(
    msgspec.Struct, tag_field="type", tag="subscribe", forbid_unknown_fields=True, kw_only=True
):
    """What a subscription asks for: the WebSocket ``subscribe`` message, and the SSE query."""

    #: Echoed in the answer so a client can match it to its request.
    id: int | str | None = None
    topics: Annotated[list[Topic], Meta(min_length=1, max_length=32)] = msgspec.field(
        default_factory=lambda: ["*"]
    )
    #: Resume after this event id (the client's cursor); None: live from now.
    since: Annotated[int, Meta(ge=0, le=MAX_CURSOR)] | None = None
    task_id: Id | None = None
    agent_id: Id | None = None


def subscription_filter(identity: Identity, request: Subscribe) -> EventFilter:
    """The filter for ``request`` made by ``identity``; :class:`Forbidden` when it may not.

    The tenant is always the identity's. Reading events needs ``events:read``;
    an agent-bound identity may subscribe only to its own agent (and is
    pinned to it when it names none), for which ``tasks:read`` also suffices:
    that is the push-dispatch subscription.
    """
    agent_id = request.agent_id
    if identity.agent_id is not None:
        if agent_id is not None and agent_id != identity.agent_id:
            raise Forbidden(
                f"credential of agent {identity.agent_id!r} cannot subscribe to agent {agent_id!r}",
                data={"agent_id": agent_id},
            )
        agent_id = identity.agent_id
    own_agent = identity.agent_id is not None and agent_id == identity.agent_id
    if not identity.allows("events:read") and not (own_agent and identity.allows("tasks:read")):
        identity.require("events:read")
    return EventFilter(
        patterns=tuple(dict.fromkeys(request.topics)),
        tenant=identity.tenant,
        task_id=request.task_id,
        agent_id=agent_id,
    )


class Sink(Protocol):
    """The connection a feed delivers to (``connections.Connection``)."""

    @property
    def queue_limit(self) -> int: ...

    def enqueue(self, feed: Feed, event: Event) -> None: ...

    def overflow(self) -> None: ...


class Feed:
    __slots__ = ("active", "filter", "pending", "replayed_to", "sid", "sink")

    def __init__(self, sid: str, event_filter: EventFilter, sink: Sink) -> None:
        #: The subscription id the client names in ``unsubscribe`` (``s1``, ``s2``, ...).
        self.sid = sid
        self.filter = event_filter
        self.sink = sink
        #: Live events held while the replay runs; None once live.
        self.pending: deque[Event] | None = deque()
        #: Live events at or below this id were replayed (or seen before): skipped.
        self.replayed_to = 0
        #: False once unsubscribed or closed: nothing more is sent for it.
        self.active = True

    @property
    def dispatch(self) -> bool:
        """Whether ``task.assigned`` events carry the task (an agent-filtered subscription)."""
        return self.filter.agent_id is not None

    def offer(self, event: Event) -> None:
        """Called by the router with every matching event; never blocks."""
        if not self.active:
            return
        pending = self.pending
        if pending is not None:
            if len(pending) >= self.sink.queue_limit:
                self.sink.overflow()
                return
            pending.append(event)
        elif event.id > self.replayed_to:
            self.sink.enqueue(self, event)

    async def replay(self, log: EventLog, since: int) -> AsyncIterator[Event]:
        """Stored events after ``since`` that match, oldest first, paged; tracks ``replayed_to``."""
        cursor = since
        while self.active:
            page = await log.replay(cursor, self.filter, REPLAY_PAGE)
            for event in page:
                if not self.active:
                    return
                self.replayed_to = max(self.replayed_to, event.id)
                yield event
            if len(page) < REPLAY_PAGE:
                return
            cursor = page[-1].id

    def go_live(self) -> None:
        """Hand on the events held during the replay (minus the overlap) and pass live ones."""
        pending, self.pending = self.pending, None
        if pending and self.active:
            for event in pending:
                if event.id > self.replayed_to:
                    self.sink.enqueue(self, event)

    def stop(self) -> None:
        self.active = False
        self.pending = None
