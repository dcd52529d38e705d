"""The reliability figures of a test run, printed by the summary in tests/conftest.py.

Tests of faults, bad input, crashes and the stateful model add what they did
here as they do it; the summary reports only what this run actually exercised.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Tally:
    faults: Counter[str] = field(default_factory=Counter)
    bad_inputs: Counter[str] = field(default_factory=Counter)
    crashes: int = 0
    acknowledged_writes: int = 0
    acknowledged_lost: int = 0
    #: Transit keys a kill left without their subject (they guard no data).
    orphan_keys: int = 0
    model_steps: int = 0
    reads_checked: int = 0
    unauthorised_reads: int = 0
    canary_scans: int = 0
    canaries_found: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def fault(self, kind: str, n: int = 1) -> None:
        """A fault of ``kind`` was injected and the vault's answer checked."""
        with self._lock:
            self.faults[kind] += n

    def bad_input(self, rpc: str, n: int = 1) -> None:
        with self._lock:
            self.bad_inputs[rpc] += n

    def canaries(self, found: int) -> None:
        """One scan for a canary (files at rest, an error's details); ``found``: hits."""
        with self._lock:
            self.canary_scans += 1
            self.canaries_found += found

    def empty(self) -> bool:
        return not (self.faults or self.bad_inputs or self.crashes or self.model_steps)


TALLY = Tally()
