"""What is on disk: only ciphertext, bound to its place; keys configured as DESIGN.md says."""

from __future__ import annotations

import base64
import sqlite3

import grpc
import hvac.exceptions
import pytest

from tests.conftest import Stack, files_containing, live_sql
from vault.client import VaultClient, VaultClientError
from vault.crypto import dek_associated_data, new_data_key
from vault.errors import DecryptionFailed
from vault.keys import KeyRef

pytestmark = pytest.mark.integration


def _envelope(stack: Stack, region: str, record_id: str) -> bytes:
    with sqlite3.connect(stack.db_path(region)) as db:
        (env,) = db.execute("SELECT envelope FROM records WHERE id = ?", (record_id,)).fetchone()
    return bytes(env)


def _set_envelope(stack: Stack, region: str, record_id: str, env: bytes) -> None:
    with sqlite3.connect(stack.db_path(region)) as db:
        db.execute("UPDATE records SET envelope = ? WHERE id = ?", (env, record_id))


def _read_fails_opaquely(client: VaultClient, record_id: str) -> None:
    with pytest.raises(VaultClientError) as e:
        client.get_record(record_id)
    assert e.value.code == grpc.StatusCode.DATA_LOSS
    assert e.value.message == "stored data could not be decrypted"
    assert e.value.reason == "DECRYPTION_FAILED"


def test_database_files_hold_no_plaintext(stack: Stack, client: VaultClient, canary: str) -> None:
    ids = []
    for country, region in (("DE", "de"), ("US", "us"), ("CN", "cn")):
        s = client.create_subject(country)
        r = client.put_record(
            s.subject_id, "user.content", {"address": f"{canary}@example.org", "note": canary}
        )
        client.put_record(s.subject_id, "user.content", {"address": canary}, record_id=r.record_id)
        ids.append((region, r.record_id))
    for region, rid in ids:
        assert client.get_record(rid).fields["address"] == canary  # it is really there
        files = [p for p in stack.db_path(region).parent.glob(f"{region}.db*") if p.is_file()]
        assert any(p.name.endswith("-wal") for p in files), "expected a WAL file"
        assert files_containing(files, canary) == [], "plaintext found at rest"


def test_every_byte_flip_of_a_stored_envelope_fails_opaquely(
    stack: Stack, client: VaultClient
) -> None:
    s = client.create_subject("DE")
    r = client.put_record(s.subject_id, "user.name", {"first": "Ada"})
    original = _envelope(stack, "de", r.record_id)
    try:
        for i in range(len(original)):
            bad = bytearray(original)
            bad[i] ^= 0x01
            _set_envelope(stack, "de", r.record_id, bytes(bad))
            _read_fails_opaquely(client, r.record_id)
        _set_envelope(stack, "de", r.record_id, original[:-1])
        _read_fails_opaquely(client, r.record_id)
    finally:
        _set_envelope(stack, "de", r.record_id, original)
    assert dict(client.get_record(r.record_id).fields) == {"first": "Ada"}


def test_swapped_envelopes_do_not_open(stack: Stack, client: VaultClient) -> None:
    s1 = client.create_subject("DE")
    s2 = client.create_subject("DE")
    a = client.put_record(s1.subject_id, "user.name", {"first": "Ada"})
    b = client.put_record(
        s1.subject_id, "user.name", {"first": "Bob"}
    )  # same subject, other record
    c = client.put_record(s2.subject_id, "user.name", {"first": "Cyd"})  # other subject
    env_a = _envelope(stack, "de", a.record_id)
    _set_envelope(stack, "de", b.record_id, env_a)
    _read_fails_opaquely(client, b.record_id)
    _set_envelope(stack, "de", c.record_id, env_a)
    _read_fails_opaquely(client, c.record_id)
    assert dict(client.get_record(a.record_id).fields) == {"first": "Ada"}


