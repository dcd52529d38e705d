"""Key jobs: subject key rotation (rotate, re-wrap, retire old versions) and
subject rekey (records re-encrypted under a fresh data key)."""

from vault.rotation._rekey import RekeyHeld, RekeySummary, SubjectRekey
from vault.rotation._subjects import RateLimiter, RotationSummary, SubjectKeyRotation

__all__ = [
    "RateLimiter",
    "RekeyHeld",
    "RekeySummary",
    "RotationSummary",
    "SubjectKeyRotation",
    "SubjectRekey",
]
