import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SubjectState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SUBJECT_STATE_UNSPECIFIED: _ClassVar[SubjectState]
    SUBJECT_STATE_ACTIVE: _ClassVar[SubjectState]
    SUBJECT_STATE_RESTRICTED: _ClassVar[SubjectState]
    SUBJECT_STATE_ERASED: _ClassVar[SubjectState]
    SUBJECT_STATE_ERASURE_PENDING: _ClassVar[SubjectState]

class ErasureState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERASURE_STATE_UNSPECIFIED: _ClassVar[ErasureState]
    ERASURE_STATE_PENDING: _ClassVar[ErasureState]
    ERASURE_STATE_COMPLETED: _ClassVar[ErasureState]
SUBJECT_STATE_UNSPECIFIED: SubjectState
SUBJECT_STATE_ACTIVE: SubjectState
SUBJECT_STATE_RESTRICTED: SubjectState
SUBJECT_STATE_ERASED: SubjectState
SUBJECT_STATE_ERASURE_PENDING: SubjectState
ERASURE_STATE_UNSPECIFIED: ErasureState
ERASURE_STATE_PENDING: ErasureState
ERASURE_STATE_COMPLETED: ErasureState

class CreateSubjectRequest(_message.Message):
    __slots__ = ("country", "region", "minor", "idempotency_key", "lookups")
    COUNTRY_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    MINOR_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    LOOKUPS_FIELD_NUMBER: _ClassVar[int]
    country: str
    region: str
    minor: bool
    idempotency_key: str
    lookups: _containers.RepeatedCompositeFieldContainer[Lookup]
    def __init__(self, country: _Optional[str] = ..., region: _Optional[str] = ..., minor: _Optional[bool] = ..., idempotency_key: _Optional[str] = ..., lookups: _Optional[_Iterable[_Union[Lookup, _Mapping]]] = ...) -> None: ...

