"""No log line contains personal data, keys or tokens (README): every log of a full
run is captured — the node's Python logging at DEBUG (every library included),
OpenBao's audit log and its server log — and scanned, as are the control
database's token events and erasure ledger."""

from __future__ import annotations

import base64
import json
import logging
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.conftest import Bao, Stack, files_containing, live_sql, start_stack
from tests.integration._mesh import start_mesh
from vault.client import VaultClientError
from vault.crypto import dek_associated_data
from vault.logs import JsonFormatter
from vault.v1 import vault_pb2 as pb
from vault.v1 import vault_pb2_grpc as pb_grpc

pytestmark = pytest.mark.integration

RIGHTS = "essential.subject_rights"
PROMOTIONS = "marketing.promotions"
#: Every PASETO token (and signed receipt) and every Transit ciphertext begins so.
TOKEN_MARK, WRAP_MARK = "v4.public.", "vault:v1:"


def _full_run(stack: Stack) -> tuple[str, list[str], list[str]]:
    """Every RPC, successes and refusals, with canary values: (a live subject,
    the canaries, the tokens)."""
    canaries = [f"CANARY-{uuid.uuid4().hex}" for _ in range(12)]
    email = f"{canaries[0].lower()}@example.org"
    tokens = [stack.issue(), stack.issue(RIGHTS), stack.issue(PROMOTIONS)]
    service, rights, promo = (stack.client(t) for t in tokens)

    s = service.create_subject("DE", lookups={"email": email, "phone": "+49 30 1234 5678"})
    sid = s.subject_id
    name = service.put_record(sid, "user.name", {"first": canaries[1], "last": canaries[2]})
    mail = service.put_record(sid, "user.contact.email", {"address": canaries[3]})
    service.get_record(name.record_id)
    service.list_records(sid)
    service.put_record(
        sid, "user.name", {"first": canaries[4]}, record_id=name.record_id, expected_version=1
    )
    service.get_subject(sid)
    service.delete_record(mail.record_id)

    rights.set_consent(sid, PROMOTIONS, True, source="log-test")
    rights.list_consents(sid)
    promo.get_record(name.record_id)
    rights.set_consent(sid, PROMOTIONS, False, source="log-test")
    rights.restrict_processing(sid, True)
    rights.restrict_processing(sid, False)
    rights.export_subject(sid)
    rights.set_lookups(sid, {"account_id": canaries[5]})
    rights.find_subjects("email", email, all_regions=True)

    child = service.exchange_token(operations=["read"])
    tokens.append(child.token)
    stack.client(stack.admin).revoke_token(child.token_id)

    refusals = [
        lambda: promo.put_record(sid, "user.name", {"first": canaries[6]}),  # no consent
        lambda: service.put_record(sid, "user.nope", {canaries[7]: canaries[8]}),  # bad category
        lambda: service.create_subject("DE", lookups={"email": f"not an address {canaries[9]}"}),
        lambda: service.erase_subject(sid),  # no erase operation
        lambda: stack.client(child.token).get_record(name.record_id),  # revoked
        lambda: stack.client(f"{tokens[0]}x").get_record(name.record_id),  # bad signature
        lambda: stack.client(canaries[10]).get_subject(sid),  # garbage
        lambda: service.get_record(sid.replace("_sub_", "_rec_")),  # not found
    ]
    for refused in refusals:
        with pytest.raises(VaultClientError):
            refused()

    # A data key moved onto another subject: OpenBao refuses the unwrap (DATA_LOSS).
    other = service.create_subject("DE")
    moved = service.put_record(other.subject_id, "user.name", {"first": canaries[11]})
    live_sql(
        stack.db_path("de"),
        "UPDATE subjects SET wrapped_dek = (SELECT wrapped_dek FROM subjects WHERE id = ?),"
        " key_name = (SELECT key_name FROM subjects WHERE id = ?) WHERE id = ?",
        sid,
        sid,
        other.subject_id,
    )
    stack.node.cells["de"].forget(other.subject_id)
    with pytest.raises(VaultClientError):
        service.get_record(moved.record_id)

    gone = service.create_subject("US", lookups={"email": f"gone.{email}"})
    service.put_record(gone.subject_id, "user.name", {"first": canaries[0]})
    rights.erase_subject(gone.subject_id, grace_period_seconds=3600)
    rights.cancel_erasure(gone.subject_id)
    rights.erase_subject(gone.subject_id, reason="subject_request")
    return sid, [*canaries, email], tokens


def _keys(stack: Stack, bao: Bao, sid: str) -> list[str]:
    """The wrapped data keys of every cell, the wrapped token signing key, and one
    data key and the signing key in plaintext."""
    wrapped = [
        w
        for region in stack.regions.regions
        for (w,) in live_sql(stack.db_path(region), "SELECT wrapped_dek FROM subjects")
        if w
    ]
    assert wrapped, "no wrapped data key to look for"
    ((w,),) = live_sql(stack.db_path("de"), "SELECT wrapped_dek FROM subjects WHERE id = ?", sid)
    dek = bao.root().secrets.transit.decrypt_data(
        name=f"subject-{sid}",
        ciphertext=w,
        context=base64.b64encode(dek_associated_data(sid, "de")).decode(),
        mount_point="transit-de",
    )["data"]["plaintext"]
    pem = stack.vault.authority._signing.private_pem().decode()
    pem_lines = [line for line in pem.splitlines() if line and not line.startswith("-----")]
    signing = json.loads((stack.data_dir / "tokens" / "signing-key.json").read_text())
    return [*wrapped, dek, base64.b64decode(dek).hex(), *pem_lines, signing["wrapped"]]


