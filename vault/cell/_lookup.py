"""Blind-index lookups: find a subject by email, phone or account id without
storing or decrypting the value.

digest = HMAC-SHA256(index_key, kind || 0x00 || normalise(kind, value)), hex.

The index key is a random 32-byte key per region and *version*, stored only
wrapped by the region's Transit key ``lookup-index`` and unwrapped into memory
on first use. Normally one version is active; while a re-index runs (``pdvault
keys reindex``, :mod:`vault.rotation._reindex`) two are, and every write stores
a digest under each, every search looks for each. When the re-index ends, the
old version's digests and wrapped key are deleted.

Each value is also stored sealed under the subject's data key
(:func:`vault.crypto.seal_lookup_value`), so a re-index can compute its new
digests, and an erasure (which destroys the data key) leaves nothing to
re-index.
Values are normalised first so that the same address or number always gives
the same digest.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import threading
import time
from collections.abc import Callable

from vault.crypto import new_data_key
from vault.errors import FieldViolation, InvalidArgument
from vault.inline import ensure_may_block
from vault.keys import KeyProvider, KeyRef
from vault.store import CellStore, IndexVersionsChanged

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


def index_key_name(version: int) -> str:
    """The cell key (``cell_keys.name``) holding index key ``version``, wrapped."""
    return INDEX_KEY if version == 1 else f"{INDEX_KEY}/v{version}"


def index_key_aad(mount: str, version: int) -> bytes:
    """Associated data of the Transit wrap of index key ``version`` (version 1
    keeps the form it always had)."""
    aad = b"pdvault/lookup-index/v1|" + mount.encode()
    return aad if version == 1 else aad + b"|" + str(version).encode()


def digest_with(key: bytes, kind: str, value: str) -> str:
    """The blind-index digest of a normalised value under one index key."""
    msg = kind.encode() + b"\x00" + value.encode("utf-8")
    return hmac.new(key, msg, hashlib.sha256).hexdigest()


class BlindIndex:
    """The lookup digests of one cell, under every active index key version.

    The active versions are read from the cell database at most every
    ``refresh_seconds`` (and at once when a write finds them changed:
    :class:`vault.store.IndexVersionsChanged`); each version's key is unwrapped
    on first use and dropped once the version is no longer active.
    """

    def __init__(
        self,
        store: CellStore,
        keys: KeyProvider,
        mount: str,
        *,
        refresh_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._keys = keys
        self._ref = KeyRef(mount, INDEX_KEY)
        self._keys_by_version: dict[int, bytes] = {}
        self._versions: tuple[int, ...] = ()
        self._read_at = float("-inf")
        self._refresh = refresh_seconds
        self._clock = clock
        self._lock = threading.Lock()

    def refresh(self) -> None:
        """Reads the active versions again on next use."""
        self._read_at = float("-inf")

    def versions(self) -> tuple[int, ...]:
        """The active index key versions (oldest first)."""
        if self._clock() - self._read_at < self._refresh and self._versions:
            return self._versions
        ensure_may_block()
        versions = self._store.active_index_versions() or (1,)
        with self._lock:
            self._versions = versions
            self._read_at = self._clock()
            for v in list(self._keys_by_version):
                if v not in versions:
                    del self._keys_by_version[v]
        return versions

    def _index_key(self, version: int) -> bytes:
        key = self._keys_by_version.get(version)
        if key is not None:
            return key
        ensure_may_block()
        with self._lock:
            key = self._keys_by_version.get(version)
            if key is None:
                aad = index_key_aad(self._ref.mount, version)
                name = index_key_name(version)
                wrapped = self._store.cell_key(name)
                if wrapped is None:
                    if version != 1:  # retired meanwhile: the caller reads the versions again
                        self.refresh()
                        raise IndexVersionsChanged()
                    self._keys.create_key(self._ref)
                    candidate = self._keys.wrap(self._ref, new_data_key(), aad)
                    # Two nodes may race here: the first insert wins, both use it.
                    self._store.add_cell_key(name, self._ref.mount, self._ref.name, candidate)
                    wrapped = self._store.cell_key(name)
                    assert wrapped is not None
                key = self._keys.unwrap(self._ref, wrapped, aad)
                self._keys_by_version[version] = key
            return key

    def digests(self, kind: str, value: str) -> list[tuple[int, str]]:
        """(version, digest) of a normalised value under every active version."""
        return [(v, digest_with(self._index_key(v), kind, value)) for v in self.versions()]

    def digest(self, kind: str, value: str, version: int | None = None) -> str:
        """The digest under ``version`` (default: the newest active one)."""
        v = max(self.versions()) if version is None else version
        return digest_with(self._index_key(v), kind, value)
