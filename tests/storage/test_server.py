"""Storage through a real gateway process: streamed uploads over a socket, crash durability."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from agentcore.storage.local import STALE_TEMP_S
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


def test_a_crashed_upload_leaves_no_temporary_file_after_a_restart(
    server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    first = server_factory(data_dir=data).start()
    killed = threading.Event()

    def body() -> Iterator[bytes]:  # one MiB, then the upload hangs until the gateway dies
        yield os.urandom(MIB)
        killed.wait(30)

    def upload() -> None:
        with contextlib.suppress(httpx.HTTPError), httpx.Client(base_url=first.url) as http:
            http.put(f"{S}/big/file.bin", content=body(), timeout=30)

    uploader = threading.Thread(target=upload)
    uploader.start()
    deadline = time.monotonic() + 10
    while not list((data / "storage").rglob(".tmp-*")) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert first.signal(signal.SIGKILL) == -signal.SIGKILL
    killed.set()
    uploader.join()
    [crashed] = (data / "storage").rglob(".tmp-*")
    # The crash was an hour ago; another worker's upload has just begun.
    old = time.time() - STALE_TEMP_S - 1
    os.utime(crashed, (old, old))
    live = data / "storage" / "default" / "other" / ".tmp-0000000000000000"
    live.parent.mkdir(parents=True)
    live.write_bytes(b"in progress")

    server_factory(data_dir=data).start()

    assert [p.name for p in (data / "storage").rglob(".tmp-*")] == [live.name]
