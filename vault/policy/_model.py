"""The values a purpose policy is made of: categories, purposes, subject facts.

They are built by :func:`vault.policy.parse_policy` (or
:func:`vault.policy.load_policy`), which validates them first; the types here
do not re-validate, they only freeze what they are given. The rules that
decide with them are in :mod:`vault.policy._decide`; the policy as a whole is
:class:`vault.policy.Policy`.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

#: The operations a purpose may be granted. ``delete`` removes one record;
#: ``erase`` crypto-shreds a subject; ``consent`` records or withdraws consent.
OPERATIONS: Final[frozenset[str]] = frozenset(
    {"read", "write", "delete", "export", "erase", "consent"}
)

#: The lawful bases of GDPR Art. 6(1), in policy-file spelling.
LEGAL_BASES: Final[frozenset[str]] = frozenset(
    {
        "consent",
        "contract",
        "legal_obligation",
        "legitimate_interests",
        "vital_interests",
        "public_task",
    }
)


@dataclass(frozen=True)
class Category:
    """A data category (``user.contact.email``).

    ``fields`` names the fields a record of this category may hold; ``None``
    means free-form (any field name).
    """

    name: str
    description: str
    fields: frozenset[str] | None = None


@dataclass(frozen=True)
class Purpose:
    """A data use (``essential.service``) and what it may touch.

    ``categories`` maps each category the purpose may see to the fields it may
    see, ``None`` meaning all of them. ``retention_days`` is how long records
    kept for this purpose live; ``None`` means as long as the account.
    """

    name: str
    description: str
    legal_basis: str
    categories: Mapping[str, frozenset[str] | None] = field(hash=False)
    operations: frozenset[str]
    requires_consent: bool
    minors: bool
    allowed_when_restricted: bool
    retention_days: int | None

    def __post_init__(self) -> None:
        # A read-only view, so a policy cannot be widened after it is validated.
        object.__setattr__(self, "categories", types.MappingProxyType(dict(self.categories)))


@dataclass(frozen=True)
class SubjectFacts:
    """What the policy needs to know about the data subject, and nothing more."""

    minor: bool
    restricted: bool
    consented_purposes: frozenset[str] = frozenset()
