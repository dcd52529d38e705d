"""Verifying an audit log: the chain, every checkpoint, and saved witness copies.

Needs only read access to the database and the audit key's public key (from
OpenBao's key read or a file saved from it) — never a key kept in the audited
database itself.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from sqlalchemy import Engine

from vault.audit._checkpoint import BadCheckpoint, Checkpoint, note_log, open_checkpoint
from vault.audit._entry import GENESIS, canonical, chain_hash
from vault.audit._store import read_checkpoints, read_head, read_log


@dataclass
class LogReport:
    """The outcome of verifying one log; ``problem`` names the first bad entry."""

    log: str
    entries: int = 0
    checkpoints: int = 0
    first_us: int | None = None
    last_us: int | None = None
    problem: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.problem is None


def _checkpoints(
    log: str, notes: Sequence[str], public_keys: Mapping[int, bytes] | None, what: str
) -> tuple[list[Checkpoint], str | None]:
    out: list[Checkpoint] = []
    for i, note in enumerate(notes):
        if public_keys is None:
            return out, f"no public key to check {what} signatures"
        try:
            cp = open_checkpoint(note, public_keys)
        except BadCheckpoint as e:
            return out, f"{what} #{i + 1}: {e}"
        if cp.log != log:
            return out, f"{what} #{i + 1}: signed for log {cp.log!r}"
        out.append(cp)
    return out, None


def verify_log(
    engine: Engine,
    log: str,
    public_keys: Mapping[int, bytes] | None,
    saved: Sequence[str] = (),
) -> LogReport:
    """Recomputes ``log``'s chain and checks every stored and saved checkpoint."""
    report = LogReport(log)
    stored = read_checkpoints(engine, log)
    report.checkpoints = len(stored)
    for i, sc in enumerate(stored):
        if sc.at_us < 0:
            report.problem = f"checkpoint #{i + 1}: bad time"
            return report
    cps, problem = _checkpoints(log, [s.note for s in stored], public_keys, "checkpoint")
    if problem:
        report.problem = problem
        return report
    for i, (sc, cp) in enumerate(zip(stored, cps, strict=False)):
        if (sc.size, sc.hash) != (cp.size, cp.hash.hex()):
            report.problem = f"checkpoint #{i + 1}: row does not match its signed note"
            return report
    saved_cps = []
    for i, note in enumerate(saved):
        if note_log(note) != log:
            continue  # another log's witness copy
        if public_keys is None:
            report.problem = "no public key to check saved checkpoint signatures"
            return report
        try:
            cp = open_checkpoint(note, public_keys)
        except BadCheckpoint as e:
            report.problem = f"saved checkpoint #{i + 1}: {e}"
            return report
        saved_cps.append(cp)
    wanted: dict[int, list[tuple[str, Checkpoint]]] = {}
    for cp in cps:
        wanted.setdefault(cp.size, []).append(("checkpoint", cp))
    for cp in saved_cps:
        wanted.setdefault(cp.size, []).append(("saved checkpoint", cp))

    def check_at(size: int, head: bytes) -> str | None:
        for what, cp in wanted.get(size, ()):
            if cp.hash != head:
                return (
                    f"the log's first {size} entries do not match the {what} of size {size} "
                    "(an entry up to there was altered, removed or reordered)"
                )
        return None

    head = GENESIS
    seq = 0
    if (problem := check_at(0, head)) is not None:
        report.problem = problem
        return report
    for row in read_log(engine, log):
        where = f"entry {seq + 1}"
        if row.seq != seq + 1:
            report.problem = f"{where}: missing (the next stored entry is {row.seq})"
            return report
        try:
            entry = json.loads(row.entry)
        except ValueError:
            report.problem = f"{where}: not an entry (unparseable)"
            return report
        if not isinstance(entry, dict):
            report.problem = f"{where}: not an entry"
            return report
        text = row.entry.encode()
        if canonical(entry) != text:
            report.problem = f"{where}: not in canonical form"
            return report
        if entry.get("seq") != row.seq or entry.get("log") != log:
            report.problem = f"{where}: names another position or log"
            return report
        if entry.get("time_us") != row.at_us or entry.get("subject") != row.subject:
            report.problem = f"{where}: indexed columns do not match the entry"
            return report
        head = chain_hash(head, text)
        if head.hex() != row.hash:
            report.problem = f"{where}: hash does not match the chain"
            return report
        seq = row.seq
        report.first_us = row.at_us if report.first_us is None else report.first_us
        report.last_us = row.at_us
        if (problem := check_at(seq, head)) is not None:
            report.problem = f"{where}: {problem}"
            return report
    report.entries = seq
    beyond = [(w, cp) for size, lst in wanted.items() if size > seq for w, cp in lst]
    if beyond:
        w, cp = max(beyond, key=lambda x: x[1].size)
        report.problem = (
            f"entry {seq + 1}: missing — the {w} of size {cp.size} covers entries the log no "
            f"longer has (truncated or rolled back to {seq})"
        )
        return report
    stored_head = read_head(engine, log)
    if stored_head is not None and stored_head != (seq, head.hex()):
        report.problem = f"entry {min(seq, stored_head[0]) + 1}: the log head does not match"
    return report
