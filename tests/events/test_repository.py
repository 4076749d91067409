"""The event log repository contract, written once and run over every backend (``repos``)."""

from __future__ import annotations

import asyncio

from agentcore.events.base import Event
from agentcore.repositories import Repositories


def event(n: int, *, timestamp: float = 100.0, tenant: str = "default") -> Event:
    return Event(
        type=f"test.e{n}",
        timestamp=timestamp,
        source="tests",
        tenant=tenant,
        data={"n": n, "nested": {"list": [1, 2.5, None, "x"]}},
    )


async def stored_ids(repos: Repositories) -> list[int]:
    return [e.id for e in await repos.events.read(0, 1000)]


# -- append and read ----------------------------------------------------------------


async def test_append_assigns_gap_free_ids_and_round_trips(repos: Repositories) -> None:
    assert await repos.events.last_id() == 0
    assert await repos.events.read(0, 10) == []

    first = await repos.events.append([event(1), event(2, tenant="other")])
    assert [e.id for e in first] == [1, 2]
    assert [e.type for e in first] == ["test.e1", "test.e2"]
    second = await repos.events.append([event(3)])
    assert [e.id for e in second] == [3]
    assert await repos.events.last_id() == 3

    assert await repos.events.read(0, 10) == [*first, *second]
    assert first[1].tenant == "other" and first[1].data == event(2).data


async def test_appending_nothing_stores_nothing(repos: Repositories) -> None:
    assert await repos.events.append([]) == []
    assert await repos.events.last_id() == 0
    await repos.events.append([event(1)])
    assert await repos.events.append([]) == []
    assert await repos.events.last_id() == 1
    assert await stored_ids(repos) == [1]


async def test_read_after_an_id_with_a_limit(repos: Repositories) -> None:
    await repos.events.append([event(n) for n in range(1, 6)])
    assert [e.id for e in await repos.events.read(2, 10)] == [3, 4, 5]
    assert [e.id for e in await repos.events.read(2, 2)] == [3, 4]
    assert [e.id for e in await repos.events.read(0, 1)] == [1]
    assert await repos.events.read(5, 10) == []
    assert await repos.events.read(99, 10) == []
    assert await repos.events.read(0, 0) == []


async def test_read_one_tenant_applies_the_limit_to_its_events(repos: Repositories) -> None:
    tenants = ["a", "b", "b", "a", "b", "a", "a"]
    await repos.events.append([event(n, tenant=t) for n, t in enumerate(tenants, 1)])
    assert [e.id for e in await repos.events.read(0, 10, "a")] == [1, 4, 6, 7]
    assert [e.id for e in await repos.events.read(0, 2, "a")] == [1, 4]
    assert [e.id for e in await repos.events.read(4, 2, "a")] == [6, 7]
    assert [e.id for e in await repos.events.read(0, 10, "b")] == [2, 3, 5]
    assert await repos.events.read(0, 10, "nobody") == []
    assert [e.id for e in await repos.events.read(0, 3, None)] == [1, 2, 3]


async def test_concurrent_appends_get_gap_free_ids(repos: Repositories) -> None:
    batches = await asyncio.gather(*(repos.events.append([event(n), event(n)]) for n in range(20)))
    given = sorted(e.id for batch in batches for e in batch)
    assert given == list(range(1, 41))
    for batch in batches:  # one append's events get consecutive ids
        assert batch[1].id == batch[0].id + 1
    assert await stored_ids(repos) == given
    assert await repos.events.last_id() == 40


# -- trim -----------------------------------------------------------------------------


async def test_trim_keeps_the_newest(repos: Repositories) -> None:
    await repos.events.append([event(n) for n in range(1, 11)])
    assert await repos.events.trim(keep=4, older_than=0.0) == 6
    assert await stored_ids(repos) == [7, 8, 9, 10]
    assert await repos.events.trim(keep=4, older_than=0.0) == 0
    assert await repos.events.trim(keep=100, older_than=0.0) == 0
    assert await stored_ids(repos) == [7, 8, 9, 10]
    # Reading from before the trimmed range starts at the oldest kept event.
    assert [e.id for e in await repos.events.read(2, 2)] == [7, 8]
    assert [e.id for e in await repos.events.read(8, 10)] == [9, 10]


async def test_trim_drops_events_older_than_a_time(repos: Repositories) -> None:
    await repos.events.append([event(n, timestamp=float(n * 10)) for n in range(1, 7)])
    # Timestamps 10..60: older than 35 are 10, 20, 30.
    assert await repos.events.trim(keep=100, older_than=35.0) == 3
    assert await stored_ids(repos) == [4, 5, 6]
    # An event exactly at the time is kept.
    assert await repos.events.trim(keep=100, older_than=50.0) == 1
    assert await stored_ids(repos) == [5, 6]
    # Every event is older: all go.
    assert await repos.events.trim(keep=100, older_than=1000.0) == 2
    assert await stored_ids(repos) == []


async def test_trim_drops_what_either_rule_drops(repos: Repositories) -> None:
    await repos.events.append([event(n, timestamp=float(n * 10)) for n in range(1, 11)])
    # keep=5 drops 1-5; older_than=75 drops 1-7: the union is 1-7.
    assert await repos.events.trim(keep=5, older_than=75.0) == 7
    assert await stored_ids(repos) == [8, 9, 10]
    # keep=1 drops 8-9 although they are young.
    assert await repos.events.trim(keep=1, older_than=0.0) == 2
    assert await stored_ids(repos) == [10]


async def test_trim_keeps_every_event_of_the_first_young_time(repos: Repositories) -> None:
    """Events appended together share a timestamp: none of those at the cut-off time goes."""
    await repos.events.append([event(1, timestamp=10.0), event(2, timestamp=10.0)])
    await repos.events.append([event(n, timestamp=20.0) for n in range(3, 6)])
    assert await repos.events.trim(keep=100, older_than=20.0) == 2
    assert await stored_ids(repos) == [3, 4, 5]


async def test_trim_keeps_the_ids_going(repos: Repositories) -> None:
    assert await repos.events.trim(keep=0, older_than=0.0) == 0  # nothing to trim
    await repos.events.append([event(n) for n in range(1, 4)])
    assert await repos.events.trim(keep=0, older_than=0.0) == 3
    assert await repos.events.read(0, 10) == []
    # The log's head is the newest event ever appended, not the newest kept.
    assert await repos.events.last_id() == 3
    appended = await repos.events.append([event(4)])
    assert [e.id for e in appended] == [4]
    assert await stored_ids(repos) == [4]
