"""What one caller may do: its purpose token intersected with the purpose policy.

A token grants (operations, regions, subjects, categories and fields); the
policy says what the token's purpose may do at all and what a subject's facts
(minor, consent, restriction) rule out. Every check here runs before any data
key is touched. Decisions fail closed: anything not granted by both is denied.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from vault.errors import AccessDenied, FieldViolation, InvalidArgument
from vault.policy import Policy, Purpose, SubjectFacts
from vault.tokens import Claims, FieldGrant


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated caller: verified token claims and the policy's purpose."""

    claims: Claims
    purpose: Purpose

    @property
    def service(self) -> str:
        return self.claims.sub


def _intersect(a: FieldGrant, b: FieldGrant) -> FieldGrant:
    if a is None:
        return b
    if b is None:
        return a
    return a & b


class Authorizer:
    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    def caller(self, claims: Claims) -> Caller:
        purpose = self.policy.purposes.get(claims.purpose)
        if purpose is None:
            raise AccessDenied("the token's purpose is not in the policy", reason="UNKNOWN_PURPOSE")
        return Caller(claims, purpose)

    def scope(self, caller: Caller, operation: str, region: str, subject_id: str | None) -> None:
        """Operation, region and subject: the checks that need no stored data."""
        c = caller.claims
        if not c.allows_operation(operation):
            raise AccessDenied(
                f"the token does not grant the {operation} operation",
                reason="OPERATION_NOT_GRANTED",
            )
        if operation not in caller.purpose.operations:
            raise AccessDenied(
                f"purpose {caller.purpose.name!r} does not allow the {operation} operation",
                reason="OPERATION_NOT_ALLOWED",
            )
        if not c.allows_region(region):
            raise AccessDenied("the token does not grant this region", reason="REGION_NOT_GRANTED")
        if subject_id is None:
            if c.subjects is not None:
                raise AccessDenied(
                    "a token limited to given subjects cannot act on others",
                    reason="SUBJECT_NOT_GRANTED",
                )
        elif not c.allows_subject(subject_id):
            raise AccessDenied(
                "the token does not grant this subject", reason="SUBJECT_NOT_GRANTED"
            )

    def scope_search(self, caller: Caller, region: str) -> None:
        """A lookup reads no data, only ids: ``read`` in the region suffices;
        a subject-limited token sees only its subjects among the results."""
        c = caller.claims
        if not c.allows_operation("read") or "read" not in caller.purpose.operations:
            raise AccessDenied("lookups need the read operation", reason="OPERATION_NOT_GRANTED")
        if not c.allows_region(region):
            raise AccessDenied("the token does not grant this region", reason="REGION_NOT_GRANTED")

    def fields(
        self, caller: Caller, category: str, operation: str, facts: SubjectFacts
    ) -> FieldGrant:
        """The fields of ``category`` the caller may use (``None``: all), after the
        subject's facts; raises AccessDenied or Restricted."""
        token_fields = caller.claims.fields_for(category)
        policy_fields = self.policy.authorize(caller.purpose.name, category, operation, facts)
        allowed = _intersect(token_fields, policy_fields)
        if allowed is not None and not allowed:
            raise AccessDenied(
                "no field of this category is granted to the purpose", reason="FIELD_NOT_GRANTED"
            )
        return allowed

    def subject_visible(self, caller: Caller, facts: SubjectFacts) -> None:
        """What a purpose may know of a subject at all, whatever the category:
        consent-based purposes nothing without consent, not-for-minors purposes
        nothing of a minor. (Restriction does not hide the subject's state.)"""
        p = caller.purpose
        if facts.minor and not p.minors:
            raise AccessDenied(
                f"purpose {p.name!r} never applies to a minor's data", reason="MINOR_EXCLUDED"
            )
        if p.requires_consent and p.name not in facts.consented_purposes:
            raise AccessDenied(
                f"purpose {p.name!r} requires the subject's active consent",
                reason="CONSENT_REQUIRED",
            )

    def readable_categories(self, caller: Caller) -> frozenset[str]:
        """Categories both the token and the purpose allow (for listings)."""
        return frozenset(caller.claims.categories) & frozenset(caller.purpose.categories)

    def check_write_fields(
        self, category: str, fields: Mapping[str, str], allowed: FieldGrant
    ) -> None:
        declared = self.policy.categories[category].fields
        if declared is not None:
            unknown = [i for i, name in enumerate(sorted(fields)) if name not in declared]
            if unknown:
                raise InvalidArgument(
                    [
                        FieldViolation(f"fields[{i}]", "is not a field of this category")
                        for i in unknown
                    ]
                )
        if allowed is not None and not set(fields) <= allowed:
            raise AccessDenied(
                "the caller may not write some of these fields", reason="FIELD_NOT_GRANTED"
            )

    def known_category(self, category: str) -> None:
        if category not in self.policy.categories:
            raise InvalidArgument(FieldViolation("category", "is not a category of the policy"))

    def known_purpose(self, purpose: str, field: str = "purpose") -> Purpose:
        p = self.policy.purposes.get(purpose)
        if p is None:
            raise InvalidArgument(FieldViolation(field, "is not a purpose of the policy"))
        return p
