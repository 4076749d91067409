"""Configuration: defaults, TOML file, environment, overrides, validation, masking.

Every test passes ``environ`` explicitly, so the real process environment (CI
sets ``AGENTCORE_REQUIRE_SERVICES``) never leaks in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agentcore.app import create_app
from agentcore.config import (
    Config,
    build_config,
    env_overrides,
    load_config,
    mask_url,
    to_masked_dict,
)
from agentcore.errors import ConfigError
from agentcore.repositories import SqlRepositories
from agentcore.store.sqlite import SqliteDatabase


def write(tmp_path: Path, text: str, name: str = "agentcore.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def config_error(
    path: Path | None = None,
    environ: dict[str, str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> str:
    """Load a configuration that must be refused; return the error message."""
    with pytest.raises(ConfigError) as info:
        load_config(path, environ=environ or {}, overrides=overrides)
    return info.value.message


# -- defaults -------------------------------------------------------------------


def test_defaults_bind_loopback_8001_with_sqlite_under_dot_agentcore() -> None:
    config = load_config(environ={})

    assert config == Config()
    assert (config.server.host, config.server.port) == ("127.0.0.1", 8001)
    assert config.server.workers == 1
    assert config.server.server == "uvicorn"
    assert config.database.url == ""
    assert config.database.data_dir == ".agentcore"
    assert config.database_url == "sqlite:///.agentcore/agentcore.db"


def test_an_explicit_environ_hides_the_process_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AGENTCORE_SERVER__PORT", "9999")

    assert load_config(environ={}).server.port == 8001


def test_config_is_frozen() -> None:
    config = load_config(environ={})

    with pytest.raises(AttributeError):
        config.server.port = 1  # type: ignore[misc]


# -- the TOML file --------------------------------------------------------------


def test_file_sections_set_their_keys_and_keep_the_other_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [server]
        host = "0.0.0.0"
        port = 9000

        [database]
        data_dir = "/var/lib/agentcore"

        [registry]
        heartbeat_ttl_s = 30
        heartbeat_flush_interval_s = 0.5
        """,
    )

    config = load_config(path, environ={})

    assert (config.server.host, config.server.port) == ("0.0.0.0", 9000)
    assert config.server.workers == 1
    assert config.database_url == "sqlite:////var/lib/agentcore/agentcore.db"
    # A TOML integer is accepted for a float key and becomes a float.
    assert config.registry.heartbeat_ttl_s == 30.0
    assert isinstance(config.registry.heartbeat_ttl_s, float)
    assert config.registry.heartbeat_flush_interval_s == 0.5
    assert config.registry.sweep_interval_s == Config().registry.sweep_interval_s


def test_agentcore_config_variable_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nport = 9000\n")

    assert load_config(environ={"AGENTCORE_CONFIG": str(path)}).server.port == 9000


def test_explicit_path_wins_over_agentcore_config_variable(tmp_path: Path) -> None:
    chosen = write(tmp_path, "[server]\nport = 9000\n", "chosen.toml")
    other = write(tmp_path, "[server]\nport = 9100\n", "other.toml")

    config = load_config(chosen, environ={"AGENTCORE_CONFIG": str(other)})

    assert config.server.port == 9000


def test_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"

    message = config_error(path)

    assert "not found" in message
    assert str(path) in message


def test_invalid_toml_is_a_config_error(tmp_path: Path) -> None:
    path = write(tmp_path, "[server\nport = \n")

    message = config_error(path)

    assert "not valid TOML" in message
    assert str(path) in message


@pytest.mark.parametrize("kind", ["directory", "not-utf8"])
def test_unreadable_config_file_is_a_config_error(tmp_path: Path, kind: str) -> None:
    if kind == "directory":
        path = tmp_path / "conf.d"
        path.mkdir()
    else:
        path = tmp_path / "latin1.toml"
        path.write_bytes(b'[server]\nhost = "caf\xe9"\n')

    message = config_error(path)

    assert str(path) in message


# -- the environment ------------------------------------------------------------


def test_env_values_are_read_as_toml_values() -> None:
    config = load_config(
        environ={
            "AGENTCORE_SERVER__WORKERS": "2",
            "AGENTCORE_SERVER__ACCESS_LOG": "true",
            "AGENTCORE_REGISTRY__HEARTBEAT_TTL_S": "2.5",
        }
    )

    assert config.server.workers == 2
    assert isinstance(config.server.workers, int)
    assert config.server.access_log is True
    assert config.registry.heartbeat_ttl_s == 2.5


