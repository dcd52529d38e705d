"""The one table from domain errors to gRPC status codes (with rich details)."""

from __future__ import annotations

from typing import cast

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from vault import errors

DOMAIN = "pdvault"

# Most specific class first: the first isinstance match wins.
_CODES: tuple[tuple[type[errors.VaultError], grpc.StatusCode], ...] = (
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (errors.AccessDenied, grpc.StatusCode.PERMISSION_DENIED),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.Conflict, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.Erased, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.Restricted, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.TooLarge, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.KeyServiceUnavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.StoreUnavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.DecryptionFailed, grpc.StatusCode.DATA_LOSS),
)


def code_for(err: errors.VaultError) -> grpc.StatusCode:
    for cls, code in _CODES:
        if isinstance(err, cls):
            return code
    return grpc.StatusCode.INTERNAL


def _pack(msg: object) -> any_pb2.Any:
    a = any_pb2.Any()
    a.Pack(msg)  # type: ignore[arg-type]
    return a


def to_status(err: errors.VaultError) -> grpc.Status:
    """A ``grpc.Status`` carrying ErrorInfo (and BadRequest for bad input)."""
    code = code_for(err)
    message = err.message if code != grpc.StatusCode.INTERNAL else "internal error"
    details = [_pack(error_details_pb2.ErrorInfo(reason=err.reason, domain=DOMAIN))]
    if isinstance(err, errors.InvalidArgument):
        details.append(
            _pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=v.field, description=v.description
                        )
                        for v in err.violations
                    ]
                )
            )
        )
    status = status_pb2.Status(code=code.value[0], message=message, details=details)
    return cast(grpc.Status, rpc_status.to_status(status))


def internal_status() -> grpc.Status:
    status = status_pb2.Status(
        code=code_pb2.INTERNAL,
        message="internal error",
        details=[_pack(error_details_pb2.ErrorInfo(reason="INTERNAL", domain=DOMAIN))],
    )
    return cast(grpc.Status, rpc_status.to_status(status))
