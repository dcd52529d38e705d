"""gRPC adapters: servicers, error → status mapping."""

from vault.service._servicer import PersonalDataVaultServicer
from vault.service._status import to_status

__all__ = ["PersonalDataVaultServicer", "to_status"]
