"""Events reach the hub in id order with none missing when several processes commit them."""

from __future__ import annotations

import asyncio

from agentcore.events.base import Event
from agentcore.events.sequence import Sequence

WAIT_S = 0.01


def event(n: int) -> Event:
    return Event(id=n, type="t", timestamp=0.0)


class Log:
    """The event log's read over a list of committed events; counts reads."""

    def __init__(self, ids: list[int]) -> None:
        self.events = [event(n) for n in ids]
        self.reads: list[tuple[int, int]] = []

    async def read(self, after_id: int, limit: int) -> list[Event]:
        self.reads.append((after_id, limit))
        return [e for e in self.events if e.id > after_id][:limit]


def sequence(log: Log) -> tuple[Sequence, list[int]]:
    seen: list[int] = []
    return Sequence(lambda e: seen.append(e.id), log.read, gap_wait_s=WAIT_S), seen


async def test_an_event_that_arrives_early_waits_for_the_ones_before_it() -> None:
    log = Log([1, 2, 3])
    seq, seen = sequence(log)
    seq.start(0)
    seq.offer(event(2))
    seq.offer(event(3))
    assert seen == []
    seq.offer(event(1))
    assert seen == [1, 2, 3]
    await asyncio.sleep(3 * WAIT_S)
    assert log.reads == [] and seq.filled == 0  # nothing was missing long enough to read
    await seq.close()


async def test_an_event_whose_message_never_comes_is_read_from_the_log() -> None:
    log = Log([1, 2, 3, 4])
    seq, seen = sequence(log)
    seq.start(0)
    seq.offer(event(1))
    seq.offer(event(4))  # 2 and 3 were committed by an instance killed before it published
    assert seen == [1]
    await asyncio.sleep(5 * WAIT_S)
    assert seen == [1, 2, 3, 4]
    assert seq.filled == 2
    assert log.reads == [(1, 2)]
    seq.offer(event(3))  # a late message for an event handed on already
    seq.offer(event(5))
    assert seen == [1, 2, 3, 4, 5]
    await seq.close()


async def test_an_id_no_longer_in_the_log_is_skipped_not_waited_for() -> None:
    log = Log([5])  # 2..4 trimmed
    seq, seen = sequence(log)
    seq.start(1)
    seq.offer(event(5))
    await asyncio.sleep(5 * WAIT_S)
    assert seen == [5]
    seq.offer(event(6))
    assert seen == [5, 6]
    await seq.close()


async def test_a_duplicate_is_handed_on_once() -> None:
    seq, seen = sequence(Log([1]))
    seq.start(0)
    seq.offer(event(1))
    seq.offer(event(1))
    assert seen == [1]
    await seq.close()


async def test_before_start_events_pass_through_and_start_goes_on_after_them() -> None:
    seq, seen = sequence(Log([1, 2, 3, 4]))
    seq.offer(event(3))  # this process's own, handed off before the fan-out listened
    seq.offer(event(2))
    assert seen == [3, 2]
    seq.start(1)  # the log's last id read earlier than the hand-off
    seq.offer(event(3))
    seq.offer(event(4))
    assert seen == [3, 2, 4]
    await seq.close()


async def test_close_cancels_a_pending_fill() -> None:
    log = Log([1, 2])
    seq, seen = sequence(log)
    seq.start(0)
    seq.offer(event(2))
    await seq.close()
    await asyncio.sleep(3 * WAIT_S)
    assert seen == [] and log.reads == []
