"""Random bytes for signing secrets and ids, read from the OS a block at a time.

``os.urandom`` is a system call that releases the GIL; on the event loop's
thread, with other threads busy, getting the GIL back can cost far more than
the call (performance-history.md, "Integration layer components" for webhook
registrations and "Load-test scenarios" for ``uuid4()`` task ids). So bytes
are read :data:`BLOCK_BYTES` at a time and
handed out once each: the same CSPRNG output, one system call per ~100
secrets. Every random id made on the event loop comes from here.

After a fork the child starts a fresh block (the process id is checked on
every call), so two processes never hand out the same bytes.
"""

from __future__ import annotations

import os
import threading

#: Bytes read from the OS at once.
BLOCK_BYTES = 4096


class RandomBytes:
    def __init__(self, block_bytes: int = BLOCK_BYTES) -> None:
        self._block_bytes = block_bytes
        self._lock = threading.Lock()
        self._block = b""
        self._offset = 0
        self._pid = 0

    def take(self, n: int) -> bytes:
        """``n`` bytes never handed out before (in this process or another)."""
        with self._lock:
            pid = os.getpid()
            if pid != self._pid or self._offset + n > len(self._block):
                self._block = os.urandom(max(self._block_bytes, n))
                self._offset = 0
                self._pid = pid
            chunk = self._block[self._offset : self._offset + n]
            self._offset += n
            return chunk


#: The process's pool; reads nothing until first used.
random_bytes = RandomBytes()


def random_hex(n_bytes: int = 16) -> str:
    """``n_bytes`` random bytes as lower-case hex (16: as many bits as a uuid4 and then some)."""
    return random_bytes.take(n_bytes).hex()
