"""Blob storage: :func:`open_blob_store` picks the backend from ``[storage]``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from agentcore.clock import Clock, system_clock
from agentcore.config import StorageConfig
from agentcore.errors import ConfigError
from agentcore.storage.base import BlobStore, ObjectInfo
from agentcore.storage.local import LocalBlobStore

__all__ = ["BlobStore", "ObjectInfo", "open_blob_store"]


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
