"""ExportSubject fails like every other RPC: documented status, no internals."""

from __future__ import annotations

import secrets

import grpc
import pytest
from sqlalchemy import text

from tests.conftest import Stack
from vault.client import VaultClientError


def test_an_altered_envelope_mid_export_is_data_loss(stack: Stack) -> None:
    writer = stack.client(stack.issue("essential.service"))
    rights = stack.client(stack.issue("essential.subject_rights"))
    s = writer.create_subject("DE")
    canary = f"CANARY-{secrets.token_hex(8)}"
    recs = [
        writer.put_record(s.subject_id, "user.name", {"first": f"{canary}-{i}"}) for i in range(3)
    ]
    assert len(rights.export_subject(s.subject_id)["records"]) == 3  # the control case
    # Flip one byte of the second record's ciphertext, in the node's own database.
    engine = stack.vault.parts.stores["de"].engine
    with engine.begin() as db:
        env = db.execute(
            text("SELECT envelope FROM records WHERE id = :id"), {"id": recs[1].record_id}
        ).scalar_one()
        altered = env[:20] + bytes([env[20] ^ 0x01]) + env[21:]
        db.execute(
            text("UPDATE records SET envelope = :e WHERE id = :id"),
            {"e": altered, "id": recs[1].record_id},
        )
    with pytest.raises(VaultClientError) as e:
        rights.export_subject(s.subject_id)
    err = e.value
    assert (err.code, err.reason) == (grpc.StatusCode.DATA_LOSS, "DECRYPTION_FAILED")
    assert "DecryptionFailed" not in err.message and canary not in str(err)
    # GetRecord answers the same for the same record: one opaque error.
    with pytest.raises(VaultClientError) as g:
        rights.get_record(recs[1].record_id)
    assert (g.value.code, g.value.reason, g.value.message) == (err.code, err.reason, err.message)