def test_rows_copied_to_another_region_do_not_open(stack: Stack, client: VaultClient) -> None:
    """A whole subject (wrapped key + record) copied into another region's cell stays sealed."""
    s = client.create_subject("DE")
    r = client.put_record(s.subject_id, "user.name", {"first": "Ada"})
    us = client.create_subject("US")
    target = client.put_record(us.subject_id, "user.name", {"first": "Zed"})
    with sqlite3.connect(stack.db_path("de")) as db:
        (wrapped, mount, key) = db.execute(
            "SELECT wrapped_dek, key_mount, key_name FROM subjects WHERE id = ?", (s.subject_id,)
        ).fetchone()
    with sqlite3.connect(stack.db_path("us")) as db:
        db.execute(
            "UPDATE subjects SET wrapped_dek = ?, key_mount = ?, key_name = ? WHERE id = ?",
            (wrapped, mount, key, us.subject_id),
        )
    _set_envelope(stack, "us", target.record_id, _envelope(stack, "de", r.record_id))
    stack.node.cells["us"].forget(us.subject_id)
    _read_fails_opaquely(client, target.record_id)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _key_row(stack: Stack, region: str, subject_id: str) -> tuple[str, str, str]:
    """(wrapped_dek, key_mount, key_name) of a subject, read by another process."""
    ((wrapped, mount, name),) = live_sql(
        stack.db_path(region),
        "SELECT wrapped_dek, key_mount, key_name FROM subjects WHERE id = ?",
        subject_id,
    )
    return wrapped, mount, name


def test_a_wrapped_data_key_opens_only_with_its_own_subjects_associated_data(
    stack: Stack, client: VaultClient
) -> None:
    """The Transit wrap of a DEK is bound to (subject, region): asked directly,
    OpenBao itself refuses it with another subject's or region's binding (the
    key-derivation context of the subject's derived key)."""
    a = client.create_subject("DE")
    b = client.create_subject("DE")
    wrapped, mount, name = _key_row(stack, "de", a.subject_id)
    assert wrapped.startswith("vault:v1:")
    transit = stack.bao.root().secrets.transit
    assert transit.read_key(name=name, mount_point=mount)["data"]["derived"]

    def decrypt(aad: bytes) -> bytes:
        resp = transit.decrypt_data(
            name=name, ciphertext=wrapped, context=_b64(aad), mount_point=mount
        )
        return base64.b64decode(resp["data"]["plaintext"])

    assert len(decrypt(dek_associated_data(a.subject_id, "de"))) == 32  # the stored wrap opens
    for aad in (
        dek_associated_data(b.subject_id, "de"),  # another subject's
        dek_associated_data(a.subject_id, "us"),  # another region's
        b"",
    ):
        with pytest.raises(hvac.exceptions.InvalidRequest) as e:
            decrypt(aad)
        if aad:  # (an empty context is refused before any attempt)
            assert e.value.errors == ["cipher: message authentication failed"]
    # Associated data in place of the context: refused too (no context, no key).
    with pytest.raises(hvac.exceptions.InvalidRequest):
        transit.decrypt_data(
            name=name,
            ciphertext=wrapped,
            associated_data=_b64(dek_associated_data(a.subject_id, "de")),
            mount_point=mount,
        )

    # The provider's own wrap and unwrap, checked against OpenBao directly.
    ref = KeyRef(mount, name, derived=True)
    dek = new_data_key()
    aad_a, aad_b = dek_associated_data(a.subject_id, "de"), dek_associated_data(b.subject_id, "de")
    ours = stack.provider.wrap(ref, dek, aad_a)
    assert (
        base64.b64decode(
            transit.decrypt_data(
                name=name, ciphertext=ours, context=_b64(aad_a), mount_point=mount
            )["data"]["plaintext"]
        )
        == dek
    )
    with pytest.raises(hvac.exceptions.InvalidRequest):
        transit.decrypt_data(name=name, ciphertext=ours, context=_b64(aad_b), mount_point=mount)
    theirs = transit.encrypt_data(
        name=name, plaintext=_b64(dek), context=_b64(aad_a), mount_point=mount
    )["data"]["ciphertext"]
    assert stack.provider.unwrap(ref, theirs, aad_a) == dek
    with pytest.raises(DecryptionFailed):
        stack.provider.unwrap(ref, theirs, aad_b)