@contextmanager
def json_log(path: Path) -> Iterator[None]:
    """The root logger's records, at DEBUG, also written to ``path`` as the
    node's ``--log-format json`` writes them."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


def json_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of a JSON log, each one object (or the test fails)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    docs = [json.loads(line) for line in lines]
    assert all(isinstance(d, dict) and {"ts", "level", "logger", "msg"} <= d.keys() for d in docs)
    return docs


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_no_log_line_holds_personal_data_keys_or_tokens(
    bao: Bao, tmp_path: Path, caplog: pytest.LogCaptureFixture, log_format: str
) -> None:
    caplog.set_level(logging.DEBUG)  # the root logger: every library's debug lines too
    data_dir = tmp_path / "node"
    structured = tmp_path / "python.jsonl"
    with json_log(structured):
        # A node of its own, from its first log line.
        stack = start_stack(bao, data_dir, log_format=log_format)
        try:
            sid, canaries, tokens = _full_run(stack)
            keys = _keys(stack, bao, sid)
        finally:
            stack.stop()
    credentials = [stack.admin, bao.node_token, bao.eraser_token, bao.server.root_token()]

    python_log = tmp_path / "python.log"
    python_log.write_text(caplog.text)
    # The capture saw the node at work, at DEBUG, from its server threads.
    assert "PutRecord OK" in caplog.text and "GetRecord DATA_LOSS DECRYPTION_FAILED" in caplog.text
    docs = json_lines(structured)
    served = [d for d in docs if d["logger"] == "vault.access" and " OK " in d["msg"]]
    assert served
    if log_format == "json":
        # Every line of a request carries its id; an id belongs to one call.
        assert all(len(d.get("request_id", "")) == 32 for d in served)
        methods: dict[str, set[str]] = {}
        for d in served:
            methods.setdefault(d["request_id"], set()).add(d["msg"].split()[0])
        assert all(len(m) == 1 for m in methods.values())
        assert len(methods) >= len(served) - 5  # a few calls log twice (streams, fan-out)
    else:
        assert not any("request_id" in d for d in docs)
    # The session's OpenBao: its logs hold this run and the other tests' too.
    logs = [python_log, structured, bao.audit_log, bao.server.dir / "bao.log"]
    assert bao.audit_log.stat().st_size > 0
    secrets = [*canaries, *tokens, *credentials, *keys]
    assert files_containing(logs, *secrets, TOKEN_MARK, WRAP_MARK) == []

    # The control database (token events, revocations, erasure ledger with its
    # signed receipts) holds no personal data, token, credential or key.
    control = sorted(data_dir.glob("control.db*"))
    assert files_containing(control, *secrets, WRAP_MARK) == []


def test_a_callers_request_id_is_logged_and_a_malformed_one_replaced(
    bao: Bao, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    structured = tmp_path / "python.jsonl"
    with json_log(structured):
        stack = start_stack(bao, tmp_path / "node", log_format="json")
        try:
            auth = ("authorization", f"Bearer {stack.issue()}")
            with stack.channel() as ch:
                stub = pb_grpc.PersonalDataVaultStub(ch)  # type: ignore[no-untyped-call]
                s = stub.CreateSubject(
                    pb.CreateSubjectRequest(country="DE"),
                    metadata=(auth, ("x-request-id", "trace-0042")),
                )
                stub.GetSubject(
                    pb.GetSubjectRequest(subject_id=s.subject_id),
                    metadata=(auth, ("x-request-id", "not {an} id")),
                )
        finally:
            stack.stop()
    served = [
        d for d in json_lines(structured) if d["logger"] == "vault.access" and " OK " in d["msg"]
    ]
    created = [d["request_id"] for d in served if d["msg"].startswith("CreateSubject ")]
    assert created == ["trace-0042"]
    (read,) = [d["request_id"] for d in served if d["msg"].startswith("GetSubject ")]
    assert re.fullmatch(r"[0-9a-f]{32}", read)
    assert "{an}" not in structured.read_text()


def test_a_forwarded_call_is_logged_under_one_request_id_by_both_nodes(
    bao: Bao, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    structured = tmp_path / "python.jsonl"
    with json_log(structured):
        mesh = start_mesh(bao, tmp_path / "mesh", nodes=("de", "us"), log_format="json")
        try:
            token = mesh.issue(regions=["us"])
            via_de = mesh.client("de", token)
            sid = via_de.create_subject("US").subject_id
            with grpc.secure_channel(mesh.target("de"), mesh.caller_credentials()) as ch:
                pb_grpc.PersonalDataVaultStub(ch).GetSubject(  # type: ignore[no-untyped-call]
                    pb.GetSubjectRequest(subject_id=sid),
                    metadata=(("authorization", f"Bearer {token}"), ("x-request-id", "trace-77")),
                    timeout=10,
                )
            via_de.get_subject(sid)  # no id given: the entry node's own goes along
        finally:
            mesh.close()
    access = [
        d
        for d in json_lines(structured)
        if d["logger"] == "vault.access" and d.get("request_id") != "trace-77"
    ]
    at_entry = {
        d["request_id"]
        for d in access
        if d["msg"].startswith("GetSubject OK") and "forwarded=us" in d["msg"]
    }
    at_home = {
        d["request_id"]
        for d in access
        if d["msg"].startswith("GetSubject OK") and "entry=de" in d["msg"]
    }
    (rid,) = at_entry
    assert re.fullmatch(r"[0-9a-f]{32}", rid)
    assert at_home == {rid}
    lines = [
        d
        for d in json_lines(structured)
        if d["logger"] == "vault.access" and d.get("request_id") == "trace-77"
    ]
    # The entry node (forwarded to us) and the home node (entered by de).
    assert any("GetSubject OK" in d["msg"] and "forwarded=us" in d["msg"] for d in lines)
    assert any("GetSubject OK" in d["msg"] and "entry=de" in d["msg"] for d in lines)
