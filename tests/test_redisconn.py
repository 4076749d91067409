"""The Redis client every Redis user builds, and the one translation of its errors.

The pool and timeouts are exercised against the real Redis on
``AGENTCORE_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``) and a
loopback port nothing listens on; the translation needs no server.
"""

from __future__ import annotations

import os
import time

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from agentcore import redisconn
from agentcore.errors import StoreUnavailable
from tests.support import free_port, unavailable

REDIS_URL = os.environ.get("AGENTCORE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.mark.parametrize("error", [RedisConnectionError("Connection reset."), OSError("gone")])
def test_redis_and_socket_errors_become_store_unavailable(error: Exception) -> None:
    with pytest.raises(StoreUnavailable) as caught, redisconn.translated("event fan-out"):
        raise error
    reason = str(error).rstrip(".")
    assert caught.value.message == f"event fan-out (Redis) unavailable: {reason}"
    assert caught.value.__cause__ is error


def test_other_errors_pass_through() -> None:
    with pytest.raises(ValueError), redisconn.translated("rate-limit backend"):
        raise ValueError("not Redis")


async def test_an_unreachable_redis_fails_within_the_socket_timeout() -> None:
    client = redisconn.connect(
        f"redis://127.0.0.1:{free_port()}/0", pool_size=1, pool_wait_s=0.1, socket_timeout_s=0.2
    )
    started = time.monotonic()
    try:
        expected = pytest.raises(StoreUnavailable, match=r"^test \(Redis\) unavailable: ")
        with expected, redisconn.translated("test"):
            await client.ping()
    finally:
        await client.aclose()
    assert time.monotonic() - started < 2.0


async def test_the_client_names_its_connections() -> None:
    client = redisconn.connect(REDIS_URL, pool_size=2, pool_wait_s=1.0, client_name="agentcore:t")
    try:
        try:
            await client.ping()
        except redisconn.ERRORS as exc:
            unavailable(f"Redis not reachable at {REDIS_URL}: {exc}")
        assert await client.client_getname() == "agentcore:t"
    finally:
        await client.aclose()
