"""``agentcore config show``: the effective configuration as TOML, secrets masked.

``main`` reads the real environment, so each test starts from one without
``AGENTCORE_*`` variables and in an empty working directory.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

import pytest

from agentcore.cli import main
from agentcore.config import load_config, to_masked_dict

SECTIONS = {"server", "database", "registry", "tasks", "events", "limits", "metrics"}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("AGENTCORE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def show(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    """Run ``agentcore config show ARGS``; return the parsed TOML it printed."""
    assert main(["config", "show", *args]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    return tomllib.loads(out)


def test_config_show_prints_toml_with_every_section(capsys: pytest.CaptureFixture[str]) -> None:
    shown = show(capsys)

    assert shown.keys() >= SECTIONS
    assert shown["server"]["host"] == "127.0.0.1"
    assert shown["server"]["port"] == 8001
    assert shown["server"]["workers"] == 1
    assert shown["server"]["access_log"] is False
    assert shown["database"]["data_dir"] == ".agentcore"
    assert shown["database"]["effective_url"] == "sqlite:///.agentcore/agentcore.db"
    assert shown["registry"]["heartbeat_flush_interval_s"] == 1.0


def test_config_show_masks_the_database_password(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "show", "--database-url", "postgresql://u:secret@h/db"]) == 0
    out, _ = capsys.readouterr()

    assert ":secret@" not in out  # "secret" alone is part of key names (auth.jwt_secret)
    shown = tomllib.loads(out)
    assert shown["database"]["url"] == "postgresql://u:***@h/db"
    assert shown["database"]["effective_url"] == "postgresql://u:***@h/db"


def test_flags_override_file_and_environment(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "agentcore.toml"
    config.write_text('[server]\nport = 9000\nworkers = 3\nhost = "10.0.0.1"\n')
    monkeypatch.setenv("AGENTCORE_SERVER__PORT", "9100")

    from_file_and_env = show(capsys, "--config", str(config))
    flagged = show(
        capsys,
        "--config",
        str(config),
        "--port",
        "9200",
        "--host",
        "0.0.0.0",
        "--workers",
        "2",
        "--data-dir",
        "/srv/agentcore",
        "--server",
        "uvicorn",
        "--log-level",
        "debug",
    )

    assert from_file_and_env["server"]["port"] == 9100
    assert from_file_and_env["server"]["workers"] == 3
    assert flagged["server"] == from_file_and_env["server"] | {
        "port": 9200,
        "host": "0.0.0.0",
        "workers": 2,
        "server": "uvicorn",
        "log_level": "debug",
    }
    assert flagged["database"]["effective_url"] == "sqlite:////srv/agentcore/agentcore.db"


def test_bad_key_in_config_file_exits_2_naming_the_key(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = tmp_path / "agentcore.toml"
    config.write_text("[server]\nprot = 9000\n")

    assert main(["config", "show", "--config", str(config)]) == 2
    out, err = capsys.readouterr()

    assert out == ""
    assert err.startswith("agentcore: ")
    assert "server.prot" in err


def test_missing_config_file_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["config", "show", "--config", str(tmp_path / "absent.toml")]) == 2
    _, err = capsys.readouterr()

    assert "absent.toml" in err


def test_flag_out_of_range_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "show", "--port", "70000"]) == 2
    _, err = capsys.readouterr()

    assert "server.port" in err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])

    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("agentcore ")


def test_config_show_keeps_every_value_and_its_type(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = tmp_path / "agentcore.toml"
    config.write_text(
        '[server]\ntrusted_proxies = ["10.0.0.0/8"]\n'
        "[limits.max_body_bytes_by_class]\nllm = 4096\n"
        "[rate_limit.classes.control]\nrate = 5.0\nburst = 10\n"
    )

    assert show(capsys) == to_masked_dict(load_config(environ={}))
    assert show(capsys, "--config", str(config)) == to_masked_dict(load_config(config, environ={}))


def test_config_file_that_cannot_be_read_exits_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["config", "show", "--config", str(tmp_path)]) == 2
    out, err = capsys.readouterr()

    assert out == ""
    assert str(tmp_path) in err


def test_config_show_output_parses_with_any_unicode_path(
    capsys: pytest.CaptureFixture[str],
) -> None:
    shown = show(capsys, "--data-dir", "/srv/d\u00e4t\u00e4-\U0001f600")

    assert shown["database"]["data_dir"] == "/srv/d\u00e4t\u00e4-\U0001f600"


def test_config_show_masks_credentials_inside_every_url(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "agentcore.toml"
    config.write_text(
        '[storage]\ns3_endpoint_url = "https://minio:minio-pass@s3.internal:9000"\n'
        '[[llm.providers]]\nname = "a"\nbase_url = "https://bob:llm-pass@llm.example/v1"\n'
        '[[llm.providers]]\nname = "b"\nbase_url = "https://llm.example/v1?api_key=sk-llm-key"\n'
    )
    monkeypatch.setenv("AGENTCORE_EVENTS__REDIS_URL", "redis://:redis-pass@r:6379/0")
    monkeypatch.setenv("AGENTCORE_AUTH__JWT_SECRET", "jwt-pass")

    assert (
        main(
            [
                "config",
                "show",
                "--config",
                str(config),
                "--database-url",
                "postgresql://u:db-pass@h/db",
            ]
        )
        == 0
    )
    out, _ = capsys.readouterr()

    for secret in ("minio-pass", "llm-pass", "sk-llm-key", "redis-pass", "jwt-pass", "db-pass"):
        assert secret not in out, secret
    shown = tomllib.loads(out)
    assert shown["storage"]["s3_endpoint_url"] == "https://minio:***@s3.internal:9000"
    assert [p["base_url"] for p in shown["llm"]["providers"]] == [
        "https://bob:***@llm.example/v1",
        "https://llm.example/v1?api_key=***",
    ]
    assert shown["events"]["redis_url"] == "redis://:***@r:6379/0"
