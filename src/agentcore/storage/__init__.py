"""Blob storage: :func:`open_blob_store` picks the backend from ``[storage]``;
:func:`sweep_leftovers` clears what interrupted uploads left, at startup and
then periodically (:func:`jobs`)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from agentcore import extras
from agentcore.clock import Clock, system_clock
from agentcore.config import StorageConfig
from agentcore.errors import ConfigError
from agentcore.lifecycle import Job, every
from agentcore.storage.base import BlobStore, ObjectInfo
from agentcore.storage.local import LocalBlobStore

__all__ = ["BlobStore", "ObjectInfo", "jobs", "open_blob_store", "sweep_leftovers"]

log = logging.getLogger("agentcore")

#: Seconds between sweeps of what crashed uploads left in storage (also run at startup).
SWEEP_INTERVAL_S = 600.0


def open_blob_store(
    config: StorageConfig,
    data_dir: str,
    environ: Mapping[str, str],
    clock: Clock = system_clock,
) -> BlobStore:
    """The configured backend; nothing connects until first use.

    ``environ`` is read only for the two variables ``s3_access_key_env`` and
    ``s3_secret_key_env`` name (the caller, at the edge, passes ``os.environ``).
    """
    if config.backend == "s3":
        extras.S3.require()  # boto3 is imported on first use; a missing one stops startup
        from agentcore.storage.s3 import S3BlobStore

        credentials = []
        for setting in ("s3_access_key_env", "s3_secret_key_env"):
            name = getattr(config, setting)
            if name and name not in environ:
                raise ConfigError(f"storage.{setting}: environment variable {name} is not set")
            credentials.append(environ.get(name, "") if name else "")
        return S3BlobStore(
            config.s3_bucket,
            endpoint_url=config.s3_endpoint_url,
            region=config.s3_region,
            access_key=credentials[0],
            secret_key=credentials[1],
            prefix=config.s3_prefix,
            clock=clock,
        )
    return LocalBlobStore(Path(data_dir) / "storage", clock)


async def sweep_leftovers(blobs: BlobStore) -> None:
    """Remove the temporary files of uploads cut off by a crash (:meth:`BlobStore.sweep`)."""
    removed = await blobs.sweep()
    if removed:
        log.info("storage: removed %d temporary files left by interrupted uploads", removed)


def jobs(blobs: BlobStore) -> list[Job]:
    """:func:`sweep_leftovers` every :data:`SWEEP_INTERVAL_S`."""

    async def sweep_storage() -> None:
        await sweep_leftovers(blobs)

    return [every(SWEEP_INTERVAL_S, sweep_storage)]
