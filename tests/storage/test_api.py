"""The storage HTTP API in-process (``gateway_client``), over the local backend."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentcore import apikeys
from agentcore.app import Gateway
from agentcore.clock import ManualClock
from tests.support import gateway_client, make_config

S = "/api/v1/integration/storage"
MIB = 1024 * 1024


def config(tmp_path: Path, **sections: dict[str, Any]) -> Any:
    return make_config(database={"data_dir": str(tmp_path)}, **sections)


@pytest.fixture
async def gw(
    tmp_path: Path, clock: ManualClock
) -> AsyncIterator[tuple[Gateway, httpx.AsyncClient]]:
    async with gateway_client(config(tmp_path), clock) as pair:
        yield pair


@pytest.fixture
def client(gw: tuple[Gateway, httpx.AsyncClient]) -> httpx.AsyncClient:
    return gw[1]


def stored_files(tmp_path: Path) -> list[str]:
    root = tmp_path / "storage"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


async def test_seed_json_upload_text_then_download(client: httpx.AsyncClient) -> None:
    body = {"file_name": "notes/hello.txt", "content": "héllo wörld", "metadata": {"by": "x"}}
    response = await client.post(f"{S}/upload", json=body)
    assert response.status_code == 201, response.text
    data = response.json()
    raw = "héllo wörld".encode()
    assert data["key"] == "notes/hello.txt"
    assert data["size"] == len(raw)
    assert data["sha256"] == hashlib.sha256(raw).hexdigest()
    assert data["content_type"] == "application/octet-stream"  # never sniffed
    assert data["metadata"] == {"by": "x"}
    assert response.headers["location"] == f"{S}/notes/hello.txt"

    got = await client.get(f"{S}/notes/hello.txt")
    assert got.status_code == 200
    assert got.content == raw
    assert got.headers["content-type"] == "application/octet-stream"
    assert got.headers["content-length"] == str(len(raw))
    assert got.headers["content-disposition"] == (
        "attachment; filename=\"hello.txt\"; filename*=UTF-8''hello.txt"
    )
    assert got.headers["x-content-type-options"] == "nosniff"
    assert got.headers["etag"] == f'"{data["sha256"]}"'
    assert got.headers["accept-ranges"] == "bytes"


async def test_seed_json_upload_base64_with_declared_type(client: httpx.AsyncClient) -> None:
    raw = os.urandom(5000)
    body = {
        "file_name": "img/ünï code.html",
        "content": base64.b64encode(raw).decode(),
        "content_encoding": "base64",
        "content_type": "text/html",
        "metadata": {"n": 3, "ok": True},
    }
    response = await client.post(f"{S}/upload", json=body)
    assert response.status_code == 201, response.text
    assert response.json()["metadata"] == {"n": "3", "ok": "true"}
    got = await client.get(f"{S}/img/ünï code.html")
    assert got.content == raw
    # Echoed as declared, but as an attachment with nosniff: a browser will not render it.
    assert got.headers["content-type"] == "text/html"
    assert got.headers["content-disposition"].startswith('attachment; filename="_n_')
    assert "filename*=UTF-8''%C3%BCn%C3%AF%20code.html" in got.headers["content-disposition"]
    assert got.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"file_name": "x", "content": "@@@", "content_encoding": "base64"}, "content"),
        ({"file_name": "x", "content": "a", "content_type": "text/html\r\nx-evil: 1"}, "content"),
        ({"file_name": "x", "content": "a", "metadata": {"k": "v" * 2000}}, "metadata"),
        ({"content": "a"}, "file_name"),
    ],
)
async def test_bad_json_uploads_get_400(
    client: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    response = await client.post(f"{S}/upload", json=body)
    assert response.status_code == 400
    assert field in response.text
    assert (await client.get(S)).json()["objects"] == []


async def test_ranges(client: httpx.AsyncClient) -> None:
    raw = bytes(range(256)) * 4
    await client.put(f"{S}/r.bin", content=raw)
    got = await client.get(f"{S}/r.bin", headers={"range": "bytes=10-19"})
    assert got.status_code == 206
    assert got.content == raw[10:20]
    assert got.headers["content-range"] == f"bytes 10-19/{len(raw)}"
    assert got.headers["content-length"] == "10"
    got = await client.get(f"{S}/r.bin", headers={"range": "bytes=-4"})
    assert (got.status_code, got.content) == (206, raw[-4:])
    got = await client.get(f"{S}/r.bin", headers={"range": "bytes=1000-"})
    assert (got.status_code, got.content) == (206, raw[1000:])
    got = await client.get(f"{S}/r.bin", headers={"range": "bytes=1024-"})
    assert got.status_code == 416
    assert got.headers["content-range"] == "bytes */1024"
    assert got.json()["error"]["type"] == "range_not_satisfiable"
    got = await client.get(f"{S}/r.bin", headers={"range": "bytes=0-1,5-6"})  # ignored
    assert (got.status_code, got.content) == (200, raw)


async def test_head_sends_headers_only(client: httpx.AsyncClient) -> None:
    await client.put(f"{S}/h", content=b"12345")
    got = await client.head(f"{S}/h")
    assert got.status_code == 200
    assert got.headers["content-length"] == "5"
    assert got.content == b""


async def test_list_by_prefix_paginated(client: httpx.AsyncClient) -> None:
    for i in range(7):
        await client.put(f"{S}/logs/{i}.txt", content=b"x" * i)
    await client.put(f"{S}/other", content=b"o")
    seen: list[dict[str, Any]] = []
    params: dict[str, Any] = {"prefix": "logs/", "limit": 3}
    while True:
        page = (await client.get(S, params=params)).json()
        seen += page["objects"]
        if page["next_after"] is None:
            break
        params["after"] = page["next_after"]
    assert seen == [{"key": f"logs/{i}.txt", "size": i} for i in range(7)]
    assert len((await client.get(S)).json()["objects"]) == 8
    bad = await client.get(S, params={"limit": 0})
    assert bad.status_code == 400


async def test_metadata_delete_then_404(client: httpx.AsyncClient, clock: ManualClock) -> None:
    put = await client.put(
        f"{S}/docs/a.pdf",
        content=b"%PDF",
        headers={"content-type": "application/pdf", "x-meta-owner": "ann"},
    )
    assert put.status_code == 201
    meta = await client.get(f"{S}/docs/a.pdf/metadata")
    assert meta.status_code == 200
    assert meta.json() == {
        "key": "docs/a.pdf",
        "size": 4,
        "sha256": hashlib.sha256(b"%PDF").hexdigest(),
        "content_type": "application/pdf",
        "metadata": {"owner": "ann"},
        "created_at": clock(),
    }
    assert (await client.delete(f"{S}/docs/a.pdf")).status_code == 204
    for response in (
        await client.get(f"{S}/docs/a.pdf"),
        await client.get(f"{S}/docs/a.pdf/metadata"),
        await client.delete(f"{S}/docs/a.pdf"),
    ):
        assert response.status_code == 404
        assert response.json()["error"]["type"] == "object_not_found"


async def test_keys_that_look_like_routes(client: httpx.AsyncClient) -> None:
    assert (await client.put(f"{S}/upload", content=b"u")).status_code == 201
    assert (await client.get(f"{S}/upload")).content == b"u"
    assert (await client.get(f"{S}/metadata")).status_code == 404  # an object key, not found
    refused = await client.put(f"{S}/x/metadata", content=b"m")
    assert refused.status_code == 400
    assert refused.json()["error"]["type"] == "invalid_key"


async def test_multipart_upload_above_the_json_limit(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    raw = os.urandom(3 * MIB + 17)
    response = await client.post(
        f"{S}/upload",
        data={"key": "big/file.bin", "metadata": json.dumps({"source": "test"})},
        files={"file": ("ignored-name.bin", raw, "application/x-thing")},
    )
    assert response.status_code == 201, response.text
    info = response.json()
    assert (info["key"], info["size"]) == ("big/file.bin", len(raw))
    assert info["sha256"] == hashlib.sha256(raw).hexdigest()
    assert info["content_type"] == "application/x-thing"
    assert info["metadata"] == {"source": "test"}
    assert (await client.get(f"{S}/big/file.bin")).content == raw
    # Without a key field the file name is the key.
    response = await client.post(f"{S}/upload", files={"file": ("named.txt", b"n")})
    assert response.json()["key"] == "named.txt"
    assert stored_files(tmp_path) == ["default/big/file%2Ebin.obj", "default/named%2Etxt.obj"]


async def test_multipart_refusals(client: httpx.AsyncClient) -> None:
    no_file = await client.post(f"{S}/upload", files={"key": (None, "k")})
    assert no_file.status_code == 400
    boundary = "b0undary"
    late_field = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="f"\r\n\r\n'
        f'data\r\n--{boundary}\r\nContent-Disposition: form-data; name="key"\r\n\r\nk\r\n'
        f"--{boundary}--\r\n"
    ).encode()
    response = await client.post(
        f"{S}/upload",
        content=late_field,
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status_code == 400
    assert "last part" in response.json()["error"]["message"]
    cut = late_field[: late_field.index(b"data") + 4]
    response = await client.post(
        f"{S}/upload",
        content=cut,
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status_code == 400
    assert (await client.get(S)).json()["objects"] == []
    other = await client.post(f"{S}/upload", content=b"x", headers={"content-type": "text/plain"})
    assert other.status_code == 415


async def test_too_large_uploads_get_413_and_leave_nothing(
    tmp_path: Path, clock: ManualClock
) -> None:
    cfg = config(tmp_path, storage={"max_object_bytes": MIB})
    async with gateway_client(cfg, clock) as (_, client):
        big = os.urandom(2 * MIB)

        async def unannounced() -> AsyncIterator[bytes]:  # no Content-Length: caught in flight
            for i in range(0, len(big), 64 * 1024):
                yield big[i : i + 64 * 1024]

        responses = [
            await client.post(f"{S}/upload", files={"file": ("f", big)}),
            await client.put(f"{S}/raw", content=big),
            await client.put(f"{S}/raw", content=unannounced()),
            await client.post(f"{S}/upload", json={"file_name": "j", "content": "x" * (MIB + 1)}),
        ]
        for response in responses:
            assert response.status_code == 413, response.text
            assert response.json()["error"]["type"] == "payload_too_large"
        assert (await client.get(S)).json()["objects"] == []
        assert stored_files(tmp_path) == []
        ok = await client.put(f"{S}/raw", content=big[:MIB])
        assert ok.status_code == 201


@pytest.mark.parametrize(
    "path",
    [f"{S}/a/%2E%2E/%2E%2E/b", f"{S}/..%2Fsecret", f"{S}/a%5Cb", f"{S}/k%00", f"{S}/{'k' * 513}"],
)
async def test_traversal_keys_get_400(client: httpx.AsyncClient, path: str) -> None:
    for response in (await client.put(path, content=b"x"), await client.get(path)):
        assert response.status_code == 400, path
        assert response.json()["error"]["type"] == "invalid_key"
    seed = await client.post(f"{S}/upload", json={"file_name": "../../etc/passwd", "content": "x"})
    assert seed.status_code == 400


async def test_tenants_are_isolated_and_need_the_storage_scope(
    tmp_path: Path, clock: ManualClock
) -> None:
    async with gateway_client(config(tmp_path, auth={"mode": "api_key"}), clock) as (app, client):

        async def key(tenant: str, scopes: list[str]) -> dict[str, str]:
            full, stored = apikeys.generate(tenant=tenant, scopes=scopes, now=clock())
            assert await app.repos.api_keys.put(stored)
            return {"authorization": f"Bearer {full}"}

        acme = await key("acme", ["storage"])
        globex = await key("globex", ["storage"])
        no_scope = await key("acme", ["agents:read"])

        assert (await client.put(f"{S}/plan.txt", content=b"acme", headers=acme)).status_code == 201
        assert (await client.get(f"{S}/plan.txt", headers=globex)).status_code == 404
        assert (await client.get(f"{S}/plan.txt/metadata", headers=globex)).status_code == 404
        assert (await client.delete(f"{S}/plan.txt", headers=globex)).status_code == 404
        assert (await client.get(S, headers=globex)).json()["objects"] == []
        await client.put(f"{S}/plan.txt", content=b"globex", headers=globex)
        assert (await client.get(f"{S}/plan.txt", headers=acme)).content == b"acme"
        assert (await client.get(f"{S}/plan.txt", headers=no_scope)).status_code == 403
        assert (await client.get(f"{S}/plan.txt")).status_code == 401


async def test_openapi_lists_the_storage_routes(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert set(paths[f"{S}/upload"]) == {"post"}
    assert set(paths[S]) == {"get"}
    assert set(paths[f"{S}/{{key}}"]) == {"get", "put", "delete"}
    assert set(paths[f"{S}/{{key}}/metadata"]) == {"get"}
    upload = paths[f"{S}/upload"]["post"]
    assert "201" in upload["responses"] and "413" in upload["responses"]
    key_param = paths[f"{S}/{{key}}"]["get"]["parameters"][0]
    assert (key_param["name"], key_param["in"]) == ("key", "path")
