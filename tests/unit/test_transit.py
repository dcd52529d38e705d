"""The Transit adapter against an in-memory Transit engine (no OpenBao).

The fake binds every call to hvac's own method signature, so a misspelt or
missing argument fails here as it would against the real client; the real
server is exercised by tests/integration/test_key_service.py.
"""

from __future__ import annotations

import base64
import inspect
import os
from collections import Counter
from types import SimpleNamespace
from typing import Any

import hvac.exceptions
import pytest
import requests
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hvac.api.secrets_engines.transit import Transit

from vault.errors import DecryptionFailed, KeyServiceUnavailable
from vault.keys import KeyGone, KeyRef, TransitKeyProvider, TransitKeyRotator, TransitKeyShredder

REF = KeyRef("transit-de", "subject-de_sub_a")
DERIVED = KeyRef("transit-de", "subject-de_sub_d", derived=True)
OTHER = KeyRef("transit-de", "subject-de_sub_b")
DEK = bytes(range(32))
AAD = b"pdvault/dek/v1|de|de_sub_a"


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


class FakeTransit:
    """Transit's encrypt/decrypt semantics: AES-GCM per key, bound to the associated data."""

    def __init__(self) -> None:
        self.keys: dict[tuple[str, str], dict[str, Any]] = {}
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.fail: Exception | None = None
        self.fail_on: str | None = None  # only this operation fails (default: all)
        self.answer: dict[str, Any] | None = None

    def _call(self, op: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        inspect.signature(getattr(Transit, op)).bind(None, **kwargs)  # as hvac would take it
        self.calls.append((op, kwargs))
        if self.fail is not None and self.fail_on in (None, op):
            raise self.fail
        return kwargs

    def _key(self, kw: dict[str, Any]) -> dict[str, Any]:
        key = self.keys.get((kw["mount_point"], kw["name"]))
        if key is None:
            raise hvac.exceptions.InvalidRequest(errors=["encryption key not found"])
        return key

    def create_key(self, **kwargs: Any) -> None:
        kw = self._call("create_key", kwargs)
        self.keys.setdefault(
            (kw["mount_point"], kw["name"]),
            {
                "secret": os.urandom(32),
                "versions": [1, 2],
                "deletion_allowed": False,
                "derived": bool(kw.get("derived")),
            },
        )

    @staticmethod
    def _binding(key: dict[str, Any], kw: dict[str, Any]) -> bytes:
        """A derived key's context (required), else the associated data (optional)."""
        if key["derived"]:
            if not kw.get("context"):
                raise hvac.exceptions.InvalidRequest(
                    errors=["missing 'context' for key derivation"]
                )
            return base64.b64decode(kw["context"], validate=True)
        return base64.b64decode(kw.get("associated_data") or "", validate=True)

    def encrypt_data(self, **kwargs: Any) -> dict[str, Any]:
        kw = self._call("encrypt_data", kwargs)
        key = self._key(kw)
        nonce = os.urandom(12)
        plaintext = base64.b64decode(kw["plaintext"], validate=True)
        ct = AESGCM(key["secret"]).encrypt(nonce, plaintext, self._binding(key, kw))
        return self.answer or {"data": {"ciphertext": "vault:v2:" + b64(nonce + ct)}}

    def decrypt_data(self, **kwargs: Any) -> dict[str, Any]:
        kw = self._call("decrypt_data", kwargs)
        key = self._key(kw)
        raw = base64.b64decode(kw["ciphertext"].split(":", 2)[-1])
        try:
            plaintext = AESGCM(key["secret"]).decrypt(raw[:12], raw[12:], self._binding(key, kw))
        except hvac.exceptions.InvalidRequest:
            raise
        except Exception:
            raise hvac.exceptions.InvalidRequest(
                errors=["cipher: message authentication failed"]
            ) from None
        return self.answer or {"data": {"plaintext": b64(plaintext)}}

    def rewrap_data(self, **kwargs: Any) -> dict[str, Any]:
        kw = self._call("rewrap_data", kwargs)
        key = self._key(kw)
        binding = self._binding(key, kw)
        raw = base64.b64decode(kw["ciphertext"].split(":", 2)[-1])
        try:
            plaintext = AESGCM(key["secret"]).decrypt(raw[:12], raw[12:], binding)
        except Exception:
            raise hvac.exceptions.InvalidRequest(
                errors=["cipher: message authentication failed"]
            ) from None
        nonce = os.urandom(12)
        ct = AESGCM(key["secret"]).encrypt(nonce, plaintext, binding)
        return {"data": {"ciphertext": "vault:v3:" + b64(nonce + ct)}}

    def read_key(self, **kwargs: Any) -> dict[str, Any]:
        kw = self._call("read_key", kwargs)
        key = self.keys.get((kw["mount_point"], kw["name"]))
        if key is None:
            raise hvac.exceptions.InvalidPath(errors=["no such key"])
        return {"data": {"keys": {str(v): 1_700_000_000 + v for v in key["versions"]}}}

    def update_key_configuration(self, **kwargs: Any) -> None:
        kw = self._call("update_key_configuration", kwargs)
        self._key(kw)["deletion_allowed"] = kw["deletion_allowed"]

    def delete_key(self, **kwargs: Any) -> None:
        kw = self._call("delete_key", kwargs)
        if not self._key(kw)["deletion_allowed"]:
            raise hvac.exceptions.InvalidRequest(errors=["deletion is not allowed for this key"])
        del self.keys[(kw["mount_point"], kw["name"])]


@pytest.fixture
def transit() -> FakeTransit:
    return FakeTransit()


@pytest.fixture
def provider(transit: FakeTransit) -> TransitKeyProvider:
    return TransitKeyProvider(SimpleNamespace(secrets=SimpleNamespace(transit=transit)))  # type: ignore[arg-type]


@pytest.fixture
def shredder(transit: FakeTransit) -> TransitKeyShredder:
    return TransitKeyShredder(SimpleNamespace(secrets=SimpleNamespace(transit=transit)))  # type: ignore[arg-type]


def test_keys_are_created_non_exportable_aes256(
    provider: TransitKeyProvider, transit: FakeTransit
) -> None:
    provider.create_key(REF)
    assert transit.calls == [
        (
            "create_key",
            {
                "name": "subject-de_sub_a",
                "key_type": "aes256-gcm96",
                "exportable": False,
                "allow_plaintext_backup": False,
                "mount_point": "transit-de",
            },
        )
    ]


def test_wrap_sends_the_key_and_associated_data_and_unwrap_returns_the_key(
    provider: TransitKeyProvider, transit: FakeTransit
) -> None:
    provider.create_key(REF)
    wrapped = provider.wrap(REF, DEK, AAD)
    assert wrapped.startswith("vault:v2:")
    assert transit.calls[-1] == (
        "encrypt_data",
        {
            "name": "subject-de_sub_a",
            "plaintext": b64(DEK),
            "associated_data": b64(AAD),
            "mount_point": "transit-de",
        },
    )
    assert provider.unwrap(REF, wrapped, AAD) == DEK
    assert transit.calls[-1] == (
        "decrypt_data",
        {
            "name": "subject-de_sub_a",
            "ciphertext": wrapped,
            "associated_data": b64(AAD),
            "mount_point": "transit-de",
        },
    )
    assert provider.calls == Counter({"create_key": 1, "encrypt": 1, "decrypt": 1})


def test_a_wrap_opens_only_with_its_own_key_and_associated_data(
    provider: TransitKeyProvider,
) -> None:
    provider.create_key(REF)
    provider.create_key(OTHER)
    wrapped = provider.wrap(REF, DEK, AAD)
    for ref, aad in ((REF, b"pdvault/dek/v1|de|de_sub_b"), (REF, b""), (OTHER, AAD)):
        with pytest.raises(DecryptionFailed) as e:
            provider.unwrap(ref, wrapped, aad)
        assert str(e.value) == "stored data could not be decrypted"
    assert provider.calls["decrypt"] == 3


@pytest.mark.parametrize(
    "answer",
    [
        {"data": {"plaintext": "not base64!"}},
        {"data": {"plaintext": None}},
        {"data": {}},
        {"data": {"plaintext": b64(DEK) + "\n"}},
    ],
)
def test_an_unusable_unwrap_answer_is_a_decryption_failure(
    provider: TransitKeyProvider, transit: FakeTransit, answer: dict[str, Any]
) -> None:
    provider.create_key(REF)
    wrapped = provider.wrap(REF, DEK, AAD)
    transit.answer = answer
    with pytest.raises(DecryptionFailed):
        provider.unwrap(REF, wrapped, AAD)


_FAILURES = [
    (requests.exceptions.ConnectionError("refused"), "key service unreachable during {op}"),
    (requests.exceptions.Timeout("slow"), "key service unreachable during {op}"),
    (hvac.exceptions.VaultDown(errors=["sealed"]), "key service unreachable during {op}"),
    (hvac.exceptions.Forbidden(errors=["denied"]), "key service refused {op} (permission)"),
    (hvac.exceptions.Unauthorized(errors=["bad token"]), "key service refused {op} (permission)"),
    (hvac.exceptions.InternalServerError(errors=["boom"]), "key service failed during {op}"),
    (hvac.exceptions.BadGateway(errors=["proxy"]), "key service failed during {op}"),
]


@pytest.mark.parametrize(("failure", "message"), _FAILURES)
@pytest.mark.parametrize("op", ["create_key", "encrypt", "decrypt"])
def test_key_service_failures_fail_closed(
    provider: TransitKeyProvider,
    transit: FakeTransit,
    failure: Exception,
    message: str,
    op: str,
) -> None:
    provider.create_key(REF)
    wrapped = provider.wrap(REF, DEK, AAD)
    transit.fail = failure
    call = {
        "create_key": lambda: provider.create_key(REF),
        "encrypt": lambda: provider.wrap(REF, DEK, AAD),
        "decrypt": lambda: provider.unwrap(REF, wrapped, AAD),
    }[op]
    with pytest.raises(KeyServiceUnavailable) as e:
        call()
    assert e.value.message == message.format(op=op)
    assert e.value.__cause__ is failure
    assert provider.calls[op] == (2 if op != "decrypt" else 1)


@pytest.mark.parametrize(
    "failure",
    [hvac.exceptions.InvalidRequest(errors=["x"]), hvac.exceptions.InvalidPath(errors=["y"])],
)
def test_a_refused_encrypt_is_unavailable_and_a_refused_decrypt_is_a_decryption_failure(
    provider: TransitKeyProvider, transit: FakeTransit, failure: Exception
) -> None:
    provider.create_key(REF)
    wrapped = provider.wrap(REF, DEK, AAD)
    transit.fail = failure
    with pytest.raises(KeyServiceUnavailable) as e:
        provider.wrap(REF, DEK, AAD)
    assert e.value.message == "key service rejected encrypt"
    with pytest.raises(DecryptionFailed):
        provider.unwrap(REF, wrapped, AAD)


# --- the shredder ---------------------------------------------------------------------


def test_destroy_deletes_every_version_and_is_idempotent(
    provider: TransitKeyProvider, shredder: TransitKeyShredder, transit: FakeTransit
) -> None:
    provider.create_key(REF)
    provider.create_key(OTHER)
    transit.keys[(REF.mount, REF.name)]["versions"] = [3, 1, 10, 2]
    wrapped = provider.wrap(REF, DEK, AAD)
    assert shredder.versions(REF) == (1, 2, 3, 10)
    assert shredder.destroy(REF) == (1, 2, 3, 10)
    assert [op for op, _ in transit.calls[-3:]] == [
        "read_key",
        "update_key_configuration",
        "delete_key",
    ]
    assert transit.calls[-2][1] == {
        "name": REF.name,
        "deletion_allowed": True,
        "mount_point": REF.mount,
    }
    assert shredder.versions(REF) == ()
    assert shredder.destroy(REF) == ()
    assert (OTHER.mount, OTHER.name) in transit.keys  # only the subject's own key
    with pytest.raises(DecryptionFailed):
        provider.unwrap(REF, wrapped, AAD)


def test_prove_destroyed_records_the_refusal(
    provider: TransitKeyProvider, shredder: TransitKeyShredder
) -> None:
    provider.create_key(REF)
    wrapped = provider.wrap(REF, DEK, AAD)
    with pytest.raises(RuntimeError, match=r"^the subject key still decrypts"):
        shredder.prove_destroyed(REF, wrapped, AAD)
    shredder.destroy(REF)
    assert shredder.prove_destroyed(REF, wrapped, AAD) == (
        "POST transit-de/decrypt/subject-de_sub_a refused: encryption key not found"
    )


def test_prove_destroyed_names_the_refusal_when_it_has_no_text(
    shredder: TransitKeyShredder, transit: FakeTransit
) -> None:
    transit.fail = hvac.exceptions.InvalidPath()
    assert shredder.prove_destroyed(REF, "vault:v1:x", AAD) == (
        "POST transit-de/decrypt/subject-de_sub_a refused: InvalidPath"
    )


def test_prove_destroyed_quotes_every_error_of_the_refusal(
    shredder: TransitKeyShredder, transit: FakeTransit
) -> None:
    transit.fail = hvac.exceptions.InvalidRequest(errors=["key not found", "try again"])
    assert shredder.prove_destroyed(REF, "vault:v1:x", AAD) == (
        "POST transit-de/decrypt/subject-de_sub_a refused: key not found; try again"
    )


@pytest.mark.parametrize(
    ("op", "name"),
    [
        ("read_key", "read_key"),
        ("update_key_configuration", "update_key_configuration"),
        ("delete_key", "delete_key"),
        ("decrypt_data", "decrypt"),
    ],
)
def test_shredder_failures_fail_closed_naming_the_step(
    provider: TransitKeyProvider,
    shredder: TransitKeyShredder,
    transit: FakeTransit,
    op: str,
    name: str,
) -> None:
    provider.create_key(REF)
    wrapped = provider.wrap(REF, DEK, AAD)
    transit.fail, transit.fail_on = hvac.exceptions.Forbidden(errors=["denied"]), op
    with pytest.raises(KeyServiceUnavailable) as e:
        if op == "decrypt_data":
            shredder.prove_destroyed(REF, wrapped, AAD)
        else:
            shredder.destroy(REF)
    assert e.value.message == f"key service refused {name} (permission)"


class RecordingClient:
    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs


def test_connect_builds_a_client_for_the_address_and_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(hvac, "Client", RecordingClient)
    node = TransitKeyProvider.connect("http://bao:8200", "node-token")
    kwargs = dict(node._client.kwargs)  # type: ignore[attr-defined]
    session = kwargs.pop("session")
    assert kwargs == {"url": "http://bao:8200", "token": "node-token", "timeout": 5.0}
    # Room for every thread that may call at once (requests keeps 10 by default).
    assert session.get_adapter("http://bao:8200")._pool_maxsize >= 32
    eraser = TransitKeyShredder.connect("http://bao:8200", "eraser-token", timeout=2.5)
    eraser._client.kwargs.pop("session")  # type: ignore[attr-defined]
    assert eraser._client.kwargs == {  # type: ignore[attr-defined]
        "url": "http://bao:8200",
        "token": "eraser-token",
        "timeout": 2.5,
    }
    assert TransitKeyShredder.connect("u", "t")._client.kwargs["timeout"] == 10.0  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "failure",
    [
        hvac.exceptions.RateLimitExceeded(errors=["rate limited"]),
        hvac.exceptions.PreconditionFailed(errors=["precondition"]),
        hvac.exceptions.VaultNotInitialized(errors=["not initialised"]),
        hvac.exceptions.UnexpectedError(errors=["teapot"]),
    ],
)
def test_every_other_key_service_failure_is_unavailable_never_raw(
    provider: TransitKeyProvider,
    shredder: TransitKeyShredder,
    transit: FakeTransit,
    failure: Exception,
) -> None:
    """429, 412, 501 and unexpected answers: the vault fails closed with its own
    error (UNAVAILABLE, retryable), never an hvac exception (INTERNAL)."""
    provider.create_key(REF)
    wrapped = provider.wrap(REF, DEK, AAD)
    transit.fail = failure
    for call in (
        lambda: provider.create_key(OTHER),
        lambda: provider.wrap(REF, DEK, AAD),
        lambda: provider.unwrap(REF, wrapped, AAD),
        lambda: shredder.versions(REF),
        lambda: shredder.destroy(REF),
    ):
        with pytest.raises(KeyServiceUnavailable) as e:
            call()
        assert e.value.__cause__ is failure
        assert "rate" not in e.value.message and "teapot" not in e.value.message


