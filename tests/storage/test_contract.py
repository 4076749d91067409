"""The BlobStore contract, written once and run over every backend (see conftest.py)."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agentcore.clock import ManualClock
from agentcore.errors import InvalidKey, InvalidParams, ObjectNotFound, PayloadTooLarge
from agentcore.storage.base import BlobStore, ObjectInfo, byte_range
from agentcore.storage.local import STALE_TEMP_S, LocalBlobStore

from .conftest import TEST_PART_BYTES

MIB = 1024 * 1024


async def chunked(data: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def put(
    blobs: BlobStore,
    key: str,
    data: bytes,
    *,
    tenant: str = "acme",
    content_type: str = "application/octet-stream",
    metadata: dict[str, str] | None = None,
    max_bytes: int = 64 * MIB,
) -> ObjectInfo:
    return await blobs.put(tenant, key, chunked(data), content_type, metadata or {}, max_bytes)


async def read(blobs: BlobStore, key: str, tenant: str = "acme", **kw: int) -> bytes:
    _, chunks = await blobs.open(tenant, key, **kw)
    return b"".join([c async for c in chunks])


async def keys(blobs: BlobStore, tenant: str = "acme", prefix: str = "") -> list[str]:
    page = await blobs.list(tenant, prefix, None, 1000)
    return [o.key for o in page.objects]


async def test_put_then_open_stat_roundtrip(blobs: BlobStore, clock: ManualClock) -> None:
    data = os.urandom(200_000)
    info = await put(blobs, "reports/q1.bin", data, content_type="text/html", metadata={"a": "1"})
    assert info.key == "reports/q1.bin"
    assert info.size == len(data)
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert info.content_type == "text/html"
    assert info.metadata == {"a": "1"}
    assert info.created_at == clock()
    assert await blobs.stat("acme", "reports/q1.bin") == info
    opened, chunks = await blobs.open("acme", "reports/q1.bin")
    assert opened == info
    assert b"".join([c async for c in chunks]) == data


async def test_empty_object(blobs: BlobStore) -> None:
    info = await put(blobs, "empty", b"")
    assert info.size == 0
    assert info.sha256 == hashlib.sha256(b"").hexdigest()
    assert await read(blobs, "empty") == b""


async def test_large_object_streams_in_parts(blobs: BlobStore) -> None:
    data = os.urandom(2 * TEST_PART_BYTES + 12345)  # three S3 parts; many local batches
    info = await put(blobs, "big/blob", data)
    assert info.size == len(data)
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert await read(blobs, "big/blob") == data
    assert await keys(blobs) == ["big/blob"]  # no temporary object is visible


async def test_ranges(blobs: BlobStore) -> None:
    data = bytes(range(256)) * 40
    await put(blobs, "r", data)
    assert await read(blobs, "r", start=10, end=20) == data[10:20]
    assert await read(blobs, "r", start=10_000) == data[10_000:]
    assert await read(blobs, "r", start=0, end=1) == data[:1]


async def test_overwrite_replaces_data_and_metadata(blobs: BlobStore, clock: ManualClock) -> None:
    await put(blobs, "doc", b"old" * 1000, content_type="text/plain", metadata={"v": "1"})
    clock.advance(5)
    info = await put(blobs, "doc", b"new", metadata={"v": "2"})
    assert await read(blobs, "doc") == b"new"
    stat = await blobs.stat("acme", "doc")
    assert stat == info
    assert (stat.size, stat.metadata, stat.content_type) == (
        3,
        {"v": "2"},
        "application/octet-stream",
    )
    assert await keys(blobs) == ["doc"]


async def test_reader_keeps_the_version_it_opened(blobs: BlobStore) -> None:
    await put(blobs, "doc", b"A" * 100_000)
    info, chunks = await blobs.open("acme", "doc")
    await put(blobs, "doc", b"B" * 10)
    data = b"".join([c async for c in chunks])
    assert info.size == len(data) == 100_000 and set(data) == {ord("A")}


async def test_failed_upload_leaves_previous_object(blobs: BlobStore) -> None:
    await put(blobs, "doc", b"kept")

    async def broken() -> AsyncIterator[bytes]:
        yield b"x" * (TEST_PART_BYTES + 1)  # far enough to start an S3 multipart upload
        raise RuntimeError("client went away")

    with pytest.raises(RuntimeError):
        await blobs.put("acme", "doc", broken(), "text/plain", {}, 64 * MIB)
    assert await read(blobs, "doc") == b"kept"
    assert await keys(blobs) == ["doc"]


async def test_too_large_is_refused_and_nothing_is_stored(blobs: BlobStore) -> None:
    with pytest.raises(PayloadTooLarge):
        await put(blobs, "huge", b"x" * 1001, max_bytes=1000)
    with pytest.raises(ObjectNotFound):
        await blobs.stat("acme", "huge")
    assert await keys(blobs) == []
    assert (await put(blobs, "fits", b"x" * 1000, max_bytes=1000)).size == 1000


async def test_delete(blobs: BlobStore) -> None:
    await put(blobs, "a/b/c", b"1")
    await put(blobs, "a/b", b"2")  # a key may also be a prefix of another
    await blobs.delete("acme", "a/b/c")
    with pytest.raises(ObjectNotFound):
        await blobs.stat("acme", "a/b/c")
    with pytest.raises(ObjectNotFound):
        await blobs.delete("acme", "a/b/c")
    assert await read(blobs, "a/b") == b"2"
    assert await keys(blobs) == ["a/b"]


async def test_missing_object(blobs: BlobStore) -> None:
    for call in (
        blobs.stat("acme", "nope"),
        blobs.open("acme", "nope"),
        blobs.delete("acme", "nope"),
        blobs.stat("acme", "nope/deeper"),
    ):
        with pytest.raises(ObjectNotFound):
            await call


async def test_list_by_prefix_in_order(blobs: BlobStore) -> None:
    for key in ["b/2", "a/1", "b/1", "b10", "ba/x", "c", "é/1", "b/sub/3"]:
        await put(blobs, key, key.encode())
    assert await keys(blobs) == sorted(["b/2", "a/1", "b/1", "b10", "ba/x", "c", "é/1", "b/sub/3"])
    assert await keys(blobs, prefix="b/") == ["b/1", "b/2", "b/sub/3"]
    assert await keys(blobs, prefix="b") == ["b/1", "b/2", "b/sub/3", "b10", "ba/x"]
    assert await keys(blobs, prefix="b/s") == ["b/sub/3"]
    assert await keys(blobs, prefix="zz") == []
    page = await blobs.list("acme", "b/", None, 10)
    assert [o.size for o in page.objects] == [3, 3, 7]


async def test_list_paginates(blobs: BlobStore) -> None:
    names = [f"p/{i:03d}" for i in range(25)]
    await asyncio.gather(*(put(blobs, n, b"x") for n in names))
    seen: list[str] = []
    after = None
    pages = 0
    while True:
        page = await blobs.list("acme", "p/", after, 10)
        seen += [o.key for o in page.objects]
        pages += 1
        if page.next_after is None:
            break
        after = page.next_after
    assert seen == names
    assert pages == 3


async def test_tenants_are_isolated(blobs: BlobStore) -> None:
    await put(blobs, "shared/name", b"acme's", tenant="acme")
    await put(blobs, "shared/name", b"globex's", tenant="globex")
    # Tenants with '/' in them must not overlap with keys of another tenant.
    await put(blobs, "x", b"nested", tenant="acme/shared")
    assert await read(blobs, "shared/name", tenant="acme") == b"acme's"
    assert await read(blobs, "shared/name", tenant="globex") == b"globex's"
    assert await keys(blobs, tenant="acme") == ["shared/name"]
    assert await keys(blobs, tenant="acme/shared") == ["x"]
    await blobs.delete("globex", "shared/name")
    assert await read(blobs, "shared/name", tenant="acme") == b"acme's"
    with pytest.raises(ObjectNotFound):
        await blobs.stat("other", "shared/name")


BAD_KEYS = [
    "",
    "../x",
    "a/../../b",
    "a/./b",
    "..",
    ".",
    "/abs",
    "trailing/",
    "a//b",
    "a\\b",
    "nul\x00byte",
    "line\nbreak",
    "k" * 513,
]


@pytest.mark.parametrize("key", BAD_KEYS)
async def test_bad_keys_are_refused(blobs: BlobStore, key: str) -> None:
    with pytest.raises(InvalidKey):
        await put(blobs, key, b"x")
    with pytest.raises(InvalidKey):
        await blobs.stat("acme", key)
    with pytest.raises(InvalidKey):
        await blobs.delete("acme", key)
    assert await keys(blobs) == []


async def test_odd_but_valid_keys(blobs: BlobStore) -> None:
    odd = ["..a", "a..", ".hidden", "a.b/c.d", "100%", "%2E%2E", "sp ace", "ü/ñ", "k" * 200]
    for key in odd:
        await put(blobs, key, key.encode())
    for key in odd:
        assert await read(blobs, key) == key.encode()
    assert await keys(blobs) == sorted(odd)


async def test_metadata_is_bounded(blobs: BlobStore) -> None:
    with pytest.raises(InvalidParams):
        await put(blobs, "m", b"x", metadata={"big": "v" * 2000})
    info = await put(blobs, "m", b"x", metadata={"ünïcode": "välue", "empty": ""})
    assert (await blobs.stat("acme", "m")).metadata == info.metadata


# -- local backend only ---------------------------------------------------------


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


async def test_local_layout_stays_under_the_tenant_root(tmp_path: Path) -> None:
    blobs = LocalBlobStore(tmp_path / "storage")
    await put(blobs, "a.b/..c", b"x")
    assert files_under(tmp_path) == ["storage/acme/a%2Eb/%2E%2Ec.obj"]


async def test_local_refuses_symlink_out_of_the_tenant(tmp_path: Path) -> None:
    blobs = LocalBlobStore(tmp_path / "storage")
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "storage" / "acme").mkdir(parents=True)
    (tmp_path / "storage" / "acme" / "link").symlink_to(outside)
    with pytest.raises(InvalidKey):
        await put(blobs, "link/x", b"x")
    assert files_under(outside) == []


async def test_local_leaves_no_temporary_files(tmp_path: Path) -> None:
    blobs = LocalBlobStore(tmp_path / "storage")
    with pytest.raises(PayloadTooLarge):
        await put(blobs, "dir/huge", b"x" * 5000, max_bytes=100)
    await put(blobs, "dir/ok", b"x")
    assert files_under(tmp_path) == ["storage/acme/dir/ok.obj"]


async def test_local_sweep_removes_stale_temporaries_and_keeps_live_ones(
    tmp_path: Path, clock: ManualClock
) -> None:
    root = tmp_path / "storage"
    blobs = LocalBlobStore(root, clock)
    await put(blobs, "dir/ok", b"x")
    crashed = root / "acme" / "gone" / "deep" / ".tmp-0123456789abcdef"
    crashed.parent.mkdir(parents=True)
    crashed.write_bytes(b"y" * 1000)
    old = clock() - STALE_TEMP_S - 1
    os.utime(crashed, (old, old))
    live = root / "acme" / "dir" / ".tmp-fedcba9876543210"  # an upload in progress
    live.write_bytes(b"z")
    os.utime(live, (clock() - STALE_TEMP_S + 60,) * 2)

    assert await blobs.sweep() == 1

    assert files_under(tmp_path) == [
        "storage/acme/dir/.tmp-fedcba9876543210",
        "storage/acme/dir/ok.obj",
    ]
    assert sorted(p.name for p in root.iterdir()) == ["acme"]  # emptied directories pruned
    assert await keys(blobs) == ["dir/ok"]
    clock.advance(61)
    assert await blobs.sweep() == 1  # the same file, once it too has been left for too long
    assert files_under(tmp_path) == ["storage/acme/dir/ok.obj"]


async def test_sweep_of_an_empty_store(blobs: BlobStore) -> None:
    assert await blobs.sweep() == 0


def test_byte_range() -> None:
    from agentcore.errors import RangeNotSatisfiable

    assert byte_range(None, 10) is None
    assert byte_range("bytes=0-4", 10) == (0, 5)
    assert byte_range("bytes=5-", 10) == (5, 10)
    assert byte_range("bytes=-3", 10) == (7, 10)
    assert byte_range("bytes=-30", 10) == (0, 10)
    assert byte_range("bytes=8-100", 10) == (8, 10)
    assert byte_range("bytes=0-1,4-5", 10) is None  # several ranges: whole object
    assert byte_range("items=0-1", 10) is None
    assert byte_range("bytes=5-2", 10) is None
    assert byte_range("bytes=abc", 10) is None
    for bad in ("bytes=10-", "bytes=10-20", "bytes=-0"):
        with pytest.raises(RangeNotSatisfiable) as caught:
            byte_range(bad, 10)
        assert caught.value.headers == ((b"content-range", b"bytes */10"),)
