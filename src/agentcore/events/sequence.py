"""Committed events in id order, with none missing, for this process's subscribers.

With one process the event log hands its own events to the hub in id order
(``log.py``). With several workers or instances, events committed elsewhere
arrive over the fan-out and interleave with this process's own: a stream
could see 758 before 756, and a client resuming from the highest id it saw
would skip 756. An instance killed between its commit and its publish to
Redis never sends its last events at all, so live subscribers elsewhere would
never see them.

:class:`Sequence` sits in front of the hub when there is a fan-out. Ids are
gap-free and committed in id order, so it knows which id comes next: an
event with that id is handed on at once (and any held ones that follow it);
a later one is held, and once an id has been missing for :data:`GAP_WAIT_S`
the missing ones are read from the log and handed on in order, so a slow or
lost fan-out message costs a short delay, never an event. An id already
handed on (a fan-out echo, a fill that raced the message) is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from agentcore.events.base import Event

log = logging.getLogger("agentcore")

#: Seconds an id may be missing before it is read from the log: well above a
#: fan-out message's usual transit, well below what a stream client would notice.
GAP_WAIT_S = 0.2
#: Events read from the log per fill query.
FILL_PAGE = 500
#: Held events past which the oldest gap is filled at once instead of waited for.
MAX_HELD = 10_000


class Sequence:
    """Hands events to ``deliver`` in id order; fills gaps with ``read``.

    ``read(after_id, limit)`` returns committed events with ids above
    ``after_id``, in id order (the event log's read). Until :meth:`start` knows
    where the log stands, events are handed on as they come.
    """

    def __init__(
        self,
        deliver: Callable[[Event], None],
        read: Callable[[int, int], Awaitable[list[Event]]],
        *,
        gap_wait_s: float = GAP_WAIT_S,
    ) -> None:
        self._deliver = deliver
        self._read = read
        self._gap_wait_s = gap_wait_s
        #: The id handed on next; None: not started, pass everything through.
        self._next: int | None = None
        #: Highest id handed on before :meth:`start`.
        self._seen = 0
        self._held: dict[int, Event] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._filling: asyncio.Task[None] | None = None
        #: Events read from the log because their fan-out message was late or lost.
        self.filled = 0

    def start(self, last_id: int) -> None:
        """From now on, hand on in order, starting after ``last_id`` (the log's last id
        when this process began receiving) or after the last id already handed on."""
        self._next = max(last_id, self._seen) + 1

    def offer(self, event: Event) -> None:
        expected = self._next
        if expected is None:
            self._seen = max(self._seen, event.id)
            self._deliver(event)
            return
        if event.id < expected:
            return  # handed on already
        if event.id > expected:
            self._held[event.id] = event
            if len(self._held) > MAX_HELD:
                self._fill_now()
            elif self._timer is None and self._filling is None:
                loop = asyncio.get_running_loop()
                self._timer = loop.call_later(self._gap_wait_s, self._fill_now)
            return
        self._hand_on(event)
        self._release()

    def _hand_on(self, event: Event) -> None:
        self._next = event.id + 1
        self._deliver(event)

    def _release(self) -> None:
        """Hand on the held events that now follow without a gap."""
        held = self._held
        while held:
            following = self._next
            if following is None or following not in held:
                break
            self._hand_on(held.pop(following))
        if not held and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fill_now(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._filling is None:
            self._filling = asyncio.get_running_loop().create_task(self._fill())

    async def _fill(self) -> None:
        try:
            while self._held and self._next is not None:
                first_held = min(self._held)
                if self._next < first_held:
                    wanted = min(FILL_PAGE, first_held - self._next)
                    events = await self._read(self._next - 1, wanted)
                    # Meanwhile offer() may have handed on the missing events itself.
                    handed = False
                    for event in events:
                        if event.id >= first_held:
                            break
                        if event.id >= self._next:
                            self.filled += 1
                            self._hand_on(event)
                            handed = True
                    if not handed and self._next < first_held:
                        # Not in the log (trimmed): go on from what is held.
                        self._next = first_held
                self._release()
        except Exception:  # boundary: a failed read is retried after another wait
            log.exception("filling a gap in the event stream from the log failed")
        finally:
            self._filling = None
            if self._held and self._timer is None:
                self._timer = asyncio.get_running_loop().call_later(
                    self._gap_wait_s, self._fill_now
                )

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        filling, self._filling = self._filling, None
        if filling is not None:
            filling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await filling
