"""The deployment files (Dockerfile, docker-compose*.yml, deploy/nginx) checked against the code.

No container runtime runs on the project's machines, so these files are never built or
started here. What can be checked without one is: they parse, every file they mount or copy
exists, every ``agentcore`` command they run parses with the real command line, every
``AGENTCORE_*`` variable they set is a configuration key whose value validates, the image
installs the extras that configuration needs, and nginx accepts its configuration
(``nginx -t``, when nginx is installed; CI installs it). docs/deployment.md.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from agentcore import extras
from agentcore.auth import check_bind
from agentcore.cli import build_parser
from agentcore.config import ENV_PREFIX, Config, build_config, env_overrides

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILES = ["docker-compose.yml", "docker-compose.dev.yml"]
#: What `${VAR}`, `${VAR:?message}` and `${VAR:-default}` become: nothing connects.
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-?+][^}]*)?\}")
#: The extras a `pip install` line installs: `pip install ... <package>[a,b]`.
PIP_EXTRAS = re.compile(r"pip install[^\n&;]*?\[([\w,]+)\]")
LIVE = "/api/v1/health/live"


# -- reading the files ----------------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) of each instruction, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    current = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        keyword, _, rest = (current + stripped).partition(" ")
        out.append((keyword.upper(), rest.strip()))
        current = ""
    return out


def runtime_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The instructions of the last stage: the image that runs."""
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def one(instructions: list[tuple[str, str]], keyword: str) -> str:
    found = [rest for kw, rest in instructions if kw == keyword]
    assert found, f"the Dockerfile's runtime stage has no {keyword}"
    return found[-1]  # Docker uses the last one


def image_environment(instructions: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, rest in instructions:
        if keyword == "ENV":
            for pair in shlex.split(rest):
                name, sep, value = pair.partition("=")
                assert sep, f"ENV {rest}: write NAME=value"
                env[name] = value
    return env


def load_compose(name: str) -> dict[str, Any]:
    text = INTERPOLATION.sub("placeholder", (ROOT / name).read_text())
    document = yaml.safe_load(text)
    assert isinstance(document, dict) and isinstance(document.get("services"), dict), name
    return document


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.partition("=")[::2] for item in raw)

    def text(value: Any) -> str:
        return ("true" if value else "false") if isinstance(value, bool) else str(value)

    return {str(name): text(value) for name, value in raw.items()}


def command_text(command: str | list[str]) -> str:
    return command if isinstance(command, str) else shlex.join(command)


def agentcore_argvs(text: str) -> Iterator[list[str]]:
    """The arguments of every `agentcore ...` in a shell command, `sh -c` scripts included."""
    for token in shlex.split(text):
        for piece in re.split(r"&&|\|\||;", token):
            words = shlex.split(piece)
            if words and words[0] == "agentcore":
                yield words[1:]


class Image:
    """The image the Dockerfile builds, as far as a compose service running it sees it."""

    def __init__(self) -> None:
        self.text = (ROOT / "Dockerfile").read_text()
        self.instructions = dockerfile_instructions(self.text)
        self.runtime = runtime_stage(self.instructions)
        self.entrypoint: list[str] = json.loads(one(self.runtime, "ENTRYPOINT"))
        self.cmd: list[str] = json.loads(one(self.runtime, "CMD"))
        self.env = image_environment(self.runtime)
        self.extras = {e for m in PIP_EXTRAS.finditer(self.text) for e in m.group(1).split(",")}

    def argv(self, service: Mapping[str, Any]) -> list[str]:
        entrypoint = service.get("entrypoint", self.entrypoint)
        assert entrypoint == ["agentcore"], entrypoint
        return list(service.get("command", self.cmd))


@cache
def image() -> Image:
    return Image()


def runs_image(service: Mapping[str, Any]) -> bool:
    return "build" in service or str(service.get("image", "")).startswith("agentcore-gateway")


