"""Test data built directly, bypassing the service's own checks: one factory per kind."""

from __future__ import annotations

from typing import Any

from vault.tokens import AUDIENCE, ISSUER, Claims

#: A fixed instant (2025-06-15T15:06:40Z) for tests that pass their own clock.
NOW = 1_750_000_000
SUBJECT = "de_sub_" + "a" * 26


def make_claims(*, now: float = NOW, ttl: int = 300, **overrides: Any) -> Claims:
    """Token claims valid for ``ttl`` seconds from ``now``; any claim by keyword.

    The defaults use every kind of claim: a field grant and a whole-category
    grant, two operations, two regions, one subject, a transfer basis. Tests
    against a running node pass ``now=time.time()`` and ``subjects=None``.
    """
    start = int(now)
    fields: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "crm-backend",
        "aud": AUDIENCE,
        "purpose": "essential.service",
        "categories": {
            "user.name": frozenset({"first", "last"}),
            "user.contact.email": None,
        },
        "operations": frozenset({"read", "write"}),
        "regions": frozenset({"de", "us"}),
        "subjects": frozenset({SUBJECT}),
        "transfer_basis": "scc",
        "iat": start,
        "nbf": start,
        "exp": start + ttl,
        "jti": "j" * 22,
        "parent_jti": None,
    }
    fields.update(overrides)
    return Claims(**fields)
