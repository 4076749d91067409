"""Blob storage in an S3-compatible bucket (AWS S3, MinIO, Ceph, ...), through boto3.

boto3 is synchronous; every call runs in a thread (``asyncio.to_thread``), and
the one client is created lazily on first use (nothing happens at import or
construction). Its exceptions are translated once, in :meth:`S3BlobStore._call`:
a missing object becomes :class:`ObjectNotFound`, anything else
:class:`StorageUnavailable`.

Layout: ``<s3_prefix><tenant>/<key>``, the tenant spelled with
:func:`~agentcore.storage.base.tenant_segment` (no ``.`` and no ``/``, so
tenants cannot overlap). Size, SHA-256, creation time and the user's metadata
travel in one user-metadata header (``x-amz-meta-agentcore``, base64 JSON)
written with the object, so object and metadata change together.

Uploads up to ``part_bytes`` are one ``PutObject``. Larger ones stream as a
multipart upload to ``<s3_prefix>.uploads/<random>`` (outside every tenant,
never listed), one part in memory at a time; once complete and hashed, a
server-side ``CopyObject`` publishes it under the key with its metadata (one
atomic replace) and the temporary object is deleted. A failed upload is
aborted. Objects above 5 GiB would need a multipart copy: keep
``storage.max_object_bytes`` below that.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import os
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import msgspec

from agentcore.clock import Clock, system_clock
from agentcore.errors import ObjectNotFound, StorageUnavailable
from agentcore.storage.base import (
    Hasher,
    ObjectInfo,
    ObjectSummary,
    Page,
    check_key,
    check_metadata,
    check_prefix,
    tenant_segment,
)

T = TypeVar("T")
#: Bytes per multipart part (S3 requires at least 5 MiB for all but the last).
PART_BYTES = 8 * 1024 * 1024
#: Bytes per chunk of a download.
READ_CHUNK_BYTES = 256 * 1024
_META = "agentcore"
_MISSING = {"NoSuchKey", "404", "NotFound"}


class _Stored(msgspec.Struct, frozen=True):
    size: int
    sha256: str
    created_at: float
    metadata: dict[str, str] = {}


class S3BlobStore:
    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str = "",
        region: str = "us-east-1",
        access_key: str = "",
        secret_key: str = "",
        prefix: str = "",
        part_bytes: int = PART_BYTES,
        clock: Clock = system_clock,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.part_bytes = part_bytes
        self.clock = clock
        self._client_args: dict[str, Any] = {
            "endpoint_url": endpoint_url or None,
            "region_name": region,
            "aws_access_key_id": access_key or None,
            "aws_secret_access_key": secret_key or None,
        }
        self._client: Any = None

    # -- plumbing ---------------------------------------------------------------

    def _s3(self) -> Any:
        if self._client is None:
            # boto3 is the optional `s3` extra: loaded at the first call, not at import.
            import boto3
            from botocore.config import Config as BotoConfig

            self._client = boto3.session.Session().client(
                "s3",
                config=BotoConfig(
                    retries={"max_attempts": 3, "mode": "standard"},
                    connect_timeout=5,
                    read_timeout=30,
                    max_pool_connections=32,
                ),
                **self._client_args,
            )
        return self._client

    async def _call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run one blocking boto3 call in a thread; translate its exceptions."""
        from botocore.exceptions import BotoCoreError, ClientError  # the `s3` extra, as in _s3

        try:
            return await asyncio.to_thread(functools.partial(fn, *args, **kwargs))
        except ClientError as exc:
            error = exc.response.get("Error", {})
            if str(error.get("Code")) in _MISSING:
                raise ObjectNotFound("no such object") from exc
            raise StorageUnavailable(f"S3 error: {error.get('Code', 'unknown')}") from exc
        except BotoCoreError as exc:
            raise StorageUnavailable(f"S3 unreachable: {type(exc).__name__}") from exc

    def _name(self, tenant: str, key: str) -> str:
        return f"{self.prefix}{tenant_segment(tenant)}/{key}"

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
        name = self._name(tenant, check_key(key))
        check_metadata(metadata)
        hasher = Hasher(max_bytes)
        buffer = bytearray()
        upload: tuple[str, str] | None = None  # (temporary name, upload id)
        parts: list[dict[str, Any]] = []
        s3 = await asyncio.to_thread(self._s3)
        try:
            async for chunk in chunks:
                hasher.update(chunk)
                buffer += chunk
                if len(buffer) >= self.part_bytes:
                    if upload is None:
                        temp = f"{self.prefix}.uploads/{os.urandom(16).hex()}"
                        created = await self._call(
                            s3.create_multipart_upload, Bucket=self.bucket, Key=temp
                        )
                        upload = (temp, created["UploadId"])
                    part = bytes(buffer[: self.part_bytes])
                    del buffer[: self.part_bytes]
                    parts.append(await self._upload_part(upload, len(parts) + 1, part))
            info = ObjectInfo(
                key=key,
                size=hasher.size,
                sha256=hasher.hexdigest(),
                content_type=content_type,
                metadata=metadata,
                created_at=self.clock(),
            )
            headers = {"ContentType": content_type, "Metadata": {_META: _encode(info)}}
            if upload is None:
                await self._call(
                    s3.put_object, Bucket=self.bucket, Key=name, Body=bytes(buffer), **headers
                )
                return info
            if buffer:
                parts.append(await self._upload_part(upload, len(parts) + 1, bytes(buffer)))
            temp, upload_id = upload
            await self._call(
                s3.complete_multipart_upload,
                Bucket=self.bucket,
                Key=temp,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
            upload = None
            try:
                await self._call(
                    s3.copy_object,
                    Bucket=self.bucket,
                    Key=name,
                    CopySource={"Bucket": self.bucket, "Key": temp},
                    MetadataDirective="REPLACE",
                    **headers,
                )
            finally:
                await self._call(s3.delete_object, Bucket=self.bucket, Key=temp)
            return info
        except BaseException:
            if upload is not None:
                temp, upload_id = upload
                await asyncio.shield(
                    self._abort(s3, temp, upload_id)
                )  # even when the request is cancelled
            raise

    async def _upload_part(
        self, upload: tuple[str, str], number: int, data: bytes
    ) -> dict[str, Any]:
        temp, upload_id = upload
        s3 = self._s3()
        done = await self._call(
            s3.upload_part,
            Bucket=self.bucket,
            Key=temp,
            UploadId=upload_id,
            PartNumber=number,
            Body=data,
        )
        return {"PartNumber": number, "ETag": done["ETag"]}

    async def _abort(self, s3: Any, temp: str, upload_id: str) -> None:
        # On failure the bucket's lifecycle rule for incomplete uploads is the backstop.
        with contextlib.suppress(ObjectNotFound, StorageUnavailable):
            await self._call(
                s3.abort_multipart_upload, Bucket=self.bucket, Key=temp, UploadId=upload_id
            )

    async def open(
        self, tenant: str, key: str, start: int = 0, end: int | None = None
    ) -> tuple[ObjectInfo, AsyncIterator[bytes]]:
        name = self._name(tenant, check_key(key))
        s3 = await asyncio.to_thread(self._s3)
        extra: dict[str, Any] = {}
        if start > 0 or end is not None:
            extra["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        got = await self._call(s3.get_object, Bucket=self.bucket, Key=name, **extra)
        return _decode(key, got), _read(got["Body"])

    async def stat(self, tenant: str, key: str) -> ObjectInfo:
        name = self._name(tenant, check_key(key))
        s3 = await asyncio.to_thread(self._s3)
        return _decode(key, await self._call(s3.head_object, Bucket=self.bucket, Key=name))

    async def delete(self, tenant: str, key: str) -> None:
        name = self._name(tenant, check_key(key))
        s3 = await asyncio.to_thread(self._s3)
        # S3 deletes are idempotent; the contract wants ObjectNotFound for a missing key.
        await self._call(s3.head_object, Bucket=self.bucket, Key=name)
        await self._call(s3.delete_object, Bucket=self.bucket, Key=name)

    async def list(self, tenant: str, prefix: str, after: str | None, limit: int) -> Page:
        base = f"{self.prefix}{tenant_segment(tenant)}/"
        args: dict[str, Any] = {
            "Bucket": self.bucket,
            "Prefix": base + check_prefix(prefix),
            "MaxKeys": limit,
        }
        if after is not None:
            args["StartAfter"] = base + after
        s3 = await asyncio.to_thread(self._s3)
        listed = await self._call(s3.list_objects_v2, **args)
        objects = [
            ObjectSummary(key=item["Key"][len(base) :], size=item["Size"])
            for item in listed.get("Contents", [])
        ]
        more = bool(listed.get("IsTruncated")) and bool(objects)
        return Page(objects=objects, next_after=objects[-1].key if more else None)

    async def sweep(self) -> int:
        """Nothing: a crashed multipart upload under ``.uploads/`` is the bucket's to expire
        (an ``AbortIncompleteMultipartUpload`` lifecycle rule, docs/storage.md)."""
        return 0

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await asyncio.to_thread(client.close)


def _encode(info: ObjectInfo) -> str:
    stored = _Stored(info.size, info.sha256, info.created_at, info.metadata)
    return base64.urlsafe_b64encode(msgspec.json.encode(stored)).decode()


def _decode(key: str, response: dict[str, Any]) -> ObjectInfo:
    raw = response.get("Metadata", {}).get(_META)
    if raw is None:  # written by something else than the gateway
        raise ObjectNotFound(f"no object {key!r}")
    stored = msgspec.json.decode(base64.urlsafe_b64decode(raw), type=_Stored)
    return ObjectInfo(
        key=key,
        size=stored.size,
        sha256=stored.sha256,
        content_type=response.get("ContentType") or "application/octet-stream",
        metadata=stored.metadata,
        created_at=stored.created_at,
    )


async def _read(body: Any) -> AsyncIterator[bytes]:
    try:
        while True:
            chunk: bytes = await asyncio.to_thread(body.read, READ_CHUNK_BYTES)
            if not chunk:
                return
            yield chunk
    finally:
        await asyncio.to_thread(body.close)