def agentcore_services(document: Mapping[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, service in document["services"].items():
        if runs_image(service) or "agentcore" in command_text(service.get("command", "")):
            yield name, service


def service_argvs(service: Mapping[str, Any]) -> list[list[str]]:
    if runs_image(service):
        return [image().argv(service)]
    return list(agentcore_argvs(command_text(service["command"])))


def service_config(service: Mapping[str, Any]) -> tuple[Config, set[str]]:
    """The configuration a service's environment builds, and the extras its image installs."""
    env = environment(service)
    if runs_image(service):
        env = {**image().env, **env}
        installed = image().extras
    else:
        command = command_text(service.get("command", ""))
        installed = {e for m in PIP_EXTRAS.finditer(command) for e in m.group(1).split(",")}
    for name in env:
        if name.startswith(ENV_PREFIX) and name != "AGENTCORE_CONFIG":
            assert "__" in name, f"{name} is no configuration key (AGENTCORE_<SECTION>__<KEY>)"
    return build_config(env_overrides(env)), installed


def bind_sources(service: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(source, target) of each bind mount; named volumes are not yielded."""
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            source, target = str(volume.get("source", "")), str(volume["target"])
        else:
            source, _, rest = str(volume).partition(":")
            target = rest.partition(":")[0]
        if source.startswith((".", "/")):
            yield source, target


# -- the Dockerfile -------------------------------------------------------------------------


def test_the_image_runs_as_a_user_other_than_root() -> None:
    user = one(image().runtime, "USER").split(":")[0]
    assert user not in ("root", "0", "")


def test_the_image_checks_liveness_on_the_port_it_exposes() -> None:
    exposed = one(image().runtime, "EXPOSE").split()
    assert exposed == ["8001"]
    healthcheck = one(image().runtime, "HEALTHCHECK")
    assert f"http://127.0.0.1:{exposed[0]}{LIVE}" in healthcheck
    args = build_parser().parse_args(image().cmd)
    assert args.command == "serve" and str(args.port) == exposed[0]


def test_the_build_context_holds_what_the_wheel_is_built_from() -> None:
    copied: set[str] = set()
    for keyword, rest in image().instructions:
        if keyword == "COPY" and not rest.startswith("--from"):
            *sources, _destination = shlex.split(rest)
            copied |= {source.removeprefix("./").rstrip("/") for source in sources}
    assert copied
    for source in copied:
        assert (ROOT / source).exists(), source
    ignore = [
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip()
    ]
    ignore = [line for line in ignore if not line.startswith("#")]
    assert ignore[0] == "*", ".dockerignore lists what the build needs, after excluding all"
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert copied <= allowed, f"COPY sources left out of the build context: {copied - allowed}"
    # What hatchling reads to build the wheel lies under what is copied.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = [
        "pyproject.toml",
        project["project"]["readme"],
        project["tool"]["hatch"]["version"]["path"],
        *project["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"],
    ]
    for path in needed:
        assert any(path == c or path.startswith(c + "/") for c in copied), path


# -- the compose files ----------------------------------------------------------------------


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_compose_mounts_exist(name: str) -> None:
    document = load_compose(name)
    named = set(document.get("volumes") or {})
    for service_name, service in document["services"].items():
        build = service.get("build")
        if build is not None:
            if isinstance(build, str):
                build = {"context": build}
            dockerfile = Path(build.get("context", ".")) / build.get("dockerfile", "Dockerfile")
            assert (ROOT / dockerfile).is_file(), f"{service_name} builds from {dockerfile}"
        for volume in service.get("volumes", []):
            source = volume.get("source", "") if isinstance(volume, dict) else volume.split(":")[0]
            if not str(source).startswith((".", "/")):
                assert source in named, f"{service_name}: volume {source} is not declared"
        for source, _ in bind_sources(service):
            assert not source.startswith("/"), f"{service_name}: {source} is outside the repo"
            assert (ROOT / source).exists(), f"{service_name} mounts {source}, which is missing"


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_compose_commands_parse_and_configure(name: str) -> None:
    parser = build_parser()
    services = dict(agentcore_services(load_compose(name)))
    assert services, f"{name} runs no agentcore command"
    for service_name, service in services.items():
        argvs = service_argvs(service)
        assert argvs, f"{service_name}: no agentcore command found in {service.get('command')}"
        config, installed = service_config(service)
        needed = {backend.extra for backend in extras.needed(config)}
        assert needed <= installed, f"{service_name} needs the extras {needed - installed}"
        for argv in argvs:
            try:
                args = parser.parse_args(argv)
            except SystemExit:
                pytest.fail(f"{name}, {service_name}: `agentcore {shlex.join(argv)}` is refused")
            if args.command == "serve":
                # What `agentcore serve` checks before it starts: it would exit 2 here.
                check_bind(args.host or config.server.host, config.auth, insecure=args.insecure)


def test_the_documented_commands_parse() -> None:
    """The `docker compose run` and `docker run` lines in the files' headers."""
    parser = build_parser()
    compose = re.findall(
        r"docker compose run --rm gateway-\d (.+)", (ROOT / COMPOSE_FILES[0]).read_text()
    )
    run = re.findall(r"docker run .* agentcore-gateway (.+)", image().text)
    assert compose and run
    for line in compose + run:
        parser.parse_args(shlex.split(line, comments=True))


def test_the_gateways_trust_nginx_and_only_nginx() -> None:
    document = load_compose(COMPOSE_FILES[0])
    services = document["services"]
    address = services["nginx"]["networks"]["agentcore"]["ipv4_address"]
    for name, service in agentcore_services(document):
        config, _ = service_config(service)
        assert config.server.trusted_proxies == [address], name
        assert config.auth.mode != "off", name
        assert not config.webhooks.run_in_gateway, name
    assert services["worker"]["command"] == ["worker"]


def test_prometheus_scrapes_the_gateways_of_the_compose_file() -> None:
    document = load_compose(COMPOSE_FILES[0])
    services = document["services"]
    [(source, _)] = bind_sources(services["prometheus"])
    scrape = yaml.safe_load((ROOT / source).read_text())
    targets = [
        t for job in scrape["scrape_configs"] for c in job["static_configs"] for t in c["targets"]
    ]
    gateways = sorted(n for n, s in services.items() if runs_image(s) and n != "worker")
    assert sorted(targets) == [f"{n}:8001" for n in gateways]


# -- nginx ----------------------------------------------------------------------------------


def nginx_configs() -> list[tuple[str, str]]:
    """(compose file, the nginx.conf it mounts) for every nginx service."""
    found = []
    for name in COMPOSE_FILES:
        for service in load_compose(name)["services"].values():
            if str(service.get("image", "")).startswith("nginx"):
                found += [(name, s) for s, t in bind_sources(service) if t.startswith("/etc/nginx")]
    return found


UPSTREAM_SERVER = re.compile(r"^(\s*server\s+)([A-Za-z][\w.-]*):(\d+)", re.MULTILINE)


def test_nginx_sends_to_every_gateway() -> None:
    [(name, source)] = nginx_configs()
    upstreams = UPSTREAM_SERVER.findall((ROOT / source).read_text())
    services = load_compose(name)["services"]
    gateways = sorted(n for n, s in services.items() if runs_image(s) and n != "worker")
    assert sorted(f"{host}:{port}" for _, host, port in upstreams) == [
        f"{n}:8001" for n in gateways
    ]


@pytest.mark.parametrize(("name", "source"), nginx_configs())
def test_nginx_accepts_its_configuration(name: str, source: str, tmp_path: Path) -> None:
    nginx = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if nginx is None:
        pytest.skip("nginx is not installed: `nginx -t` not run (CI installs it)")
    text = (ROOT / source).read_text()
    # The compose service names resolve only inside compose; its /tmp paths go to tmp_path.
    text = UPSTREAM_SERVER.sub(r"\g<1>127.0.0.1:\3", text).replace("/tmp/", f"{tmp_path}/")
    conf = tmp_path / "nginx.conf"
    conf.write_text(text)
    result = subprocess.run(
        [nginx, "-t", "-p", str(tmp_path), "-c", str(conf)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
