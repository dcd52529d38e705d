"""Access decisions: purpose, category, operation, then the subject's facts.

The order of the checks is fixed and fails closed: first what the policy says
about the purpose (which holds for every subject), then what the subject's
facts rule out. Error messages name the purpose, category and operation, but
only when they look like names: a careless caller could put anything in those
strings, and messages must never carry personal data.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from vault.errors import AccessDenied, Restricted
from vault.policy._model import Purpose, SubjectFacts

# Loose on purpose: it only decides whether a caller's string is echoed.
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$")


def _named(value: str) -> str:
    if len(value) <= 128 and _NAME_RE.fullmatch(value):
        return repr(value)
    return "(an invalid name)"


def purpose_of(purposes: Mapping[str, Purpose], purpose: str) -> Purpose:
    p = purposes.get(purpose)
    if p is None:
        raise AccessDenied(
            f"purpose {_named(purpose)} is not in the policy", reason="UNKNOWN_PURPOSE"
        )
    return p


def check_category(p: Purpose, category: str) -> frozenset[str] | None:
    if category not in p.categories:
        raise AccessDenied(
            f"purpose {p.name!r} may not access category {_named(category)}",
            reason="CATEGORY_NOT_ALLOWED",
        )
    return p.categories[category]


def authorize(
    purposes: Mapping[str, Purpose],
    purpose: str,
    category: str,
    operation: str,
    subject: SubjectFacts | None,
) -> frozenset[str] | None:
    p = purpose_of(purposes, purpose)
    allowed = check_category(p, category)
    if operation not in p.operations:
        raise AccessDenied(
            f"purpose {p.name!r} does not allow operation {_named(operation)}",
            reason="OPERATION_NOT_ALLOWED",
        )
    if subject is None:
        return allowed
    check_subject(p, subject)
    return allowed


def check_subject_visible(p: Purpose, subject: SubjectFacts) -> None:
    """What a purpose may know of a subject at all, whatever the category:
    nothing without consent for a consent-based one, nothing of a minor for a
    not-for-minors purpose. (Restriction does not hide the subject.)

    A consent-based purpose gets one answer, CONSENT_REQUIRED, whether the
    subject never consented or is a minor whose consent does not count for it:
    otherwise the order of the two checks would tell it who is a minor.
    """
    if p.requires_consent:
        if p.name not in subject.consented_purposes or (subject.minor and not p.minors):
            raise AccessDenied(
                f"purpose {p.name!r} requires the subject's active, valid consent",
                reason="CONSENT_REQUIRED",
            )
    elif subject.minor and not p.minors:
        raise AccessDenied(
            f"purpose {p.name!r} never applies to a minor's data", reason="MINOR_EXCLUDED"
        )


def check_subject(p: Purpose, subject: SubjectFacts) -> None:
    """The subject's facts against the purpose: minors, consent, then restriction."""
    check_subject_visible(p, subject)
    if subject.restricted and not p.allowed_when_restricted:
        raise Restricted(
            f"processing of this subject is restricted; purpose {p.name!r} "
            "is not allowed under restriction"
        )


def filter_fields(fields: Mapping[str, str], allowed: frozenset[str] | None) -> dict[str, str]:
    """The ``fields`` a purpose may see: all when ``allowed`` is ``None``, else
    only those named in ``allowed``. Never adds a field.
    """
    if allowed is None:
        return dict(fields)
    return {k: v for k, v in fields.items() if k in allowed}
