"""Crash points for crash-safety tests: off unless ``PDVAULT_FAILPOINTS`` is set.

``PDVAULT_FAILPOINTS=erasure.after_ledger`` (comma-separated names) makes the
process kill itself (SIGKILL, as ``kill -9`` would) when it reaches that point,
so a test can prove that a restart completes what was interrupted there. The
variable is read once, at import; with it unset, :func:`failpoint` is one
truth test of an empty set. Points exist only in the erasure workflow, never
on the read/write path.

Names: ``erasure.after_ledger`` (the ledger entry is written),
``erasure.after_hide`` (the subject is marked erasure-pending),
``erasure.after_destroy`` (the key is destroyed; rows and receipt not yet).
"""

from __future__ import annotations

import os
import signal

ENV = "PDVAULT_FAILPOINTS"
_ACTIVE = frozenset(p for p in os.environ.get(ENV, "").split(",") if p)


def failpoint(name: str) -> None:
    """Kills this process at once if ``name`` is an active failpoint."""
    if _ACTIVE and name in _ACTIVE:
        os.kill(os.getpid(), signal.SIGKILL)
