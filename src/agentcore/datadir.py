"""The gateway's local state, readable by its own user only.

The data directory (``database.data_dir``) holds the SQLite database (API key
hashes, webhook secrets, every event), uploaded objects and the key that
encrypts webhook secrets. Directories the gateway creates there are ``0700``
and files ``0600``, whatever the umask; existing ones that let the group or
others in are tightened to those modes once, with a warning naming the file,
so an installation made by an older version is fixed by its next start.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger("agentcore.datadir")

DIR_MODE = 0o700
FILE_MODE = 0o600


def tighten(path: str | os.PathLike[str], mode: int) -> bool:
    """Take away from ``path`` what ``mode`` does not grant the group and others.

    Only those bits: the owner's are left alone. True when it changed the mode;
    False too when there is no such file. A symlink is not followed.
    """
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(info.st_mode):
        return False
    current = stat.S_IMODE(info.st_mode)
    loose = current & 0o077 & ~mode
    if not loose:
        return False
    os.chmod(path, current & ~loose)
    log.warning(
        "%s was readable by other users (mode %04o): tightened to %04o",
        path,
        current,
        current & ~loose,
    )
    return True


def private_dir(path: str | os.PathLike[str]) -> Path:
    """``path`` as a directory only its owner can enter: created ``0700`` with any missing
    parents (those with the default mode: they may be shared, like ``/var/lib``), or
    tightened when it exists."""
    directory = Path(path)
    try:
        directory.mkdir(mode=DIR_MODE, parents=True)
    except FileExistsError:
        tighten(directory, DIR_MODE)
    else:
        os.chmod(directory, DIR_MODE)  # mkdir's mode passes through the umask
    return directory


def private_file(path: str | os.PathLike[str]) -> bool:
    """Create ``path`` empty with mode ``0600`` if it does not exist, else tighten it.

    So a library that then opens it (SQLite) writes into a private file, and
    makes the files beside it (``-wal``, ``-shm``) with the same mode. True
    when it was created.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
    except FileExistsError:
        tighten(path, FILE_MODE)
        return False
    os.close(fd)
    return True


def write_private_file(path: str | os.PathLike[str], data: bytes) -> bool:
    """Write ``data`` to a new file at ``path`` (mode ``0600``), unless one exists.

    Atomic: the file appears whole, and when several processes race, exactly
    one wins (False for the others, who then read the winner's file).
    """
    target = Path(path)
    temp = target.with_name(f".{target.name}.{os.getpid()}.{os.urandom(4).hex()}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        try:
            os.link(temp, target)  # fails when the target exists: never overwrites
        except FileExistsError:
            return False
        return True
    finally:
        os.unlink(temp)
