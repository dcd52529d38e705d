"""The claims of a purpose token, and how a token is narrowed for a processor.

A :class:`Claims` is validated when it is built, so holding one means holding a
well-formed grant; :meth:`Claims.from_payload` turns *any* problem with a
decoded payload into ``Unauthenticated(reason="MALFORMED_CLAIMS")``.

Payload format (JSON; every claim is required unless marked optional)::

    {
      "iss": "pdvault", "sub": "crm-backend", "aud": "pdvault",
      "purpose": "essential.service",
      "categories": {"user.name": ["first", "last"], "user.contact.email": "*"},
      "operations": ["read", "write"],          # ⊆ OPERATIONS, non-empty
      "regions": ["de", "us"],                  # ⊆ REGIONS, non-empty
      "subjects": "*" | ["de_sub_…", …],        # "*" = any subject
      "transfer_basis": "scc",                  # optional ∈ TRANSFER_BASES
      "iat": "2025-01-01T00:00:00+00:00",       # RFC 3339 (PASETO registered claims)
      "nbf": "…", "exp": "…",                   # iat <= nbf < exp
      "jti": "…",                               # random token id
      "parent_jti": "…",                        # optional: set on exchanged tokens
      "ancestors": ["…", …]                     # optional: the parent's own ancestry
    }

An exchanged token names every token it descends from, so that revoking any
of them revokes it on every node (see :attr:`Claims.lineage`): ``parent_jti``
is the token it was exchanged from, ``ancestors`` the tokens above that one,
the issued token first; ``ancestors`` is absent when the parent was itself
issued (and on tokens signed before the claim existed, whose ancestry is then
``parent_jti`` alone). A token is at most :data:`MAX_EXCHANGE_DEPTH` exchanges
from the issued token it descends from.

Optional claims are *absent* when unset, never ``null``; the absent meaning is
always the restrictive one (no transfer basis; not an exchanged token). The
wildcards are spelled out (``"*"``) so that a missing claim can never widen a
grant. ``ancestors`` is the exception, kept so that tokens signed before it
existed stay valid: its absence means no ancestry beyond ``parent_jti``, and
only the vault's own signing key can leave it out.
"""

from __future__ import annotations

import math
import re
import secrets
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Final, NoReturn, TypeAlias

from vault.errors import AccessDenied, FieldViolation, InvalidArgument, Unauthenticated
from vault.ids import parse_id

ISSUER: Final = "pdvault"
AUDIENCE: Final = "pdvault"
OPERATIONS: Final = frozenset({"read", "write", "delete", "erase", "export", "consent"})
REGIONS: Final = frozenset({"cn", "us", "de", "ru", "sg"})
TRANSFER_BASES: Final = frozenset({"scc", "adequacy", "consent", "security_assessment"})
#: Payload spelling of "all fields of the category" / "any subject".
WILDCARD: Final = "*"
#: How many exchanges a token may be from the issued token it descends from
#: (so ``ancestors`` holds at most MAX_EXCHANGE_DEPTH - 1 token ids).
MAX_EXCHANGE_DEPTH: Final = 8

_REQUIRED = frozenset(
    {
        "iss",
        "sub",
        "aud",
        "purpose",
        "categories",
        "operations",
        "regions",
        "subjects",
        "iat",
        "nbf",
        "exp",
        "jti",
    }
)
_OPTIONAL = frozenset({"transfer_basis", "parent_jti", "ancestors"})

_PRINCIPAL_RE = re.compile(r"[\x21-\x7e]{1,256}")  # visible ASCII, no spaces
_TAXONOMY_RE = re.compile(r"[a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)*")
_FIELD_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_JTI_RE = re.compile(r"[A-Za-z0-9_-]{16,64}")
_RFC3339_RE = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:Z|[+-][0-9]{2}:[0-9]{2})"
)
_MAX_NAME = 128
_MAX_TIME = 253_402_300_799  # 9999-12-31T23:59:59Z, the last RFC 3339 second

#: The fields granted in one category; ``None`` means every field of it.
FieldGrant: TypeAlias = frozenset[str] | None


def new_jti() -> str:
    """A random token id: 128 bits, URL-safe."""
    return secrets.token_urlsafe(16)


# --- validation of single values (ValueError naming the claim, never the value) ---


def _check_str(claim: str, value: object, pattern: re.Pattern[str], max_len: int) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{claim}: must be a string")
    if len(value) > max_len or pattern.fullmatch(value) is None:
        raise ValueError(f"{claim}: is not well-formed")
    return value