class Subject(_message.Message):
    __slots__ = ("subject_id", "region", "state", "created_at", "minor")
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    MINOR_FIELD_NUMBER: _ClassVar[int]
    subject_id: str
    region: str
    state: SubjectState
    created_at: _timestamp_pb2.Timestamp
    minor: bool
    def __init__(self, subject_id: _Optional[str] = ..., region: _Optional[str] = ..., state: _Optional[_Union[SubjectState, str]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., minor: _Optional[bool] = ...) -> None: ...

class GetSubjectRequest(_message.Message):
    __slots__ = ("subject_id",)
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    subject_id: str
    def __init__(self, subject_id: _Optional[str] = ...) -> None: ...

class PutRecordRequest(_message.Message):
    __slots__ = ("subject_id", "category", "fields", "record_id", "expected_version", "idempotency_key")
    class FieldsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    subject_id: str
    category: str
    fields: _containers.ScalarMap[str, str]
    record_id: str
    expected_version: int
    idempotency_key: str
    def __init__(self, subject_id: _Optional[str] = ..., category: _Optional[str] = ..., fields: _Optional[_Mapping[str, str]] = ..., record_id: _Optional[str] = ..., expected_version: _Optional[int] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class Record(_message.Message):
    __slots__ = ("record_id", "subject_id", "category", "fields", "version", "created_at", "updated_at")
    class FieldsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    record_id: str
    subject_id: str
    category: str
    fields: _containers.ScalarMap[str, str]
    version: int
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    def __init__(self, record_id: _Optional[str] = ..., subject_id: _Optional[str] = ..., category: _Optional[str] = ..., fields: _Optional[_Mapping[str, str]] = ..., version: _Optional[int] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetRecordRequest(_message.Message):
    __slots__ = ("record_id",)
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    record_id: str
    def __init__(self, record_id: _Optional[str] = ...) -> None: ...

class ListRecordsRequest(_message.Message):
    __slots__ = ("subject_id", "category", "page_size", "page_token")
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    subject_id: str
    category: str
    page_size: int
    page_token: str
    def __init__(self, subject_id: _Optional[str] = ..., category: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListRecordsResponse(_message.Message):
    __slots__ = ("records", "next_page_token")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[Record]
    next_page_token: str
    def __init__(self, records: _Optional[_Iterable[_Union[Record, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteRecordRequest(_message.Message):
    __slots__ = ("record_id", "expected_version")
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    record_id: str
    expected_version: int
    def __init__(self, record_id: _Optional[str] = ..., expected_version: _Optional[int] = ...) -> None: ...

class DeleteRecordResponse(_message.Message):
    __slots__ = ("record_id", "deleted")
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    record_id: str
    deleted: bool
    def __init__(self, record_id: _Optional[str] = ..., deleted: _Optional[bool] = ...) -> None: ...

class SetConsentRequest(_message.Message):
    __slots__ = ("subject_id", "purpose", "granted", "source")
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    GRANTED_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    subject_id: str
    purpose: str
    granted: bool
    source: str
    def __init__(self, subject_id: _Optional[str] = ..., purpose: _Optional[str] = ..., granted: _Optional[bool] = ..., source: _Optional[str] = ...) -> None: ...

class Consent(_message.Message):
    __slots__ = ("subject_id", "purpose", "granted", "source", "updated_at")
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    GRANTED_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    subject_id: str
    purpose: str
    granted: bool
    source: str
    updated_at: _timestamp_pb2.Timestamp
    def __init__(self, subject_id: _Optional[str] = ..., purpose: _Optional[str] = ..., granted: _Optional[bool] = ..., source: _Optional[str] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListConsentsRequest(_message.Message):
    __slots__ = ("subject_id",)
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    subject_id: str
    def __init__(self, subject_id: _Optional[str] = ...) -> None: ...

class ListConsentsResponse(_message.Message):
    __slots__ = ("consents",)
    CONSENTS_FIELD_NUMBER: _ClassVar[int]
    consents: _containers.RepeatedCompositeFieldContainer[Consent]
    def __init__(self, consents: _Optional[_Iterable[_Union[Consent, _Mapping]]] = ...) -> None: ...

class RestrictProcessingRequest(_message.Message):
    __slots__ = ("subject_id", "restricted")
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    RESTRICTED_FIELD_NUMBER: _ClassVar[int]
    subject_id: str
    restricted: bool
    def __init__(self, subject_id: _Optional[str] = ..., restricted: _Optional[bool] = ...) -> None: ...

class CategoryGrant(_message.Message):
    __slots__ = ("category", "fields")
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    category: str
    fields: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, category: _Optional[str] = ..., fields: _Optional[_Iterable[str]] = ...) -> None: ...

class IssueTokenRequest(_message.Message):
    __slots__ = ("service", "purpose", "categories", "operations", "regions", "subjects", "transfer_basis", "ttl_seconds")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    OPERATIONS_FIELD_NUMBER: _ClassVar[int]
    REGIONS_FIELD_NUMBER: _ClassVar[int]
    SUBJECTS_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_BASIS_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    service: str
    purpose: str
    categories: _containers.RepeatedCompositeFieldContainer[CategoryGrant]
    operations: _containers.RepeatedScalarFieldContainer[str]
    regions: _containers.RepeatedScalarFieldContainer[str]
    subjects: _containers.RepeatedScalarFieldContainer[str]
    transfer_basis: str
    ttl_seconds: int
    def __init__(self, service: _Optional[str] = ..., purpose: _Optional[str] = ..., categories: _Optional[_Iterable[_Union[CategoryGrant, _Mapping]]] = ..., operations: _Optional[_Iterable[str]] = ..., regions: _Optional[_Iterable[str]] = ..., subjects: _Optional[_Iterable[str]] = ..., transfer_basis: _Optional[str] = ..., ttl_seconds: _Optional[int] = ...) -> None: ...

class ExchangeTokenRequest(_message.Message):
    __slots__ = ("categories", "operations", "regions", "subjects", "ttl_seconds")
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    OPERATIONS_FIELD_NUMBER: _ClassVar[int]
    REGIONS_FIELD_NUMBER: _ClassVar[int]
    SUBJECTS_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    categories: _containers.RepeatedCompositeFieldContainer[CategoryGrant]
    operations: _containers.RepeatedScalarFieldContainer[str]
    regions: _containers.RepeatedScalarFieldContainer[str]
    subjects: _containers.RepeatedScalarFieldContainer[str]
    ttl_seconds: int
    def __init__(self, categories: _Optional[_Iterable[_Union[CategoryGrant, _Mapping]]] = ..., operations: _Optional[_Iterable[str]] = ..., regions: _Optional[_Iterable[str]] = ..., subjects: _Optional[_Iterable[str]] = ..., ttl_seconds: _Optional[int] = ...) -> None: ...

class TokenResponse(_message.Message):
    __slots__ = ("token", "token_id", "expires_at")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    token: str
    token_id: str
    expires_at: _timestamp_pb2.Timestamp
    def __init__(self, token: _Optional[str] = ..., token_id: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RevokeTokenRequest(_message.Message):
    __slots__ = ("token_id",)
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    token_id: str
    def __init__(self, token_id: _Optional[str] = ...) -> None: ...

class RevokeTokenResponse(_message.Message):
    __slots__ = ("token_id", "revoked")
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    token_id: str
    revoked: bool
    def __init__(self, token_id: _Optional[str] = ..., revoked: _Optional[bool] = ...) -> None: ...

class EraseSubjectRequest(_message.Message):
    __slots__ = ("subject_id", "reason", "grace_period")
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    GRACE_PERIOD_FIELD_NUMBER: _ClassVar[int]
    subject_id: str
    reason: str
    grace_period: _duration_pb2.Duration
    def __init__(self, subject_id: _Optional[str] = ..., reason: _Optional[str] = ..., grace_period: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class ErasureReceipt(_message.Message):
    __slots__ = ("subject_id", "region", "state", "key_name", "key_versions_destroyed", "records_affected", "requested_at", "erased_at", "destroy_after", "evidence", "signed_receipt")
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    KEY_NAME_FIELD_NUMBER: _ClassVar[int]
    KEY_VERSIONS_DESTROYED_FIELD_NUMBER: _ClassVar[int]
    RECORDS_AFFECTED_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_AT_FIELD_NUMBER: _ClassVar[int]
    ERASED_AT_FIELD_NUMBER: _ClassVar[int]
    DESTROY_AFTER_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    SIGNED_RECEIPT_FIELD_NUMBER: _ClassVar[int]
    subject_id: str
    region: str
    state: ErasureState
    key_name: str
    key_versions_destroyed: _containers.RepeatedScalarFieldContainer[int]
    records_affected: int
    requested_at: _timestamp_pb2.Timestamp
    erased_at: _timestamp_pb2.Timestamp
    destroy_after: _timestamp_pb2.Timestamp
    evidence: str
    signed_receipt: str
    def __init__(self, subject_id: _Optional[str] = ..., region: _Optional[str] = ..., state: _Optional[_Union[ErasureState, str]] = ..., key_name: _Optional[str] = ..., key_versions_destroyed: _Optional[_Iterable[int]] = ..., records_affected: _Optional[int] = ..., requested_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., erased_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., destroy_after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., evidence: _Optional[str] = ..., signed_receipt: _Optional[str] = ...) -> None: ...

class CancelErasureRequest(_message.Message):
    __slots__ = ("subject_id",)
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    subject_id: str
    def __init__(self, subject_id: _Optional[str] = ...) -> None: ...

class ExportSubjectRequest(_message.Message):
    __slots__ = ("subject_id",)
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    subject_id: str
    def __init__(self, subject_id: _Optional[str] = ...) -> None: ...

class GetAccessReportRequest(_message.Message):
    __slots__ = ("subject_id", "since")
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    subject_id: str
    since: _timestamp_pb2.Timestamp
    def __init__(self, subject_id: _Optional[str] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class AccessEntry(_message.Message):
    __slots__ = ("time", "operation", "decision", "service", "client_identity", "purpose", "legal_basis", "transfer_basis", "categories", "fields", "region", "entry_region", "sequence")
    TIME_FIELD_NUMBER: _ClassVar[int]
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    CLIENT_IDENTITY_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    LEGAL_BASIS_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_BASIS_FIELD_NUMBER: _ClassVar[int]
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    ENTRY_REGION_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    time: _timestamp_pb2.Timestamp
    operation: str
    decision: str
    service: str
    client_identity: str
    purpose: str
    legal_basis: str
    transfer_basis: str
    categories: _containers.RepeatedScalarFieldContainer[str]
    fields: _containers.RepeatedScalarFieldContainer[str]
    region: str
    entry_region: str
    sequence: int
    def __init__(self, time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., operation: _Optional[str] = ..., decision: _Optional[str] = ..., service: _Optional[str] = ..., client_identity: _Optional[str] = ..., purpose: _Optional[str] = ..., legal_basis: _Optional[str] = ..., transfer_basis: _Optional[str] = ..., categories: _Optional[_Iterable[str]] = ..., fields: _Optional[_Iterable[str]] = ..., region: _Optional[str] = ..., entry_region: _Optional[str] = ..., sequence: _Optional[int] = ...) -> None: ...

class ExportChunk(_message.Message):
    __slots__ = ("data", "sequence")
    DATA_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    sequence: int
    def __init__(self, data: _Optional[bytes] = ..., sequence: _Optional[int] = ...) -> None: ...

class Lookup(_message.Message):
    __slots__ = ("kind", "value")
    KIND_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    kind: str
    value: str
    def __init__(self, kind: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class SetLookupsRequest(_message.Message):
    __slots__ = ("subject_id", "lookups")
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    LOOKUPS_FIELD_NUMBER: _ClassVar[int]
    subject_id: str
    lookups: _containers.RepeatedCompositeFieldContainer[Lookup]
    def __init__(self, subject_id: _Optional[str] = ..., lookups: _Optional[_Iterable[_Union[Lookup, _Mapping]]] = ...) -> None: ...

class SetLookupsResponse(_message.Message):
    __slots__ = ("added",)
    ADDED_FIELD_NUMBER: _ClassVar[int]
    added: int
    def __init__(self, added: _Optional[int] = ...) -> None: ...

class FindSubjectsRequest(_message.Message):
    __slots__ = ("lookup", "region", "all_regions")
    LOOKUP_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    ALL_REGIONS_FIELD_NUMBER: _ClassVar[int]
    lookup: Lookup
    region: str
    all_regions: bool
    def __init__(self, lookup: _Optional[_Union[Lookup, _Mapping]] = ..., region: _Optional[str] = ..., all_regions: _Optional[bool] = ...) -> None: ...

class FindSubjectsResponse(_message.Message):
    __slots__ = ("subject_ids", "region_errors")
    SUBJECT_IDS_FIELD_NUMBER: _ClassVar[int]
    REGION_ERRORS_FIELD_NUMBER: _ClassVar[int]
    subject_ids: _containers.RepeatedScalarFieldContainer[str]
    region_errors: _containers.RepeatedCompositeFieldContainer[RegionError]
    def __init__(self, subject_ids: _Optional[_Iterable[str]] = ..., region_errors: _Optional[_Iterable[_Union[RegionError, _Mapping]]] = ...) -> None: ...

class RegionError(_message.Message):
    __slots__ = ("region", "code", "reason")
    REGION_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    region: str
    code: str
    reason: str
    def __init__(self, region: _Optional[str] = ..., code: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ImportSubjectRequest(_message.Message):
    __slots__ = ("subject", "records")
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    subject: CreateSubjectRequest
    records: _containers.RepeatedCompositeFieldContainer[ImportRecord]
    def __init__(self, subject: _Optional[_Union[CreateSubjectRequest, _Mapping]] = ..., records: _Optional[_Iterable[_Union[ImportRecord, _Mapping]]] = ...) -> None: ...

class ImportRecord(_message.Message):
    __slots__ = ("category", "fields")
    class FieldsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    category: str
    fields: _containers.ScalarMap[str, str]
    def __init__(self, category: _Optional[str] = ..., fields: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ImportSubjectsResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ImportResult]
    def __init__(self, results: _Optional[_Iterable[_Union[ImportResult, _Mapping]]] = ...) -> None: ...

class ImportResult(_message.Message):
    __slots__ = ("subject_id", "records_written")
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    RECORDS_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    subject_id: str
    records_written: int
    def __init__(self, subject_id: _Optional[str] = ..., records_written: _Optional[int] = ...) -> None: ...
