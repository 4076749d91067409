"""Random bytes handed out once each, fresh after a fork."""

from __future__ import annotations

import os

import pytest

from agentcore.entropy import RandomBytes


def test_bytes_are_never_handed_out_twice_across_blocks() -> None:
    pool = RandomBytes(block_bytes=64)
    chunks = [pool.take(12) for _ in range(200)]
    assert all(len(c) == 12 for c in chunks)
    assert len(set(chunks)) == len(chunks)
    assert len(pool.take(100)) == 100  # larger than a block


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_does_not_repeat_the_parents_bytes() -> None:
    pool = RandomBytes()
    pool.take(8)  # a block is now buffered, and would be inherited
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, pool.take(32))
        os._exit(0)
    os.close(write)
    child = os.read(read, 32)
    os.close(read)
    os.waitpid(pid, 0)
    assert child != pool.take(32)