def test_env_list_value_is_a_list() -> None:
    layer = env_overrides({"AGENTCORE_SERVER__TRUSTED_PROXIES": '["10.0.0.0/8", "127.0.0.1"]'})

    assert layer == {"server": {"trusted_proxies": ["10.0.0.0/8", "127.0.0.1"]}}


def test_env_list_for_a_string_key_names_the_key() -> None:
    message = config_error(environ={"AGENTCORE_SERVER__HOST": '["a", "b"]'})

    assert "server.host" in message


def test_env_value_that_is_not_toml_is_a_plain_string() -> None:
    config = load_config(
        environ={
            "AGENTCORE_SERVER__HOST": "0.0.0.0",
            "AGENTCORE_DATABASE__URL": "postgresql://app@db.internal:5432/agentcore",
            "AGENTCORE_DATABASE__DATA_DIR": "/srv/agentcore data",
        }
    )

    assert config.server.host == "0.0.0.0"
    assert config.database.url == "postgresql://app@db.internal:5432/agentcore"
    assert config.database.data_dir == "/srv/agentcore data"


def test_variables_without_a_section_separator_are_ignored() -> None:
    config = load_config(
        environ={
            "AGENTCORE_REQUIRE_SERVICES": "1",
            "AGENTCORE_CONFIG_JSON": "{}",
            "SERVER__PORT": "1",
            "PATH": "/usr/bin",
        }
    )

    assert config == Config()


# -- precedence -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("use_file", "use_env", "use_overrides", "port"),
    [
        (False, False, False, 8001),
        (True, False, False, 9000),
        (True, True, False, 9100),
        (False, True, False, 9100),
        (True, True, True, 9200),
        (True, False, True, 9200),
    ],
)
def test_precedence_defaults_file_env_overrides(
    tmp_path: Path, use_file: bool, use_env: bool, use_overrides: bool, port: int
) -> None:
    path = write(tmp_path, "[server]\nport = 9000\n") if use_file else None
    environ = {"AGENTCORE_SERVER__PORT": "9100"} if use_env else {}
    overrides = {"server": {"port": 9200}} if use_overrides else None

    assert load_config(path, environ=environ, overrides=overrides).server.port == port


def test_layers_merge_key_by_key_not_section_by_section(tmp_path: Path) -> None:
    path = write(tmp_path, '[server]\nhost = "0.0.0.0"\nport = 9000\nworkers = 3\n')

    config = load_config(
        path,
        environ={"AGENTCORE_SERVER__PORT": "9100"},
        overrides={"server": {"workers": 4}},
    )

    assert (config.server.host, config.server.port, config.server.workers) == (
        "0.0.0.0",
        9100,
        4,
    )


# -- validation -----------------------------------------------------------------


def test_unknown_section_is_refused_and_named(tmp_path: Path) -> None:
    assert "nope" in config_error(write(tmp_path, "[nope]\nx = 1\n"))
    assert "nope" in config_error(environ={"AGENTCORE_NOPE__X": "1"})


def test_unknown_key_is_refused_and_named_by_its_dotted_path(tmp_path: Path) -> None:
    assert "server.prot" in config_error(write(tmp_path, "[server]\nprot = 9000\n"))
    assert "server.prot" in config_error(environ={"AGENTCORE_SERVER__PROT": "9000"})


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ('[server]\nport = "8001"\n', "server.port"),
        ("[server]\nport = true\n", "server.port"),
        ("[server]\nport = 80.5\n", "server.port"),
        ('[server]\nworkers = "two"\n', "server.workers"),
        ('[server]\nserver = "gunicorn"\n', "server.server"),
        ('[server]\nlog_level = "loud"\n', "server.log_level"),
        ('[registry]\nheartbeat_ttl_s = "60s"\n', "registry.heartbeat_ttl_s"),
        ("[database]\ndata_dir = 5\n", "database.data_dir"),
    ],
)
def test_wrong_type_names_the_key(tmp_path: Path, toml: str, key: str) -> None:
    assert key in config_error(write(tmp_path, toml))


def test_wrong_type_from_env_names_the_key() -> None:
    assert "server.workers" in config_error(environ={"AGENTCORE_SERVER__WORKERS": "two"})


