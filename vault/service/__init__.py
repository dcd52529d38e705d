"""gRPC adapters: servicers, error → status mapping."""

from vault.service._forward import Peers
from vault.service._relay import RelayServicer, method_handlers
from vault.service._servicer import PersonalDataVaultServicer, TokenServicer
from vault.service._status import to_status
from vault.service._wire import MalformedRequests

__all__ = [
    "MalformedRequests",
    "Peers",
    "PersonalDataVaultServicer",
    "RelayServicer",
    "TokenServicer",
    "method_handlers",
    "to_status",
]
