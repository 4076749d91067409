"""In-process GCRA backend: exact for one worker process, nothing shared."""

from __future__ import annotations

from agentcore.clock import Clock, system_clock
from agentcore.ratelimit.base import Decision, Limit, gcra

#: Keys kept before idle ones (quota full again) are pruned.
PRUNE_THRESHOLD = 100_000


class MemoryRateLimiter:
    shared = False
    backend_error: str | None = None

    def __init__(self, clock: Clock = system_clock, prune_threshold: int = PRUNE_THRESHOLD) -> None:
        self._clock = clock
        #: TAT per (limit name, key): one identity is counted apart per limit.
        self._tats: dict[tuple[str, str], float] = {}
        self._prune_threshold = prune_threshold

    def hit_now(self, key: str, limit: Limit, cost: int = 1) -> Decision:
        """The synchronous check; :meth:`hit` wraps it (no await between read and write)."""
        now = self._clock()
        slot = (limit.name, key)
        decision, new_tat = gcra(self._tats.get(slot, now), now, limit, cost)
        if new_tat is not None:
            self._tats[slot] = new_tat
            if len(self._tats) > self._prune_threshold:
                self._prune(now)
        return decision

    async def hit(self, key: str, limit: Limit, cost: int = 1) -> Decision:
        return self.hit_now(key, limit, cost)

    def _prune(self, now: float) -> None:
        # A key whose TAT has passed has its whole quota back: same as absent.
        self._tats = {k: tat for k, tat in self._tats.items() if tat > now}

    def __len__(self) -> int:
        return len(self._tats)

    async def reset(self, key: str) -> None:
        """Give ``key`` its whole quota back under every limit."""
        for slot in [s for s in self._tats if s[1] == key]:
            del self._tats[slot]

    async def ping(self) -> None:
        """In process: always there."""

    async def close(self) -> None:
        self._tats.clear()
