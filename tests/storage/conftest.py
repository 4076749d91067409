"""Blob store backends for the contract suite: local files, and S3 on a moto server.

The S3 leg talks to ``moto.server.ThreadedMotoServer`` on a loopback port,
started once per session; without moto it skips with the reason (and fails
when ``AGENTCORE_REQUIRE_SERVICES=1``, as in CI).
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from agentcore.clock import ManualClock
from agentcore.storage.base import BlobStore
from agentcore.storage.local import LocalBlobStore
from tests.support import free_port, unavailable

#: Smallest part S3 (and moto) accept; the contract's large object spans three.
TEST_PART_BYTES = 5 * 1024 * 1024
CREDENTIALS = {"access_key": "testing-key", "secret_key": "testing-secret"}


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        unavailable("moto[server] is not installed (pip install -e '.[test]')")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_admin(moto_endpoint: str) -> Iterator[Any]:
    """One boto3 client for the tests' own bucket work (creating one costs ~0.3 s)."""
    import boto3

    client: Any = boto3.session.Session().client(
        "s3",
        endpoint_url=moto_endpoint,
        region_name="us-east-1",
        aws_access_key_id=CREDENTIALS["access_key"],
        aws_secret_access_key=CREDENTIALS["secret_key"],
    )
    yield client
    client.close()


def new_bucket(admin: Any) -> str:
    name = f"test-{secrets.token_hex(6)}"
    admin.create_bucket(Bucket=name)
    return name


@pytest.fixture(params=["local", "s3"])
async def blobs(
    request: pytest.FixtureRequest, tmp_path: Path, clock: ManualClock
) -> AsyncIterator[BlobStore]:
    store: BlobStore
    if request.param == "local":
        store = LocalBlobStore(tmp_path / "storage", clock)
    else:
        from agentcore.storage.s3 import S3BlobStore

        endpoint = request.getfixturevalue("moto_endpoint")
        store = S3BlobStore(
            new_bucket(request.getfixturevalue("s3_admin")),
            endpoint_url=endpoint,
            prefix="gw/",
            part_bytes=TEST_PART_BYTES,
            clock=clock,
            **CREDENTIALS,
        )
    try:
        yield store
    finally:
        await store.close()