def _check_time(claim: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{claim}: must be whole seconds since the epoch")
    if not 0 <= value <= _MAX_TIME:
        raise ValueError(f"{claim}: is out of range")
    return value


def _check_names(claim: str, value: object, check: Callable[[object], None]) -> frozenset[str]:
    if not isinstance(value, frozenset):
        raise ValueError(f"{claim}: must be a frozenset")
    if not value:
        raise ValueError(f"{claim}: must not be empty")
    for item in value:
        check(item)
    return value


def _check_operation(value: object) -> None:
    if value not in OPERATIONS:
        raise ValueError("operations: names an unknown operation")


def _check_region(value: object) -> None:
    if value not in REGIONS:
        raise ValueError("regions: names an unknown region")


def _check_field(value: object) -> None:
    _check_str("categories", value, _FIELD_RE, _MAX_NAME)


def _check_subject(value: object) -> None:
    if not isinstance(value, str):
        raise ValueError("subjects: must hold strings")
    try:
        parse_id(value, "sub", field="subjects", regions=REGIONS)
    except InvalidArgument:
        raise ValueError("subjects: holds a malformed subject id") from None


def _freeze_categories(value: object) -> Mapping[str, FieldGrant]:
    if not isinstance(value, Mapping):
        raise ValueError("categories: must be a mapping")
    frozen: dict[str, FieldGrant] = {}
    for category, fields in value.items():
        _check_str("categories", category, _TAXONOMY_RE, _MAX_NAME)
        if fields is not None:
            _check_names("categories", fields, _check_field)
        frozen[category] = fields
    return MappingProxyType(frozen)


# --- RFC 3339 -----------------------------------------------------------------


def _to_rfc3339(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


def _from_rfc3339(claim: str, value: object) -> int:
    if not isinstance(value, str) or _RFC3339_RE.fullmatch(value) is None:
        raise ValueError(f"{claim}: must be an RFC 3339 date-time")
    try:
        return int(datetime.fromisoformat(value).timestamp())
    except (ValueError, OverflowError):
        raise ValueError(f"{claim}: must be an RFC 3339 date-time") from None


# --- the claims -----------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Claims:
    """What a purpose token grants, to whom, where and for how long.

    Validated when built (ValueError naming the claim on any violation); the
    ``categories`` mapping is copied into a read-only view. Times are whole
    seconds since the epoch; the token is valid for ``nbf <= now < exp``.
    """

    iss: str
    sub: str
    aud: str
    purpose: str
    categories: Mapping[str, FieldGrant] = field(hash=False)
    operations: frozenset[str]
    regions: frozenset[str]
    subjects: frozenset[str] | None
    transfer_basis: str | None = None
    iat: int
    nbf: int
    exp: int
    jti: str
    parent_jti: str | None = None
    #: The ancestry above ``parent_jti``, the issued token first.
    ancestors: tuple[str, ...] = ()
    #: This token's id, its parent's, and so on up to the issued token: any of
    #: them revoked revokes this token. Derived, never in the payload.
    lineage: tuple[str, ...] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        _check_str("iss", self.iss, _PRINCIPAL_RE, 256)
        _check_str("sub", self.sub, _PRINCIPAL_RE, 256)
        _check_str("aud", self.aud, _PRINCIPAL_RE, 256)
        _check_str("purpose", self.purpose, _TAXONOMY_RE, _MAX_NAME)
        object.__setattr__(self, "categories", _freeze_categories(self.categories))
        _check_names("operations", self.operations, _check_operation)
        _check_names("regions", self.regions, _check_region)
        if self.subjects is not None:
            _check_names("subjects", self.subjects, _check_subject)
        if self.transfer_basis is not None and (
            not isinstance(self.transfer_basis, str) or self.transfer_basis not in TRANSFER_BASES
        ):
            raise ValueError("transfer_basis: is not a known transfer basis")
        iat = _check_time("iat", self.iat)
        nbf = _check_time("nbf", self.nbf)
        exp = _check_time("exp", self.exp)
        if not iat <= nbf < exp:
            raise ValueError("iat/nbf/exp: must satisfy iat <= nbf < exp")
        _check_str("jti", self.jti, _JTI_RE, 64)
        if self.parent_jti is not None:
            _check_str("parent_jti", self.parent_jti, _JTI_RE, 64)
            if self.parent_jti == self.jti:
                raise ValueError("parent_jti: must differ from jti")
        if not isinstance(self.ancestors, tuple):
            raise ValueError("ancestors: must be a tuple")
        if self.ancestors:
            if self.parent_jti is None:
                raise ValueError("ancestors: only an exchanged token has ancestors")
            if len(self.ancestors) >= MAX_EXCHANGE_DEPTH:
                raise ValueError("ancestors: the token is exchanged too many times")
            for ancestor in self.ancestors:
                _check_str("ancestors", ancestor, _JTI_RE, 64)
        lineage = (self.jti, *self.ancestry[::-1])
        if len(set(lineage)) != len(lineage):
            raise ValueError("ancestors: must not repeat a token id")
        object.__setattr__(self, "lineage", lineage)

    # -- construction --------------------------------------------------------

    @classmethod
    def new(
        cls,
        *,
        sub: str,
        purpose: str,
        categories: Mapping[str, FieldGrant],
        operations: frozenset[str],
        regions: frozenset[str],
        subjects: frozenset[str] | None,
        ttl: int,
        now: float,
        transfer_basis: str | None = None,
        iss: str = ISSUER,
        aud: str = AUDIENCE,
    ) -> Claims:
        """Claims for a freshly issued (not exchanged) token valid from ``now`` for ``ttl`` s."""
        if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl <= 0:
            raise ValueError("ttl: must be a positive number of seconds")
        start = math.floor(now)
        return cls(
            iss=iss,
            sub=sub,
            aud=aud,
            purpose=purpose,
            categories=categories,
            operations=operations,
            regions=regions,
            subjects=subjects,
            transfer_basis=transfer_basis,
            iat=start,
            nbf=start,
            exp=start + ttl,
            jti=new_jti(),
        )

    # -- payload ---------------------------------------------------------------

    def to_payload(self) -> dict[str, Any]:
        """The JSON-compatible payload (see the module docstring); deterministic."""
        payload: dict[str, Any] = {
            "iss": self.iss,
            "sub": self.sub,
            "aud": self.aud,
            "purpose": self.purpose,
            "categories": {
                category: WILDCARD if fields is None else sorted(fields)
                for category, fields in sorted(self.categories.items())
            },
            "operations": sorted(self.operations),
            "regions": sorted(self.regions),
            "subjects": WILDCARD if self.subjects is None else sorted(self.subjects),
            "iat": _to_rfc3339(self.iat),
            "nbf": _to_rfc3339(self.nbf),
            "exp": _to_rfc3339(self.exp),
            "jti": self.jti,
        }
        if self.transfer_basis is not None:
            payload["transfer_basis"] = self.transfer_basis
        if self.parent_jti is not None:
            payload["parent_jti"] = self.parent_jti
        if self.ancestors:
            payload["ancestors"] = list(self.ancestors)
        return payload

    @classmethod
    def from_payload(cls, payload: object) -> Claims:
        """Parses a decoded payload strictly.

        Raises ``Unauthenticated(reason="MALFORMED_CLAIMS")`` on a missing or
        unknown claim, a wrong type, an unknown operation/region/basis, a
        duplicate list entry, ``null`` where a value is expected, or times out
        of order. The message names the claim, never its value.
        """
        try:
            return cls._parse(payload)
        except ValueError as exc:
            # Our own messages: they name the claim, never its value.
            raise Unauthenticated(
                f"token claims are malformed ({exc})", reason="MALFORMED_CLAIMS"
            ) from None
        except TypeError:
            raise Unauthenticated("token claims are malformed", reason="MALFORMED_CLAIMS") from None

    @classmethod
    def _parse(cls, payload: object) -> Claims:
        if not isinstance(payload, dict):
            raise ValueError("payload: must be a JSON object")
        keys = set(payload)
        if not keys >= _REQUIRED:
            raise ValueError("payload: a required claim is missing")
        if not keys <= _REQUIRED | _OPTIONAL:
            raise ValueError("payload: holds an unknown claim")
        for key in _OPTIONAL & keys:
            if payload[key] is None:
                raise ValueError(f"{key}: must be absent rather than null")

        raw_categories = payload["categories"]
        if not isinstance(raw_categories, dict):
            raise ValueError("categories: must be an object")
        categories: dict[str, FieldGrant] = {}
        for category, fields in raw_categories.items():
            categories[category] = (
                None if fields == WILDCARD else _list_to_set("categories", fields)
            )

        raw_subjects = payload["subjects"]
        subjects = None if raw_subjects == WILDCARD else _list_to_set("subjects", raw_subjects)

        return cls(
            iss=payload["iss"],
            sub=payload["sub"],
            aud=payload["aud"],
            purpose=payload["purpose"],
            categories=categories,
            operations=_list_to_set("operations", payload["operations"]),
            regions=_list_to_set("regions", payload["regions"]),
            subjects=subjects,
            transfer_basis=payload.get("transfer_basis"),
            iat=_from_rfc3339("iat", payload["iat"]),
            nbf=_from_rfc3339("nbf", payload["nbf"]),
            exp=_from_rfc3339("exp", payload["exp"]),
            jti=payload["jti"],
            parent_jti=payload.get("parent_jti"),
            ancestors=_ancestors(payload.get("ancestors")),
        )

    # -- lineage -----------------------------------------------------------------

    @property
    def ancestry(self) -> tuple[str, ...]:
        """Every token this one descends from, the issued token first and the
        parent last; empty for an issued token."""
        if self.parent_jti is None:
            return ()
        return (*self.ancestors, self.parent_jti)

    # -- what the token allows ---------------------------------------------------

    def allows_operation(self, operation: str) -> bool:
        return operation in self.operations

    def allows_region(self, region: str) -> bool:
        return region in self.regions

    def allows_subject(self, subject_id: str) -> bool:
        return self.subjects is None or subject_id in self.subjects

    def fields_for(self, category: str) -> FieldGrant:
        """The fields granted in ``category`` (``None``: all of them).

        Raises ``AccessDenied(reason="CATEGORY_NOT_GRANTED")`` when the category
        is not granted at all.
        """
        if category not in self.categories:
            raise AccessDenied(
                "the token does not grant this data category", reason="CATEGORY_NOT_GRANTED"
            )
        return self.categories[category]

    def allows_field(self, category: str, field_name: str) -> bool:
        if category not in self.categories:
            return False
        fields = self.categories[category]
        return fields is None or field_name in fields

    def allows(
        self, *, operation: str, category: str, field_name: str, region: str, subject_id: str
    ) -> bool:
        """Whether one field access is within the grant (purpose is checked by policy)."""
        return (
            self.allows_operation(operation)
            and self.allows_field(category, field_name)
            and self.allows_region(region)
            and self.allows_subject(subject_id)
        )

    def check_validity_period(self, now: float, *, nbf_leeway: int = 0) -> None:
        """Raises Unauthenticated EXPIRED (``now >= exp``) or NOT_YET_VALID.

        ``nbf_leeway`` tolerates an issuer clock running ahead of ours; expiry
        gets no leeway.
        """
        if now >= self.exp:
            raise Unauthenticated("the token has expired", reason="EXPIRED")
        if now + nbf_leeway < self.nbf:
            raise Unauthenticated("the token is not valid yet", reason="NOT_YET_VALID")


def _ancestors(value: object) -> tuple[str, ...]:
    if value is None:  # absent (null is refused before this)
        return ()
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ValueError("ancestors: must be a non-empty list of token ids")
    return tuple(value)


def _list_to_set(claim: str, value: object) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{claim}: must be a list of strings")
    result = frozenset(value)
    if len(result) != len(value):
        raise ValueError(f"{claim}: holds duplicates")
    return result


# --- exchange: narrowing a token ------------------------------------------------


def _widens(dimension: str) -> NoReturn:
    raise AccessDenied(
        f"the exchange would widen the token's {dimension}", reason="EXCHANGE_WIDENS"
    )


def _request_set(name: str, value: object, *, allow_empty: bool = False) -> frozenset[str]:
    # A bare string is a Collection of characters: refuse it rather than
    # silently granting {"r", "e", "a", "d"}.
    if isinstance(value, str | bytes) or not isinstance(value, Collection):
        raise InvalidArgument(FieldViolation(name, "must be a collection of names"))
    if not all(isinstance(v, str) for v in value):
        raise InvalidArgument(FieldViolation(name, "must hold only strings"))
    if not value and not allow_empty:
        raise InvalidArgument(FieldViolation(name, "must not be empty"))
    return frozenset(value)


def narrow(
    parent: Claims,
    *,
    categories: Collection[str] | None = None,
    fields: Mapping[str, Collection[str]] | None = None,
    operations: Collection[str] | None = None,
    regions: Collection[str] | None = None,
    subjects: Collection[str] | None = None,
    ttl: int | None = None,
    now: float,
) -> Claims:
    """The claims of a token exchanged from ``parent`` for a narrower one.

    Every argument left ``None`` keeps the parent's value. ``categories``
    keeps a subset of the parent's categories; ``fields`` maps a kept category
    to a subset of its fields (any subset when the parent grants all of them);
    ``ttl`` shortens the life (``exp = now + ttl``, which must not pass
    ``parent.exp``: asking for more life than the parent has left widens).
    Purpose, issuer, audience, caller and transfer basis are inherited
    unchanged; ``jti`` is new, ``parent_jti`` is the parent's ``jti`` and
    ``ancestors`` the parent's ancestry.

    Raises ``AccessDenied(reason="EXCHANGE_WIDENS")`` naming the first
    dimension that would be wider than the parent's,
    ``AccessDenied(reason="EXCHANGE_EXPIRED")`` when the parent has no
    lifetime left to hand on, ``AccessDenied(reason="EXCHANGE_TOO_DEEP")``
    when the parent is already :data:`MAX_EXCHANGE_DEPTH` exchanges from its
    issued token, and ``InvalidArgument`` for a malformed request
    (empty sets, non-positive ttl, fields for a category not requested).
    """
    if len(parent.ancestry) >= MAX_EXCHANGE_DEPTH:
        raise AccessDenied(
            f"a token may be exchanged at most {MAX_EXCHANGE_DEPTH} times in a row",
            reason="EXCHANGE_TOO_DEEP",
        )
    want_categories = (
        None if categories is None else _request_set("categories", categories, allow_empty=True)
    )
    want_operations = None if operations is None else _request_set("operations", operations)
    want_regions = None if regions is None else _request_set("regions", regions)
    want_subjects = None if subjects is None else _request_set("subjects", subjects)
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int) or ttl <= 0):
        raise InvalidArgument(FieldViolation("ttl", "must be a positive number of seconds"))

    if want_categories is None:
        kept = frozenset(parent.categories)
    elif want_categories <= parent.categories.keys():
        kept = want_categories
    else:
        _widens("categories")
    child_categories: dict[str, FieldGrant] = {c: parent.categories[c] for c in kept}

    if fields is not None:
        if not isinstance(fields, Mapping):
            raise InvalidArgument(FieldViolation("fields", "must map categories to field names"))
        for category, wanted in fields.items():
            if category not in parent.categories:
                _widens("categories")
            if category not in kept:
                raise InvalidArgument(
                    FieldViolation("fields", "names a category that is not requested")
                )
            want_fields = _request_set("fields", wanted)
            granted = parent.categories[category]
            if granted is not None and not want_fields <= granted:
                _widens("fields")
            child_categories[category] = want_fields

    if want_operations is None:
        child_operations = parent.operations
    elif want_operations <= parent.operations:
        child_operations = want_operations
    else:
        _widens("operations")

    if want_regions is None:
        child_regions = parent.regions
    elif want_regions <= parent.regions:
        child_regions = want_regions
    else:
        _widens("regions")

    if want_subjects is None:
        child_subjects = parent.subjects
    elif parent.subjects is None or want_subjects <= parent.subjects:
        child_subjects = want_subjects
    else:
        _widens("subjects")

    start = math.floor(now)
    nbf = max(parent.nbf, start)
    if ttl is not None and start + ttl > parent.exp:
        _widens("ttl")  # a longer life than the parent has left is a wider token
    exp = parent.exp if ttl is None else start + ttl
    if exp <= nbf:
        raise AccessDenied(
            "the parent token has no lifetime left to hand on", reason="EXCHANGE_EXPIRED"
        )

    try:
        return Claims(
            iss=parent.iss,
            sub=parent.sub,
            aud=parent.aud,
            purpose=parent.purpose,
            categories=child_categories,
            operations=child_operations,
            regions=child_regions,
            subjects=child_subjects,
            transfer_basis=parent.transfer_basis,
            iat=start,
            nbf=nbf,
            exp=exp,
            jti=new_jti(),
            parent_jti=parent.jti,
            ancestors=parent.ancestry,
        )
    except (ValueError, TypeError) as exc:
        # Only names the parent cannot vouch for get here: a field of an
        # all-fields category, or a subject where the parent allows any.
        raise InvalidArgument(FieldViolation("request", str(exc))) from None


def is_narrowing(parent: Claims, child: Claims) -> bool:
    """Whether ``child`` is a valid exchange of ``parent``: nothing wider, linked
    by jti, carrying the parent's ancestry.

    Pure; used by tests and by the exchange endpoint as a final guard.
    """
    if (child.iss, child.sub, child.aud, child.purpose, child.transfer_basis) != (
        parent.iss,
        parent.sub,
        parent.aud,
        parent.purpose,
        parent.transfer_basis,
    ):
        return False
    if child.parent_jti != parent.jti or child.jti == parent.jti:
        return False
    if child.ancestors != parent.ancestry:
        return False
    if child.exp > parent.exp or child.nbf < parent.nbf:
        return False
    if not (child.operations <= parent.operations and child.regions <= parent.regions):
        return False
    if parent.subjects is not None and (
        child.subjects is None or not child.subjects <= parent.subjects
    ):
        return False
    for category, fields in child.categories.items():
        if category not in parent.categories:
            return False
        granted = parent.categories[category]
        if granted is None:
            continue
        if fields is None or not fields <= granted:
            return False
    return True
