"""Connections to Redis: one way to build a client and one translation of its errors.

Every user of Redis in the gateway (event fan-out, the rate-limit backend)
gets its client from :func:`connect`, over a
:class:`~redis.asyncio.BlockingConnectionPool`: once ``pool_size``
connections are in use a caller waits up to ``pool_wait_s`` for a free one
instead of failing at once with redis-py's "Too many connections". Connecting
and every reply are bounded by ``socket_timeout_s``, so a hung Redis costs a
caller at most that much per command, never a hang. How many connections and
how long to wait is each user's policy, stated beside its ``POOL_SIZE``.

redis-py raises its own :class:`~redis.exceptions.RedisError` tree and lets
some :class:`OSError` through; :func:`translated` turns both into
:class:`~agentcore.errors.StoreUnavailable`, the one place a redis-py
exception is caught outside a ``close``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from agentcore.errors import StoreUnavailable

#: What redis-py raises when Redis is unreachable, hung or refuses a command.
ERRORS = (RedisError, OSError)
#: Seconds a hung Redis may delay a caller (connect, or one reply).
SOCKET_TIMEOUT_S = 0.5


def connect(
    url: str,
    *,
    pool_size: int,
    pool_wait_s: float,
    socket_timeout_s: float = SOCKET_TIMEOUT_S,
    client_name: str | None = None,
) -> aioredis.Redis:
    """A client for ``url`` over its own pool of at most ``pool_size`` connections.

    Nothing connects until the first command; ``client_name`` (``CLIENT
    SETNAME``) lets an operator tell the gateway's connections apart in
    ``CLIENT LIST``.
    """
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=pool_size,
        timeout=pool_wait_s,
        socket_timeout=socket_timeout_s,
        socket_connect_timeout=socket_timeout_s,
        client_name=client_name,
    )
    return aioredis.Redis.from_pool(pool)


def unavailable(user: str, reason: str) -> StoreUnavailable:
    """The error for ``user`` (e.g. "event fan-out") when Redis fails for ``reason``."""
    return StoreUnavailable(f"{user} (Redis) unavailable: {reason}")


@contextlib.contextmanager
def translated(user: str) -> Iterator[None]:
    """Raise Redis trouble inside the block as :func:`unavailable` for ``user``."""
    try:
        yield
    except ERRORS as exc:
        raise unavailable(user, str(exc).rstrip(".")) from exc
