"""The blob storage interface: objects (bytes plus a little metadata) by tenant and key.

Keys are validated here, once, for every backend (:func:`check_key`), before
any path or object name is built from them. Tenants become one path segment
or key prefix through :func:`tenant_segment`, an injective encoding, so no
tenant name (they may contain ``/``) can reach into another tenant's objects.

Every byte range here is ``start`` inclusive, ``end`` exclusive, in bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import Protocol
from urllib.parse import unquote

import msgspec

from agentcore.errors import InvalidKey, InvalidParams, PayloadTooLarge, RangeNotSatisfiable

#: Longest key, in characters.
MAX_KEY_CHARS = 512
#: Largest user metadata, as compact JSON (S3 allows 2 KiB of headers; this fits in them).
MAX_METADATA_BYTES = 1024
#: Characters no key may contain: NUL and the other C0 controls, DEL, backslash.
_FORBIDDEN = frozenset(chr(c) for c in range(32)) | {"\x7f", "\\"}
_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


class ObjectInfo(msgspec.Struct, frozen=True, kw_only=True):
    key: str
    #: Bytes.
    size: int
    #: Hex SHA-256 of the content, computed by the gateway while it was stored.
    sha256: str
    #: As given by the uploader; never sniffed, never trusted for serving.
    content_type: str = "application/octet-stream"
    metadata: dict[str, str] = {}
    #: Epoch seconds.
    created_at: float


class ObjectSummary(msgspec.Struct, frozen=True, kw_only=True):
    """One entry of a listing (what every backend can give without one request per object)."""

    key: str
    #: Bytes.
    size: int


class Page(msgspec.Struct, frozen=True, kw_only=True):
    objects: list[ObjectSummary]
    #: Pass as ``after`` for the next page; None on the last page.
    next_after: str | None = None


class BlobStore(Protocol):
    async def put(
        self,
        tenant: str,
        key: str,
        chunks: AsyncIterator[bytes],
        content_type: str,
        metadata: dict[str, str],
        max_bytes: int,
    ) -> ObjectInfo:
        """Store the object; visible only once complete, replacing any previous one atomically.

        Raises :class:`PayloadTooLarge` once more than ``max_bytes`` arrive,
        :class:`InvalidKey`; in every failure nothing is left behind and a
        previous object under ``key`` is untouched. Returning means durable.
        """

    async def open(
        self, tenant: str, key: str, start: int = 0, end: int | None = None
    ) -> tuple[ObjectInfo, AsyncIterator[bytes]]:
        """The object's info and its bytes ``[start, end)`` (``end`` None: to the end).

        The caller checks the range against ``info.size`` first (:func:`byte_range`);
        the iterator must be consumed or closed (``aclose``). :class:`ObjectNotFound`.
        """

    async def stat(self, tenant: str, key: str) -> ObjectInfo:
        """:class:`ObjectNotFound` when there is none."""

    async def delete(self, tenant: str, key: str) -> None:
        """:class:`ObjectNotFound` when there is none."""

    async def list(self, tenant: str, prefix: str, after: str | None, limit: int) -> Page:
        """Keys starting with ``prefix``, greater than ``after``, in code point order."""

    async def sweep(self) -> int:
        """Remove what puts cut off by a crash left behind; how many were removed.

        Only leftovers untouched for long enough that no put in progress can own
        them. Called at startup and then periodically by the gateway.
        """

    async def close(self) -> None:
        """Release clients and threads; called once at shutdown."""


def check_key(key: str) -> str:
    """``key`` when it is a valid storage key, else :class:`InvalidKey` saying why.

    1 to 512 characters, ``/``-separated segments none of which is empty,
    ``.`` or ``..`` (so no leading or trailing slash), and no control
    character or backslash. These rules make a key mean the same object on
    every backend and keep it from naming anything outside its tenant.
    """
    if not 1 <= len(key) <= MAX_KEY_CHARS:
        raise InvalidKey(f"a key has 1 to {MAX_KEY_CHARS} characters, got {len(key)}")
    if not _FORBIDDEN.isdisjoint(key):
        raise InvalidKey("a key may not contain control characters or backslashes")
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise InvalidKey(
                "a key may not start or end with '/', contain '//', or have '.' or '..' segments"
            )
    try:
        key.encode()
    except UnicodeEncodeError as exc:  # lone surrogates
        raise InvalidKey("a key must be valid Unicode") from exc
    return key


def check_metadata(metadata: dict[str, str]) -> dict[str, str]:
    """``metadata`` when it is small enough for every backend, else 400."""
    size = len(msgspec.json.encode(metadata))
    if size > MAX_METADATA_BYTES:
        raise InvalidParams(
            f"metadata is {size} bytes as JSON; at most {MAX_METADATA_BYTES}",
            data={"field": "metadata"},
        )
    return metadata


def check_prefix(prefix: str) -> str:
    """A listing prefix: like a key but may be empty or end with ``/``."""
    if len(prefix) > MAX_KEY_CHARS or not _FORBIDDEN.isdisjoint(prefix):
        raise InvalidKey("invalid prefix")
    return prefix


def encode_segment(text: str) -> str:
    """An injective, filesystem- and S3-safe spelling of ``text``.

    Everything but ASCII letters, digits, ``_`` and ``-`` becomes ``%XX`` of
    its UTF-8 bytes, so the result never contains ``/``, never is ``.`` or
    ``..`` and never contains a ``.`` (backends use ``.`` for their own suffixes).
    """
    return "".join(c if c in _SAFE else "".join(f"%{b:02X}" for b in c.encode()) for c in text)


def decode_segment(name: str) -> str:
    return unquote(name, errors="strict")


def tenant_segment(tenant: str) -> str:
    """The one path segment (or key prefix) holding ``tenant``'s objects."""
    return encode_segment(tenant) or "%"


class Hasher:
    """SHA-256 and size of a stream, refusing it past ``max_bytes``."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self._sha = hashlib.sha256()

    def update(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.max_bytes:
            raise PayloadTooLarge(f"object exceeds {self.max_bytes} bytes")
        self._sha.update(chunk)

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


def byte_range(spec: str | None, size: int) -> tuple[int, int] | None:
    """``[start, end)`` of an HTTP ``Range: bytes=...`` header for an object of ``size`` bytes.

    None: serve the whole object (no header, or one this does not handle:
    another unit or several ranges, which RFC 9110 lets a server ignore).
    Raises :class:`RangeNotSatisfiable` for a syntactically valid range that
    lies outside the object.
    """
    if spec is None:
        return None
    unit, _, ranges = spec.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in ranges:
        return None
    first, dash, last = ranges.strip().partition("-")
    first, last = first.strip(), last.strip()
    if not dash or not (first.isdigit() or (not first and last.isdigit())):
        return None
    if last and not last.isdigit():
        return None
    if not first:  # suffix: the last n bytes
        n = int(last)
        if n == 0 or size == 0:
            raise _unsatisfiable(spec, size)
        return max(0, size - n), size
    start = int(first)
    end = min(int(last) + 1, size) if last else size
    if last and int(last) < start:
        return None  # invalid: ignored, whole object
    if start >= size:
        raise _unsatisfiable(spec, size)
    return start, end


def _unsatisfiable(spec: str, size: int) -> RangeNotSatisfiable:
    return RangeNotSatisfiable(
        f"range {spec[:100]!r} lies outside the {size}-byte object",
        headers=((b"content-range", f"bytes */{size}".encode()),),
    )
