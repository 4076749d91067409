"""The dispatcher: indexed matching equals the scan; its copy of the webhooks never goes stale.

The repository-backed tests run in memory, on SQLite and on PostgreSQL. A
second process (``conftest.Process``: a second gateway worker, ``agentcore
worker``; in memory, a second repository on the same database) registers and
changes webhooks the first one's dispatcher has not seen.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentcore.clock import ManualClock
from agentcore.store.memory import MemoryDatabase
from agentcore.webhooks.dispatcher import ActiveWebhooks, WebhookDispatcher
from agentcore.webhooks.repository import (
    Delivery,
    EventRow,
    MemoryWebhooks,
    Secret,
    Webhook,
)
from tests.webhooks.conftest import SECRET, Process

_ids = itertools.count()


def webhook(events: list[str], tenant: str = "default", after: int = 0) -> Webhook:
    return Webhook(
        id=f"wh_{next(_ids):06d}",
        tenant=tenant,
        url="http://127.0.0.1:9/h",
        events=events,
        secrets=[Secret(SECRET)],
        after_event_id=after,
        created_at=0.0,
        updated_at=0.0,
    )


# -- matching: the index against the scan -----------------------------------------

_PATTERN = st.sampled_from(
    ["*", "order.*", "order.created", "*.failed", "order.?", "task.*.done", "[ot]*", "x"]
)
_TYPE = st.sampled_from(
    ["order.created", "order.x", "order.failed", "task.failed", "task.a.done", "x", "y"]
)


@settings(max_examples=200, deadline=None)
@given(
    hooks=st.lists(
        st.tuples(
            st.lists(_PATTERN, min_size=1, max_size=3), st.sampled_from("ab"), st.integers(0, 6)
        ),
        max_size=12,
    ),
    events=st.lists(st.tuples(_TYPE, st.sampled_from("abc")), min_size=1, max_size=10),
)
def test_the_plan_through_the_index_equals_the_scan_of_every_webhook(
    hooks: list[tuple[list[str], str, int]], events: list[tuple[str, str]]
) -> None:
    webhooks = [webhook(patterns, tenant, after) for patterns, tenant, after in hooks]
    rows = [
        EventRow(i + 1, event_type, 1.0, "test", tenant, "{}")
        for i, (event_type, tenant) in enumerate(events)
    ]
    dispatcher = WebhookDispatcher(MemoryWebhooks(MemoryDatabase()), ManualClock(), 100)
    planned = dispatcher.plan(rows, ActiveWebhooks(webhooks, 0))
    expected = [
        (w.id, e.id)
        for e in rows
        for w in sorted(webhooks, key=lambda w: w.id)
        if w.tenant == e.tenant and e.id > w.after_event_id and w.matches(e.type)
    ]
    assert [(d.webhook_id, d.event_id) for d in planned] == expected


# -- against a repository -------------------------------------------------------


async def test_own_registrations_join_the_copy_without_reading_the_webhooks(
    processes: tuple[Process, Process],
) -> None:
    a, _ = processes
    orders = await a.register("order.*")
    await a.publish("order.created")
    assert await a.dispatch_all() == 1
    assert a.reads == {"active": 1}  # the first round reads them all once
    before = await a.publish("order.created")  # before the next registration: not for it
    failures = await a.register("*.failed")
    after = await a.publish("order.failed", "order.created")
    assert await a.dispatch_all() == 3
    assert a.reads == {"active": 1}  # the new one came from this process's own registrations
    assert await a.queued() == {
        (orders.id, 1),
        (orders.id, before[0]),
        (orders.id, after[0]),
        (orders.id, after[1]),
        (failures.id, after[0]),
    }


async def test_registrations_by_another_process_are_found_by_id(
    processes: tuple[Process, Process],
) -> None:
    a, b = processes
    await a.register("never.*")
    await a.publish("x")
    await a.dispatch_all()
    elsewhere = await b.register("order.*")
    own = await a.register("order.created")
    (event,) = await a.publish("order.created")
    assert await a.dispatch_all() == 1
    assert a.reads == {"active": 2, "active_ids": 1}  # the full read, then only the new ids
    assert await a.queued() == {(elsewhere.id, event), (own.id, event)}


@pytest.mark.parametrize("change", ["delete", "disable", "edit", "fail"])
async def test_any_change_elsewhere_is_seen_by_the_next_batch(
    processes: tuple[Process, Process], change: str
) -> None:
    a, b = processes
    hook = await a.register("order.*")
    await a.publish("order.created")
    await a.dispatch_all()
    if change == "delete":
        assert await b.webhooks.delete(hook.id, hook.tenant)
    elif change == "disable":
        assert await b.webhooks.replace(Webhook(**{**_fields(hook), "status": "disabled"}))
    elif change == "edit":
        assert await b.webhooks.replace(Webhook(**{**_fields(hook), "events": ["task.*"]}))
    else:  # 410 Gone from another worker's attempt
        assert await b.webhooks.failed(hook.id, a.clock(), 3600.0, gone=True) is not None
    # A registration too, so the number of active webhooks alone cannot tell.
    other = await b.register("nothing.*")
    (order, task) = await a.publish("order.created", "task.created")
    assert await a.dispatch_all() == 2
    queued = await a.queued()
    if change == "edit":
        assert (hook.id, task) in queued and (hook.id, order) not in queued
    else:
        assert not {(hook.id, order), (hook.id, task)} & queued
    assert not {(other.id, order), (other.id, task)} & queued


async def test_a_change_between_matching_and_commit_makes_the_round_repeat(
    processes: tuple[Process, Process],
) -> None:
    a, b = processes
    doomed = await a.register("order.*")
    kept = await a.register("*")
    await a.publish("warm.up")
    await a.dispatch_all()
    (event,) = await a.publish("order.created")
    advance = a.webhooks.advance
    calls = 0

    async def deleted_meanwhile(
        cursor: int, position: int, changes: int, deliveries: Sequence[Delivery] = ()
    ) -> bool:
        nonlocal calls
        calls += 1
        if calls == 1:  # matched with `doomed`, which another process deletes now
            assert await b.webhooks.delete(doomed.id, doomed.tenant)
        return await advance(cursor, position, changes, deliveries)

    a.webhooks.advance = deleted_meanwhile  # type: ignore[method-assign]
    assert await a.dispatch_all() == 1
    assert calls >= 2
    queued = await a.queued()
    assert (kept.id, event) in queued and (doomed.id, event) not in queued


async def test_two_dispatchers_queue_every_match_exactly_once(
    processes: tuple[Process, Process],
) -> None:
    a, b = processes
    hooks = [await a.register("order.*"), await b.register("*.created")]
    ids = await a.publish(*["order.created", "order.x", "task.created"] * 40)
    total = 0
    while True:  # interleaved rounds, each may lose the compare-and-set to the other
        n = await a.dispatcher.run_once() + await b.dispatcher.run_once()
        total += n
        if not n:
            break
    assert total == len(ids)
    expected = {
        (hook.id, i)
        for hook in hooks
        for i, t in zip(ids, ["order.created", "order.x", "task.created"] * 40, strict=True)
        if hook.matches(t)
    }
    assert await a.queued() == expected
    assert await a.webhooks.cursor() == ids[-1]


async def test_without_webhooks_the_cursor_skips_to_the_head(
    processes: tuple[Process, Process],
) -> None:
    a, _ = processes
    ids = await a.publish(*["x"] * 120)
    assert await a.dispatcher.run_once() == 120
    assert await a.webhooks.cursor() == ids[-1]
    assert a.reads == {}


def _fields(hook: Webhook) -> dict[str, Any]:
    return {f: getattr(hook, f) for f in hook.__struct_fields__}


async def test_without_webhooks_later_rounds_do_not_read_the_events(
    processes: tuple[Process, Process],
) -> None:
    a, _ = processes
    batches = 0
    next_events = a.webhooks.next_events

    async def counted(limit: int) -> Any:
        nonlocal batches
        batches += 1
        return await next_events(limit)

    a.webhooks.next_events = counted  # type: ignore[method-assign]
    await a.publish("x")
    assert await a.dispatcher.run_once() == 1  # reads them, finds no webhook
    ids = await a.publish(*["x"] * 30)
    assert await a.dispatcher.run_once() == 30
    assert await a.webhooks.cursor() == ids[-1]
    assert batches == 1

    hook = await a.register("x")
    after = await a.publish("x", "y")
    assert await a.dispatch_all() == 2
    assert await a.queued() == {(hook.id, after[0])}  # only what came after it
    assert batches >= 2
