"""The purpose policy as one frozen, validated value.

A :class:`Policy` is built by :func:`vault.policy.parse_policy` (or
:func:`vault.policy.load_policy`), which validates it first.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from dataclasses import dataclass, field

from vault.policy import _decide
from vault.policy._model import Category, Purpose, SubjectFacts


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
