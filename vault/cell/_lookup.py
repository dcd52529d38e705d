"""Blind-index lookups: find a subject by email, phone or account id without
storing or decrypting the value.

digest = HMAC-SHA256(index_key, kind || 0x00 || normalise(kind, value)), hex.

The index key is one random 32-byte key per region, stored only wrapped by the
region's Transit key ``lookup-index`` and unwrapped into memory on first use.
Values are normalised first so that the same address or number always gives
the same digest.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import threading

from vault.crypto import new_data_key
from vault.errors import FieldViolation, InvalidArgument
from vault.inline import ensure_may_block
from vault.keys import KeyProvider, KeyRef
from vault.store import CellStore

KINDS = frozenset({"email", "phone", "account_id"})
#: The data category a lookup value belongs to: setting or finding by it is a
#: write or read of that category, decided by the policy like any other.
CATEGORY_OF_KIND = {
    "email": "user.contact.email",
    "phone": "user.contact.phone_number",
    "account_id": "user.account",
}
#: Lookup entries one request may set, and one subject may hold.
MAX_LOOKUPS_PER_REQUEST = 16
MAX_LOOKUPS_PER_SUBJECT = 32
#: Subjects one lookup may return from a cell.
MAX_LOOKUP_RESULTS = 100
INDEX_KEY = "lookup-index"
_EMAIL_RE = re.compile(r"[^@\s]+@[^@\s]+")
_PHONE_STRIP_RE = re.compile(r"[\s().\-/]")
_PHONE_RE = re.compile(r"\+?[0-9]{4,20}")


def normalise(kind: str, value: str, field: str = "lookup") -> str:
    """The canonical spelling of a lookup value; InvalidArgument if it is none."""
    if kind not in KINDS:
        raise InvalidArgument(FieldViolation(f"{field}.kind", "must be email, phone or account_id"))
    v = value.strip()
    if not v or len(v) > 320:
        raise InvalidArgument(FieldViolation(f"{field}.value", "must be 1-320 characters"))
    if kind == "email":
        v = v.casefold()
        if not _EMAIL_RE.fullmatch(v):
            raise InvalidArgument(FieldViolation(f"{field}.value", "is not an e-mail address"))
    elif kind == "phone":
        v = _PHONE_STRIP_RE.sub("", v)
        if not _PHONE_RE.fullmatch(v):
            raise InvalidArgument(FieldViolation(f"{field}.value", "is not a phone number"))
    return v


class BlindIndex:
    """The lookup digests of one cell."""

    def __init__(self, store: CellStore, keys: KeyProvider, mount: str) -> None:
        self._store = store
        self._keys = keys
        self._ref = KeyRef(mount, INDEX_KEY)
        self._key: bytes | None = None
        self._lock = threading.Lock()

    def _index_key(self) -> bytes:
        if self._key is not None:
            return self._key
        ensure_may_block()
        with self._lock:
            if self._key is None:
                aad = b"pdvault/lookup-index/v1|" + self._ref.mount.encode()
                wrapped = self._store.cell_key(INDEX_KEY)
                if wrapped is None:
                    self._keys.create_key(self._ref)
                    candidate = self._keys.wrap(self._ref, new_data_key(), aad)
                    # Two nodes may race here: the first insert wins, both use it.
                    self._store.add_cell_key(INDEX_KEY, self._ref.mount, self._ref.name, candidate)
                    wrapped = self._store.cell_key(INDEX_KEY)
                    assert wrapped is not None
                self._key = self._keys.unwrap(self._ref, wrapped, aad)
            return self._key

    def digest(self, kind: str, value: str) -> str:
        msg = kind.encode() + b"\x00" + value.encode("utf-8")
        return hmac.new(self._index_key(), msg, hashlib.sha256).hexdigest()
