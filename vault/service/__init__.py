"""gRPC adapters: servicers, error → status mapping."""

from vault.service._servicer import PersonalDataVaultServicer, TokenServicer
from vault.service._status import to_status

__all__ = ["PersonalDataVaultServicer", "TokenServicer", "to_status"]
