"""Attacks on the node relay (vault.service._relay), through real mTLS nodes.

The relay stream carries other people's calls: only a node may open it, and
what it carries is checked at the home node exactly like a call made there
directly (token, entry region from the peer's certificate, one hop, transfer
rules). It runs only the public service's unary methods.
"""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from tests.integration._mesh import Mesh
from vault.client import VaultClientError
from vault.service._forward import ENTRY_HEADER
from vault.v1 import relay_pb2 as rpb
from vault.v1 import relay_pb2_grpc as rpb_grpc
from vault.v1 import vault_pb2 as pb

pytestmark = pytest.mark.integration
CATEGORY = "user.name"
OK = grpc.StatusCode.OK.value[0]


def _node_credentials(mesh: Mesh, region: str) -> grpc.ChannelCredentials:
    pki = mesh.data_dir.parent / "pki"
    return grpc.ssl_channel_credentials(
        root_certificates=mesh.ca.pem,
        private_key=(pki / f"node-{region}-key.pem").read_bytes(),
        certificate_chain=(pki / f"node-{region}.pem").read_bytes(),
    )


def _call(
    call_id: int,
    method: str,
    request: bytes,
    token: str | None,
    *headers: tuple[str, str],
) -> rpb.RelayedCall:
    md = [rpb.RelayedHeader(key="authorization", value=f"Bearer {token}")] if token else []
    md += [rpb.RelayedHeader(key=k, value=v) for k, v in headers]
    return rpb.RelayedCall(
        id=call_id, method=method, request=request, metadata=md, timeout_ms=10_000
    )


def _relay(
    mesh: Mesh,
    home: str,
    calls: list[rpb.RelayedCall],
    credentials: grpc.ChannelCredentials,
) -> dict[int, rpb.RelayedReply]:
    """Sends ``calls`` on one Relay stream to ``home``'s node; the replies by id."""
    with grpc.secure_channel(mesh.target(home), credentials) as ch:
        stream = rpb_grpc.NodeRelayStub(ch).Relay(iter([rpb.RelayedCalls(calls=calls)]), timeout=20)
        return {r.id: r for message in stream for r in message.replies}


def _reason(reply: rpb.RelayedReply) -> str:
    status = status_pb2.Status.FromString(reply.status_details)
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return str(info.reason)
    return ""


def _get_record(record_id: str) -> bytes:
    return pb.GetRecordRequest(record_id=record_id).SerializeToString()


def test_only_a_node_may_open_the_relay(mesh: Mesh, ru_record: tuple[str, str]) -> None:
    """A caller's certificate is refused before anything it sent runs."""
    sid, rid = ru_record
    before = mesh.vault("ru").node.transfer_history(sid)
    token = mesh.issue("scc")
    with pytest.raises(grpc.RpcError) as e:
        _relay(
            mesh,
            "ru",
            [_call(1, "GetRecord", _get_record(rid), token, (ENTRY_HEADER, "us"))],
            mesh.caller_credentials(),
        )
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert mesh.vault("ru").node.transfer_history(sid) == before


def test_the_home_node_authenticates_every_relayed_call(
    mesh: Mesh, ru_record: tuple[str, str]
) -> None:
    sid, _ = ru_record
    request = pb.GetSubjectRequest(subject_id=sid).SerializeToString()
    replies = _relay(
        mesh,
        "ru",
        [
            _call(1, "GetSubject", request, None),
            _call(2, "GetSubject", request, "v4.public.forged"),
            _call(3, "GetSubject", request, mesh.issue(None)),
        ],
        _node_credentials(mesh, "de"),
    )
    assert replies[1].code == replies[2].code == grpc.StatusCode.UNAUTHENTICATED.value[0]
    assert not replies[1].reply and not replies[2].reply
    assert replies[3].code == OK
    assert pb.Subject.FromString(replies[3].reply).subject_id == sid


def test_a_relayed_call_entered_by_the_relaying_nodes_region(
    mesh: Mesh, ru_record: tuple[str, str]
) -> None:
    """The de node's stream: its calls entered by de, whatever they say, and
    the transfer rules decide (ru allows none): refused and recorded."""
    sid, rid = ru_record
    token = mesh.issue("scc")
    replies = _relay(
        mesh,
        "ru",
        [
            _call(1, "GetRecord", _get_record(rid), token),
            _call(2, "GetRecord", _get_record(rid), token, (ENTRY_HEADER, "ru")),
            _call(3, "GetRecord", _get_record(rid), token, (ENTRY_HEADER, "us")),
        ],
        _node_credentials(mesh, "de"),
    )
    assert replies[1].code == grpc.StatusCode.PERMISSION_DENIED.value[0]
    assert _reason(replies[1]) == "TRANSFER_NOT_ALLOWED"
    for i in (2, 3):
        assert replies[i].code == grpc.StatusCode.PERMISSION_DENIED.value[0]
        assert _reason(replies[i]) == "ENTRY_REGION_MISMATCH"
    assert all(not r.reply for r in replies.values())
    assert "Ivan" not in str(replies)
    last = mesh.vault("ru").node.transfer_history(sid)[-1]
    assert (last["to_region"], last["allowed"]) == ("de", False)