@pytest.mark.parametrize("port", [0, -1, 65536, 70000])
def test_port_out_of_range_is_refused(port: int) -> None:
    message = config_error(overrides={"server": {"port": port}})

    assert "server.port" in message
    assert str(port) in message


@pytest.mark.parametrize("port", [1, 65535])
def test_port_bounds_are_accepted(port: int) -> None:
    assert load_config(environ={}, overrides={"server": {"port": port}}).server.port == port


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ("server", "workers"),
        ("registry", "heartbeat_flush_interval_s"),
        ("registry", "heartbeat_ttl_s"),
        ("registry", "sweep_interval_s"),
        ("limits", "max_body_bytes"),
    ],
)
def test_non_positive_values_are_refused(section: str, key: str) -> None:
    assert f"{section}.{key}" in config_error(overrides={section: {key: 0}})


@pytest.mark.parametrize("seconds", [-1, float("nan")])
def test_a_negative_query_cache_time_is_refused(seconds: float) -> None:
    message = config_error(overrides={"registry": {"query_cache_s": seconds}})
    assert "registry.query_cache_s: must be >= 0" in message


def test_a_query_cache_time_of_zero_is_accepted() -> None:
    assert (
        load_config(environ={}, overrides={"registry": {"query_cache_s": 0}}).registry.query_cache_s
        == 0
    )


@pytest.mark.parametrize("seconds", [0, -1, 3601, float("nan")])
def test_statement_timeout_out_of_range_is_refused(seconds: float) -> None:
    assert "database.statement_timeout_s" in config_error(
        overrides={"database": {"statement_timeout_s": seconds}}
    )


def test_statement_timeout_reaches_the_sqlite_driver(tmp_path: Path) -> None:
    config = load_config(
        environ={}, overrides={"database": {"data_dir": str(tmp_path), "statement_timeout_s": 2.5}}
    )
    gateway = create_app(config)
    assert isinstance(gateway.repos, SqlRepositories)
    assert isinstance(gateway.repos.database, SqliteDatabase)
    assert gateway.repos.database._statement_timeout_s == 2.5


def test_nan_interval_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "[registry]\nheartbeat_flush_interval_s = nan\n")

    assert "registry.heartbeat_flush_interval_s" in config_error(path)


@pytest.mark.parametrize(
    "url", ["mysql://root@127.0.0.1/test", "redis://127.0.0.1:6379/0", "agentcore.db"]
)
def test_unsupported_database_scheme_is_refused(url: str) -> None:
    message = config_error(overrides={"database": {"url": url}})

    assert "database.url" in message


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:///relative/agentcore.db",
        "sqlite:////abs/agentcore.db",
        "sqlite://:memory:",
        "postgresql://u@127.0.0.1:5432/db",
        "postgres://u@127.0.0.1/db",
        "memory://",
    ],
)
def test_supported_database_urls_are_accepted(url: str) -> None:
    config = load_config(environ={}, overrides={"database": {"url": url}})

    assert config.database_url == url


@pytest.mark.parametrize(
    "url",
    [
        "sqlite://",
        "sqlite:///",
        "sqlite:",
        "sqlite:/agentcore.db",
    ],
)
def test_sqlite_url_without_a_path_is_refused(url: str) -> None:
    assert "database.url" in config_error(overrides={"database": {"url": url}})


def test_memory_database_with_several_workers_is_refused() -> None:
    message = config_error(overrides={"database": {"url": "memory://"}, "server": {"workers": 2}})

    assert "database.url" in message and "server.workers" in message


# -- masking --------------------------------------------------------------------


def test_mask_url_hides_the_password_of_a_postgres_url() -> None:
    masked = mask_url("postgresql://app:s3cret@db.internal:5432/agentcore?sslmode=require")

    assert masked == "postgresql://app:***@db.internal:5432/agentcore?sslmode=require"


