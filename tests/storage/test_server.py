"""Storage through a real gateway process: streamed uploads over a socket, crash durability."""

from __future__ import annotations

import hashlib
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import ServerProcess

pytestmark = pytest.mark.server

S = "/api/v1/integration/storage"
MIB = 1024 * 1024


def test_acknowledged_upload_survives_sigkill(
    server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    env = {"AGENTCORE_STORAGE__MAX_OBJECT_BYTES": str(4 * MIB)}
    first = server_factory(env=env, data_dir=data).start()
    raw = os.urandom(3 * MIB)

    def body() -> Iterator[bytes]:  # chunked transfer: no Content-Length
        for i in range(0, len(raw), 256 * 1024):
            yield raw[i : i + 256 * 1024]

    with httpx.Client(base_url=first.url, timeout=30) as http:
        put = http.put(f"{S}/crash/test.bin", content=body())
        assert put.status_code == 201, put.text
        form = http.post(f"{S}/upload", files={"file": ("form.bin", raw[: 2 * MIB])})
        assert form.status_code == 201, form.text
        too_big = http.put(f"{S}/too/big", content=raw + raw)
        assert too_big.status_code == 413

    assert first.signal(signal.SIGKILL) == -signal.SIGKILL
    second = server_factory(env=env, data_dir=data).start()
    with httpx.Client(base_url=second.url, timeout=30) as http:
        got = http.get(f"{S}/crash/test.bin")
        assert got.status_code == 200
        assert hashlib.sha256(got.content).hexdigest() == hashlib.sha256(raw).hexdigest()
        assert got.headers["etag"] == f'"{put.json()["sha256"]}"'
        part = http.get(f"{S}/form.bin", headers={"range": "bytes=-10"})
        assert (part.status_code, part.content) == (206, raw[2 * MIB - 10 : 2 * MIB])
        keys = [o["key"] for o in http.get(S).json()["objects"]]
        assert keys == ["crash/test.bin", "form.bin"]
    leftovers = [p.name for p in (data / "storage").rglob(".tmp-*")]
    assert leftovers == []
