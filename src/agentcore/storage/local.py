"""Blob storage on the local filesystem, under ``<data_dir>/storage/<tenant>/``.

Layout: each key segment is spelled with :func:`~agentcore.storage.base.encode_segment`
(``%XX`` for anything but ``[A-Za-z0-9_-]``), directories for all but the
last, and the object itself in ``<last>.obj``. Encoded names never contain
``.``, so ``.obj`` files, directories and ``.tmp-*`` files in flight cannot
collide, a key ``a`` and a key ``a/b`` coexist, and no key can name ``..``.
The resolved path is checked to stay under the tenant's directory anyway
(a symlink planted by someone with shell access is refused).

One object is one file: its bytes, then the :class:`ObjectInfo` as JSON, then
the JSON's length (8 bytes, big-endian). Data and metadata therefore change
together with one ``os.replace``: a reader sees the old object or the new one,
never a mix. A put writes a temporary file in the same directory, fsyncs it,
renames it over the key and fsyncs the directory: an acknowledged put
survives a crash of the process or of the machine. A put cut off by a crash
leaves its temporary file behind; :meth:`LocalBlobStore.sweep` removes the
ones untouched for :data:`STALE_TEMP_S`.

All file work runs in threads (``asyncio.to_thread``); writes are batched to
``WRITE_BATCH_BYTES`` so a 100 MiB upload costs about 100 thread hops.
Listing walks the directories under the prefix and sorts: O(objects under
the prefix) per page, fine for the embedded default, not for millions of
keys (use S3).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec

from agentcore.clock import Clock, system_clock
from agentcore.datadir import FILE_MODE
from agentcore.errors import InvalidKey, ObjectNotFound
from agentcore.storage.base import (
    Hasher,
    ObjectInfo,
    ObjectSummary,
    Page,
    check_key,
    check_metadata,
    check_prefix,
    decode_segment,
    encode_segment,
    tenant_segment,
)

SUFFIX = ".obj"
#: Bytes gathered before one write in a thread.
WRITE_BATCH_BYTES = 1024 * 1024
#: Bytes per chunk of a download.
READ_CHUNK_BYTES = 256 * 1024
#: Longest encoded file or directory name (most filesystems allow 255 bytes).
MAX_NAME_BYTES = 250
_TRAILER = 8
TEMP_PREFIX = ".tmp-"
#: Seconds since its last write after which a temporary file is a crashed put's. A put
#: in progress writes to it at least every WRITE_BATCH_BYTES received and ends within
#: ``limits.handler_timeout_s`` (30 s by default), so an hour never takes a live one.
STALE_TEMP_S = 3600.0


class LocalBlobStore:
    def __init__(self, root: str | os.PathLike[str], clock: Clock = system_clock) -> None:
        self.root = Path(root)
        self.clock = clock

    # -- paths ------------------------------------------------------------------

    def _tenant_dir(self, tenant: str) -> Path:
        return self.root / tenant_segment(tenant)

    def _path(self, tenant: str, key: str) -> Path:
        check_key(key)
        names = [encode_segment(s) for s in key.split("/")]
        names[-1] += SUFFIX
        if any(len(n) > MAX_NAME_BYTES for n in names):
            raise InvalidKey(
                f"a key segment is too long for local storage (>{MAX_NAME_BYTES} bytes)"
            )
        base = self._tenant_dir(tenant)
        path = base.joinpath(*names)
        # Defence in depth: the encoding already rules out '..'; this also refuses symlinks out.
        if not os.path.realpath(path).startswith(os.path.realpath(base) + os.sep):
            raise InvalidKey("key resolves outside the tenant's storage")
        return path

    # -- BlobStore --------------------------------------------------------------

    async def put(
        self,
        tenant: str,
        key: str,
        chunks: AsyncIterator[bytes],
        content_type: str,
        metadata: dict[str, str],
        max_bytes: int,
    ) -> ObjectInfo:
        path = self._path(tenant, key)
        check_metadata(metadata)
        fd, tmp = await asyncio.to_thread(_create_temp, path.parent)
        hasher = Hasher(max_bytes)
        done = False
        try:
            batch: list[bytes] = []
            pending = 0
            async for chunk in chunks:
                hasher.update(chunk)
                batch.append(chunk)
                pending += len(chunk)
                if pending >= WRITE_BATCH_BYTES:
                    await asyncio.to_thread(_write_all, fd, b"".join(batch))
                    batch, pending = [], 0
            info = ObjectInfo(
                key=key,
                size=hasher.size,
                sha256=hasher.hexdigest(),
                content_type=content_type,
                metadata=metadata,
                created_at=self.clock(),
            )
            trailer = msgspec.json.encode(info)
            batch.append(trailer + len(trailer).to_bytes(_TRAILER, "big"))
            await asyncio.to_thread(_commit, fd, tmp, path, b"".join(batch))
            done = True
            return info
        finally:
            if not done:
                await asyncio.to_thread(_discard, fd, tmp)

    async def open(
        self, tenant: str, key: str, start: int = 0, end: int | None = None
    ) -> tuple[ObjectInfo, AsyncIterator[bytes]]:
        path = self._path(tenant, key)
        fd, info = await asyncio.to_thread(_open, path, key)
        stop = info.size if end is None else min(end, info.size)
        return info, _read(fd, start, stop)

    async def stat(self, tenant: str, key: str) -> ObjectInfo:
        path = self._path(tenant, key)
        fd, info = await asyncio.to_thread(_open, path, key)
        os.close(fd)
        return info

    async def delete(self, tenant: str, key: str) -> None:
        path = self._path(tenant, key)
        await asyncio.to_thread(_delete, path, self._tenant_dir(tenant), key)

    async def list(self, tenant: str, prefix: str, after: str | None, limit: int) -> Page:
        check_prefix(prefix)
        base = self._tenant_dir(tenant)
        keys = await asyncio.to_thread(_walk, base, prefix)
        if after is not None:
            keys = [k for k in keys if k > after]
        page = keys[:limit]
        objects = []
        for key in page:
            size = await asyncio.to_thread(_size, self._path(tenant, key))
            if size is not None:  # deleted meanwhile
                objects.append(ObjectSummary(key=key, size=size))
        more = len(keys) > limit
        return Page(objects=objects, next_after=page[-1] if more and page else None)

    async def sweep(self) -> int:
        """Remove the temporary files left by puts a crash cut off (see :data:`STALE_TEMP_S`)."""
        return await asyncio.to_thread(_sweep, self.root, self.clock() - STALE_TEMP_S)

    async def close(self) -> None:
        pass


# -- blocking helpers (run in threads) -----------------------------------------


def _create_temp(directory: Path) -> tuple[int, str]:
    for _ in range(3):  # a concurrent delete may prune the directory between the two calls
        directory.mkdir(parents=True, exist_ok=True)
        name = directory / f"{TEMP_PREFIX}{os.urandom(8).hex()}"
        try:
            return os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE), str(name)
        except FileNotFoundError:
            continue
    raise FileNotFoundError(directory)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _commit(fd: int, tmp: str, path: Path, tail: bytes) -> None:
    _write_all(fd, tail)
    os.fsync(fd)
    os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _discard(fd: int, tmp: str) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _open(path: Path, key: str) -> tuple[int, ObjectInfo]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise ObjectNotFound(f"no object {key!r}") from exc
    try:
        return fd, _trailer(fd)
    except BaseException:
        os.close(fd)
        raise


def _trailer(fd: int) -> ObjectInfo:
    total = os.fstat(fd).st_size
    length = int.from_bytes(os.pread(fd, _TRAILER, total - _TRAILER), "big")
    raw = os.pread(fd, length, total - _TRAILER - length)
    return msgspec.json.decode(raw, type=ObjectInfo)


def _size(path: Path) -> int | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    try:
        total = os.fstat(fd).st_size
        length = int.from_bytes(os.pread(fd, _TRAILER, total - _TRAILER), "big")
        return total - _TRAILER - length
    finally:
        os.close(fd)


async def _read(fd: int, start: int, stop: int) -> AsyncIterator[bytes]:
    try:
        offset = start
        while offset < stop:
            chunk = await asyncio.to_thread(
                os.pread, fd, min(READ_CHUNK_BYTES, stop - offset), offset
            )
            if not chunk:
                return
            offset += len(chunk)
            yield chunk
    finally:
        os.close(fd)


def _delete(path: Path, base: Path, key: str) -> None:
    try:
        os.unlink(path)
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise ObjectNotFound(f"no object {key!r}") from exc
    _prune(path.parent, base)


def _sweep(root: Path, before: float) -> int:
    """Unlink every temporary file under ``root`` last written before ``before`` (epoch s),
    then the directories it leaves empty (up to the tenant's); how many files."""
    removed = 0
    for directory, _, files in os.walk(root):  # symlinks are not followed
        for name in files:
            if not name.startswith(TEMP_PREFIX):
                continue
            path = os.path.join(directory, name)
            with contextlib.suppress(FileNotFoundError):  # a put finished or discarded it
                if os.lstat(path).st_mtime < before:
                    os.unlink(path)
                    removed += 1
                    tenant = Path(directory).relative_to(root).parts[:1]
                    _prune(Path(directory), root.joinpath(*tenant))
    return removed


def _prune(directory: Path, base: Path) -> None:
    """Remove ``directory`` and its parents while empty, up to ``base`` (kept)."""
    while directory != base and directory.is_relative_to(base):
        try:
            directory.rmdir()  # only when empty
        except OSError:
            break
        directory = directory.parent


def _walk(base: Path, prefix: str) -> list[str]:
    """Every key under ``base`` starting with ``prefix``, sorted."""
    head, _, _ = prefix.rpartition("/")
    start = base.joinpath(*(encode_segment(s) for s in head.split("/"))) if head else base
    lead = f"{head}/" if head else ""
    keys: list[str] = []
    stack = [(start, lead)]
    while stack:
        directory, key_prefix = stack.pop()
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            name = entry.name
            if name.startswith("."):
                continue  # temporary files in flight
            if name.endswith(SUFFIX) and entry.is_file(follow_symlinks=False):
                key = key_prefix + decode_segment(name[: -len(SUFFIX)])
                if key.startswith(prefix):
                    keys.append(key)
            elif "." not in name and entry.is_dir(follow_symlinks=False):
                sub = key_prefix + decode_segment(name) + "/"
                if sub.startswith(prefix) or prefix.startswith(sub):
                    stack.append((Path(entry.path), sub))
    keys.sort()
    return keys
