"""Running domain calls on the event loop when they will not block.

Handing every request to a thread pool halves the throughput of a Python gRPC
server (a GIL hand-off per call), while most requests touch only a local
SQLite file and the in-process key cache. So the servicer first runs a call
inline in :func:`nonblocking` mode; if it would have to wait on the network —
a key service call on a cache miss — the domain raises :class:`WouldBlock`
*before writing anything*, and the servicer re-runs the whole call on the
thread pool. Domain code calls :func:`ensure_may_block` before any such call.
"""

from __future__ import annotations

from contextvars import ContextVar

_NONBLOCKING: ContextVar[bool] = ContextVar("pdvault_nonblocking", default=False)


class WouldBlock(Exception):
    """The call needs the network; re-run it where blocking is fine."""


def ensure_may_block() -> None:
    if _NONBLOCKING.get():
        raise WouldBlock


class nonblocking:  # lower-case: used like a function
    """``with nonblocking():`` runs its body in nonblocking mode (a class: a
    generator-based context manager costs a few microseconds per call, and
    every request enters this once or twice)."""

    __slots__ = ("_token",)

    def __enter__(self) -> None:
        self._token = _NONBLOCKING.set(True)

    def __exit__(self, *exc: object) -> None:
        _NONBLOCKING.reset(self._token)
