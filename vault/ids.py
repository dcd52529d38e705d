"""Region-prefixed identifiers.

A subject ID looks like ``de_sub_0f3k…`` and a record ID like ``de_rec_9x2a…``:
region, kind, then 26 characters of lowercase base32 carrying 128 random bits.
The prefix lets any node route a request to the home cell without a global
lookup; the random part carries no information about the person.
"""

from __future__ import annotations

import base64
import re
import secrets
from dataclasses import dataclass
from typing import Literal

from vault.errors import FieldViolation, InvalidArgument

Kind = Literal["sub", "rec"]

_ID_RE = re.compile(r"(?P<region>[a-z]{2})_(?P<kind>sub|rec)_(?P<rand>[a-z2-7]{26})")


@dataclass(frozen=True, slots=True)
class VaultId:
    region: str
    kind: Kind
    value: str

    def __str__(self) -> str:
        return self.value


def new_id(region: str, kind: Kind) -> str:
    rand = base64.b32encode(secrets.token_bytes(16)).decode("ascii").rstrip("=").lower()
    return f"{region}_{kind}_{rand}"


def new_subject_id(region: str) -> str:
    return new_id(region, "sub")


def new_record_id(region: str) -> str:
    return new_id(region, "rec")


def parse_id(value: str, kind: Kind, *, field: str, regions: frozenset[str]) -> VaultId:
    """Parses and validates an ID of ``kind``; raises InvalidArgument naming ``field``."""
    if not value:
        raise InvalidArgument(FieldViolation(field, "is required"))
    m = _ID_RE.fullmatch(value)
    if m is None or m.group("kind") != kind:
        expected = "subject" if kind == "sub" else "record"
        raise InvalidArgument(FieldViolation(field, f"is not a well-formed {expected} id"))
    region = m.group("region")
    if region not in regions:
        raise InvalidArgument(FieldViolation(field, "names an unknown region"))
    return VaultId(region=region, kind=kind, value=value)
