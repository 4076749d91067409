"""Optional backends: the gateway imports and runs its default without their libraries,
and a configuration that picks one whose library is missing stops at startup with the
``pip install`` line of its extra."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agentcore import extras, server
from agentcore.app import create_app
from agentcore.cli import main
from agentcore.config import StorageConfig, build_config
from agentcore.errors import ConfigError
from agentcore.storage import open_blob_store
from agentcore.store.postgres import PostgresDatabase
from tests.support import make_config

#: Each optional library and its extra.
OPTIONAL = {"asyncpg": "postgres", "redis": "redis", "granian": "granian", "boto3": "s3"}


def missing(monkeypatch: pytest.MonkeyPatch, module: str) -> None:
    """Make ``import module`` fail as if it were not installed (a None in sys.modules)."""
    monkeypatch.setitem(sys.modules, module, None)


def install_line(extra: str) -> str:
    return f"pip install 'agentcore-gateway[{extra}]'"


def test_the_default_configuration_needs_no_extra() -> None:
    assert extras.needed(build_config()) == []


def test_the_gateway_imports_and_builds_its_default_without_any_optional_library(
    tmp_path: Path,
) -> None:
    blocked = ", ".join(repr(m) for m in OPTIONAL)
    script = f"""
import sys
for name in ({blocked}):
    sys.modules[name] = None
import agentcore.app, agentcore.cli, agentcore.server, agentcore.a2a_protocol.main
from agentcore.app import create_app
from agentcore.config import build_config
create_app(build_config({{"database": {{"data_dir": sys.argv[1]}}}}))
loaded = sorted(set(({blocked})) & {{n for n, m in sys.modules.items() if m is not None}})
assert not loaded, loaded
"""
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("AGENTCORE_")},
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr


def test_postgresql_without_asyncpg_names_the_postgres_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    missing(monkeypatch, "asyncpg")
    with pytest.raises(ConfigError, match=r"database\.url") as raised:
        PostgresDatabase("postgresql://gateway@127.0.0.1/agentcore")
    assert install_line("postgres") in raised.value.message


@pytest.mark.parametrize("section", ["rate_limit", "events"])
def test_redis_backends_without_redis_name_the_redis_extra(
    monkeypatch: pytest.MonkeyPatch, section: str
) -> None:
    missing(monkeypatch, "redis")
    setting = {"rate_limit": {"backend": "redis"}, "events": {"fanout": "redis"}}[section]
    with pytest.raises(ConfigError, match=section) as raised:
        create_app(make_config(**{section: setting}))
    assert install_line("redis") in raised.value.message


def test_s3_storage_without_boto3_names_the_s3_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    missing(monkeypatch, "boto3")
    with pytest.raises(ConfigError, match=r"storage\.backend") as raised:
        open_blob_store(StorageConfig(backend="s3", s3_bucket="b"), str(tmp_path), {})
    assert install_line("s3") in raised.value.message


def test_granian_without_granian_names_the_granian_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    missing(monkeypatch, "granian")
    with pytest.raises(ConfigError, match=r"server\.server") as raised:
        server._serve_granian(make_config(server={"server": "granian"}), 100)
    assert install_line("granian") in raised.value.message


def test_serve_stops_before_any_worker_when_a_library_is_missing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    for name in list(os.environ):
        if name.startswith("AGENTCORE_"):
            monkeypatch.delenv(name)
    missing(monkeypatch, "granian")

    def never(*_: object) -> None:
        raise AssertionError("serve started")

    monkeypatch.setattr(server, "serve", never)
    assert main(["serve", "--server", "granian", "--data-dir", str(tmp_path)]) == 2
    assert install_line("granian") in capsys.readouterr().err
