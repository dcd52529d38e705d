"""What is on disk: only ciphertext, bound to its place; keys configured as DESIGN.md says."""

from __future__ import annotations

import sqlite3

import grpc
import pytest

from tests.conftest import Stack, files_containing
from vault.client import VaultClient, VaultClientError

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


def test_wrapped_data_key_is_bound_to_its_subject(stack: Stack, client: VaultClient) -> None:
    """Swapping the wrapped DEK of one subject onto another (same mount) does not unwrap."""
    a = client.create_subject("DE")
    b = client.create_subject("DE")
    rb = client.put_record(b.subject_id, "user.name", {"first": "Bea"})
    with sqlite3.connect(stack.db_path("de")) as db:
        row_a = db.execute(
            "SELECT wrapped_dek, key_name FROM subjects WHERE id = ?", (a.subject_id,)
        ).fetchone()
        db.execute(
            "UPDATE subjects SET wrapped_dek = ?, key_name = ? WHERE id = ?", (*row_a, b.subject_id)
        )
    stack.node.cells["de"].forget(b.subject_id)
    _read_fails_opaquely(client, rb.record_id)


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
