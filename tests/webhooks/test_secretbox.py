"""Webhook secrets sealed with AES-256-GCM under a key file outside the database."""

from __future__ import annotations

import os
import sqlite3
import stat
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from agentcore.errors import ConfigError
from agentcore.webhooks.secretbox import KEY_FILE_NAME, SecretBox, is_sealed
from tests.support import ServerProcess
from tests.webhooks.conftest import SECRET, Receiver

ENV = {
    "AGENTCORE_WEBHOOKS__ALLOWED_NETWORKS": '["127.0.0.0/8"]',
    "AGENTCORE_WEBHOOKS__POLL_INTERVAL_S": "0.05",
}


def test_a_sealed_secret_opens_with_the_same_key_and_webhook_only() -> None:
    box = SecretBox.from_key(b"k" * 32)
    sealed = box.seal(SECRET, "wh_1")

    assert is_sealed(sealed) and SECRET[6:] not in sealed
    assert sealed != box.seal(SECRET, "wh_1")  # a fresh nonce each time
    assert box.open(sealed, "wh_1") == SECRET
    assert SecretBox.from_key(b"k" * 32).open(sealed, "wh_1") == SECRET
    with pytest.raises(ConfigError, match="altered or copied"):
        box.open(sealed, "wh_2")
    with pytest.raises(ConfigError, match=f"encrypted with key {box.key_id}"):
        SecretBox.from_key(b"j" * 32).open(sealed, "wh_1")
    tampered = sealed[:-6] + ("A" if sealed[-6] != "A" else "B") + sealed[-5:]
    with pytest.raises(ConfigError, match="altered"):
        box.open(tampered, "wh_1")


def test_a_clear_text_secret_is_read_as_it_is() -> None:
    assert SecretBox.from_key(b"k" * 32).open(SECRET, "wh_1") == SECRET


def test_the_key_file_is_made_private_on_first_load_and_then_reused(tmp_path: Path) -> None:
    path = tmp_path / "data" / "webhook-secrets.key"
    first = SecretBox(path)
    first.load()
    second = SecretBox(path)
    second.load()

    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    assert first.key_id == second.key_id
    assert second.open(first.seal(SECRET, "wh_1"), "wh_1") == SECRET


@pytest.mark.parametrize("content", ["not base64!", "c2hvcnQ=", ""])
def test_a_key_file_without_a_key_is_a_config_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "key"
    path.write_text(content)
    with pytest.raises(ConfigError, match=r"webhooks\.secrets_key_file"):
        SecretBox(path).load()


@pytest.mark.server
def test_a_real_gateway_keeps_its_files_private_and_its_secrets_sealed_across_restarts(
    server_factory: Callable[..., ServerProcess], receiver: Receiver, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    os.chmod(data, 0o755)  # as an older version left it
    first = server_factory(env=ENV, data_dir=data).start()
    with httpx.Client(base_url=first.url, timeout=10) as client:
        created = client.post(
            "/api/v1/integration/webhooks",
            json={"url": receiver.url(), "events": ["rest.*"], "secret": SECRET},
        )
        assert created.status_code == 201, created.text
        assert created.json()["secret"] == SECRET

    modes = {
        name: stat.S_IMODE(os.stat(data / name).st_mode)
        for name in ("", "agentcore.db", "agentcore.db-wal", "agentcore.db-shm", KEY_FILE_NAME)
    }
    assert modes == {
        "": 0o700,
        "agentcore.db": 0o600,
        "agentcore.db-wal": 0o600,
        "agentcore.db-shm": 0o600,
        KEY_FILE_NAME: 0o600,
    }
    with sqlite3.connect(data / "agentcore.db") as db:
        [(column,)] = db.execute("SELECT secrets FROM webhooks").fetchall()
    assert "whsec_" not in column and SECRET[6:] not in column
    assert SECRET[6:].encode() not in b"".join(p.read_bytes() for p in data.glob("agentcore.db*"))
    first.stop()

    second = server_factory(env=ENV, data_dir=data).start()
    with httpx.Client(base_url=second.url, timeout=10) as client:
        published = client.post(
            "/api/v1/integration/events/publish", json={"event_type": "rest.test", "data": {}}
        )
        assert published.status_code == 202, published.text
    deadline = time.monotonic() + 10
    while not receiver.at("/hook") and time.monotonic() < deadline:
        time.sleep(0.05)
    [delivered] = receiver.at("/hook")
    assert delivered.verifies(SECRET)  # the same secret, opened with the same key file


@pytest.mark.server
def test_a_gateway_with_another_key_refuses_to_start_and_says_why(
    server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    first = server_factory(env=ENV, data_dir=data).start()
    with httpx.Client(base_url=first.url, timeout=10) as client:
        created = client.post(
            "/api/v1/integration/webhooks", json={"url": "http://127.0.0.1:9/h", "events": ["*"]}
        )
        assert created.status_code == 201, created.text
    first.stop()
    old_key = SecretBox(data / KEY_FILE_NAME)
    old_key.load()
    (data / KEY_FILE_NAME).unlink()  # lost: the next start makes a new one

    second = server_factory(env=ENV, data_dir=data)
    with pytest.raises(RuntimeError, match=f"encrypted with key {old_key.key_id}"):
        second.start(timeout=10)
