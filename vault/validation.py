"""Request validation shared by every entry point. Messages never echo values."""

from __future__ import annotations

import re

from vault.config import Limits
from vault.errors import FieldViolation, InvalidArgument, TooLarge

_CATEGORY_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$")
_FIELD_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_IDEMPOTENCY_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


def category(value: str) -> str:
    if not value:
        raise InvalidArgument(FieldViolation("category", "is required"))
    if len(value) > 128 or not _CATEGORY_RE.fullmatch(value):
        raise InvalidArgument(
            FieldViolation("category", "must be a dotted lowercase name like user.contact.email")
        )
    return value


def optional_category(value: str) -> str:
    return category(value) if value else ""


def idempotency_key(value: str) -> str:
    if value and not _IDEMPOTENCY_RE.fullmatch(value):
        raise InvalidArgument(
            FieldViolation("idempotency_key", "must be 1-128 characters of [A-Za-z0-9_.:-]")
        )
    return value


def fields(value: dict[str, str], limits: Limits) -> dict[str, str]:
    if not value:
        raise InvalidArgument(FieldViolation("fields", "must hold at least one field"))
    if len(value) > limits.max_fields:
        raise TooLarge(f"a record holds at most {limits.max_fields} fields")
    violations: list[FieldViolation] = []
    total = 0
    for i, (name, v) in enumerate(sorted(value.items())):
        # Field names can themselves be personal data in careless clients: refer
        # to a bad one by position, never by name.
        if len(name) > limits.max_field_name or not _FIELD_NAME_RE.fullmatch(name):
            violations.append(
                FieldViolation(
                    f"fields[{i}]",
                    f"name must be 1-{limits.max_field_name} characters of [A-Za-z0-9_-]",
                )
            )
        size = len(v.encode("utf-8"))
        if size > limits.max_field_value:
            raise TooLarge(f"a field value holds at most {limits.max_field_value} bytes")
        total += size + len(name)
    if violations:
        raise InvalidArgument(violations)
    if total > limits.max_record_bytes:
        raise TooLarge(f"a record holds at most {limits.max_record_bytes} bytes")
    return dict(value)


def page_size(value: int, limits: Limits) -> int:
    if value < 0 or value > limits.max_page_size:
        raise InvalidArgument(
            FieldViolation("page_size", f"must be between 0 and {limits.max_page_size}")
        )
    return value or limits.default_page_size


def expected_version(value: int) -> int:
    if value < 0:
        raise InvalidArgument(FieldViolation("expected_version", "must not be negative"))
    return value


_LABEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}")


def purpose(value: str) -> str:
    if not value:
        raise InvalidArgument(FieldViolation("purpose", "is required"))
    if len(value) > 128 or not _CATEGORY_RE.fullmatch(value):
        raise InvalidArgument(
            FieldViolation("purpose", "must be a dotted lowercase name like essential.service")
        )
    return value


def label(value: str, field: str) -> str:
    """A short machine label (where a consent came from): never free text."""
    if not value:
        raise InvalidArgument(FieldViolation(field, "is required"))
    if not _LABEL_RE.fullmatch(value):
        raise InvalidArgument(FieldViolation(field, "must be 1-128 characters of [A-Za-z0-9_.:/-]"))
    return value


#: The longest grace period an erasure may wait before its key is destroyed.
MAX_GRACE_SECONDS = 30 * 24 * 3600


def grace_period(seconds: int, nanos: int = 0) -> int:
    """An erasure's grace period in whole seconds, 0 to 30 days."""
    if nanos or not 0 <= seconds <= MAX_GRACE_SECONDS:
        raise InvalidArgument(
            FieldViolation(
                "grace_period", f"must be a whole number of seconds from 0 to {MAX_GRACE_SECONDS}"
            )
        )
    return seconds
