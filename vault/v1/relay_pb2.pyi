from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RelayedCalls(_message.Message):
    __slots__ = ("calls",)
    CALLS_FIELD_NUMBER: _ClassVar[int]
    calls: _containers.RepeatedCompositeFieldContainer[RelayedCall]
    def __init__(self, calls: _Optional[_Iterable[_Union[RelayedCall, _Mapping]]] = ...) -> None: ...

class RelayedReplies(_message.Message):
    __slots__ = ("replies",)
    REPLIES_FIELD_NUMBER: _ClassVar[int]
    replies: _containers.RepeatedCompositeFieldContainer[RelayedReply]
    def __init__(self, replies: _Optional[_Iterable[_Union[RelayedReply, _Mapping]]] = ...) -> None: ...

class RelayedCall(_message.Message):
    __slots__ = ("id", "method", "request", "metadata", "timeout_ms")
    ID_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    id: int
    method: str
    request: bytes
    metadata: _containers.RepeatedCompositeFieldContainer[RelayedHeader]
    timeout_ms: int
    def __init__(self, id: _Optional[int] = ..., method: _Optional[str] = ..., request: _Optional[bytes] = ..., metadata: _Optional[_Iterable[_Union[RelayedHeader, _Mapping]]] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class RelayedHeader(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: str
    def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class RelayedReply(_message.Message):
    __slots__ = ("id", "code", "reply", "details", "status_details")
    ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    REPLY_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    STATUS_DETAILS_FIELD_NUMBER: _ClassVar[int]
    id: int
    code: int
    reply: bytes
    details: str
    status_details: bytes
    def __init__(self, id: _Optional[int] = ..., code: _Optional[int] = ..., reply: _Optional[bytes] = ..., details: _Optional[str] = ..., status_details: _Optional[bytes] = ...) -> None: ...
