"""The purpose policy as frozen values.

A :class:`Policy` is built by :func:`vault.policy.parse_policy` (or
:func:`vault.policy.load_policy`), which validates it first; the types here do
not re-validate, they only freeze what they are given.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from vault.policy import _decide

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


@dataclass(frozen=True)
class Policy:
    """A validated, versioned purpose policy.

    Every decision fails closed: a purpose, category or operation the policy
    does not name is denied.
    """

    version: int
    revision: str
    categories: Mapping[str, Category] = field(hash=False)
    purposes: Mapping[str, Purpose] = field(hash=False)
    source: str = "<memory>"

    def __post_init__(self) -> None:
        object.__setattr__(self, "categories", types.MappingProxyType(dict(self.categories)))
        object.__setattr__(self, "purposes", types.MappingProxyType(dict(self.purposes)))

    def authorize(
        self, purpose: str, category: str, operation: str, subject: SubjectFacts | None
    ) -> frozenset[str] | None:
        """Decides whether ``purpose`` may perform ``operation`` on ``category``.

        Returns the fields the purpose may see (``None``: all fields) or raises
        :class:`~vault.errors.AccessDenied` (reason ``UNKNOWN_PURPOSE``,
        ``CATEGORY_NOT_ALLOWED``, ``OPERATION_NOT_ALLOWED``, ``MINOR_EXCLUDED``
        or ``CONSENT_REQUIRED``) or :class:`~vault.errors.Restricted`.
        ``subject=None`` skips the subject-specific checks, for decisions taken
        before the subject is loaded; call again with the facts once it is.
        """
        return _decide.authorize(self.purposes, purpose, category, operation, subject)

    def visible_categories(self, purpose: str) -> frozenset[str]:
        """The categories ``purpose`` may see; raises ``UNKNOWN_PURPOSE``."""
        return frozenset(_decide.purpose_of(self.purposes, purpose).categories)

    def retention_days(self, purpose: str, category: str) -> int | None:
        """How long a ``category`` record kept for ``purpose`` lives (``None``: as
        long as the account); raises ``UNKNOWN_PURPOSE`` or ``CATEGORY_NOT_ALLOWED``.
        """
        p = _decide.purpose_of(self.purposes, purpose)
        _decide.check_category(p, category)
        return p.retention_days
