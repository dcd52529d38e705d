"""Page tokens of ``ListRecords``: opaque to callers, bound to one listing.

A token is ``base64url(JSON {"v": 1, "s": subject, "c": category, "a": after})``;
it carries no personal data (ids only) and is checked against the listing it
is presented to, so it cannot be replayed against another subject or category.
"""

from __future__ import annotations

import base64
import json

from vault.errors import FieldViolation, InvalidArgument


def encode_page_token(subject_id: str, category: str, after: str) -> str:
    raw = json.dumps({"v": 1, "s": subject_id, "c": category, "a": after}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


#: Tokens this vault makes are well under this; anything longer is not one of them.
MAX_PAGE_TOKEN = 512


def decode_page_token(token: str, subject_id: str, category: str) -> str:
    """The record id the page starts after; InvalidArgument for any other token
    (too long, not base64, not JSON, nested, or from another listing)."""
    bad = InvalidArgument(FieldViolation("page_token", "is not a token from this listing"))
    if len(token) > MAX_PAGE_TOKEN:
        raise bad
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (ValueError, RecursionError):
        raise bad from None
    if (
        not isinstance(data, dict)
        or data.get("v") != 1
        or data.get("s") != subject_id
        or data.get("c") != category
        or not isinstance(data.get("a"), str)
    ):
        raise bad
    return str(data["a"])
