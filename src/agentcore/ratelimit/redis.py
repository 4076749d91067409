"""Redis GCRA backend: one Lua script per request, exact across workers and instances.

The script is :func:`agentcore.ratelimit.base.gcra` transcribed; Redis runs a
script atomically, so the read of the TAT and its write are one step however
many gateway processes call at once. Time comes from Redis (``TIME``), not
from the callers, so instances with skewed clocks still agree. Keys expire
when their quota is full again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from agentcore import redisconn
from agentcore.errors import StoreUnavailable
from agentcore.ratelimit.base import Decision, Limit

GCRA_LUA = """
local key = KEYS[1]
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local tolerance = interval * burst
local tat = tonumber(redis.call('GET', key) or now)
if tat < now then tat = now end
local new_tat = tat + interval * cost
local allow_at = new_tat - tolerance
if now < allow_at then
  local remaining = math.floor((now - (tat - tolerance)) / interval)
  if remaining < 0 then remaining = 0 end
  return {0, remaining, tostring(tat - now), tostring(allow_at - now)}
end
redis.call('SET', key, tostring(new_tat), 'PX', math.ceil((new_tat - now) * 1000) + 1)
local remaining = math.floor((now - allow_at) / interval)
if remaining < 0 then remaining = 0 end
return {1, remaining, tostring(new_tat - now), '0'}
"""


#: Connections per worker. A check past this many at once waits for a free
#: connection (up to POOL_WAIT_S) instead of failing: a failed check admits or
#: refuses the request (``rate_limit.on_backend_error``), so a plain pool (which
#: raises "Too many connections") would let a burst through, or refuse it.
#: A hung Redis delays a request by at most :data:`agentcore.redisconn.SOCKET_TIMEOUT_S`
#: before the check fails.
POOL_SIZE = 64
POOL_WAIT_S = 5.0
#: Who is unavailable, in :class:`~agentcore.errors.StoreUnavailable` messages.
_USER = "rate-limit backend"


class RedisRateLimiter:
    shared = True

    def __init__(self, url: str, *, prefix: str = "agentcore:rl:") -> None:
        self._client = redisconn.connect(url, pool_size=POOL_SIZE, pool_wait_s=POOL_WAIT_S)
        self._prefix = prefix
        self._script = self._client.register_script(GCRA_LUA)
        #: Why the last check or ping failed; None once one succeeds (health shows it).
        self.backend_error: str | None = None

    async def hit(self, key: str, limit: Limit, cost: int = 1) -> Decision:
        with self._watched():
            reply: list[Any] = await self._script(
                keys=[self._prefix + limit.name + ":" + key],
                args=[repr(limit.interval_s), limit.burst, cost],
            )
        allowed, remaining, reset_s, retry_s = reply
        return Decision(bool(allowed), limit, int(remaining), float(reset_s), float(retry_s))

    async def reset(self, key: str) -> None:
        with redisconn.translated(_USER):
            async for name in self._client.scan_iter(match=f"{self._prefix}*:{key}"):
                await self._client.delete(name)

    async def ping(self) -> None:
        with self._watched():
            await self._client.ping()

    @contextlib.contextmanager
    def _watched(self) -> Iterator[None]:
        """Redis trouble as :class:`StoreUnavailable`, and its outcome in :attr:`backend_error`."""
        try:
            with redisconn.translated(_USER):
                yield
        except StoreUnavailable as exc:
            self.backend_error = exc.message
            raise
        self.backend_error = None

    async def close(self) -> None:
        await self._client.aclose()
