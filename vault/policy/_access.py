"""What one caller may do: its purpose token intersected with the purpose policy.

The one place that answers "may this caller do this to this subject's data".
A token grants (operations, regions, subjects, categories and fields); the
policy says what the token's purpose may do at all and what a subject's facts
(minor, consent, restriction) rule out (:mod:`vault.policy._decide`). Every
check here runs before any data key is touched. Decisions fail closed:
anything not granted by both is denied.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from vault.errors import AccessDenied, FieldViolation, InvalidArgument, NotFound
from vault.policy import _decide
from vault.policy._model import Purpose, SubjectFacts
from vault.policy._policy import Policy
from vault.tokens import Claims, FieldGrant

_US_PER_DAY = 86_400_000_000


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated caller: verified token claims and the policy's purpose.

    ``client_identity`` is what the caller's client certificate says it is
    (mutual TLS, see :func:`vault.transport.client_identity`), set by the gRPC
    servicer; ``None`` without one. It is recorded beside the token's ``sub``,
    never used to widen an access.

    ``entry_region`` is the region of the node the caller entered the vault
    by, when that was not the node serving the request: set by the servicer
    only when a peer whose client certificate is a node identity of that
    region forwarded the request (see :mod:`vault.service._forward`); ``None``
    when the caller came directly. Transfer rules apply when it differs from
    the home region.
    """

    claims: Claims
    purpose: Purpose
    client_identity: str | None = None
    entry_region: str | None = None

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
    """The access decisions of one policy, for authenticated callers."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    def caller(self, claims: Claims) -> Caller:
        purpose = self.policy.purposes.get(claims.purpose)
        if purpose is None:
            raise AccessDenied("the token's purpose is not in the policy", reason="UNKNOWN_PURPOSE")
        return Caller(claims, purpose)

    def scope(self, caller: Caller, operation: str, region: str, subject_id: str | None) -> None:
        """Operation, region and subject: the checks that need no stored data.

        ``subject_id=None`` is an operation on no existing subject (creating
        one): a token limited to given subjects cannot do it.
        """
        self.scope_operation(caller, operation, region)
        self.scope_subject(caller, subject_id)

    def scope_operation(self, caller: Caller, operation: str, region: str) -> None:
        """Operation and region: what can be checked before anything is read
        (a record id does not say whose record it is)."""
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

    def scope_subject(self, caller: Caller, subject_id: str | None) -> None:
        """The token's subject restriction, if it has one."""
        c = caller.claims
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

    def scope_record_subject(self, caller: Caller, subject_id: str | None) -> None:
        """For an operation addressed by record id: a record of a subject outside
        the token's grant answers exactly like a record that does not exist, so
        the caller learns nothing about ids it may not use."""
        if subject_id is None or not caller.claims.allows_subject(subject_id):
            raise NotFound("record not found")

    def scope_search(self, caller: Caller, region: str) -> None:
        """A lookup reads no data, only ids: ``read`` in the region suffices;
        a subject-limited token sees only its subjects among the results."""
        c = caller.claims
        if not c.allows_operation("read") or "read" not in caller.purpose.operations:
            raise AccessDenied("lookups need the read operation", reason="OPERATION_NOT_GRANTED")
        if not c.allows_region(region):
            raise AccessDenied("the token does not grant this region", reason="REGION_NOT_GRANTED")

    def fields(
        self, caller: Caller, category: str, operation: str, facts: SubjectFacts | None
    ) -> FieldGrant:
        """The fields of ``category`` the caller may use (``None``: all), after the
        subject's facts (``facts=None``: before any subject is known, the checks
        that hold for every subject); raises AccessDenied or Restricted."""
        token_fields = caller.claims.fields_for(category)
        policy_fields = self.policy.authorize(caller.purpose.name, category, operation, facts)
        allowed = _intersect(token_fields, policy_fields)
        if allowed is not None and not allowed:
            raise AccessDenied(
                "no field of this category is granted to the purpose", reason="FIELD_NOT_GRANTED"
            )
        return allowed

    def subject_visible(self, caller: Caller, facts: SubjectFacts) -> None:
        """What a purpose may know of a subject at all, whatever the category
        (minors, consent); raises AccessDenied."""
        _decide.check_subject_visible(caller.purpose, facts)

    def subject_processable(self, caller: Caller, facts: SubjectFacts) -> None:
        """Whether the purpose may process the subject at all, whatever the
        category (minors, consent, restriction): for what is about the subject
        rather than one category (its access report)."""
        _decide.check_subject(caller.purpose, facts)

    def readable_categories(self, caller: Caller) -> frozenset[str]:
        """Categories both the token and the purpose allow (for listings)."""
        return frozenset(caller.claims.categories) & self.policy.visible_categories(
            caller.purpose.name
        )

    def delete_fields(self, caller: Caller, category: str, facts: SubjectFacts) -> None:
        """Deleting a record removes every field of it: the caller must be
        granted them all, or it would delete fields it cannot see."""
        allowed = self.fields(caller, category, "delete", facts)
        declared = self.policy.categories[category].fields
        if allowed is not None and (declared is None or not declared <= allowed):
            raise AccessDenied(
                "deleting a record needs every field of its category",
                reason="FIELD_NOT_GRANTED",
            )

    def writes_when_restricted(self, caller: Caller) -> bool:
        """Whether the caller may write a subject under restriction of processing."""
        return caller.purpose.allowed_when_restricted

    def expiry(self, caller: Caller, category: str, now_us: int) -> int | None:
        """When a record written now ends its retention (microseconds): the
        policy's retention for the purpose it is written under; ``None``: kept
        as long as the account."""
        days = self.policy.retention_days(caller.purpose.name, category)
        return None if days is None else now_us + days * _US_PER_DAY

    def grant_problems(
        self,
        purpose: Purpose,
        categories: Mapping[str, frozenset[str] | None],
        operations: frozenset[str],
    ) -> list[FieldViolation]:
        """What a token asked for at issue time that its purpose cannot have."""
        problems = []
        for c, fields in categories.items():
            if c not in purpose.categories:
                problems.append(
                    FieldViolation("categories", f"{c} is not a category of the purpose")
                )
                continue
            may = purpose.categories[c]
            if may is None:
                may = self.policy.categories[c].fields
            if fields is not None and may is not None and not fields <= may:
                problems.append(
                    FieldViolation("categories", f"asks for fields of {c} the purpose cannot see")
                )
        if not set(operations) <= purpose.operations:
            problems.append(
                FieldViolation("operations", "includes an operation the purpose does not allow")
            )
        return problems

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
