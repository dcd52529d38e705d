"""A typed Python client for the pdvault gRPC API.

    from vault.client import VaultClient

    with VaultClient("127.0.0.1:50051") as vc:
        person = vc.create_subject(country="DE")
        rec = vc.put_record(person.subject_id, "user.contact.email", {"address": "ada@example.org"})
        print(vc.get_record(rec.record_id).fields)

Over TLS, give the CA the server's certificate chains to (PEM bytes), and for
mutual TLS a client certificate and its key; a ``grpcs://`` target means TLS
too (with the system's root certificates unless ``ca`` is given)::

    VaultClient("grpcs://vault.example:50051", token=t, ca=ca_pem, cert=cert_pem, key=key_pem)

Every failure raises :class:`VaultClientError`, which carries the gRPC status
code, the stable ``reason`` from the server's ErrorInfo and any field
violations.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from vault.v1 import vault_pb2 as pb
from vault.v1 import vault_pb2_grpc as pb_grpc


@dataclass
class VaultClientError(Exception):
    """A call failed. ``reason`` is the server's stable error code (ErrorInfo)."""

    code: grpc.StatusCode
    message: str
    reason: str = ""
    violations: list[tuple[str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"

    @classmethod
    def from_rpc_error(cls, err: grpc.RpcError) -> VaultClientError:
        code: grpc.StatusCode = err.code()
        message: str = err.details() or ""
        reason = ""
        violations: list[tuple[str, str]] = []
        status = rpc_status.from_call(err)
        if status is not None:
            for detail in status.details:
                if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
                    reason = info.reason
                elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                    br = error_details_pb2.BadRequest()
                    detail.Unpack(br)
                    violations = [(v.field, v.description) for v in br.field_violations]
        return cls(code, message, reason, violations)


def _lookups(items: Mapping[str, str] | Sequence[tuple[str, str]]) -> list[pb.Lookup]:
    pairs = items.items() if isinstance(items, Mapping) else items
    return [pb.Lookup(kind=k, value=v) for k, v in pairs]


def _grants(categories: Mapping[str, Sequence[str]] | Sequence[str]) -> list[pb.CategoryGrant]:
    if isinstance(categories, Mapping):
        return [pb.CategoryGrant(category=c, fields=list(f)) for c, f in categories.items()]
    return [pb.CategoryGrant(category=c) for c in categories]


TLS_SCHEME = "grpcs://"


def channel_credentials(
    target: str,
    *,
    ca: bytes | None = None,
    cert: bytes | None = None,
    key: bytes | None = None,
) -> tuple[str, grpc.ChannelCredentials | None]:
    """The address to dial and its TLS credentials (``None``: plaintext).

    TLS when ``target`` is ``grpcs://host:port`` or any of ``ca``, ``cert``,
    ``key`` is given; ``ca`` defaults to the system's root certificates.
    ``cert`` and ``key`` (a client certificate, mutual TLS) go together.
    """
    tls = target.startswith(TLS_SCHEME)
    address = target.removeprefix(TLS_SCHEME)
    if (cert is None) != (key is None):
        raise ValueError("a client certificate and its key go together")
    if not (tls or ca or cert):
        return address, None
    return address, grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=cert
    )


class VaultClient:
    """Blocking client; one channel per instance, safe to share between threads.

    ``target``: ``host:port``, or ``grpcs://host:port`` for TLS. ``ca``,
    ``cert``, ``key``: PEM bytes (see :func:`channel_credentials`), or
    ready-made ``credentials`` instead.
    """

    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        ca: bytes | None = None,
        cert: bytes | None = None,
        key: bytes | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        timeout: float = 10.0,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        if credentials is not None and (ca or cert or key):
            raise ValueError("give either credentials or ca/cert/key")
        address, tls = channel_credentials(target, ca=ca, cert=cert, key=key)
        credentials = credentials or tls
        self._channel = (
            grpc.secure_channel(address, credentials, options=options)
            if credentials is not None
            else grpc.insecure_channel(address, options=options)
        )
        self._stub = pb_grpc.PersonalDataVaultStub(self._channel)  # type: ignore[no-untyped-call]
        self._tokens = pb_grpc.TokenServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self._timeout = timeout
        self.token = token

    def __enter__(self) -> VaultClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def _call(self, method: Any, request: Any) -> Any:
        try:
            return method(request, timeout=self._timeout, metadata=self._metadata())
        except grpc.RpcError as e:
            raise VaultClientError.from_rpc_error(e) from None

    # -- subjects ---------------------------------------------------------

    def create_subject(
        self,
        country: str,
        *,
        region: str = "",
        minor: bool = False,
        idempotency_key: str = "",
        lookups: Mapping[str, str] | Sequence[tuple[str, str]] = (),
    ) -> pb.Subject:
        """``lookups``: values to index for FindSubjects, e.g. {"email": "…"}."""
        req = pb.CreateSubjectRequest(
            country=country,
            region=region,
            minor=minor,
            idempotency_key=idempotency_key,
            lookups=_lookups(lookups),
        )
        return self._call(self._stub.CreateSubject, req)  # type: ignore[no-any-return]

    def set_lookups(
        self, subject_id: str, lookups: Mapping[str, str] | Sequence[tuple[str, str]]
    ) -> int:
        req = pb.SetLookupsRequest(subject_id=subject_id, lookups=_lookups(lookups))
        return int(self._call(self._stub.SetLookups, req).added)

    def find_subjects(
        self, kind: str, value: str, *, region: str = "", all_regions: bool = False
    ) -> list[str]:
        req = pb.FindSubjectsRequest(
            lookup=pb.Lookup(kind=kind, value=value), region=region, all_regions=all_regions
        )
        return list(self._call(self._stub.FindSubjects, req).subject_ids)

    def find_subjects_response(
        self, kind: str, value: str, *, region: str = "", all_regions: bool = True
    ) -> pb.FindSubjectsResponse:
        """The whole reply: the ids, and with ``all_regions`` the regions that
        could not be searched (``region_errors``)."""
        req = pb.FindSubjectsRequest(
            lookup=pb.Lookup(kind=kind, value=value), region=region, all_regions=all_regions
        )
        resp: pb.FindSubjectsResponse = self._call(self._stub.FindSubjects, req)
        return resp

    def get_subject(self, subject_id: str) -> pb.Subject:
        req = pb.GetSubjectRequest(subject_id=subject_id)
        return self._call(self._stub.GetSubject, req)  # type: ignore[no-any-return]

    # -- records ----------------------------------------------------------

    def put_record(
        self,
        subject_id: str,
        category: str,
        fields: Mapping[str, str],
        *,
        record_id: str = "",
        expected_version: int = 0,
        idempotency_key: str = "",
    ) -> pb.Record:
        req = pb.PutRecordRequest(
            subject_id=subject_id,
            category=category,
            fields=dict(fields),
            record_id=record_id,
            expected_version=expected_version,
            idempotency_key=idempotency_key,
        )
        return self._call(self._stub.PutRecord, req)  # type: ignore[no-any-return]

    def get_record(self, record_id: str) -> pb.Record:
        req = pb.GetRecordRequest(record_id=record_id)
        return self._call(self._stub.GetRecord, req)  # type: ignore[no-any-return]

    def list_records(
        self, subject_id: str, *, category: str = "", page_size: int = 0, page_token: str = ""
    ) -> pb.ListRecordsResponse:
        req = pb.ListRecordsRequest(
            subject_id=subject_id, category=category, page_size=page_size, page_token=page_token
        )
        return self._call(self._stub.ListRecords, req)  # type: ignore[no-any-return]

    def iter_records(
        self, subject_id: str, *, category: str = "", page_size: int = 0
    ) -> Iterator[pb.Record]:
        """Every record of a subject, following page tokens."""
        token = ""
        while True:
            page = self.list_records(
                subject_id, category=category, page_size=page_size, page_token=token
            )
            yield from page.records
            token = page.next_page_token
            if not token:
                return

    def delete_record(
        self, record_id: str, *, expected_version: int = 0
    ) -> pb.DeleteRecordResponse:
        req = pb.DeleteRecordRequest(record_id=record_id, expected_version=expected_version)
        return self._call(self._stub.DeleteRecord, req)  # type: ignore[no-any-return]

    # -- consent and restriction ---------------------------------------------

    def set_consent(
        self, subject_id: str, purpose: str, granted: bool, *, source: str
    ) -> pb.Consent:
        req = pb.SetConsentRequest(
            subject_id=subject_id, purpose=purpose, granted=granted, source=source
        )
        return self._call(self._stub.SetConsent, req)  # type: ignore[no-any-return]

    def list_consents(self, subject_id: str) -> list[pb.Consent]:
        req = pb.ListConsentsRequest(subject_id=subject_id)
        return list(self._call(self._stub.ListConsents, req).consents)

    def restrict_processing(self, subject_id: str, restricted: bool = True) -> pb.Subject:
        req = pb.RestrictProcessingRequest(subject_id=subject_id, restricted=restricted)
        return self._call(self._stub.RestrictProcessing, req)  # type: ignore[no-any-return]

    # -- erasure and portability ---------------------------------------------

    def erase_subject(
        self, subject_id: str, *, reason: str = "", grace_period_seconds: int = 0
    ) -> pb.ErasureReceipt:
        req = pb.EraseSubjectRequest(subject_id=subject_id, reason=reason)
        req.grace_period.seconds = grace_period_seconds
        return self._call(self._stub.EraseSubject, req)  # type: ignore[no-any-return]

    def cancel_erasure(self, subject_id: str) -> pb.Subject:
        req = pb.CancelErasureRequest(subject_id=subject_id)
        return self._call(self._stub.CancelErasure, req)  # type: ignore[no-any-return]

    def import_subjects(
        self, people: Iterable[pb.ImportSubjectRequest]
    ) -> pb.ImportSubjectsResponse:
        """Bulk import: one call for up to 1000 people (see ImportSubjects)."""
        try:
            return self._stub.ImportSubjects(  # type: ignore[no-any-return]
                iter(people), timeout=self._timeout * 30, metadata=self._metadata()
            )
        except grpc.RpcError as e:
            raise VaultClientError.from_rpc_error(e) from None

    def export_subject_bytes(self, subject_id: str) -> Iterator[bytes]:
        """The export document's pieces as they arrive (for large subjects)."""
        req = pb.ExportSubjectRequest(subject_id=subject_id)
        try:
            for chunk in self._stub.ExportSubject(
                req, timeout=self._timeout * 30, metadata=self._metadata()
            ):
                yield chunk.data
        except grpc.RpcError as e:
            raise VaultClientError.from_rpc_error(e) from None

    def export_subject(self, subject_id: str) -> dict[str, Any]:
        """The whole export document, parsed."""
        return dict(json.loads(b"".join(self.export_subject_bytes(subject_id))))

    def access_report(self, subject_id: str, *, since_us: int = 0) -> list[pb.AccessEntry]:
        """Who accessed the subject's data (audited calls, oldest first)."""
        req = pb.GetAccessReportRequest(subject_id=subject_id)
        if since_us:
            req.since.FromMicroseconds(since_us)
        try:
            return list(
                self._stub.GetAccessReport(req, timeout=self._timeout, metadata=self._metadata())
            )
        except grpc.RpcError as e:
            raise VaultClientError.from_rpc_error(e) from None

    # -- tokens --------------------------------------------------------------

    def issue_token(
        self,
        *,
        service: str,
        purpose: str,
        categories: Mapping[str, Sequence[str]] | Sequence[str],
        operations: Sequence[str],
        regions: Sequence[str] = ("cn", "de", "ru", "sg", "us"),
        subjects: Sequence[str] = (),
        transfer_basis: str = "",
        ttl_seconds: int = 0,
    ) -> pb.TokenResponse:
        """Issues a purpose token; this client's bearer must be the administrator credential."""
        req = pb.IssueTokenRequest(
            service=service,
            purpose=purpose,
            categories=_grants(categories),
            operations=list(operations),
            regions=list(regions),
            subjects=list(subjects),
            transfer_basis=transfer_basis,
            ttl_seconds=ttl_seconds,
        )
        return self._call(self._tokens.IssueToken, req)  # type: ignore[no-any-return]

    def exchange_token(
        self,
        *,
        categories: Mapping[str, Sequence[str]] | Sequence[str] = (),
        operations: Sequence[str] = (),
        regions: Sequence[str] = (),
        subjects: Sequence[str] = (),
        ttl_seconds: int = 0,
    ) -> pb.TokenResponse:
        """A narrower token than this client's (for handing to a processor)."""
        req = pb.ExchangeTokenRequest(
            categories=_grants(categories),
            operations=list(operations),
            regions=list(regions),
            subjects=list(subjects),
            ttl_seconds=ttl_seconds,
        )
        return self._call(self._tokens.ExchangeToken, req)  # type: ignore[no-any-return]

    def revoke_token(self, token_id: str) -> pb.RevokeTokenResponse:
        req = pb.RevokeTokenRequest(token_id=token_id)
        return self._call(self._tokens.RevokeToken, req)  # type: ignore[no-any-return]