def test_a_derived_key_is_created_derived_and_its_wraps_are_bound_by_context(
    provider: TransitKeyProvider, transit: FakeTransit
) -> None:
    provider.create_key(DERIVED)
    assert transit.calls[-1] == (
        "create_key",
        {
            "name": "subject-de_sub_d",
            "key_type": "aes256-gcm96",
            "exportable": False,
            "allow_plaintext_backup": False,
            "mount_point": "transit-de",
            "derived": True,
        },
    )
    wrapped = provider.wrap(DERIVED, DEK, AAD)
    op, kw = transit.calls[-1]
    assert op == "encrypt_data" and kw["context"] == b64(AAD) and "associated_data" not in kw
    assert provider.unwrap(DERIVED, wrapped, AAD) == DEK
    op, kw = transit.calls[-1]
    assert op == "decrypt_data" and kw["context"] == b64(AAD) and "associated_data" not in kw
    with pytest.raises(DecryptionFailed):
        provider.unwrap(DERIVED, wrapped, b"pdvault/dek/v1|de|de_sub_b")


def test_prove_destroyed_of_a_derived_key_asks_with_its_context(
    provider: TransitKeyProvider, shredder: TransitKeyShredder, transit: FakeTransit
) -> None:
    provider.create_key(DERIVED)
    wrapped = provider.wrap(DERIVED, DEK, AAD)
    # Still there: the unwrap with the context succeeds, so no proof is made.
    with pytest.raises(RuntimeError, match=r"^the subject key still decrypts"):
        shredder.prove_destroyed(DERIVED, wrapped, AAD)
    assert transit.calls[-1][1]["context"] == b64(AAD)
    shredder.destroy(DERIVED)
    assert shredder.prove_destroyed(DERIVED, wrapped, AAD).endswith("encryption key not found")


