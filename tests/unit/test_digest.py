"""Keyed request digests (idempotency): against an independent computation."""

from __future__ import annotations

import hashlib
import hmac
import json

from vault.crypto import request_digest, same_digest

KEY = bytes(range(32))


def _expected(key: bytes, purpose: str, payload: object) -> str:
    derived = hmac.new(key, b"pdvault/digest/v1|" + purpose.encode(), hashlib.sha256).digest()
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hmac.new(derived, text.encode("utf-8"), hashlib.sha256).hexdigest()


def test_the_documented_construction() -> None:
    payload = ["user.name", {"first": "Ada", "last": "Lövelace"}]
    got = request_digest(KEY, "put-record", payload)
    assert got == _expected(KEY, "put-record", payload)
    assert len(got) == 64


def test_canonical_payload_key_order_does_not_matter() -> None:
    a = request_digest(KEY, "p", {"b": "2", "a": "1"})
    b = request_digest(KEY, "p", {"a": "1", "b": "2"})
    assert a == b


def test_key_purpose_and_payload_each_change_the_digest() -> None:
    base = request_digest(KEY, "put-record", ["c", {"f": "v"}])
    assert request_digest(bytes(32), "put-record", ["c", {"f": "v"}]) != base
    assert request_digest(KEY, "create-subject", ["c", {"f": "v"}]) != base
    assert request_digest(KEY, "put-record", ["c", {"f": "w"}]) != base
    # The data key is never used directly as the HMAC key.
    text = json.dumps(["c", {"f": "v"}], sort_keys=True, separators=(",", ":"))
    assert base != hmac.new(KEY, text.encode(), hashlib.sha256).hexdigest()


def test_same_digest() -> None:
    d = request_digest(KEY, "p", [1])
    assert same_digest(d, d)
    assert not same_digest(None, d)
    assert not same_digest(d[:-1] + ("0" if d[-1] != "0" else "1"), d)
