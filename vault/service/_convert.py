"""Domain views → protobuf messages."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from vault.cell import ConsentView, RecordView, SubjectView
from vault.erasure import ErasureView
from vault.store import SubjectState
from vault.v1 import vault_pb2 as pb

_STATES = {
    SubjectState.ACTIVE: pb.SUBJECT_STATE_ACTIVE,
    SubjectState.RESTRICTED: pb.SUBJECT_STATE_RESTRICTED,
    SubjectState.ERASED: pb.SUBJECT_STATE_ERASED,
    SubjectState.ERASURE_PENDING: pb.SUBJECT_STATE_ERASURE_PENDING,
}


def _ts(us: int) -> Timestamp:
    t = Timestamp()
    t.FromMicroseconds(us)
    return t


def subject_pb(v: SubjectView) -> pb.Subject:
    return pb.Subject(
        subject_id=v.subject_id,
        region=v.region,
        state=_STATES.get(v.state, pb.SUBJECT_STATE_UNSPECIFIED),
        created_at=_ts(v.created_at_us),
        minor=v.minor,
    )


def record_pb(v: RecordView) -> pb.Record:
    return pb.Record(
        record_id=v.record_id,
        subject_id=v.subject_id,
        category=v.category,
        fields=v.fields,
        version=v.version,
        created_at=_ts(v.created_at_us),
        updated_at=_ts(v.updated_at_us),
    )


def consent_pb(v: ConsentView) -> pb.Consent:
    return pb.Consent(
        subject_id=v.subject_id,
        purpose=v.purpose,
        granted=v.granted,
        source=v.source,
        updated_at=_ts(v.updated_at_us),
    )


def erasure_pb(v: ErasureView) -> pb.ErasureReceipt:
    r = pb.ErasureReceipt(
        subject_id=v.subject_id,
        region=v.region,
        state=pb.ERASURE_STATE_COMPLETED if v.completed else pb.ERASURE_STATE_PENDING,
        key_name=v.key_name,
        key_versions_destroyed=list(v.key_versions_destroyed),
        records_affected=v.records_affected,
        requested_at=_ts(v.requested_at_us),
        destroy_after=_ts(v.destroy_after_us),
        evidence=v.evidence,
        signed_receipt=v.signed_receipt,
    )
    if v.erased_at_us:
        r.erased_at.CopyFrom(_ts(v.erased_at_us))
    return r


def access_pb(e: Mapping[str, Any]) -> pb.AccessEntry:
    """One access report entry (see :meth:`vault.cell.Cell.access_report`)."""
    out = pb.AccessEntry(
        operation=str(e.get("operation") or ""),
        decision=str(e.get("decision") or ""),
        service=str(e.get("service") or ""),
        client_identity=str(e.get("client") or ""),
        purpose=str(e.get("purpose") or ""),
        legal_basis=str(e.get("legal_basis") or ""),
        transfer_basis=str(e.get("transfer_basis") or ""),
        categories=[str(c) for c in e.get("categories") or ()],
        fields=[str(f) for f in e.get("fields") or ()],
        region=str(e.get("region") or ""),
        entry_region=str(e.get("entry_region") or ""),
        sequence=int(e.get("sequence") or 0),
    )
    out.time.FromMicroseconds(int(e.get("time_us") or 0))
    return out
