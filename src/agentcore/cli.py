"""``agentcore``: the command line, the edge where configuration is built.

::

    agentcore serve [--config F] [--host H] [--port P] [--workers N]
                    [--data-dir D] [--database-url URL] [--server uvicorn|granian]
    agentcore config show [same options]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from agentcore import __version__
from agentcore.config import Config, load_config, to_masked_dict
from agentcore.errors import ConfigError


def _config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML configuration file")
    parser.add_argument("--host", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default 8001)")
    parser.add_argument("--workers", type=int, help="worker processes (default 1)")
    parser.add_argument(
        "--data-dir", help="directory of the embedded database (default ./.agentcore)"
    )
    parser.add_argument("--database-url", help="sqlite:///path or postgresql://...")
    parser.add_argument("--server", choices=["uvicorn", "granian"], help="ASGI server")
    parser.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"])


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    server = {
        k: v
        for k in ("host", "port", "workers", "server", "log_level")
        if (v := getattr(args, k)) is not None
    }
    database = {
        k: v
        for k, attr in (("data_dir", "data_dir"), ("url", "database_url"))
        if (v := getattr(args, attr)) is not None
    }
    out: dict[str, Any] = {}
    if server:
        out["server"] = server
    if database:
        out["database"] = database
    return out


def _load(args: argparse.Namespace) -> Config:
    return load_config(args.config, overrides=_overrides(args))


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        items = ", ".join(f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in value.items())
        return "{" + items + "}"
    # A JSON string without ASCII escaping is a valid TOML basic string.
    return json.dumps(str(value), ensure_ascii=False)


def to_toml(data: dict[str, Any]) -> str:
    lines: list[str] = []
    for section, values in data.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in values.items())
        lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agentcore", description="AgentCore Gateway")
    parser.add_argument("--version", action="version", version=f"agentcore {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the gateway")
    _config_options(serve)
    config_cmd = commands.add_parser("config", help="inspect the configuration")
    config_sub = config_cmd.add_subparsers(dest="action", required=True)
    show = config_sub.add_parser("show", help="print the effective configuration, secrets masked")
    _config_options(show)
    args = parser.parse_args(argv)

    try:
        config = _load(args)
    except ConfigError as exc:
        print(f"agentcore: {exc.message}", file=sys.stderr)
        return 2

    if args.command == "config":
        print(to_toml(to_masked_dict(config)), end="")
        return 0

    logging.basicConfig(
        level=config.server.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from agentcore.server import serve as run_server

    run_server(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
