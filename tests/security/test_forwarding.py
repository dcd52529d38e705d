"""Attacks on forwarding and the entry region, through three real mTLS nodes.

The entry region decides which transfer rule applies, so it must come from a
node certificate and nothing a caller can say: a header from a caller, a node
leaving its header out or naming another region, a request id meant for the
logs, an unauthenticated call hoping to be relayed, a node's call hoping to be
forwarded once more.
"""

from __future__ import annotations

import logging

import grpc
import pytest

from tests.integration._mesh import Mesh
from vault.client import VaultClient, VaultClientError
from vault.service._forward import ENTRY_HEADER, REQUEST_ID_HEADER
from vault.v1 import vault_pb2 as pb
from vault.v1 import vault_pb2_grpc as pb_grpc

pytestmark = pytest.mark.integration
CATEGORY = "user.name"


def _get(
    mesh: Mesh, entry: str, token: str, record_id: str, metadata: tuple[tuple[str, str], ...] = ()
) -> pb.Record:
    with grpc.secure_channel(mesh.target(entry), mesh.caller_credentials()) as ch:
        try:
            return pb_grpc.PersonalDataVaultStub(ch).GetRecord(
                pb.GetRecordRequest(record_id=record_id),
                metadata=(("authorization", f"Bearer {token}"), *metadata),
                timeout=10,
            )
        except grpc.RpcError as e:
            raise VaultClientError.from_rpc_error(e) from None


def _as_node(mesh: Mesh, region: str, entry: str, token: str) -> VaultClient:
    """A client presenting ``region``'s node certificate (as a node would)."""
    pki = mesh.data_dir.parent / "pki"
    cert = (pki / f"node-{region}.pem").read_bytes()
    key = (pki / f"node-{region}-key.pem").read_bytes()
    c = VaultClient(mesh.target(entry), token=token, ca=mesh.ca.pem, cert=cert, key=key)
    mesh.clients.append(c)
    return c


def test_a_caller_cannot_claim_the_home_region_through_a_foreign_node(
    mesh: Mesh, ru_record: tuple[str, str]
) -> None:
    sid, rid = ru_record
    token = mesh.issue("scc")
    for forged in ("ru", "de", "us", "ru,ru"):
        with pytest.raises(VaultClientError) as e:
            _get(mesh, "us", token, rid, ((ENTRY_HEADER, forged),))
        assert e.value.code == grpc.StatusCode.PERMISSION_DENIED
        assert e.value.reason == "TRANSFER_NOT_ALLOWED"
        assert "no-rule:ru->us" in e.value.message
    history = mesh.vault("ru").node.transfer_history(sid)
    assert [(h["to_region"], h["allowed"]) for h in history] == [("us", False)] * 4


def test_a_callers_entry_header_at_the_home_node_is_ignored(
    mesh: Mesh, ru_record: tuple[str, str]
) -> None:
    """Direct to the home node the caller crosses no border, whatever it says:
    nothing is decided as a transfer and nothing is recorded."""
    sid, rid = ru_record
    before = mesh.vault("ru").node.transfer_history(sid)
    rec = _get(mesh, "ru", mesh.issue(None), rid, ((ENTRY_HEADER, "us"),))
    assert dict(rec.fields) == {"first": "Ivan"}
    assert mesh.vault("ru").node.transfer_history(sid) == before


def test_a_node_is_always_its_own_region(mesh: Mesh, ru_record: tuple[str, str]) -> None:
    """The de node's certificate at the ru node: without the header it is still
    de (not a local caller), and it cannot say it is us, or ru."""
    sid, rid = ru_record
    token = mesh.issue("scc")
    node = _as_node(mesh, "de", "ru", token)
    with pytest.raises(VaultClientError) as e:
        node.get_record(rid)
    assert e.value.reason == "TRANSFER_NOT_ALLOWED"
    for claimed in ("ru", "us"):
        with pytest.raises(grpc.RpcError) as raw:
            node._stub.GetRecord(
                pb.GetRecordRequest(record_id=rid),
                metadata=(("authorization", f"Bearer {token}"), (ENTRY_HEADER, claimed)),
                timeout=10,
            )
        err = VaultClientError.from_rpc_error(raw.value)
        assert err.code == grpc.StatusCode.PERMISSION_DENIED
        assert err.reason == "ENTRY_REGION_MISMATCH"
    assert mesh.vault("ru").node.transfer_history(sid)[-1]["to_region"] == "de"


def test_a_nodes_call_is_never_forwarded_again(mesh: Mesh, ru_record: tuple[str, str]) -> None:
    _, rid = ru_record
    node = _as_node(mesh, "de", "us", mesh.issue("scc"))
    with pytest.raises(VaultClientError) as e:
        node.get_record(rid)
    assert e.value.code == grpc.StatusCode.UNAVAILABLE
    assert e.value.reason == "REGION_NOT_SERVED"


def test_an_unauthenticated_call_is_not_forwarded(
    mesh: Mesh, ru_record: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="vault.access")
    _, rid = ru_record
    with pytest.raises(VaultClientError) as e:
        _get(mesh, "us", "v4.public.forged", rid)
    assert e.value.code == grpc.StatusCode.UNAUTHENTICATED
    lines = [r.getMessage() for r in caplog.records if r.name == "vault.access"]
    assert not any("relayed" in line for line in lines)


def test_a_request_id_is_passed_on_only_when_well_formed(
    mesh: Mesh, ru_record: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="vault.access")
    sid = ru_record[0]
    c = mesh.client("de", mesh.issue("scc"))
    for rid_in in ("trace-42", "x" * 65, "a b", "ids=1;drop"):
        caplog.clear()
        c._stub.GetSubject(
            pb.GetSubjectRequest(subject_id=sid),
            metadata=(*c._metadata(), (REQUEST_ID_HEADER, rid_in)),
            timeout=10,
        )
        lines = [r.getMessage() for r in caplog.records if r.name == "vault.access"]
        rids = {part for line in lines for part in line.split() if part.startswith("rid=")}
        assert len(rids) == 1, lines  # the same id on the entry and the home node
        if rid_in == "trace-42":
            assert rids == {"rid=trace-42"}
        else:
            assert rid_in not in " ".join(lines)
