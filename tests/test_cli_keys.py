"""``agentcore keys create|list|revoke`` and the ``serve`` loopback rule.

``main`` reads the real environment, so each test starts from one without
``AGENTCORE_*`` variables and in an empty working directory. Two tests start a
real gateway: the key must work over the socket, and ``--insecure`` must bind.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from agentcore.cli import main
from agentcore.identity import SCOPES
from tests.support import ServerProcess

ServerFactory = Callable[..., ServerProcess]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("AGENTCORE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def keys(capsys: pytest.CaptureFixture[str], data: Path, *args: str) -> tuple[int, str, str]:
    """Run ``agentcore keys ARGS --data-dir DATA``: (exit code, stdout, stderr)."""
    code = main(["keys", *args, "--data-dir", str(data)])
    out, err = capsys.readouterr()
    return code, out, err


def create(capsys: pytest.CaptureFixture[str], data: Path, *args: str) -> dict[str, str]:
    code, out, err = keys(capsys, data, "create", *args)
    assert code == 0, err
    assert "not shown again" in err
    fields = {}
    for line in out.splitlines():
        name, _, value = line.partition(":")
        fields[name] = value.strip()
    return fields


def test_create_shows_the_key_once_and_list_never(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    shown = create(
        capsys,
        data,
        "--tenant",
        "acme",
        "--scope",
        "agents:read",
        "--scope",
        "tasks:write",
        "--agent-id",
        "worker-1",
        "--name",
        "ci",
    )

    full = shown["key"]
    assert full.startswith(f"ak_{shown['id']}_")
    assert shown["tenant"] == "acme"
    assert shown["scopes"] == "agents:read tasks:write"
    assert shown["agent"] == "worker-1"

    code, out, _ = keys(capsys, data, "list")
    assert code == 0
    header, row = out.splitlines()
    assert header.split() == ["ID", "NAME", "TENANT", "SCOPES", "AGENT", "CREATED", "REVOKED"]
    cells = row.split()
    assert cells[:5] == [shown["id"], "ci", "acme", "agents:read,tasks:write", "worker-1"]
    assert cells[6] == "-"
    secret = full.rsplit("_", 1)[1]
    assert secret[-20:] not in out
    assert full not in out


def test_default_scopes_tenant_filter_and_revoke(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    first = create(capsys, data, "--tenant", "acme")
    second = create(capsys, data, "--tenant", "globex")
    agent = create(capsys, data, "--tenant", "acme", "--agent-id", "bot-1")
    assert first["scopes"].split() == sorted(SCOPES - {"admin", "metrics:read"})
    assert agent["scopes"].split() == sorted(SCOPES - {"admin", "metrics:read", "events:write"})

    _, out, _ = keys(capsys, data, "list", "--tenant", "globex")
    assert [line.split()[0] for line in out.splitlines()[1:]] == [second["id"]]

    code, out, _ = keys(capsys, data, "revoke", first["id"])
    assert code == 0
    assert out.startswith(f"revoked {first['id']}; running gateways refuse it within 5 s")
    assert "close the streams it opened within 10 s" in out
    code, out, _ = keys(capsys, data, "revoke", first["key"])  # the full key works too
    assert code == 0 and "already revoked" in out
    code, _, err = keys(capsys, data, "revoke", "000000000000")
    assert code == 1 and "no API key" in err

    _, out, _ = keys(capsys, data, "list", "--tenant", "acme")
    assert out.splitlines()[1].split()[-1].endswith("Z")  # a revocation time


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tenant", "acme", "--scope", "root"], "unknown scope 'root'"),
        (["--tenant", "a b"], "invalid tenant"),
    ],
)
def test_create_refuses_bad_input(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, args: list[str], message: str
) -> None:
    code, out, err = keys(capsys, tmp_path / "data", "create", *args)
    assert code == 2
    assert out == ""
    assert message in err


def test_serve_refuses_a_public_address_without_auth(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code = main(["serve", "--host", "0.0.0.0", "--data-dir", str(tmp_path / "data")])

    assert code == 2
    err = capsys.readouterr().err
    assert "refusing to listen on 0.0.0.0" in err
    assert "--insecure" in err


@pytest.mark.server
def test_a_served_gateway_accepts_a_key_until_it_is_revoked(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, server_factory: ServerFactory
) -> None:
    data = tmp_path / "data"  # server_factory's data directory
    key = create(capsys, data, "--tenant", "acme", "--scope", "agents:read")
    server = server_factory(
        env={"AGENTCORE_AUTH__MODE": "api_key", "AGENTCORE_AUTH__CACHE_S": "0.1"}
    ).start()
    body = {"jsonrpc": "2.0", "id": 1, "method": "agent.list"}
    url = f"{server.url}/api/v1/jsonrpc"

    def call(credential: str | None) -> int:
        headers = {"x-api-key": credential} if credential else {}
        return httpx.post(url, json=body, headers=headers, timeout=5).status_code

    assert call(None) == 401
    assert call(key["key"]) == 200
    keys(capsys, data, "revoke", key["id"])
    deadline = time.monotonic() + 5
    while call(key["key"]) == 200:
        assert time.monotonic() < deadline, "the revoked key is still accepted"
        time.sleep(0.05)
    assert call(key["key"]) == 401


@pytest.mark.server
def test_insecure_serves_a_public_address(server_factory: ServerFactory) -> None:
    server = server_factory("--host", "0.0.0.0", "--insecure").start()

    assert httpx.get(f"{server.url}/api/v1/health/ready", timeout=5).status_code == 200
    server.stop()
    assert server.proc is not None and server.proc.returncode == 0