def test_only_the_public_unary_methods_are_relayed(mesh: Mesh, ru_record: tuple[str, str]) -> None:
    """Streaming methods, other services' methods and names that are no
    method are refused one by one; the stream goes on serving."""
    sid, _ = ru_record
    token = mesh.issue(None)
    request = pb.GetSubjectRequest(subject_id=sid).SerializeToString()
    odd = [
        "ExportSubject",
        "GetAccessReport",
        "ImportSubjects",
        "IssueToken",
        "Relay",
        "",
        "../TokenService/IssueToken",
        "vault.v1.TokenService/IssueToken",
        "GetSubject ",
    ]
    calls = [_call(i, m, request, token) for i, m in enumerate(odd, start=1)]
    calls.append(_call(100, "GetSubject", request, token))
    replies = _relay(mesh, "ru", calls, _node_credentials(mesh, "de"))
    for i in range(1, len(odd) + 1):
        assert replies[i].code == grpc.StatusCode.UNIMPLEMENTED.value[0], odd[i - 1]
        assert not replies[i].reply
    assert replies[100].code == OK


def test_a_malformed_relayed_request_is_invalid_argument(
    mesh: Mesh, ru_record: tuple[str, str]
) -> None:
    replies = _relay(
        mesh,
        "ru",
        [_call(1, "GetRecord", b"\xff\xff\xff", mesh.issue(None))],
        _node_credentials(mesh, "de"),
    )
    assert replies[1].code == grpc.StatusCode.INVALID_ARGUMENT.value[0]


def test_a_relayed_call_is_not_relayed_again(mesh: Mesh, ru_record: tuple[str, str]) -> None:
    """A ru record relayed to the us node: served there or refused, never sent on."""
    _, rid = ru_record
    replies = _relay(
        mesh,
        "us",
        [_call(1, "GetRecord", _get_record(rid), mesh.issue("scc"))],
        _node_credentials(mesh, "de"),
    )
    assert replies[1].code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert _reason(replies[1]) == "REGION_NOT_SERVED"


def test_forwarded_calls_share_one_relay_stream(mesh: Mesh) -> None:
    """Calls through the us node to de ride on its relay stream to de, and
    the answers reach the right callers."""
    token = mesh.issue("scc")
    home = mesh.client("de", token)
    sids = [home.create_subject("DE").subject_id for _ in range(4)]
    rids = [home.put_record(s, CATEGORY, {"first": f"P{i}"}).record_id for i, s in enumerate(sids)]
    entry = mesh.client("us", token)
    for i, rid in enumerate(rids * 3):
        assert dict(entry.get_record(rid).fields) == {"first": f"P{i % 4}"}
    peers = mesh.servers["us"].server.peers
    assert peers is not None
    links = peers._links
    assert mesh.target("de") in links
    assert links[mesh.target("de")]._stream is not None


def test_big_calls_are_forwarded_whole_and_refused_as_at_home(mesh: Mesh) -> None:
    """Records near the size limit, several at once, through the us node; a
    request too big for any relay message still gets the home node's own
    answer (it is forwarded as a call of its own), not a broken stream."""
    from concurrent.futures import ThreadPoolExecutor

    token = mesh.issue("scc")
    home = mesh.client("de", token)
    sids = [home.create_subject("DE").subject_id for _ in range(6)]
    entry = mesh.client("us", token)

    def put(i: int) -> str:
        fields = {f: chr(65 + i) * 60_000 for f in ("first", "last", "full")}  # 180 KB
        return entry.put_record(sids[i], CATEGORY, fields).record_id

    with ThreadPoolExecutor(6) as pool:
        rids = list(pool.map(put, range(6)))
    for i, rid in enumerate(rids):
        assert dict(home.get_record(rid).fields)["first"] == chr(65 + i) * 60_000
    # Just under the 1 MiB a node takes: no room left for a relay envelope.
    room = 1024 * 1024 - 200
    probe = pb.PutRecordRequest(subject_id=sids[0], category=CATEGORY, fields={"first": ""})
    huge = {"first": "x" * (room - probe.ByteSize() - 4)}
    assert (
        room - 8
        < pb.PutRecordRequest(subject_id=sids[0], category=CATEGORY, fields=huge).ByteSize()
        <= room
    )
    errors = []
    for c in (home, entry):
        with pytest.raises(VaultClientError) as e:
            c.put_record(sids[0], CATEGORY, huge)
        errors.append((e.value.code, e.value.reason))
    assert errors[0] == errors[1]
    assert errors[0][0] in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INVALID_ARGUMENT)
    assert dict(entry.get_record(rids[0]).fields)["last"] == "A" * 60_000  # the relay still serves
