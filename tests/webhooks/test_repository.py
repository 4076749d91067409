"""The webhook repository's contract, written once and run in memory, on SQLite and on
PostgreSQL; ``conftest.Process`` is one process's view of the database.

Only the listing order a SQL repository keeps for paging is tested on SQL alone.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import asyncpg
import msgspec
import pytest
from msgspec.structs import replace as changed

from agentcore.clock import ManualClock
from agentcore.errors import ConfigError, StoreUnavailable
from agentcore.store.database import Database
from agentcore.store.memory import MemoryDatabase
from agentcore.webhooks.repository import (
    LISTINGS_KEPT,
    Attempt,
    Delivery,
    DeliveryStatus,
    Secret,
    SqlWebhooks,
    Stats,
    Webhook,
    WebhooksVersion,
)
from agentcore.webhooks.secretbox import SecretBox
from tests.webhooks.conftest import KEY, SECRET, Process

OTHER_SECRET = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3ODk="

#: What each backend raises for a row whose unique key is taken.
DUPLICATE = (ValueError, sqlite3.IntegrityError, asyncpg.UniqueViolationError)


def delivery(
    hook: Webhook,
    event_id: int | None,
    delivery_id: str,
    due: float,
    *,
    status: DeliveryStatus = "pending",
    created: float | None = None,
) -> Delivery:
    at = due if created is None else created
    return Delivery(
        id=delivery_id,
        webhook_id=hook.id,
        tenant=hook.tenant,
        event_id=event_id,
        event_type="order.created",
        payload='{"type":"order.created","data":{}}',
        status=status,
        attempts=0,
        tries=0,
        next_attempt_at=due,
        created_at=at,
        updated_at=at,
    )


def attempt(
    claimed: Delivery,
    at: float,
    status_code: int | None,
    ok: bool,
    duration_ms: float = 12.5,
    error: str | None = None,
) -> Attempt:
    return Attempt(
        delivery_id=claimed.id,
        attempt=claimed.attempts,
        webhook_id=claimed.webhook_id,
        at=at,
        status_code=status_code,
        ok=ok,
        duration_ms=duration_ms,
        error=error,
    )


async def ids(process: Process, status: Any = None, limit: int = 50, offset: int = 0) -> list[str]:
    page, _ = await process.webhooks.page("default", status, limit, offset)
    return [w.id for w in page]


# -- webhooks ---------------------------------------------------------------------


async def test_a_webhook_starts_after_the_log_head_and_is_taken_once(
    processes: tuple[Process, Process],
) -> None:
    a, b = processes
    await a.publish("x", "y")
    hook = await a.register("order.*")
    assert hook.after_event_id == 2
    assert await a.webhooks.get(hook.id) == hook
    assert await b.webhooks.get(hook.id, "default") == hook
    assert await a.webhooks.get(hook.id, "other") is None
    assert await a.webhooks.get("wh_unknown") is None
    assert a.webhooks.take_created() == [hook]
    assert a.webhooks.take_created() == []
    assert b.webhooks.take_created() == []  # another process's registration


async def test_active_webhooks_come_by_id_and_a_tenants_oldest_first(process: Process) -> None:
    first = await process.register("a.*")
    second = await process.register("b.*")
    elsewhere = await process.register("c.*", tenant="other")
    assert await process.webhooks.replace(changed(first, status="disabled"))
    active = sorted([second.id, elsewhere.id])
    assert [w.id for w in await process.webhooks.active()] == active
    assert sorted(await process.webhooks.active_ids()) == active
    chosen = await process.webhooks.active([first.id, elsewhere.id, "wh_unknown"])
    assert chosen == [elsewhere]
    assert [w.id for w in await process.webhooks.for_tenant("default")] == [first.id, second.id]
    assert [w.id for w in await process.webhooks.for_tenant("default", "disabled")] == [first.id]
    assert await process.webhooks.for_tenant("nobody") == []


async def test_replace_keeps_the_identity_and_counts_a_change(process: Process) -> None:
    hook = await process.register("order.*")
    before = await process.webhooks.version()
    edited = changed(
        hook,
        url="http://127.0.0.1:9/other",
        events=["task.*"],
        headers={"x-token": "abc"},
        status="disabled",
        disabled_reason="paused",
        after_event_id=99,
        created_at=1.0,
        updated_at=hook.updated_at + 5,
    )
    assert await process.webhooks.replace(edited)
    assert await process.webhooks.get(hook.id) == changed(
        edited, after_event_id=hook.after_event_id, created_at=hook.created_at
    )
    assert await process.webhooks.version() == WebhooksVersion(
        before.active - 1, before.changes + 1, before.head
    )
    assert not await process.webhooks.replace(changed(hook, tenant="other"))
    assert not await process.webhooks.replace(changed(hook, id="wh_unknown"))


async def test_a_failing_endpoint_is_disabled_after_its_streak_or_at_410(
    process: Process,
) -> None:
    webhooks = process.webhooks
    hook = await process.register("*")
    gone = await process.register("*")
    t0 = process.clock()
    assert await webhooks.failed(hook.id, t0, 60.0, gone=False) is None
    assert await webhooks.failed(hook.id, t0 + 30, 60.0, gone=False) is None
    streak = await webhooks.get(hook.id)
    assert streak is not None and streak.failing_since == t0
    await webhooks.succeeded(hook.id)
    assert await webhooks.get(hook.id) == changed(streak, failing_since=None)
    assert await webhooks.failed(hook.id, t0 + 100, 60.0, gone=False) is None  # a new streak
    before = await webhooks.version()

    disabled = await webhooks.failed(hook.id, t0 + 160, 60.0, gone=False)
    assert disabled is not None and disabled.status == "disabled"
    assert disabled.disabled_reason == f"failing continuously since {t0 + 100:.0f} (epoch s)"
    assert (disabled.failing_since, disabled.updated_at) == (t0 + 100, t0 + 160)
    assert await webhooks.get(hook.id) == disabled
    assert await webhooks.failed(hook.id, t0 + 200, 60.0, gone=True) is None  # not active

    by_410 = await webhooks.failed(gone.id, t0, 3600.0, gone=True)
    assert by_410 is not None and by_410.disabled_reason == "the endpoint answered 410 Gone"
    assert await webhooks.version() == WebhooksVersion(
        before.active - 2, before.changes + 2, before.head
    )


async def test_deleting_a_webhook_takes_its_outbox_and_attempt_log(process: Process) -> None:
    webhooks = process.webhooks
    hook = await process.register("*")
    kept = await process.register("*")
    now = process.clock()
    await webhooks.enqueue(delivery(hook, 1, "msg_1", now))
    await webhooks.enqueue(delivery(kept, 1, "msg_2", now))
    logged: dict[str, Attempt] = {}
    for claimed in await webhooks.claim(now, "w1", 30.0, 10, 5):
        logged[claimed.id] = attempt(claimed, now + 1, 500, ok=False)
        assert await webhooks.record(claimed, logged[claimed.id], "pending", now + 10)
    changes = (await webhooks.version()).changes

    assert not await webhooks.delete(hook.id, "other")
    assert await webhooks.delete(hook.id, "default")
    assert not await webhooks.delete(hook.id, "default")
    assert await webhooks.get(hook.id) is None
    assert await webhooks.deliveries(hook.id, None, 10, 0) == []
    assert await webhooks.attempts(["msg_1", "msg_2"]) == {"msg_1": [], "msg_2": [logged["msg_2"]]}
    assert (await webhooks.stats(hook.id)).attempts == 0
    assert (await webhooks.version()).changes == changes + 1


# -- listing ----------------------------------------------------------------------


async def test_pages_are_oldest_first_with_the_total(process: Process) -> None:
    made = [(await process.register("x.*")).id for _ in range(7)]
    await process.register("x.*", tenant="other")
    page, total = await process.webhooks.page("default", None, 3, 2)
    assert [w.id for w in page] == made[2:5] and total == 7
    assert page[0].events == ["x.*"]
    assert await ids(process, offset=6) == made[6:]
    assert await ids(process, offset=2**62) == []
    assert await process.webhooks.page("nobody", None, 50, 0) == ([], 0)


async def test_changes_by_another_process_show_in_the_next_page(
    processes: tuple[Process, Process],
) -> None:
    a, b = processes
    first = await a.register("x.*")
    second = await a.register("x.*")
    assert await ids(a) == [first.id, second.id]  # SQL: the order is now kept by `a`

    third = await b.register("x.*")
    assert await ids(a) == [first.id, second.id, third.id]

    assert await b.webhooks.delete(second.id, "default")
    assert await ids(a) == [first.id, third.id]

    assert await b.webhooks.replace(changed(first, status="disabled"))
    assert await ids(a, "active") == [third.id]
    assert await ids(a, "disabled") == [first.id]
    (disabled,), total = await a.webhooks.page("default", "disabled", 50, 0)
    assert disabled.status == "disabled" and total == 1  # the rows themselves are read fresh

    await b.webhooks.failed(third.id, a.clock(), 0.0, gone=True)
    assert await ids(a, "active") == []


async def test_the_kept_orders_are_bounded(sql_processes: tuple[Process, Process]) -> None:
    a, _ = sql_processes
    assert isinstance(a.webhooks, SqlWebhooks)
    for n in range(LISTINGS_KEPT + 5):
        await a.register("x.*", tenant=f"t{n}")
        await a.webhooks.page(f"t{n}", None, 50, 0)
    assert len(a.webhooks._listings) == LISTINGS_KEPT


# -- the dispatcher ---------------------------------------------------------------


async def test_the_dispatcher_reads_batches_and_moves_its_cursor_by_compare_and_set(
    processes: tuple[Process, Process],
) -> None:
    a, b = processes
    assert await a.webhooks.next_events(10) is None
    hook = await a.register("order.*")
    events = await a.publish("order.created", "order.paid", "task.created", amount=42)
    batch = await a.webhooks.next_events(2)
    assert batch is not None and batch.cursor == 0
    assert [e.id for e in batch.events] == events[:2]
    first = batch.events[0]
    assert (first.type, first.timestamp, first.source, first.tenant) == (
        "order.created",
        a.clock(),
        "gateway",
        "default",
    )
    assert msgspec.json.decode(first.data) == {"amount": 42}
    assert batch.version == WebhooksVersion(active=1, changes=0, head=events[-1])

    matched = [
        delivery(hook, events[0], "msg_1", a.clock()),
        delivery(hook, events[0], "msg_2", a.clock()),  # the same event again: queued once
        delivery(hook, events[1], "msg_3", a.clock()),
    ]
    assert await a.webhooks.advance(0, events[1], 0, matched)
    assert not await b.webhooks.advance(0, events[1], 0, matched)  # the cursor moved on
    assert await b.webhooks.cursor() == events[1]
    queued = await a.webhooks.deliveries(hook.id, None, 10, 0)
    assert sorted(d.id for d in queued) == ["msg_1", "msg_3"]

    assert await b.webhooks.replace(changed(hook, events=["task.*"]))
    assert not await a.webhooks.advance(events[1], events[2], 0)  # matched before the change
    version = await a.webhooks.version()
    assert version == WebhooksVersion(active=1, changes=1, head=events[-1])
    assert await a.webhooks.advance(events[1], events[2], version.changes)
    assert await a.webhooks.next_events(10) is None


async def test_a_tenants_events_after_a_cursor_within_a_window(process: Process) -> None:
    t0 = process.clock()
    published: list[int] = []
    for n in range(6):
        published += await process.publish("x", tenant="a" if n % 2 == 0 else "b", n=n)
        process.clock.advance(10)
    mine = [published[0], published[2], published[4]]  # at t0, t0 + 20, t0 + 40
    rows = await process.webhooks.events("a", 0, 10)
    assert [r.id for r in rows] == mine
    assert [msgspec.json.decode(r.data) for r in rows] == [{"n": 0}, {"n": 2}, {"n": 4}]
    assert [r.id for r in await process.webhooks.events("a", mine[0], 10)] == mine[1:]
    assert [r.id for r in await process.webhooks.events("a", 0, 2)] == mine[:2]
    window = await process.webhooks.events("a", 0, 10, since=t0 + 20, until=t0 + 40)
    assert [r.id for r in window] == [mine[1]]
    assert await process.webhooks.events("c", 0, 10) == []


# -- the outbox -------------------------------------------------------------------


async def test_a_claim_takes_due_deliveries_oldest_first_within_each_endpoints_share(
    processes: tuple[Process, Process],
) -> None:
    a, b = processes
    one = await a.register("*")
    two = await a.register("*")
    off = await a.register("*")
    assert await a.webhooks.replace(changed(off, status="disabled"))
    now = a.clock()
    for queued in [
        delivery(one, 1, "msg_1", now - 3),
        delivery(one, 2, "msg_2", now - 2),
        delivery(one, 3, "msg_3", now - 1),
        delivery(two, 1, "msg_4", now - 2.5),
        delivery(two, 2, "msg_5", now + 10),  # not due yet
        delivery(off, 1, "msg_6", now - 10),  # its webhook is disabled
    ]:
        await a.webhooks.enqueue(queued)

    claimed = await a.webhooks.claim(now, "w1", 30.0, 10, 2)
    assert [d.id for d in claimed] == ["msg_1", "msg_4", "msg_2"]
    assert {(d.status, d.lease_owner, d.attempts, d.tries, d.updated_at) for d in claimed} == {
        ("delivering", "w1", 1, 1, now)
    }
    (rest,) = await b.webhooks.claim(now, "w2", 30.0, 10, 2)  # leased ones are not due
    assert (rest.id, rest.lease_owner) == ("msg_3", "w2")

    later = now + 10
    assert await b.webhooks.claim(later, "w2", 30.0, 10, 2, exclude=[two.id]) == []
    assert await b.webhooks.claim(later, "w2", 30.0, 0, 2) == []
    assert [d.id for d in await b.webhooks.claim(later, "w2", 30.0, 10, 2)] == ["msg_5"]
    statuses = {d.id: d.status for d in await a.webhooks.deliveries(off.id, None, 10, 0)}
    assert statuses == {"msg_6": "pending"}


async def test_an_expired_lease_passes_to_another_worker_and_the_first_cannot_record(
    processes: tuple[Process, Process],
) -> None:
    a, b = processes
    hook = await a.register("*")
    now = a.clock()
    await a.webhooks.enqueue(delivery(hook, 1, "msg_1", now))
    (first,) = await a.webhooks.claim(now, "w1", 10.0, 10, 5)
    assert await b.webhooks.claim(now + 5, "w2", 10.0, 10, 5) == []
    (second,) = await b.webhooks.claim(now + 11, "w2", 10.0, 10, 5)
    assert (second.id, second.lease_owner, second.attempts, second.tries) == ("msg_1", "w2", 2, 2)

    late = attempt(first, now + 12, 200, ok=True)
    assert not await a.webhooks.record(first, late, "succeeded", now + 12)
    await a.webhooks.release(first, now + 100)  # not the holder: nothing changes
    failure = attempt(second, now + 13, 500, ok=False, error="HTTP 500")
    assert await b.webhooks.record(second, failure, "pending", now + 60)

    (stored,) = await a.webhooks.deliveries(hook.id, None, 10, 0)
    assert stored == changed(
        second,
        status="pending",
        lease_owner=None,
        next_attempt_at=now + 60,
        last_status=500,
        last_error="HTTP 500",
        updated_at=now + 13,
    )
    assert await a.webhooks.attempts(["msg_1"]) == {"msg_1": [failure]}


async def test_a_released_claim_is_not_counted_and_waits_for_its_time(process: Process) -> None:
    webhooks = process.webhooks
    hook = await process.register("*")
    now = process.clock()
    await webhooks.enqueue(delivery(hook, None, "msg_1", now))
    (claimed,) = await webhooks.claim(now, "w1", 30.0, 10, 5)
    await webhooks.release(claimed, now + 60)
    (stored,) = await webhooks.deliveries(hook.id, None, 10, 0)
    assert (stored.status, stored.lease_owner, stored.attempts, stored.tries) == (
        "pending",
        None,
        0,
        0,
    )
    assert stored.next_attempt_at == now + 60
    assert await webhooks.claim(now + 59, "w1", 30.0, 10, 5) == []
    (again,) = await webhooks.claim(now + 60, "w1", 30.0, 10, 5)
    assert again.attempts == 1


async def test_attempts_are_logged_in_order_and_summed_up_in_the_stats(process: Process) -> None:
    webhooks = process.webhooks
    hook = await process.register("*")
    now = process.clock()
    await webhooks.enqueue(delivery(hook, 1, "msg_1", now))
    await webhooks.enqueue(delivery(hook, 2, "msg_2", now + 1000))
    (claimed,) = await webhooks.claim(now, "w1", 30.0, 10, 5)
    failure = attempt(claimed, now + 1, 503, ok=False, duration_ms=40.0, error="HTTP 503")
    assert await webhooks.record(claimed, failure, "pending", now + 10)
    (claimed,) = await webhooks.claim(now + 10, "w1", 30.0, 10, 5)
    success = attempt(claimed, now + 11, 200, ok=True, duration_ms=20.0)
    assert await webhooks.record(claimed, success, "succeeded", now + 11)

    logs = await webhooks.attempts(["msg_1", "msg_unknown"])
    assert logs == {"msg_1": [failure, success], "msg_unknown": []}
    assert await webhooks.stats(hook.id) == Stats(
        attempts=2,
        successes=1,
        failures=1,
        last_success_at=now + 11,
        last_failure_at=now + 1,
        recent_durations_ms=[20.0, 40.0],
        deliveries={"pending": 1, "delivering": 0, "succeeded": 1, "dead": 0},
    )
    assert (await webhooks.stats(hook.id, recent=1)).recent_durations_ms == [20.0]


async def test_a_pending_delivery_is_due_after_its_delay_and_reads_back_as_made(
    process: Process,
) -> None:
    hook = await process.register("order.*")
    now = process.clock()
    made = Delivery.pending(hook, 7, "order.created", '{"type":"order.created"}', now, delay_s=5)
    assert made.id.startswith("msg_")
    assert (made.webhook_id, made.tenant, made.event_id) == (hook.id, hook.tenant, 7)
    assert (made.status, made.attempts, made.tries) == ("pending", 0, 0)
    assert (made.created_at, made.updated_at, made.next_attempt_at) == (now, now, now + 5)
    assert Delivery.pending(hook, None, "webhook.test", "{}", now).next_attempt_at == now
    await process.webhooks.enqueue(made)
    assert await process.webhooks.deliveries(hook.id, None, 10, 0) == [made]
    assert await process.webhooks.claim(now, "w1", 30.0, 10, 5) == []
    (claimed,) = await process.webhooks.claim(now + 5, "w1", 30.0, 10, 5)
    assert (claimed.id, claimed.payload) == (made.id, made.payload)


async def test_requeue_inserts_new_rows_and_queues_finished_ones_again(process: Process) -> None:
    webhooks = process.webhooks
    hook = await process.register("*")
    now = process.clock()
    await webhooks.enqueue(delivery(hook, 1, "msg_1", now))
    (claimed,) = await webhooks.claim(now, "w1", 30.0, 10, 5)
    assert await webhooks.record(claimed, attempt(claimed, now, 200, True), "succeeded", now)
    await webhooks.enqueue(delivery(hook, 2, "msg_2", now + 1000))

    later = now + 50
    replayed = [delivery(hook, n, f"msg_r{n}", later) for n in (1, 2, 3)]
    assert await webhooks.requeue(replayed) == 2
    stored = {d.id: d for d in await webhooks.deliveries(hook.id, None, 10, 0)}
    assert sorted(stored) == ["msg_1", "msg_2", "msg_r3"]
    again = stored["msg_1"]  # the same row, so the same webhook-id header
    assert (again.status, again.tries, again.attempts) == ("pending", 0, 1)
    assert (again.next_attempt_at, again.updated_at) == (later, later)
    assert stored["msg_2"] == delivery(hook, 2, "msg_2", now + 1000)  # still pending: untouched
    assert stored["msg_r3"] == replayed[2]


async def test_dead_deliveries_created_in_a_window_are_queued_again(process: Process) -> None:
    webhooks = process.webhooks
    hook = await process.register("*")
    other = await process.register("*")
    t = process.clock()
    for n, created in enumerate([t, t + 10, t + 20], 1):
        await webhooks.enqueue(delivery(hook, n, f"msg_{n}", created, status="dead"))
    await webhooks.enqueue(delivery(hook, 4, "msg_4", t + 10))
    await webhooks.enqueue(delivery(other, 1, "msg_5", t + 10, status="dead"))

    assert await webhooks.requeue_dead(hook.id, t + 100, since=t + 10, until=t + 20) == 1
    stored = {d.id: d for d in await webhooks.deliveries(hook.id, None, 10, 0)}
    assert (stored["msg_2"].status, stored["msg_2"].next_attempt_at) == ("pending", t + 100)
    assert [stored[f"msg_{n}"].status for n in (1, 3, 4)] == ["dead", "dead", "pending"]
    assert await webhooks.requeue_dead(hook.id, t + 100, None, None) == 2
    assert await webhooks.deliveries(hook.id, "dead", 10, 0) == []
    assert [d.id for d in await webhooks.deliveries(other.id, "dead", 10, 0)] == ["msg_5"]


async def test_deliveries_are_listed_newest_first(process: Process) -> None:
    webhooks = process.webhooks
    hook = await process.register("*")
    t = process.clock()
    made = [
        delivery(hook, 1, "msg_1", t),
        delivery(hook, 2, "msg_2", t + 1, status="dead"),
        delivery(hook, 3, "msg_3", t + 2),
    ]
    for queued in made:
        await webhooks.enqueue(queued)
    assert await webhooks.deliveries(hook.id, None, 10, 0) == made[::-1]
    assert await webhooks.deliveries(hook.id, None, 1, 1) == [made[1]]
    assert await webhooks.deliveries(hook.id, "pending", 10, 0) == [made[2], made[0]]
    assert await webhooks.deliveries(hook.id, "succeeded", 10, 0) == []


async def test_test_events_queue_apart_but_an_event_once_per_webhook(process: Process) -> None:
    webhooks = process.webhooks
    hook = await process.register("*")
    now = process.clock()
    await webhooks.enqueue(delivery(hook, None, "msg_1", now))
    await webhooks.enqueue(delivery(hook, None, "msg_2", now))
    await webhooks.enqueue(delivery(hook, 7, "msg_3", now))
    with pytest.raises(DUPLICATE):
        await webhooks.enqueue(delivery(hook, 7, "msg_4", now))
    listed = await webhooks.deliveries(hook.id, None, 10, 0)
    assert sorted(d.id for d in listed) == ["msg_1", "msg_2", "msg_3"]


async def test_a_closed_database_is_unavailable(process: Process) -> None:
    hook = await process.register("*")
    await process.database.close()
    with pytest.raises(StoreUnavailable):
        await process.webhooks.get(hook.id)
    with pytest.raises(StoreUnavailable):
        await process.webhooks.claim(process.clock(), "w1", 30.0, 10, 5)


# -- secrets at rest ------------------------------------------------------------------


def sql(process: Process) -> Database:
    assert not isinstance(process.database, MemoryDatabase)
    return process.database


async def raw_secrets(process: Process, webhook_id: str) -> str:
    """The ``secrets`` column as stored, read past the repository."""
    rows = await sql(process).fetch("SELECT secrets FROM webhooks WHERE id = $1", webhook_id)
    return str(rows[0][0])


async def test_secrets_read_back_as_written_by_another_process_after_a_rotation(
    processes: tuple[Process, Process],
) -> None:
    a, b = processes
    hook = await a.register("order.*")
    rotated = changed(hook, secrets=[Secret(OTHER_SECRET), Secret(SECRET, 99.0)])
    assert (await b.webhooks.get(hook.id)) == hook
    assert await b.webhooks.replace(rotated)
    stored = await a.webhooks.get(hook.id)
    assert stored is not None and stored.secrets == rotated.secrets
    assert [w.secrets for w in await a.webhooks.active()] == [rotated.secrets]
    assert await a.webhooks.seal() == 0  # nothing in clear text


async def test_the_secret_column_holds_no_signing_secret(
    sql_processes: tuple[Process, Process],
) -> None:
    a, _ = sql_processes
    hook = await a.register("order.*")
    await a.webhooks.replace(changed(hook, secrets=[Secret(OTHER_SECRET), Secret(SECRET, 9.0)]))

    column = await raw_secrets(a, hook.id)

    assert "whsec_" not in column and SECRET[6:] not in column and OTHER_SECRET[6:] not in column
    assert column.count('"enc1:') == 2


async def test_clear_text_secrets_of_an_older_version_are_read_then_sealed(
    sql_processes: tuple[Process, Process], clock: ManualClock
) -> None:
    sealing, _ = sql_processes
    older = Process(sealing.database, clock)
    older.webhooks = SqlWebhooks(sql(sealing))  # no key: writes clear text, as before
    hook = await older.register("order.*")
    assert SECRET in await raw_secrets(sealing, hook.id)

    assert await sealing.webhooks.get(hook.id) == hook  # readable before it is sealed
    assert await sealing.webhooks.seal() == 1

    assert SECRET[6:] not in await raw_secrets(sealing, hook.id)
    assert await sealing.webhooks.get(hook.id) == hook
    assert await sealing.webhooks.seal() == 0
    with pytest.raises(ConfigError, match="no key"):
        await older.webhooks.get(hook.id)


async def test_another_key_is_refused_naming_both_keys(
    sql_processes: tuple[Process, Process], clock: ManualClock
) -> None:
    a, _ = sql_processes
    hook = await a.register("order.*")
    stranger = Process(a.database, clock, SecretBox.from_key(b"\x01" * 32))
    ours = SecretBox.from_key(KEY).key_id

    with pytest.raises(ConfigError, match=f"encrypted with key {ours}.*restore the key file"):
        await stranger.webhooks.get(hook.id)
    with pytest.raises(ConfigError, match=f"encrypted with key {ours}"):
        await stranger.webhooks.seal()


async def test_a_sealed_secret_copied_to_another_webhook_does_not_open(
    sql_processes: tuple[Process, Process],
) -> None:
    a, _ = sql_processes
    first, second = await a.register("a.*"), await a.register("b.*")
    await sql(a).execute(
        "UPDATE webhooks SET secrets = $1 WHERE id = $2", await raw_secrets(a, first.id), second.id
    )

    with pytest.raises(ConfigError, match="altered or copied"):
        await a.webhooks.get(second.id)
