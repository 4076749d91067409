"""``agentcore``: the command line, the edge where configuration is built.

::

    agentcore serve [--config F] [--host H] [--port P] [--workers N]
                    [--data-dir D] [--database-url URL] [--server granian|uvicorn]
                    [--insecure]
    agentcore worker [same options as serve]   (webhook delivery, no HTTP)
    agentcore config show [same options]
    agentcore keys create --tenant T [--scope S]... [--agent-id A] [--name N]
    agentcore keys list [--tenant T]
    agentcore keys revoke ID
    agentcore fake-llm [--port P] [--latency-ms MS] [--failure-rate R]
                       [--stream-chunk-delay-ms MS]
                    (keys: [--config F] [--data-dir D] [--database-url URL])
    agentcore loadtest run <scenario|all> [--users N] [--spawn-rate R] [--run-time T]
                           [--host URL] [--processes N] [--targets F] ...
    agentcore loadtest compare BASELINE CURRENT   (stats CSVs or result folders)
    agentcore loadtest baseline save RESULT

``keys`` opens the configured store directly, so it works with the gateway
stopped or running; a running gateway notices a revocation within
``auth.cache_s`` seconds, and closes the key's open streams within twice that
(docs/authentication.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from agentcore import __version__, apikeys, extras
from agentcore.apikeys import ApiKeyRepository
from agentcore.auth import check_bind
from agentcore.config import Config, load_config, to_masked_dict
from agentcore.errors import AgentCoreError, ConfigError
from agentcore.loadtest import command as loadtest_command
from agentcore.repositories import open_repositories

T = TypeVar("T")
log = logging.getLogger("agentcore.cli")


def _config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML configuration file")
    parser.add_argument("--host", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default 8001)")
    parser.add_argument("--workers", type=int, help="worker processes (default 1)")
    parser.add_argument(
        "--data-dir", help="directory of the embedded database (default ./.agentcore)"
    )
    parser.add_argument("--database-url", help="sqlite:///path or postgresql://...")
    parser.add_argument(
        "--server", choices=["granian", "uvicorn"], help="ASGI server (default uvicorn)"
    )
    parser.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"])


def _store_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML configuration file")
    parser.add_argument(
        "--data-dir", help="directory of the embedded database (default ./.agentcore)"
    )
    parser.add_argument("--database-url", help="sqlite:///path or postgresql://...")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    server = {
        k: v
        for k in ("host", "port", "workers", "server", "log_level")
        if (v := getattr(args, k, None)) is not None
    }
    database = {
        k: v
        for k, attr in (("data_dir", "data_dir"), ("url", "database_url"))
        if (v := getattr(args, attr, None)) is not None
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


# -- keys -----------------------------------------------------------------------


def _keys_parser(commands: Any) -> None:
    keys = commands.add_parser("keys", help="create, list and revoke API keys")
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="create a key and print it (shown only once)")
    create.add_argument("--tenant", required=True, help="the tenant the key acts for")
    create.add_argument(
        "--scope",
        action="append",
        dest="scopes",
        metavar="SCOPE",
        help=(
            "a scope to grant (repeatable; default: every scope but admin and "
            "metrics:read, and for an --agent-id key not events:write either)"
        ),
    )
    create.add_argument("--agent-id", help="bind the key to one agent: it may act only as it")
    create.add_argument("--name", default="", help="a label for the key")
    _store_options(create)
    listing = actions.add_parser("list", help="list keys (never their secrets)")
    listing.add_argument("--tenant", help="only this tenant's keys")
    _store_options(listing)
    revoke = actions.add_parser("revoke", help="revoke a key")
    revoke.add_argument("key_id", metavar="ID", help="the key id (or the full key)")
    _store_options(revoke)


async def _with_keys(config: Config, job: Callable[[ApiKeyRepository], Awaitable[T]]) -> T:
    repos = open_repositories(config.database_url, pool_min_size=1, pool_max_size=1)
    await repos.open()
    try:
        return await job(repos.api_keys)
    finally:
        await repos.close()


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _keys(args: argparse.Namespace, config: Config) -> int:
    if args.action == "create":
        full, key = apikeys.generate(
            tenant=args.tenant,
            scopes=args.scopes or apikeys.default_scopes(args.agent_id),
            now=time.time(),
            name=args.name,
            agent_id=args.agent_id,
        )
        if not asyncio.run(_with_keys(config, lambda keys: keys.put(key))):
            print("agentcore: key id collision, run the command again", file=sys.stderr)
            return 1
        print(f"id:     {key.id}")
        print(f"tenant: {key.tenant}")
        print(f"scopes: {' '.join(key.scopes)}")
        print(f"agent:  {key.agent_id or '-'}")
        print(f"key:    {full}")
        print("Store the key now: it is not shown again (only its hash is kept).", file=sys.stderr)
        if config.auth.mode == "off":
            print(
                'note: auth.mode is "off", so the gateway does not ask for keys yet.',
                file=sys.stderr,
            )
        return 0
    if args.action == "list":
        keys = asyncio.run(_with_keys(config, lambda keys: keys.keys(args.tenant)))
        rows = [
            [
                k.id,
                k.name or "-",
                k.tenant,
                ",".join(k.scopes),
                k.agent_id or "-",
                _when(k.created_at),
                _when(k.revoked_at),
            ]
            for k in keys
        ]
        header = ["ID", "NAME", "TENANT", "SCOPES", "AGENT", "CREATED", "REVOKED"]
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
        for row in [header, *rows]:
            print(
                "  ".join(
                    cell.ljust(width) for cell, width in zip(row, widths, strict=True)
                ).rstrip()
            )
        return 0
    key_id: str = args.key_id
    if key_id.startswith(apikeys.PREFIX):
        key_id = apikeys.parse(key_id)[0]

    async def revoke(keys: ApiKeyRepository) -> tuple[apikeys.ApiKey | None, bool]:
        return await keys.get(key_id), await keys.revoke(key_id, time.time())

    found, revoked = asyncio.run(_with_keys(config, revoke))
    if found is None:
        print(f"agentcore: no API key with id {key_id!r}", file=sys.stderr)
        return 1
    if revoked:
        print(
            f"revoked {key_id}; running gateways refuse it within "
            f"{config.auth.cache_s:g} s (auth.cache_s) and close the streams "
            f"it opened within {2 * config.auth.cache_s:g} s"
        )
    else:
        print(f"{key_id} was already revoked at {_when(found.revoked_at)}")
    return 0


# -- fake-llm -------------------------------------------------------------------


def _fake_llm_parser(commands: Any) -> None:
    fake = commands.add_parser(
        "fake-llm", help="run a fake OpenAI/Anthropic-compatible LLM server (tests, demos)"
    )
    fake.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    fake.add_argument("--port", type=int, default=8100, help="port (default 8100)")
    fake.add_argument("--latency-ms", type=float, default=0.0, help="delay before answering")
    fake.add_argument(
        "--failure-rate", type=float, default=0.0, help="share of requests that fail (0-1)"
    )
    fake.add_argument(
        "--failure-status", type=int, default=500, help="status of a failure (default 500)"
    )
    fake.add_argument(
        "--stream-chunk-delay-ms", type=float, default=0.0, help="delay between stream chunks"
    )
    fake.add_argument(
        "--models", default="fake-small,fake-large", help="comma-separated model names"
    )
    fake.add_argument(
        "--api-key-env", default="", help="require the key held by this environment variable"
    )
    fake.add_argument("--seed", type=int, help="seed of the failure draws")


def _fake_llm(args: argparse.Namespace) -> int:
    # Only `agentcore fake-llm` needs the fake provider and the server it runs on.
    from agentcore.llm.fake import FakeBehavior, run

    if not 0 <= args.failure_rate <= 1:
        print("agentcore: --failure-rate must be between 0 and 1", file=sys.stderr)
        return 2
    behavior = FakeBehavior(
        latency_ms=args.latency_ms,
        failure_rate=args.failure_rate,
        failure_status=args.failure_status,
        stream_chunk_delay_ms=args.stream_chunk_delay_ms,
        models=tuple(m for m in args.models.split(",") if m),
        api_key=os.environ.get(args.api_key_env, "") if args.api_key_env else "",
        seed=args.seed,
    )
    print(f"fake LLM on http://{args.host}:{args.port}/v1", file=sys.stderr)
    run(args.host, args.port, behavior)
    return 0


# -- main -----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The whole command line, apart from running it: the deployment files' tests
    check the commands they name against it (tests/test_deploy_files.py)."""
    parser = argparse.ArgumentParser(prog="agentcore", description="AgentCore Gateway")
    parser.add_argument("--version", action="version", version=f"agentcore {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the gateway")
    _config_options(serve)
    serve.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback --host with auth.mode = off (everyone gets every scope)",
    )
    worker = commands.add_parser(
        "worker", help="deliver webhooks against the configured database (no HTTP) until SIGTERM"
    )
    _config_options(worker)
    config_cmd = commands.add_parser("config", help="inspect the configuration")
    config_sub = config_cmd.add_subparsers(dest="action", required=True)
    show = config_sub.add_parser("show", help="print the effective configuration, secrets masked")
    _config_options(show)
    _keys_parser(commands)
    _fake_llm_parser(commands)
    loadtest_command.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "fake-llm":
        return _fake_llm(args)
    if args.command == "loadtest":
        return loadtest_command.main(args, os.environ)

    try:
        config = _load(args)
        if args.command == "serve":
            check_bind(config.server.host, config.auth, insecure=args.insecure)
            extras.check(config)  # a missing backend library, here rather than in each worker
            if config.auth.mode == "jwt":
                # PyJWT loads only in jwt mode, as in auth.StoreAuthenticator.
                from agentcore.tokens import JwtVerifier

                JwtVerifier(config.auth)  # fail here, not in every worker, on bad key material
    except ConfigError as exc:
        print(f"agentcore: {exc.message}", file=sys.stderr)
        return 2

    if args.command == "config":
        print(to_toml(to_masked_dict(config)), end="")
        return 0
    if args.command == "keys":
        try:
            return _keys(args, config)
        except ConfigError as exc:
            print(f"agentcore: {exc.message}", file=sys.stderr)
            return 2
        except AgentCoreError as exc:
            print(f"agentcore: {exc.message}", file=sys.stderr)
            return 1

    # The server brings the whole app and its ASGI servers, which `keys` and `config` skip.
    from agentcore.server import configure_logging

    configure_logging(config.server.log_level)
    if args.command == "worker":
        # The webhook delivery stack loads only for `agentcore worker`.
        from agentcore.webhooks.worker import run_standalone

        try:
            asyncio.run(run_standalone(config))
        except AgentCoreError as exc:
            print(f"agentcore: {exc.message}", file=sys.stderr)
            return 1
        return 0
    if config.auth.mode == "off" and args.insecure:
        log.warning(
            "serving %s without authentication (--insecure): every caller has every scope",
            config.server.host,
        )
    from agentcore.server import serve as run_server  # lazy, as configure_logging above

    try:
        run_server(config, os.environ)
    except ConfigError as exc:  # e.g. an untested uvicorn, named with the tested range
        print(f"agentcore: {exc.message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
