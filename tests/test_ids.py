"""Request and completion ids: the right shape, unique, and not repeated across a fork."""

from __future__ import annotations

import os
import re

from iir.core.ids import random_hex


def test_shape_and_uniqueness() -> None:
    ids = [random_hex(16) for _ in range(20_000)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert len(set(ids)) == len(ids)
    assert re.fullmatch(r"[0-9a-f]{2}", random_hex(1))


def test_a_forked_child_does_not_repeat_its_parents_ids() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next ids, then leave at once
        os.close(read)
        os.write(write, " ".join(random_hex(16) for _ in range(3)).encode())
        os._exit(0)
    os.close(write)
    parent = [random_hex(16) for _ in range(3)]
    with os.fdopen(read) as f:
        child = f.read().split()
    os.waitpid(pid, 0)
    assert len(child) == 3 and not set(child) & set(parent)
