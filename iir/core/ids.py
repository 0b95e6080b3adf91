"""Identifiers and timestamps for requests and answers: unique, not secret.

``os.urandom`` (behind :mod:`secrets`) is a system call that releases the GIL; inside the server
the interpreter then goes to Granian's runtime thread and has to wait to come back. Request and
completion ids only need to be unique, so they come from a generator seeded by the OS once per
process. Ids that grant anything (API keys) or name stored data (job ids) still use
:mod:`secrets`.
"""

from __future__ import annotations

import os
import random
import time

_random = random.Random(os.urandom(32))


def random_hex(nbytes: int) -> str:
    """``2 * nbytes`` random hex digits."""
    return f"{_random.getrandbits(nbytes * 8):0{nbytes * 2}x}"


def _reseed() -> None:
    _random.seed(os.urandom(32))


# A forked child must not repeat its parent's ids.
os.register_at_fork(after_in_child=_reseed)


def now() -> int:
    """Unix time in whole seconds, as OpenAI's ``created`` fields have it."""
    return int(time.time())
