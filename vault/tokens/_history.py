"""The signing-key history: every key the vault ever signed with, append-only.

Tokens live at most thirty days, so their verification keys are dropped a
while after a rotation (:mod:`vault.tokens.keyfiles`). Erasure receipts must
verify for years: they are checked against this history instead, which only
ever grows. Format (``tokens/signing-key-history.json``)::

    {"history": [
      {"seq": 1, "kid": "k4.pid.…", "paserk": "k4.public.…", "added_at": 1796000000,
       "prev": "", "endorsement": "v4.public.…"},
      {"seq": 2, "kid": …, "paserk": …, "added_at": …,
       "prev": "<sha256 hex of entry 1's canonical JSON>", "endorsement": "v4.public.…"}]}

``endorsement`` is the entry's other fields signed (PASETO v4.public, implicit
assertion ``pdvault/signing-key-history/v1``) by the *previous* entry's key;
the first entry signs itself. So adding a key needs the private key of the one
before it: a forged entry, an edited one, one removed from the middle or a
reordering breaks the chain, and :func:`verify_history` says at which entry.
A truncated tail is not visible in the file alone, but every receipt signed
by a key it lost then fails to verify (``UNKNOWN_KEY``), and a node refuses to
start when its signing key is not the last entry.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Final

from vault.errors import Unauthenticated
from vault.tokens._codec import sign_document, verify_document
from vault.tokens._keys import KeySet, SigningKey, VerificationKey

HISTORY_PURPOSE: Final = b"pdvault/signing-key-history/v1"


class HistoryError(ValueError):
    """The history file is malformed or its chain is broken (``seq`` names where)."""

    def __init__(self, seq: int, problem: str) -> None:
        super().__init__(f"signing-key history entry {seq}: {problem}")
        self.seq = seq


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One key of the history (``added_at``: Unix seconds)."""

    seq: int
    key: VerificationKey
    added_at: int
    prev: str
    endorsement: str

    def body(self) -> dict[str, Any]:
        """What the endorsement signs."""
        return {
            "seq": self.seq,
            "kid": self.key.kid,
            "paserk": self.key.to_paserk(),
            "added_at": self.added_at,
            "prev": self.prev,
        }

    def to_json(self) -> dict[str, Any]:
        return {**self.body(), "endorsement": self.endorsement}

    def digest(self) -> str:
        canonical = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


def _endorse(
    seq: int, key: VerificationKey, added_at: int, prev: str, signer: SigningKey
) -> HistoryEntry:
    unsigned = HistoryEntry(seq, key, added_at, prev, "")
    return HistoryEntry(
        seq, key, added_at, prev, sign_document(unsigned.body(), signer, HISTORY_PURPOSE)
    )


def start_history(signing: SigningKey, now: int) -> list[HistoryEntry]:
    """A new history whose first key is ``signing`` (self-endorsed)."""
    return [_endorse(1, signing.public(), now, "", signing)]


def append_key(
    history: list[HistoryEntry], previous: SigningKey, new: VerificationKey, now: int
) -> list[HistoryEntry]:
    """The history with ``new`` appended, endorsed by ``previous`` (the last key)."""
    last = history[-1]
    if previous.kid != last.key.kid:
        raise ValueError("only the last key of the history may endorse the next")
    return [*history, _endorse(last.seq + 1, new, now, last.digest(), previous)]


def history_to_json(history: list[HistoryEntry]) -> str:
    return json.dumps({"history": [e.to_json() for e in history]}, indent=2)


def _parse(seq_hint: int, raw: object) -> HistoryEntry:
    if not isinstance(raw, dict) or set(raw) != {
        "seq",
        "kid",
        "paserk",
        "added_at",
        "prev",
        "endorsement",
    }:
        raise HistoryError(seq_hint, "not a history entry")
    try:
        key = VerificationKey.from_paserk(str(raw["kid"]), str(raw["paserk"]))
    except ValueError:
        raise HistoryError(seq_hint, "its kid is not its key's") from None
    seq, added_at = raw["seq"], raw["added_at"]
    if not isinstance(seq, int) or not isinstance(added_at, int):
        raise HistoryError(seq_hint, "seq and added_at must be whole numbers")
    if not isinstance(raw["prev"], str) or not isinstance(raw["endorsement"], str):
        raise HistoryError(seq_hint, "prev and endorsement must be strings")
    return HistoryEntry(seq, key, added_at, raw["prev"], raw["endorsement"])


def verify_history(text: str) -> list[HistoryEntry]:
    """The history in ``text`` once its whole chain verifies; HistoryError otherwise."""
    try:
        entries = json.loads(text)["history"]
    except (ValueError, KeyError, TypeError):
        raise HistoryError(0, "not a signing-key history") from None
    if not isinstance(entries, list) or not entries:
        raise HistoryError(0, "the history is empty")
    out: list[HistoryEntry] = []
    for i, raw in enumerate(entries, start=1):
        entry = _parse(i, raw)
        if entry.seq != i:
            raise HistoryError(i, "out of sequence (an entry was removed or reordered)")
        signer = out[-1].key if out else entry.key
        if entry.prev != (out[-1].digest() if out else ""):
            raise HistoryError(i, "does not follow the entry before it")
        try:
            endorsed = verify_document(entry.endorsement, KeySet([signer]), HISTORY_PURPOSE)
        except Unauthenticated:
            raise HistoryError(i, "its endorsement does not verify") from None
        if endorsed != entry.body():
            raise HistoryError(i, "its endorsement is for another entry")
        out.append(entry)
    return out


def history_keyset(history: list[HistoryEntry]) -> KeySet:
    """Every key of a verified history, for checking receipts."""
    return KeySet(e.key for e in history)
