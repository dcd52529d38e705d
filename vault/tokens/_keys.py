"""Token signing and verification keys (Ed25519, PASETO v4.public).

Key ids
-------
A key's ``kid`` is its PASERK id (``k4.pid.…``): a BLAKE2b digest of the
public key's PASERK, computed by pyseto (``to_paserk_id``). It is derived, never
chosen, so a kid can only ever name one key pair; the footer of every issued
token carries it, and verifiers use it to pick the key.

Rotation
--------
A :class:`KeySet` holds every verification key currently accepted. To rotate,
publish the new key in the set, start signing with it, and drop the old key
once the longest-lived token signed by it has expired. The published file
records when each key was added (``created_at``) and when signing with it
stopped (``retired_at``), both Unix seconds and both optional
(:class:`PublishedKey`); ``vault.tokens.keyfiles`` does the rotation.

Private keys
------------
This package never writes key material anywhere. :meth:`SigningKey.private_pem`
hands the PKCS#8 PEM to the caller, which must wrap it (OpenBao Transit)
before it touches disk.

Note: pyseto works on ``cryptography`` key objects, so this module imports
``cryptography.hazmat`` for Ed25519 key generation and PEM export; nothing else
in ``vault.tokens`` does.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import pyseto
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
)
from pyseto import Key, KeyInterface

_PUBLIC_PASERK_PREFIX = "k4.public."
_PID_PREFIX = "k4.pid."


def _paseto_key(pem: bytes) -> KeyInterface:
    return Key.new(version=4, purpose="public", key=pem)


@dataclass(frozen=True, slots=True)
class SigningKey:
    """An Ed25519 private key for issuing tokens, held in memory only.

    Build one with :meth:`generate` or :meth:`from_pem`. ``kid`` is the PASERK
    id of the matching public key (see the module docstring). Equality is by
    ``kid``; ``repr`` never shows key material.
    """

    _private: Ed25519PrivateKey = field(repr=False, compare=False)
    kid: str = field(init=False)
    _paseto: KeyInterface = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self._private, Ed25519PrivateKey):
            raise TypeError("a signing key must be an Ed25519 private key")
        paseto = _paseto_key(self._pem())
        object.__setattr__(self, "_paseto", paseto)
        object.__setattr__(self, "kid", paseto.to_peer_paserk_id())

    @classmethod
    def generate(cls) -> SigningKey:
        """A fresh random key."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_pem(cls, pem: bytes) -> SigningKey:
        """Loads an unencrypted PKCS#8 PEM Ed25519 private key.

        Raises ValueError for anything else (the message never echoes the input).
        """
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError):
            # The cause may quote the input; it is key material.
            raise ValueError("not an unencrypted PEM private key") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError("not an Ed25519 private key")
        return cls(key)

    def private_pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM: wrap it before storing it."""
        return self._pem()

    def public(self) -> VerificationKey:
        """The matching verification key (same ``kid``)."""
        pem = self._private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return VerificationKey(_paseto_key(pem).to_paserk())

    def _pem(self) -> bytes:
        return self._private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """An Ed25519 public key that tokens are verified against.

    Built from its PASERK (``k4.public.…``), validated when built: anything
    else — including a ``k4.secret`` PASERK, which pyseto would happily accept
    for verification — raises ValueError.
    """

    paserk: str
    kid: str = field(init=False)
    _paseto: KeyInterface = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.paserk, str) or not self.paserk.startswith(_PUBLIC_PASERK_PREFIX):
            raise ValueError("a verification key must be a k4.public PASERK")
        try:
            paseto = Key.from_paserk(self.paserk)
        except (ValueError, pyseto.PysetoError):
            raise ValueError("not a valid k4.public PASERK") from None
        if paseto.is_secret:  # pragma: no cover - excluded by the prefix check
            raise ValueError("a verification key must not hold a private key")
        object.__setattr__(self, "_paseto", paseto)
        object.__setattr__(self, "kid", paseto.to_paserk_id())

    @classmethod
    def from_paserk(cls, kid: str, paserk: str) -> VerificationKey:
        """Loads a published key; ``kid`` must be the key's PASERK id.

        A mismatch is a configuration error (every token would fail), so it
        raises ValueError here rather than rejecting tokens later.
        """
        key = cls(paserk)
        if kid != key.kid:
            raise ValueError("kid does not match the key's PASERK id")
        return key

    def to_paserk(self) -> str:
        """The public key as a ``k4.public.…`` PASERK string."""
        return self.paserk


class KeySet:
    """The verification keys currently accepted, looked up by ``kid``.

    Immutable: rotation builds a new set. An empty set is refused, since a
    verifier with no keys could only ever reject.
    """

    __slots__ = ("_by_kid",)

    def __init__(self, keys: Iterable[VerificationKey]) -> None:
        by_kid: dict[str, VerificationKey] = {}
        for key in keys:
            if not isinstance(key, VerificationKey):
                raise TypeError("a KeySet holds VerificationKey objects")
            if key.kid in by_kid:
                raise ValueError("duplicate kid in KeySet")
            by_kid[key.kid] = key
        if not by_kid:
            raise ValueError("a KeySet needs at least one key")
        self._by_kid = by_kid

    def get(self, kid: str) -> VerificationKey | None:
        return self._by_kid.get(kid)

    @property
    def kids(self) -> frozenset[str]:
        return frozenset(self._by_kid)

    def __contains__(self, kid: object) -> bool:
        return kid in self._by_kid

    def __iter__(self) -> Iterator[VerificationKey]:
        return iter(self._by_kid.values())

    def __len__(self) -> int:
        return len(self._by_kid)

    def __repr__(self) -> str:
        return f"KeySet(kids={sorted(self._by_kid)!r})"


@dataclass(frozen=True, slots=True)
class PublishedKey:
    """A verification key as published, with its lifetime (Unix seconds).

    ``created_at``: when it was added (None for keys published before this was
    recorded). ``retired_at``: when a newer key replaced it for signing; None
    while it is the signing key.
    """

    key: VerificationKey
    created_at: int | None = None
    retired_at: int | None = None

    def accepted_at(self, now: float, retire_after: int) -> bool:
        """Whether tokens signed by it are accepted at ``now``: always while it
        signs, and for ``retire_after`` seconds after it stopped (the longest a
        token it signed can live, plus a margin)."""
        return self.retired_at is None or now < self.retired_at + retire_after


def published_from_json(text: str) -> list[PublishedKey]:
    """Every key of a published key set, in order, with its lifetime.

    Raises ValueError (or KeyError/TypeError for a malformed document) like
    :func:`keyset_from_json`.
    """
    out = []
    for k in json.loads(text)["keys"]:
        times = {name: k.get(name) for name in ("created_at", "retired_at")}
        for name, value in times.items():
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise ValueError(f"{name} must be a whole number of seconds")
        out.append(
            PublishedKey(
                VerificationKey.from_paserk(k["kid"], k["paserk"]),
                times["created_at"],
                times["retired_at"],
            )
        )
    KeySet(p.key for p in out)  # no duplicates, not empty
    return out


def published_to_json(keys: Iterable[PublishedKey]) -> str:
    """The published form, lifetimes included where known (public keys only)."""
    entries = []
    for p in keys:
        entry: dict[str, str | int] = {"kid": p.key.kid, "paserk": p.key.to_paserk()}
        if p.created_at is not None:
            entry["created_at"] = p.created_at
        if p.retired_at is not None:
            entry["retired_at"] = p.retired_at
        entries.append(entry)
    return json.dumps({"keys": entries}, indent=2)


def keyset_from_json(text: str) -> KeySet:
    """A published key set (``{"keys": [{"kid": …, "paserk": …}, …]}``): every
    key in it, whatever its lifetime (see :func:`published_from_json`)."""
    published = json.loads(text)["keys"]
    return KeySet(VerificationKey.from_paserk(k["kid"], k["paserk"]) for k in published)


def keyset_to_json(keys: Iterable[VerificationKey]) -> str:
    """The published form of verification keys (public keys only)."""
    return published_to_json(PublishedKey(k) for k in keys)
