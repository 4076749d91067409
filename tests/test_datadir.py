"""Local state readable by the gateway's user only: modes on creation, tightening after."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentcore.datadir import private_dir, private_file, tighten, write_private_file


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture(autouse=True)
def open_umask() -> Iterator[None]:
    """The usual umask (022) and a looser one would both make 0755/0644 files."""
    old = os.umask(0o002)
    yield
    os.umask(old)


def test_a_new_directory_is_0700_whatever_the_umask(tmp_path: Path) -> None:
    made = private_dir(tmp_path / "a" / "data")
    assert mode(made) == 0o700


def test_an_existing_open_directory_is_tightened_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)
    with caplog.at_level(logging.WARNING, "agentcore.datadir"):
        private_dir(data)
    assert mode(data) == 0o700
    assert f"{data} was readable by other users (mode 0755): tightened to 0700" in caplog.text


def test_a_private_file_is_created_0600_and_an_open_one_tightened(tmp_path: Path) -> None:
    assert private_file(tmp_path / "db")
    assert mode(tmp_path / "db") == 0o600
    loose = tmp_path / "old.db"
    loose.write_bytes(b"x")
    os.chmod(loose, 0o664)
    assert not private_file(loose)
    assert mode(loose) == 0o600 and loose.read_bytes() == b"x"


def test_tighten_keeps_the_owners_bits_and_ignores_missing_files_and_symlinks(
    tmp_path: Path,
) -> None:
    script = tmp_path / "run"
    script.write_bytes(b"")
    os.chmod(script, 0o751)
    assert tighten(script, 0o600)
    assert mode(script) == 0o700
    assert not tighten(tmp_path / "absent", 0o600)
    target = tmp_path / "shared"
    target.write_bytes(b"")
    os.chmod(target, 0o644)
    (tmp_path / "link").symlink_to(target)
    assert not tighten(tmp_path / "link", 0o600)
    assert mode(target) == 0o644


def test_write_private_file_never_overwrites(tmp_path: Path) -> None:
    key = tmp_path / "key"
    assert write_private_file(key, b"first")
    assert not write_private_file(key, b"second")
    assert key.read_bytes() == b"first" and mode(key) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["key"]  # no temporary left