@pytest.mark.parametrize(
    "url",
    ["sqlite:///.agentcore/agentcore.db", ""],
)
def test_mask_url_leaves_urls_without_a_password_alone(url: str) -> None:
    assert mask_url(url) == url


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("https://user:pa55@llm.example.com/v1", "https://user:***@llm.example.com/v1"),
        ("https://sk-live-123@llm.example.com/v1", "https://***@llm.example.com/v1"),
        # A lone user name is masked too: in https URLs it is often a token.
        ("postgresql://app@db:5432/agentcore", "postgresql://***@db:5432/agentcore"),
        ("https://u:p@w@h.example/x", "https://u:***@h.example/x"),  # the last @ ends userinfo
        ("https://h.example/v1?api_key=sk-1", "https://h.example/v1?api_key=***"),
        ("https://h.example/v1?apikey=a&model=m", "https://h.example/v1?apikey=***&model=m"),
        ("https://h.example/?key=a&token=b", "https://h.example/?key=***&token=***"),
        ("https://h.example/?access_token=a", "https://h.example/?access_token=***"),
        ("https://h.example/?client_secret=a", "https://h.example/?client_secret=***"),
        ("https://h.example/?password=a&user=u", "https://h.example/?password=***&user=u"),
        ("https://h.example/?sig=a&se=2030", "https://h.example/?sig=***&se=2030"),
        ("https://h.example/?signature=a", "https://h.example/?signature=***"),
        ("https://h.example/?X-Amz-Signature=a", "https://h.example/?X-Amz-Signature=***"),
        (
            "https://h.example/?X-Amz-Security-Token=a",
            "https://h.example/?X-Amz-Security-Token=***",
        ),
        ("https://h.example/?auth=a", "https://h.example/?auth=***"),
        ("https://h.example/?Authorization=Bearer%20x", "https://h.example/?Authorization=***"),
        (
            "https://h.example/#access_token=a&state=s",
            "https://h.example/#access_token=***&state=s",
        ),
        ("https://a:b@h.example/?token=t", "https://a:***@h.example/?token=***"),
        ("redis://:hunter2@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("postgresql://app:s3cret@db/agentcore", "postgresql://app:***@db/agentcore"),
        ("http://[::1:bad", "***"),  # not parseable: masked whole
    ],
)
def test_mask_url_masks_userinfo_and_secret_looking_parameters(url: str, masked: str) -> None:
    assert mask_url(url) == masked


@pytest.mark.parametrize(
    "url",
    [
        "https://api.openai.com/v1",
        "https://h.example/v1?model=gpt&region=eu&token=",  # an empty value hides nothing
        "https://h.example/path;key=value",  # path parameters are the path
        "http://127.0.0.1:9000",
    ],
)
def test_mask_url_leaves_urls_without_credentials_alone(url: str) -> None:
    assert mask_url(url) == url


def test_masked_dict_masks_every_url_of_the_configuration() -> None:
    config = build_config(
        {
            "database": {"url": "postgresql://app:dbpass@db/agentcore"},
            "events": {"redis_url": "redis://:redispass@r:6379/0"},
            "rate_limit": {"redis_url": "redis://u:limitpass@r:6379/0"},
            "storage": {
                "s3_endpoint_url": "https://minio:miniopass@s3.internal/?X-Amz-Credential=c"
            },
            "llm": {
                "providers": [
                    {"name": "a", "base_url": "https://u:llmpass@llm.example/v1"},
                    {"name": "b", "base_url": "https://llm.example/v1?api_key=sk-llmkey"},
                ]
            },
        }
    )

    text = repr(to_masked_dict(config))

    for secret in ("dbpass", "redispass", "limitpass", "miniopass", "llmpass", "sk-llmkey", "=c"):
        assert secret not in text, secret
    assert to_masked_dict(config)["llm"]["providers"][1]["base_url"] == (
        "https://llm.example/v1?api_key=***"
    )


def test_a_config_error_does_not_echo_the_credentials_of_a_url() -> None:
    message = config_error(
        overrides={"llm": {"providers": [{"name": "a", "base_url": "ftp://u:ftppass@h/?key=k1"}]}}
    )

    assert "base_url" in message and "ftppass" not in message and "k1" not in message


def test_mask_url_keeps_an_ipv6_host_bracketed() -> None:
    assert mask_url("postgresql://u:pw@[::1]:5432/db") == "postgresql://u:***@[::1]:5432/db"


def test_masked_dict_hides_the_database_password_but_the_config_keeps_it() -> None:
    url = "postgresql://app:s3cret@db.internal:5432/agentcore"
    config = load_config(environ={"AGENTCORE_DATABASE__URL": url})

    data = to_masked_dict(config)

    assert data["database"]["url"] == "postgresql://app:***@db.internal:5432/agentcore"
    assert data["database"]["effective_url"] == data["database"]["url"]
    assert "s3cret" not in repr(data)
    assert config.database_url == url
