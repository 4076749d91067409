"""The gateway's HTTP protocol runs only on the uvicorn releases it was tested with.

The range is one constant (``uvicorn_internals.TESTED_UVICORN``); these tests
fail when the installed uvicorn, or pyproject.toml's pin, leaves it.
"""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path

import pytest
import uvicorn

from agentcore.http_server.uvicorn_internals import (
    TESTED_UVICORN,
    is_tested,
    missing_internals,
    require_tested,
    specifier,
)

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def test_the_installed_uvicorn_is_one_the_protocol_was_tested_with() -> None:
    installed = importlib.metadata.version("uvicorn")
    assert installed == uvicorn.__version__
    assert is_tested(installed), f"uvicorn {installed} is outside uvicorn{specifier()}"


def test_pyproject_pins_uvicorn_to_the_tested_range() -> None:
    dependencies = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    (pin,) = [d for d in dependencies if d.startswith("uvicorn")]
    assert pin == f"uvicorn[standard]{specifier()}"


def test_the_range_includes_its_first_release_and_stops_before_its_last() -> None:
    low, high = TESTED_UVICORN
    assert specifier() == f">={low},<{high}"
    assert is_tested(f"{low}.0")
    assert is_tested(f"{low}.7")
    assert not is_tested(f"{high}.0")
    assert not is_tested("0.0.1")
    assert not is_tested("99.0.0")


@pytest.mark.parametrize("version", ["0.0.1", f"{TESTED_UVICORN[1]}.0", "99.0.0"])
def test_an_untested_uvicorn_is_refused_naming_the_range(version: str) -> None:
    with pytest.raises(ImportError, match=f"uvicorn {version} is installed") as refused:
        require_tested(version)
    assert f"uvicorn{specifier()}" in str(refused.value)


def test_every_uvicorn_internal_the_protocol_relies_on_is_there() -> None:
    assert missing_internals() == []


def test_serve_on_an_untested_uvicorn_exits_2_naming_the_range(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket
    import sys

    from agentcore import cli

    # A fresh import of the protocol package, against a uvicorn that claims an untested release.
    for name in [m for m in sys.modules if m.startswith("agentcore.http_server")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(uvicorn, "__version__", f"{TESTED_UVICORN[1]}.0")
    # A taken port: were the check to let the server start, it would fail to bind, not hang.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        argv = ["serve", "--data-dir", str(tmp_path), "--host", "127.0.0.1", "--port", port]
        code = cli.main([*argv, "--server", "uvicorn", "--insecure"])
    assert code == 2
    err = capsys.readouterr().err
    assert f"uvicorn {TESTED_UVICORN[1]}.0 is installed" in err
    assert f"uvicorn{specifier()}" in err
