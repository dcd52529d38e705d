"""The pdvault error family.

Every failure the domain reports is a :class:`VaultError`. Messages are written
for operators and callers and never contain personal data, key material or
tokens: they name the *kind* of thing that went wrong and, at most, opaque IDs.
The gRPC layer maps each class to exactly one status code
(``vault.service._status``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FieldViolation:
    """One bad request field: its path and why (no field values)."""

    field: str
    description: str


class VaultError(Exception):
    """Base of every pdvault error; ``reason`` is a stable machine-readable code."""

    reason: str = "VAULT_ERROR"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason


class InvalidArgument(VaultError):
    """The request is malformed; ``violations`` says which fields and why."""

    reason = "INVALID_ARGUMENT"

    def __init__(self, violations: list[FieldViolation] | FieldViolation) -> None:
        vs = [violations] if isinstance(violations, FieldViolation) else list(violations)
        super().__init__("invalid request: " + "; ".join(f"{v.field}: {v.description}" for v in vs))
        self.violations = vs


class NotFound(VaultError):
    reason = "NOT_FOUND"


class Conflict(VaultError):
    """An optimistic-concurrency check failed (stale ``expected_version``)."""

    reason = "VERSION_CONFLICT"


class Erased(VaultError):
    """The subject has been erased (or is pending erasure); nothing is readable."""

    reason = "SUBJECT_ERASED"


class Restricted(VaultError):
    """Processing of the subject is restricted for this purpose."""

    reason = "PROCESSING_RESTRICTED"


class AccessDenied(VaultError):
    reason = "ACCESS_DENIED"


class Unauthenticated(VaultError):
    reason = "UNAUTHENTICATED"


class TooLarge(VaultError):
    reason = "TOO_LARGE"


class KeyServiceUnavailable(VaultError):
    """OpenBao/Vault could not be reached or refused: the vault fails closed."""

    reason = "KEY_SERVICE_UNAVAILABLE"


class StoreUnavailable(VaultError):
    """The cell database could not be reached: the vault fails closed."""

    reason = "STORE_UNAVAILABLE"


class DecryptionFailed(VaultError):
    """A ciphertext did not open. Deliberately says nothing more (one opaque error)."""

    reason = "DECRYPTION_FAILED"

    def __init__(self, message: str = "stored data could not be decrypted") -> None:
        super().__init__(message)


@dataclass(frozen=True)
class ConfigProblem:
    where: str
    problem: str


class ConfigError(VaultError):
    """A configuration file is invalid; ``problems`` lists every problem found."""

    reason = "INVALID_CONFIG"

    def __init__(self, source: str, problems: list[ConfigProblem]) -> None:
        lines = "\n".join(f"  {p.where}: {p.problem}" for p in problems)
        super().__init__(f"invalid configuration in {source}:\n{lines}")
        self.source = source
        self.problems = problems