def test_the_rotator_rewraps_a_derived_key_in_one_rewrap_call_and_a_legacy_one_by_unwrap_wrap(
    provider: TransitKeyProvider, transit: FakeTransit
) -> None:
    rotator = TransitKeyRotator(SimpleNamespace(secrets=SimpleNamespace(transit=transit)))  # type: ignore[arg-type]
    provider.create_key(DERIVED)
    provider.create_key(REF)
    derived_wrap, legacy_wrap = provider.wrap(DERIVED, DEK, AAD), provider.wrap(REF, DEK, AAD)

    transit.calls.clear()
    new = rotator.rewrap(DERIVED, derived_wrap, AAD)
    assert [op for op, _ in transit.calls] == ["rewrap_data"]  # the data key stays in OpenBao
    assert transit.calls[0][1]["context"] == b64(AAD) and new.startswith("vault:v3:")
    assert provider.unwrap(DERIVED, new, AAD) == DEK
    with pytest.raises(KeyGone):  # another subject's context: the wrap does not open
        rotator.rewrap(DERIVED, derived_wrap, b"pdvault/dek/v1|de|de_sub_b")

    transit.calls.clear()
    again = rotator.rewrap(REF, legacy_wrap, AAD)
    assert [op for op, _ in transit.calls] == ["decrypt_data", "encrypt_data"]
    assert provider.unwrap(REF, again, AAD) == DEK