@pytest.mark.parametrize(("victim_country", "victim_region"), [("DE", "de"), ("US", "us")])
def test_a_data_key_moved_to_another_subject_does_not_unwrap(
    stack: Stack, client: VaultClient, victim_country: str, victim_region: str
) -> None:
    """Subject B's row is made to name subject A's key and wrapped DEK (same region
    or another). Only the wrap's binding to (subject, region) can catch it: the
    key named is A's own, so OpenBao would unwrap A's DEK for B, and a record
    written for B would then be sealed under A's key (and survive B's erasure)."""
    a = client.create_subject("DE")
    client.put_record(a.subject_id, "user.name", {"first": "Ada"})
    b = client.create_subject(victim_country)
    rb = client.put_record(b.subject_id, "user.name", {"first": "Bea"})
    wrapped, mount, name = _key_row(stack, "de", a.subject_id)
    live_sql(
        stack.db_path(victim_region),
        "UPDATE subjects SET wrapped_dek = ?, key_mount = ?, key_name = ? WHERE id = ?",
        wrapped,
        mount,
        name,
        b.subject_id,
    )
    cell = stack.node.cells[victim_region]
    cell.forget(b.subject_id)
    decrypts = f"{mount}/decrypt/{name}"
    answered = len(stack.bao.answers(decrypts))

    # A write opens no stored envelope: only the unwrap can refuse it.
    with pytest.raises(VaultClientError) as e:
        client.put_record(b.subject_id, "user.name", {"first": "Written under A's key"})
    assert (e.value.code, e.value.reason) == (grpc.StatusCode.DATA_LOSS, "DECRYPTION_FAILED")
    count = "SELECT count(*) FROM records WHERE subject_id = ?"
    assert live_sql(stack.db_path(victim_region), count, b.subject_id) == [[1]]
    _read_fails_opaquely(client, rb.record_id)
    # Both refusals are OpenBao's own answer to unwrapping A's DEK for B.
    refusals = stack.bao.answers(decrypts)[answered:]
    assert len(refusals) == 2 and all("invalid request" in r for r in refusals), refusals
    assert stack.vault.parts.data_keys[victim_region].get(b.subject_id) is None


def test_subject_keys_are_non_exportable_without_plaintext_backup(
    stack: Stack, client: VaultClient
) -> None:
    s = client.create_subject("RU")
    key = stack.bao.root().secrets.transit.read_key(
        name=f"subject-{s.subject_id}", mount_point="transit-ru"
    )
    data = key["data"]
    assert data["exportable"] is False
    assert data["allow_plaintext_backup"] is False
    assert data["deletion_allowed"] is False
    assert data["type"] == "aes256-gcm96"


def test_node_token_cannot_export_delete_or_reconfigure_keys(
    stack: Stack, client: VaultClient
) -> None:
    import hvac
    import hvac.exceptions

    s = client.create_subject("SG")
    node = hvac.Client(url=stack.bao.address, token=stack.bao.node_token)
    name = f"subject-{s.subject_id}"
    with pytest.raises(hvac.exceptions.Forbidden):
        node.secrets.transit.update_key_configuration(
            name=name, exportable=True, mount_point="transit-sg"
        )
    with pytest.raises(hvac.exceptions.Forbidden):
        node.secrets.transit.delete_key(name=name, mount_point="transit-sg")
    with pytest.raises(hvac.exceptions.Forbidden):
        node.secrets.transit.export_key(
            name=name, key_type="encryption-key", mount_point="transit-sg"
        )


def test_the_plaintext_scan_finds_what_is_there(tmp_path, canary: str) -> None:  # type: ignore[no-untyped-def]
    """The scan above can fail: it finds a canary in any of the spellings it looks for."""
    files = []
    for i, data in enumerate(
        (canary.encode(), canary.lower().encode(), canary.encode("utf-16-le"))
    ):
        f = tmp_path / f"f{i}"
        f.write_bytes(b"xx" + data + b"yy")
        files.append(f)
    clean = tmp_path / "clean"
    clean.write_bytes(b"nothing here")
    assert sorted(files_containing([*files, clean], canary)) == sorted(map(str, files))
